#ifndef CGML_INTEGRATOR_H_
#define CGML_INTEGRATOR_H_
/*
 * CGMLIntegrator: the learned coarse-grained step of openmm-cgml as a native OpenMM Integrator.
 *
 * The integrator holds the TorchScript learned step (written by openmm_cgml.plugin.export_step); its kernel keeps
 * the state the step needs that a Context does not: the velocity history (H, N, 3) in nm per model step, the step
 * index and the seed of the random stream. All three go into Context checkpoints. One integrator step is one model
 * step (e.g. 100 ps). This header does not include libtorch, so wrappers compile without its headers.
 */
#include "openmm/Integrator.h"
#include "openmm/Kernel.h"
#include <memory>
#include <string>
#include <vector>

namespace CGMLPlugin {

struct LoadedStep;  // the TorchScript module and its metadata (src/LoadedStep.h)

class CGMLIntegrator : public OpenMM::Integrator {
public:
    /**
     * @param modelFile        a TorchScript file of openmm_cgml.simulate.LearnedStep (torch.jit.script(step).save)
     * @param seed             seed of the learned step's random stream, in [0, 2^53)
     * @param maxDisplacement  largest bead displacement in one step (nm); a larger one, or a NaN, stops the run
     *                         with an exception and the Context keeps the last good state
     */
    explicit CGMLIntegrator(const std::string& modelFile, long long seed = 0, double maxDisplacement = 2.0);
    ~CGMLIntegrator();
    const std::string& getModelFile() const { return modelFile; }
    /** The seed of the random stream (the checkpointed one once a Context exists). */
    long long getSeed() const;
    double getMaxDisplacement() const { return maxDisplacement; }
    int getNumBeads() const;
    int getHistoryLength() const;
    /** Annealed-Langevin refinement evaluations per step (0: dynamics only). */
    int getNumRefine() const;
    bool usesPeriodicBoundaryConditions() const;
    /** Index of the next step (0 before the first); the step's noise is drawn from (seed, step index). */
    long long getStepIndex() const;
    /** Where the learned step runs, as torch names it ("cpu", "cuda:0"). Needs a Context. */
    std::string getDevice() const;
    /** The velocity history, H*N*3 values (nm per model step, [H-1] most recent), row-major. Needs a Context. */
    std::vector<double> getHistory() const;
    void setHistory(const std::vector<double>& history);
    void step(int steps);
    /** The loaded step, for the kernels (not wrapped for Python). */
    const std::shared_ptr<LoadedStep>& getLoadedStep() const { return loaded; }
protected:
    void initialize(OpenMM::ContextImpl& context);
    void cleanup();
    std::vector<std::string> getKernelNames();
    double computeKineticEnergy();
    bool kineticEnergyRequiresForce() const { return false; }
    void createCheckpoint(std::ostream& stream) const;
    void loadCheckpoint(std::istream& stream);
private:
    const class StepCGMLKernel& stepKernel() const;
    std::string modelFile;
    long long seed;
    double maxDisplacement;
    std::shared_ptr<LoadedStep> loaded;
    OpenMM::Kernel kernel;
};

/** Register the CGML kernels on every platform OpenMM has loaded (idempotent; the constructor calls it). */
void registerCGMLKernels();

} // namespace CGMLPlugin

#endif
