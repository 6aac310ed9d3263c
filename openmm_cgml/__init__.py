"""openmm-cgml: learned coarse-grained molecular dynamics for OpenMM.

The public names below are imported on first use (PEP 562), so ``import openmm_cgml`` and ``cgml --help`` stay
fast; ``from openmm_cgml import CGMLIntegrator`` works as usual.
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "systems": ["BuiltSystem", "build_peo_litfsi", "build_bead_spring"],
    "mapping": ["BeadMap"],
    "reference": ["ReferenceConfig", "run_reference", "coarse_grain_trajectory"],
    "data": ["CGDataset", "CGDatasetWriter", "write_dataset"],
    "training": ["TrainConfig", "CGModel", "ModelConfig", "train", "train_main", "load_model"],
    "simulate": ["LearnedStep", "step_noise", "CGMLIntegrator", "SimulationBlowUp", "ReplicaEngine",
                 "coarse_grain_simulation", "create_cg_system"],
    "dig": ["DiGSampler", "initial_states", "interpolate"],
    "analysis": ["msd", "diffusion_coefficient", "diffusion_by_species", "rdf", "analyze_trajectory"],
    "workflows": ["run_demo", "simulate_main", "diffusivity_comparison", "DEFAULT_MODEL"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'openmm_cgml' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
