/* The CGMLIntegrator API class: argument checks, kernel creation, checkpoints delegated to the kernel. */
#include "CGMLIntegrator.h"
#include "CGMLKernels.h"
#include "LoadedStep.h"
#include "openmm/OpenMMException.h"
#include "openmm/internal/ContextImpl.h"
#include <sstream>

using namespace CGMLPlugin;
using OpenMM::OpenMMException;

static const long long MAX_SEED = 1LL << 53;  // the Python integrator stores the seed in a double

CGMLIntegrator::CGMLIntegrator(const std::string& modelFile, long long seed, double maxDisplacement)
        : modelFile(modelFile), seed(seed), maxDisplacement(maxDisplacement) {
    if (seed < 0 || seed >= MAX_SEED) {
        std::stringstream msg;
        msg << "CGMLIntegrator: seed must be an integer in [0, 2**53), got " << seed;
        throw OpenMMException(msg.str());
    }
    if (!(maxDisplacement > 0))
        throw OpenMMException("CGMLIntegrator: maxDisplacement must be a positive length in nm");
    loaded = loadLearnedStep(modelFile);
    setStepSize(stepInfo(*loaded).timestepPs);
    registerCGMLKernels();
}

CGMLIntegrator::~CGMLIntegrator() {
}

int CGMLIntegrator::getNumBeads() const {
    return stepInfo(*loaded).numBeads;
}

int CGMLIntegrator::getHistoryLength() const {
    return stepInfo(*loaded).historyLength;
}

int CGMLIntegrator::getNumRefine() const {
    return stepInfo(*loaded).numRefine;
}

bool CGMLIntegrator::usesPeriodicBoundaryConditions() const {
    return stepInfo(*loaded).periodic;
}

const StepCGMLKernel& CGMLIntegrator::stepKernel() const {
    if (context == NULL)
        throw OpenMMException("CGMLIntegrator: create a Context (or Simulation) with this integrator first");
    return kernel.getAs<const StepCGMLKernel>();
}

long long CGMLIntegrator::getSeed() const {
    return context == NULL ? seed : stepKernel().getSeed();
}

long long CGMLIntegrator::getStepIndex() const {
    return context == NULL ? 0 : stepKernel().getStepIndex();
}

std::string CGMLIntegrator::getDevice() const {
    return stepKernel().getDevice();
}

std::vector<double> CGMLIntegrator::getHistory() const {
    return stepKernel().getHistory();
}

void CGMLIntegrator::setHistory(const std::vector<double>& history) {
    stepKernel();  // checks that a Context exists
    kernel.getAs<StepCGMLKernel>().setHistory(history);
}

void CGMLIntegrator::initialize(OpenMM::ContextImpl& contextRef) {
    if (owner != NULL && &contextRef.getOwner() != owner)
        throw OpenMMException("CGMLIntegrator: this integrator is already bound to a Context; make a new one");
    context = &contextRef;
    owner = &contextRef.getOwner();
    kernel = context->getPlatform().createKernel(StepCGMLKernel::Name(), contextRef);
    kernel.getAs<StepCGMLKernel>().initialize(contextRef, *this, seed);
}

void CGMLIntegrator::cleanup() {
    kernel = OpenMM::Kernel();
}

std::vector<std::string> CGMLIntegrator::getKernelNames() {
    return std::vector<std::string>(1, StepCGMLKernel::Name());
}

double CGMLIntegrator::computeKineticEnergy() {
    return kernel.getAs<StepCGMLKernel>().computeKineticEnergy(*context, *this);
}

void CGMLIntegrator::step(int steps) {
    if (context == NULL)
        throw OpenMMException("CGMLIntegrator: create a Context (or Simulation) with this integrator first");
    for (int i = 0; i < steps; ++i)
        kernel.getAs<StepCGMLKernel>().execute(*context, *this);
}

void CGMLIntegrator::createCheckpoint(std::ostream& stream) const {
    stepKernel().createCheckpoint(stream);
}

void CGMLIntegrator::loadCheckpoint(std::istream& stream) {
    stepKernel();
    kernel.getAs<StepCGMLKernel>().loadCheckpoint(stream);
}
