#ifndef CGML_KERNELS_H_
#define CGML_KERNELS_H_
/* The kernel interface of CGMLIntegrator: one step of the learned model on a ContextImpl. */
#include "CGMLIntegrator.h"
#include "openmm/KernelImpl.h"
#include "openmm/System.h"
#include "openmm/internal/ContextImpl.h"
#include <iosfwd>
#include <string>
#include <vector>

namespace CGMLPlugin {

class StepCGMLKernel : public OpenMM::KernelImpl {
public:
    static std::string Name() { return "StepCGMLIntegrator"; }
    StepCGMLKernel(const std::string& name, const OpenMM::Platform& platform) : OpenMM::KernelImpl(name, platform) {}
    /** Bind to the Context's System with an empty history, step index 0 and the integrator's seed ``seed``. */
    virtual void initialize(OpenMM::ContextImpl& context, const CGMLIntegrator& integrator, long long seed) = 0;
    /** Advance the Context by one learned step. */
    virtual void execute(OpenMM::ContextImpl& context, const CGMLIntegrator& integrator) = 0;
    virtual double computeKineticEnergy(OpenMM::ContextImpl& context, const CGMLIntegrator& integrator) = 0;
    virtual long long getSeed() const = 0;
    virtual long long getStepIndex() const = 0;
    /** The torch device the step runs on ("cpu", "cuda:0"). */
    virtual std::string getDevice() const = 0;
    virtual std::vector<double> getHistory() const = 0;
    virtual void setHistory(const std::vector<double>& history) = 0;
    virtual void createCheckpoint(std::ostream& stream) const = 0;
    virtual void loadCheckpoint(std::istream& stream) = 0;
};

} // namespace CGMLPlugin

#endif
