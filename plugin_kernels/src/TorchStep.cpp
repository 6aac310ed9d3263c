/*
 * The libtorch side of the plugin: loading the TorchScript learned step, the noise stream, and one kernel that
 * runs the step, registered for every platform OpenMM has loaded (Reference, CPU, OpenCL, CUDA, HIP).
 *
 * The kernel exchanges positions and velocities through ContextImpl, so it works on any platform. On the CUDA
 * platform with a CUDA build of torch, the module, the history and every step tensor live on the Context's GPU;
 * positions still cross the host once per step (3 floats per bead each way, small next to the model). Keeping
 * them on the device (torch::from_blob on the CUDA platform's posq, in its reordered atom order) needs OpenMM's
 * CUDA headers and cuda.h at build time and is not done.
 */
#include "CGMLIntegrator.h"
#include "CGMLKernels.h"
#include "LoadedStep.h"
#include "openmm/OpenMMException.h"
#include "openmm/Platform.h"
#include "openmm/KernelFactory.h"
#include "openmm/internal/windowsExport.h"
#include <ATen/CPUGeneratorImpl.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <cmath>
#include <cstdlib>
#include <dlfcn.h>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

using namespace CGMLPlugin;
using namespace OpenMM;

namespace CGMLPlugin {

struct LoadedStep {
    StepInfo info;
    std::string file;
    torch::jit::Module module;
};

} // namespace CGMLPlugin

/* The first sentence of a libtorch message (they run over several lines and carry advice for other cases). */
static std::string firstLine(const std::string& text) {
    std::string line = text.substr(0, text.find('\n'));
    size_t end = line.find(". ");
    if (end != std::string::npos)
        line = line.substr(0, end);
    return line.empty() ? std::string("unknown error") : line;
}

std::shared_ptr<LoadedStep> CGMLPlugin::loadLearnedStep(const std::string& file) {
    if (!std::ifstream(file.c_str()).good())
        throw OpenMMException("CGMLIntegrator: model file '" + file + "' does not exist or cannot be read");
    std::shared_ptr<LoadedStep> step = std::make_shared<LoadedStep>();
    step->file = file;
    try {
        step->module = torch::jit::load(file, torch::kCPU);
    }
    catch (const std::exception& err) {
        throw OpenMMException("CGMLIntegrator: '" + file + "' is not a TorchScript file (write one with "
                "openmm_cgml.plugin.export_step): " + firstLine(err.what()));
    }
    const char* names[] = {"n_beads", "history_length", "n_refine", "periodic", "timestep_ps", "n_replicas"};
    for (const char* name : names)
        if (!step->module.hasattr(name))
            throw OpenMMException("CGMLIntegrator: '" + file + "' is not a learned step (no attribute '" + name +
                    "'); write it with openmm_cgml.plugin.export_step");
    step->module.eval();
    StepInfo& info = step->info;
    info.numBeads = (int) step->module.attr("n_beads").toInt();
    info.historyLength = (int) step->module.attr("history_length").toInt();
    info.numRefine = (int) step->module.attr("n_refine").toInt();
    info.periodic = step->module.attr("periodic").toBool();
    info.timestepPs = step->module.attr("timestep_ps").toDouble();
    if (step->module.attr("n_replicas").toInt() != 1)
        throw OpenMMException("CGMLIntegrator: '" + file + "' advances several replicas; export a single-replica step");
    return step;
}

const StepInfo& CGMLPlugin::stepInfo(const LoadedStep& step) {
    return step.info;
}

static uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

uint64_t CGMLPlugin::noiseSeed(uint64_t seed, uint64_t step) {
    return splitmix64(splitmix64(seed) ^ step) & ((1ULL << 63) - 1);
}

