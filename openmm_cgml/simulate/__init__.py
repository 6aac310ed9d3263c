"""The learned step, the OpenMM integrator around it, the batched replica engine, and the CG system glue."""
from .engine import ReplicaEngine
from .integrator import CGMLIntegrator, SimulationBlowUp, check_step
from .step import LearnedStep, rollout, step_noise
from .system import coarse_grain_simulation, create_cg_system

__all__ = ["LearnedStep", "step_noise", "rollout", "CGMLIntegrator", "SimulationBlowUp", "check_step",
           "ReplicaEngine", "coarse_grain_simulation", "create_cg_system"]
