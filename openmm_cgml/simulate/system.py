"""From a user's all-atom OpenMM objects to a CG Topology, System, positions and learned integrator."""
from typing import NamedTuple, Optional

import numpy as np
import openmm
from openmm import app, unit

from ..mapping import BeadMap
from ..units import strip_units
from .integrator import DEFAULT_FORCE_GROUPS, CGMLIntegrator, create_cg_forces
from .step import LearnedStep


class CGSimulationSetup(NamedTuple):
    """What :func:`coarse_grain_simulation` returns: everything ``app.Simulation`` and the analysis need."""

    topology: app.Topology  #: one atom per bead, with the box
    system: openmm.System  #: bead masses (amu), the CG forces, the box
    positions: unit.Quantity  #: mapped bead positions (length)
    integrator: CGMLIntegrator  #: the learned integrator
    beadmap: BeadMap  #: atom -> bead assignment, bead species, masses, molecules (for analysis of the run)


def create_cg_system(beadmap: BeadMap, box_vectors=None, force_groups=DEFAULT_FORCE_GROUPS) -> openmm.System:
    """A System of one particle per bead, driven only by the learned step's two PythonForces.

    Parameters
    ----------
    beadmap : BeadMap
        The bead system (its bead masses, amu, become the particle masses).
    box_vectors : length, optional
        Periodic box vectors (three Vec3 Quantities, a (3, 3) Quantity, or plain numbers in nm); None for a
        non-periodic system.
    force_groups : (int, int)
        Force groups (0..31) of the two forces; any :class:`CGMLIntegrator` made with the same groups steps it.
    """
    system = create_bead_system(beadmap, box_vectors)
    for force in create_cg_forces(box_vectors_nm(box_vectors) is not None, force_groups):
        system.addForce(force)
    return system


def create_bead_system(beadmap, box_vectors=None) -> openmm.System:
    """A force-free System of one particle per bead (bead masses, amu) with the default box, if any.

    Every integrator's System starts from this one; the caller adds the forces its integrator needs.
    ``box_vectors`` is as for :func:`create_cg_system`.
    """
    system = openmm.System()
    for mass in beadmap.bead_masses:
        system.addParticle(float(mass) * unit.amu)
    box = box_vectors_nm(box_vectors)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box] * unit.nanometer)
    return system


def box_vectors_nm(box_vectors) -> Optional[np.ndarray]:
    """(3, 3) orthorhombic box vectors in nm from three Vec3 Quantities (``System.getDefaultPeriodicBoxVectors()``,
    ``Topology.getPeriodicBoxVectors()``), a (3, 3) or (3,) Quantity, or plain numbers in nm; None stays None."""
    if box_vectors is None:
        return None
    if isinstance(box_vectors, (list, tuple)) and any(unit.is_quantity(v) for v in box_vectors):
        box = np.stack([strip_units(v, unit.nanometer, "box_vectors", shape=(3,)) for v in box_vectors])
    else:
        box = strip_units(box_vectors, unit.nanometer, "box_vectors")
    if box.shape == (3,):
        box = np.diag(box)
    if box.shape != (3, 3) or not np.isfinite(box).all() or (np.diag(box) <= 0).any():
        raise ValueError(f"box_vectors must be three positive box vectors in nm, got {box.tolist()}")
    if np.abs(box - np.diag(np.diag(box))).max() > 1e-9:
        raise ValueError("the learned model needs an orthorhombic box; got triclinic box vectors")
    return box


def _check_positions(positions, n_atoms: int) -> np.ndarray:
    """(n_atoms, 3) float64 nm from a positions Quantity (e.g. ``State.getPositions()``), checked for shape."""
    array = strip_units(positions, unit.nanometer, "positions", require_units=True)
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
    force_groups=DEFAULT_FORCE_GROUPS,
    max_displacement=None,
    **step_options,
) -> CGSimulationSetup:
    """Everything an OpenMM script needs to run the learned CG model instead of all-atom MD.

    Parameters
    ----------
    topology : openmm.app.Topology
        The all-atom topology.
    system : openmm.System
        The all-atom System (bond graph, masses, periodicity).
    positions : length
        All-atom positions, a Quantity (e.g. ``PDBFile.positions``).
    model : CGModel
        A loaded CG model (``openmm_cgml.training.load_model``).
    box_vectors : length, optional
        Periodic box vectors: three Vec3 Quantities, a (3, 3) or (3,) Quantity, or plain numbers in nm.
        Default: the System's default periodic box when the System is periodic, else none.
    seed : int
        Seed of the learned step's random stream.
    allow_unseen_types : bool
        Run bead types the model was not trained on (see ``LearnedStep.from_model``).
    force_groups : (int, int)
        Force groups (0..31) of the CG System's two forces and of the integrator.
    max_displacement : length, optional
        Blow-up bound of one step (Quantity or nm; default: ``integrator.displacement_bound``, scaled to the
        model's training data).
    **step_options
        Passed to ``LearnedStep.from_model`` (e.g. ``refine``).

    Returns
    -------
    CGSimulationSetup
        ``topology``, ``system``, ``positions``, ``integrator`` and ``beadmap``: pass the first four to
        ``app.Simulation`` / ``context.setPositions``; the BeadMap describes the beads for analysis.
    """
    if topology.getNumAtoms() != system.getNumParticles():
        raise ValueError(
            f"topology has {topology.getNumAtoms()} atoms but the system has {system.getNumParticles()} particles"
        )
    xyz = _check_positions(positions, topology.getNumAtoms())
    if box_vectors is None and system.usesPeriodicBoundaryConditions():
        box_vectors = system.getDefaultPeriodicBoxVectors()
    box = box_vectors_nm(box_vectors)
    mapping = dict(getattr(model, "mapping", {}) or {})
    beadmap = BeadMap.from_openmm(topology, system, **mapping)
    step = LearnedStep.from_model(model, beadmap, allow_unseen_types=allow_unseen_types, **step_options)
    if (box is not None) != step.periodic:
        raise ValueError(
            "the model is periodic but no box was given" if step.periodic
            else "the model was trained without periodic boundaries but the system is periodic; use a periodic model"
        )
    if box is not None:
        step.check_box(np.diag(box))
    integrator = CGMLIntegrator(step, seed=seed, max_displacement=max_displacement, force_groups=force_groups)
    cg_system = create_cg_system(beadmap, box, force_groups)
    cg_topology = beadmap.to_topology(box_vectors=box)
    cg_positions = beadmap.map_positions(xyz, box) * unit.nanometer
    return CGSimulationSetup(cg_topology, cg_system, cg_positions, integrator, beadmap)