namespace {

/* The GPU-style platforms (OpenCL, CUDA, HIP) allocate a Context's device arrays only when its integrator's kernel
   asks for it: their own integrators call PlatformData::initializeContexts (idempotent) first. This library is not
   linked against those platforms, so it finds that function in the loaded platform library by its symbol. */
static void finishDeviceContext(ContextImpl& context) {
    static const std::map<std::string, std::pair<const char*, const char*> > platforms = {
        {"OpenCL", {"libOpenMMOpenCL.so", "_ZN6OpenMM14OpenCLPlatform12PlatformData18initializeContextsERKNS_6SystemE"}},
        {"CUDA", {"libOpenMMCUDA.so", "_ZN6OpenMM12CudaPlatform12PlatformData18initializeContextsERKNS_6SystemE"}},
        {"HIP", {"libOpenMMHIP.so", "_ZN6OpenMM11HipPlatform12PlatformData18initializeContextsERKNS_6SystemE"}}};
    const std::string name = context.getPlatform().getName();
    auto found = platforms.find(name);
    if (found == platforms.end())
        return;  // Reference, CPU: host arrays, ready once the Context exists
    void* address = dlsym(RTLD_DEFAULT, found->second.second);
    if (address == NULL) {
        void* library = dlopen(found->second.first, RTLD_LAZY | RTLD_NOLOAD);  // already loaded by OpenMM
        if (library != NULL)
            address = dlsym(library, found->second.second);
    }
    if (address == NULL)
        throw OpenMMException("CGMLIntegrator: cannot finish setting up the " + name + " Context (" +
                std::string(found->second.first) + " does not export PlatformData::initializeContexts); use "
                "the Reference or CPU platform");
    typedef void (*InitializeContexts)(void* platformData, const System& system);  // a non-virtual member call
    reinterpret_cast<InitializeContexts>(address)(context.getPlatformData(), context.getSystem());
}

static const char CHECKPOINT_MAGIC[8] = {'C', 'G', 'M', 'L', 'C', 'K', 'P', '1'};

/* The learned step on ``device``: reads positions from the Context, runs the module, writes them back. */
class TorchStepKernel : public StepCGMLKernel {
public:
    TorchStepKernel(const std::string& name, const Platform& platform, torch::Device device)
            : StepCGMLKernel(name, platform), device(device) {
    }

    void initialize(ContextImpl& context, const CGMLIntegrator& integrator, long long initialSeed) {
        const System& system = context.getSystem();
        step = integrator.getLoadedStep();
        const StepInfo& info = step->info;
        if (system.getNumParticles() != info.numBeads) {
            std::stringstream msg;
            msg << "CGMLIntegrator: the learned step in '" << step->file << "' is for " << info.numBeads
                << " beads but the System has " << system.getNumParticles()
                << " particles; export the step for this bead system";
            throw OpenMMException(msg.str());
        }
        finishDeviceContext(context);
        masses.resize(info.numBeads);
        for (int i = 0; i < info.numBeads; ++i)
            masses[i] = system.getParticleMass(i);
        seed = initialSeed;
        stepIndex = 0;
        module = step->module;
        if (!device.is_cpu()) {
            module = step->module.clone();  // the integrator's own copy stays on the host
            module.to(device);
        }
        history = torch::zeros({info.historyLength, info.numBeads, 3}, onDevice());
    }

