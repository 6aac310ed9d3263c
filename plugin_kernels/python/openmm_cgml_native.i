/* Python wrapper of CGMLIntegrator, built on the swig files shipped with OpenMM so that the wrapped class is a
 * subclass of openmm.Integrator that Context and app.Simulation accept. */
%module openmm_cgml_native

%import(module="openmm") "swig/OpenMMSwigHeaders.i"
%include "std_string.i"
%include "std_vector.i"
namespace std {
    %template(CGMLDoubleVector) vector<double>;  /* the velocity history, flattened */
}

%{
#include "CGMLIntegrator.h"
#include "OpenMM.h"
#include "OpenMMAmoeba.h"
#include "OpenMMDrude.h"
#include "openmm/RPMDIntegrator.h"
#include "openmm/RPMDMonteCarloBarostat.h"
%}

%pythoncode %{
import openmm
%}

/* C++ exceptions become openmm.OpenMMException, as in OpenMM's own wrappers. */
%exception {
    try {
        $action
    } catch (std::exception& e) {
        PyObject* module = PyImport_ImportModule("openmm");
        PyObject* type = module ? PyObject_GetAttrString(module, "OpenMMException") : NULL;
        PyErr_Clear();
        PyErr_SetString(type ? type : PyExc_RuntimeError, e.what());
        Py_XDECREF(type);
        Py_XDECREF(module);
        SWIG_fail;
    }
}

namespace CGMLPlugin {

class CGMLIntegrator : public OpenMM::Integrator {
public:
    CGMLIntegrator(const std::string& modelFile, long long seed = 0, double maxDisplacement = 2.0);
    const std::string& getModelFile() const;
    long long getSeed() const;
    double getMaxDisplacement() const;
    int getNumBeads() const;
    int getHistoryLength() const;
    int getNumRefine() const;
    bool usesPeriodicBoundaryConditions() const;
    long long getStepIndex() const;
    std::string getDevice() const;
    std::vector<double> getHistory() const;
    void setHistory(const std::vector<double>& history);
    %rename(_step) step;
    void step(int steps);

    %pythoncode %{
    def step(self, steps):
        """Advance ``steps`` learned steps; a NaN or blow-up raises SimulationBlowUp (last good state kept)."""
        try:
            return self._step(steps)
        except openmm.OpenMMException as err:
            if str(err).startswith("learned step "):
                from openmm_cgml.simulate import SimulationBlowUp
                raise SimulationBlowUp(str(err)) from None
            raise

    @property
    def seed(self):
        """Seed of the step's random stream (restored by loadCheckpoint with the rest of the state)."""
        return self.getSeed()

    @property
    def history_length(self):
        return self.getHistoryLength()

    @property
    def periodic(self):
        return self.usesPeriodicBoundaryConditions()

    @property
    def timestep_ps(self):
        return self.getStepSize().value_in_unit(openmm.unit.picosecond)

    def get_history(self):
        """The current velocity history, (H, N, 3) nm per model step (``[-1]`` most recent)."""
        import numpy
        values = numpy.asarray(self.getHistory(), dtype=numpy.float64)
        return values.reshape(self.getHistoryLength(), self.getNumBeads(), 3)

    def set_history(self, history):
        """Set the velocity history, (H, N, 3) nm per model step; call after the Context exists."""
        import numpy
        history = numpy.asarray(history, dtype=numpy.float64)
        if history.shape != (self.getHistoryLength(), self.getNumBeads(), 3):
            raise ValueError(f"history must have shape ({self.getHistoryLength()}, {self.getNumBeads()}, 3), "
                             f"got {history.shape}")
        self.setHistory(history.ravel().tolist())
%}

    %extend {
        static CGMLPlugin::CGMLIntegrator& cast(OpenMM::Integrator& integrator) {
            return dynamic_cast<CGMLPlugin::CGMLIntegrator&>(integrator);
        }
        static bool isinstance(OpenMM::Integrator& integrator) {
            return dynamic_cast<CGMLPlugin::CGMLIntegrator*>(&integrator) != NULL;
        }
    }
};

}
