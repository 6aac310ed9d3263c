#ifndef CGML_LOADED_STEP_H_
#define CGML_LOADED_STEP_H_
/* What CGMLIntegrator knows about its learned step without including libtorch (defined in TorchStep.cpp). */
#include <cstdint>
#include <memory>
#include <string>

namespace CGMLPlugin {

struct StepInfo {
    int numBeads;
    int historyLength;
    int numRefine;
    bool periodic;
    double timestepPs;
};

/** Load a TorchScript learned step; throws OpenMMException with a one-line message if it is missing or invalid. */
std::shared_ptr<LoadedStep> loadLearnedStep(const std::string& file);
const StepInfo& stepInfo(const LoadedStep& step);

/** Seed of step ``step`` of stream ``seed``: the same splitmix64 mix as openmm_cgml.simulate.step.noise_seed. */
uint64_t noiseSeed(uint64_t seed, uint64_t step);

} // namespace CGMLPlugin

#endif