    void execute(ContextImpl& context, const CGMLIntegrator& integrator) {
        const StepInfo& info = step->info;
        const int n = info.numBeads;
        std::vector<Vec3> positions;
        context.getPositions(positions);
        torch::Tensor x = torch::empty({n, 3}, torch::kFloat32);
        float* xp = x.data_ptr<float>();
        for (int i = 0; i < n; ++i)
            for (int k = 0; k < 3; ++k)
                xp[3 * i + k] = (float) positions[i][k];
        if (!torch::isfinite(x).all().item<bool>() || !torch::isfinite(history).all().item<bool>())
            throw OpenMMException("learned step " + std::to_string(stepIndex) + ": the positions or velocity "
                    "history entering the step are not finite (set with setPositions/set_history?)");
        torch::Tensor box = torch::empty({0}, torch::kFloat32);
        if (info.periodic) {
            Vec3 a, b, c;
            context.getPeriodicBoxVectors(a, b, c);
            box = torch::tensor({(float) a[0], (float) b[1], (float) c[2]}, torch::kFloat32);
        }
        // The same stream as step_noise(seed, step_index): a fresh CPU generator, dynamics noise first.
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(noiseSeed((uint64_t) seed, (uint64_t) stepIndex));
        torch::Tensor dynNoise = at::randn({n, 3}, gen, torch::TensorOptions().dtype(torch::kFloat32));
        torch::Tensor refineNoise = at::randn({info.numRefine, n, 3}, gen, torch::TensorOptions().dtype(torch::kFloat32));
        torch::Tensor xNew, hNew;
        {
            torch::NoGradGuard noGrad;
            // The noise is drawn on the host whatever the device, so the stream is the Python one.
            std::vector<torch::jit::IValue> inputs = {x.to(device), history, box.to(device), dynNoise.to(device),
                                                      refineNoise.to(device)};
            try {
                auto result = module.forward(inputs).toTuple();
                xNew = result->elements()[0].toTensor().to(torch::kFloat32).to(torch::kCPU).contiguous();
                hNew = result->elements()[1].toTensor().to(onDevice()).contiguous();
            }
            catch (const c10::Error& err) {
                // e.g. graph building on positions the model itself made NaN: a blow-up, as in the Python step
                throw OpenMMException("learned step " + std::to_string(stepIndex) + ": the model failed inside "
                        "the step (" + firstLine(err.what_without_backtrace()) + "); last good state kept");
            }
        }
        torch::Tensor moved = hNew[info.historyLength - 1].to(torch::kCPU).contiguous();
        const float* xn = xNew.data_ptr<float>();
        const float* dn = moved.data_ptr<float>();
        checkStep(xn, dn, n, integrator.getMaxDisplacement());
        const double dt = integrator.getStepSize();
        std::vector<Vec3> velocities(n);
        for (int i = 0; i < n; ++i) {
            positions[i] = Vec3(xn[3 * i], xn[3 * i + 1], xn[3 * i + 2]);
            // The same velocity as the Python integrator reports: this step's displacement over the time step.
            velocities[i] = Vec3((double) dn[3 * i] / dt, (double) dn[3 * i + 1] / dt, (double) dn[3 * i + 2] / dt);
        }
        context.setPositions(positions);
        context.setVelocities(velocities);
        history = hNew;
        stepIndex += 1;
        context.setTime(context.getTime() + dt);
        context.setStepCount(context.getStepCount() + 1);
    }

    double computeKineticEnergy(ContextImpl& context, const CGMLIntegrator& integrator) {
        std::vector<Vec3> velocities;
        context.getVelocities(velocities);
        double energy = 0.0;
        for (size_t i = 0; i < velocities.size(); ++i)
            energy += 0.5 * masses[i] * velocities[i].dot(velocities[i]);
        return energy;
    }

    long long getSeed() const {
        return seed;
    }

    long long getStepIndex() const {
        return stepIndex;
    }

    std::vector<double> getHistory() const {
        torch::Tensor h = history.to(torch::kCPU).contiguous();
        const float* data = h.data_ptr<float>();
        return std::vector<double>(data, data + h.numel());
    }

    void setHistory(const std::vector<double>& values) {
        const StepInfo& info = step->info;
        if ((long long) values.size() != history.numel()) {
            std::stringstream msg;
            msg << "CGMLIntegrator: the history needs " << info.historyLength << " x " << info.numBeads
                << " x 3 values, got " << values.size();
            throw OpenMMException(msg.str());
        }
        torch::Tensor h = torch::empty(history.sizes(), torch::kFloat32);
        float* data = h.data_ptr<float>();
        for (size_t i = 0; i < values.size(); ++i) {
            if (!std::isfinite(values[i]))
                throw OpenMMException("CGMLIntegrator: the history contains NaN or inf");
            data[i] = (float) values[i];
        }
        history = h.to(device);
    }

    void createCheckpoint(std::ostream& stream) const {
        const int32_t dims[2] = {(int32_t) history.size(0), (int32_t) history.size(1)};
        const int64_t counters[2] = {(int64_t) seed, (int64_t) stepIndex};
        torch::Tensor h = history.to(torch::kCPU).contiguous();
        stream.write(CHECKPOINT_MAGIC, sizeof(CHECKPOINT_MAGIC));
        stream.write((const char*) counters, sizeof(counters));
        stream.write((const char*) dims, sizeof(dims));
        stream.write((const char*) h.data_ptr<float>(), h.numel() * sizeof(float));
    }

