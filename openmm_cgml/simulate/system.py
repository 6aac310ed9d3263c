"""From a user's all-atom OpenMM objects to a CG Topology, System, positions and learned integrator."""
from typing import Optional, Tuple

import numpy as np
import openmm
from openmm import app, unit

from ..mapping import BeadMap
from .integrator import CGMLIntegrator
from .step import LearnedStep


def create_cg_system(beadmap: BeadMap, integrator: CGMLIntegrator, box_vectors=None) -> openmm.System:
    """A System of one particle per bead (bead masses, amu) driven only by ``integrator``'s PythonForces."""
    if (box_vectors is not None) != integrator.periodic:
        raise ValueError(
            "the model is periodic but no box was given" if integrator.periodic
            else "the model was trained without periodic boundaries but the system is periodic; use a periodic model"
        )
    system = openmm.System()
    for mass in beadmap.bead_masses:
        system.addParticle(float(mass) * unit.amu)
    if box_vectors is not None:
        system.setDefaultPeriodicBoxVectors(*box_vectors)
    for force in integrator.create_forces():
        system.addForce(force)
    return system


def _check_positions(positions, n_atoms: int) -> np.ndarray:
    if not unit.is_quantity(positions):
        raise TypeError("positions must carry units (e.g. simulation.context.getState(getPositions=True).getPositions())")
    if not positions.unit.is_compatible(unit.nanometer):
        raise ValueError(f"positions must be lengths (e.g. nanometers), got unit {positions.unit}")
    array = np.asarray(positions.value_in_unit(unit.nanometer), dtype=np.float64)
    if array.shape != (n_atoms, 3):
        raise ValueError(f"got {array.shape[0] if array.ndim else 0} positions for a topology of {n_atoms} atoms")
    if not np.isfinite(array).all():
        raise ValueError("positions contain NaN or inf; minimise or reload the structure first")
    return array


def coarse_grain_simulation(
    topology: app.Topology,
    system: openmm.System,
    positions,
    model,
    box_vectors=None,
    seed: int = 0,
    allow_unseen_types: bool = False,
    **step_options,
) -> Tuple[app.Topology, openmm.System, unit.Quantity, CGMLIntegrator]:
    """Everything an OpenMM script needs to run the learned CG model instead of all-atom MD.

    Args:
        topology, system, positions: the user's all-atom objects (positions with units).
        model: a loaded CG model (``openmm_cgml.training.load_model``).
        box_vectors: periodic box (defaults to the System's default box when it is periodic).
        seed: seed of the learned step's random stream.
        step_options: passed to ``LearnedStep.from_model`` (e.g. refinement settings).

    Returns:
        ``(cg_topology, cg_system, cg_positions, integrator)`` ready for ``app.Simulation``.
    """
    if topology.getNumAtoms() != system.getNumParticles():
        raise ValueError(
            f"topology has {topology.getNumAtoms()} atoms but the system has {system.getNumParticles()} particles"
        )
    xyz = _check_positions(positions, topology.getNumAtoms())
    if box_vectors is None and system.usesPeriodicBoundaryConditions():
        box_vectors = system.getDefaultPeriodicBoxVectors()
    mapping = dict(getattr(model, "mapping", {}) or {})
    beadmap = BeadMap.from_openmm(topology, system, **mapping)
    step = LearnedStep.from_model(model, beadmap, allow_unseen_types=allow_unseen_types, **step_options)
    if box_vectors is not None:
        step.check_box(np.diag(np.asarray(box_vectors.value_in_unit(unit.nanometer))))
    integrator = CGMLIntegrator(step, seed=seed)
    integrator.beadmap = beadmap  # kept for analysis of the run (species, masses, molecules)
    cg_system = create_cg_system(beadmap, integrator, box_vectors)
    cg_topology = beadmap.to_topology(box_vectors=box_vectors)
    cg_positions = beadmap.map_positions(xyz, box_vectors) * unit.nanometer
    return cg_topology, cg_system, cg_positions, integrator
