/* XmlSerializer support: a CGMLIntegrator is saved as its model file, seed, bound and step size. */
#include "CGMLIntegrator.h"
#include "openmm/OpenMMException.h"
#include "openmm/serialization/SerializationNode.h"
#include "openmm/serialization/SerializationProxy.h"
#include <typeinfo>

using namespace CGMLPlugin;
using namespace OpenMM;

namespace {

class CGMLIntegratorProxy : public SerializationProxy {
public:
    CGMLIntegratorProxy() : SerializationProxy("CGMLIntegrator") {
    }
    void serialize(const void* object, SerializationNode& node) const {
        const CGMLIntegrator& integrator = *reinterpret_cast<const CGMLIntegrator*>(object);
        node.setIntProperty("version", 1);
        node.setStringProperty("modelFile", integrator.getModelFile());
        node.setLongProperty("seed", integrator.getSeed());
        node.setDoubleProperty("maxDisplacement", integrator.getMaxDisplacement());
        node.setDoubleProperty("stepSize", integrator.getStepSize());
    }
    void* deserialize(const SerializationNode& node) const {
        if (node.getIntProperty("version") != 1)
            throw OpenMMException("CGMLIntegrator: unsupported serialization version; re-save it with this plugin");
        CGMLIntegrator* integrator = new CGMLIntegrator(node.getStringProperty("modelFile"),
                node.getLongProperty("seed"), node.getDoubleProperty("maxDisplacement"));
        integrator->setStepSize(node.getDoubleProperty("stepSize"));
        return integrator;
    }
};

// Registered when the library is loaded (after libOpenMM, which it links against).
struct RegisterProxy {
    RegisterProxy() {
        SerializationProxy::registerProxy(typeid(CGMLIntegrator), new CGMLIntegratorProxy());
    }
} registerProxyAtLoad;

} // namespace