    void loadCheckpoint(std::istream& stream) {
        char magic[sizeof(CHECKPOINT_MAGIC)];
        int64_t counters[2];
        int32_t dims[2];
        stream.read(magic, sizeof(magic));
        stream.read((char*) counters, sizeof(counters));
        stream.read((char*) dims, sizeof(dims));
        if (!stream || std::string(magic, sizeof(magic)) != std::string(CHECKPOINT_MAGIC, sizeof(CHECKPOINT_MAGIC)))
            throw OpenMMException("CGMLIntegrator: the checkpoint was not written by a CGMLIntegrator");
        if (dims[0] != history.size(0) || dims[1] != history.size(1))
            throw OpenMMException("CGMLIntegrator: the checkpoint is for another bead system or history length");
        torch::Tensor h = torch::empty(history.sizes(), torch::kFloat32);
        stream.read((char*) h.data_ptr<float>(), h.numel() * sizeof(float));
        if (!stream)
            throw OpenMMException("CGMLIntegrator: the checkpoint is truncated");
        seed = counters[0];
        stepIndex = counters[1];
        history = h.to(device);
    }

    std::string getDevice() const {
        return device.str();
    }

private:
    torch::TensorOptions onDevice() const {
        return torch::TensorOptions().dtype(torch::kFloat32).device(device);
    }

    /* The bound of the Python integrator's check_step: a NaN/inf position, or a bead whose displacement this step
       (the newest history row, which leaves out whole-box relabelling) is longer than maxDisplacement nm. */
    void checkStep(const float* xNew, const float* moved, int n, double maxDisplacement) const {
        int worst = -1;
        double worstMoved = -1.0;
        for (int i = 0; i < n; ++i) {
            double d2 = 0.0;
            for (int k = 0; k < 3; ++k) {
                if (!std::isfinite(xNew[3 * i + k])) {
                    std::stringstream msg;
                    msg << "learned step " << stepIndex << ": bead " << i
                        << " position is not finite; last good state kept";
                    throw OpenMMException(msg.str());
                }
                double d = (double) moved[3 * i + k];
                d2 += d * d;
            }
            if (std::sqrt(d2) > worstMoved) {
                worstMoved = std::sqrt(d2);
                worst = i;
            }
        }
        if (worstMoved > maxDisplacement) {
            std::stringstream msg;
            msg << "learned step " << stepIndex << ": bead " << worst << " moved " << worstMoved << " nm (> "
                << maxDisplacement << " nm bound); last good state kept";
            throw OpenMMException(msg.str());
        }
    }

    torch::Device device;
    std::shared_ptr<LoadedStep> step;
    torch::jit::Module module;
    std::vector<double> masses;
    long long seed = 0;
    long long stepIndex = 0;
    torch::Tensor history;
};

/* The torch device for a Context: its own GPU on the CUDA platform when this torch build has CUDA, else the host.
   OPENMM_CGML_TORCH_DEVICE=cpu keeps the model on the host everywhere. */
static torch::Device torchDevice(const Platform& platform, ContextImpl& context) {
    const char* forced = std::getenv("OPENMM_CGML_TORCH_DEVICE");
    if (forced != NULL && std::string(forced) == "cpu")
        return torch::Device(torch::kCPU);
    if (platform.getName() != "CUDA" || !torch::cuda::is_available())
        return torch::Device(torch::kCPU);
    std::string index = platform.getPropertyValue(context.getOwner(), "DeviceIndex");
    index = index.substr(0, index.find(','));  // a multi-GPU Context: the model runs on its first device
    return torch::Device(torch::kCUDA, (c10::DeviceIndex) (index.empty() ? 0 : std::stoi(index)));
}

class CGMLKernelFactory : public KernelFactory {
public:
    KernelImpl* createKernelImpl(std::string name, const Platform& platform, ContextImpl& context) const {
        if (name == StepCGMLKernel::Name())
            return new TorchStepKernel(name, platform, torchDevice(platform, context));
        throw OpenMMException("CGMLKernelFactory: no kernel named " + name);
    }
};

} // namespace

void CGMLPlugin::registerCGMLKernels() {
    static std::mutex lock;
    std::lock_guard<std::mutex> guard(lock);
    const std::vector<std::string> kernels(1, StepCGMLKernel::Name());
    for (int i = 0; i < Platform::getNumPlatforms(); ++i) {
        Platform& platform = Platform::getPlatform(i);
        if (!platform.supportsKernels(kernels))
            platform.registerKernelFactory(StepCGMLKernel::Name(), new CGMLKernelFactory());
    }
}

// Entry point when the library is loaded from an OpenMM plugin directory.
extern "C" OPENMM_EXPORT void registerKernelFactories() {
    CGMLPlugin::registerCGMLKernels();
}
