"""openmm-cgml: learned coarse-grained molecular dynamics for OpenMM.

The top level holds the names a user's script needs, one or two per pipeline stage: build a system, map it to
beads, run all-atom reference MD, read the CG dataset, train, load a model, simulate (in ``openmm.app.Simulation``
or as batched replicas), sample with DiG and analyse. Everything else (configs, internals, CLI entry points) is
imported from its stage's module, e.g. ``from openmm_cgml.training import TrainConfig``.

The names are imported on first use (PEP 562), so ``import openmm_cgml`` and ``cgml --help`` stay fast;
``from openmm_cgml import CGMLIntegrator`` works as usual.
"""
import importlib

__version__ = "0.1.0"

#: stage module -> the public names it contributes, in pipeline order.
_EXPORTS = {
    "systems": ["build_peo_litfsi", "build_bead_spring"],
    "mapping": ["BeadMap"],
    "data": ["CGDataset"],
    "reference": ["run_reference"],
    "training": ["train", "load_model"],
    "simulate": ["CGMLIntegrator", "ReplicaEngine", "coarse_grain_simulation", "SimulationBlowUp"],
    "dig": ["DiGSampler"],
    "analysis": ["analyze_trajectory"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'openmm_cgml' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
