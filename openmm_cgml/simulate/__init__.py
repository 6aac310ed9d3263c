"""The learned step, the OpenMM integrator around it, the batched replica engine, and the CG system glue."""
from .engine import ReplicaEngine, RunInterrupted
from .integrator import CGMLIntegrator, SimulationBlowUp, check_step, create_cg_forces
from .step import LearnedStep, parse_refine, rollout, step_noise
from .system import CGSimulationSetup, coarse_grain_simulation, create_cg_system

__all__ = ["LearnedStep", "parse_refine", "step_noise", "rollout", "CGMLIntegrator", "SimulationBlowUp", "check_step",
           "ReplicaEngine", "RunInterrupted", "coarse_grain_simulation", "CGSimulationSetup", "create_cg_system",
           "create_cg_forces"]
