"""The ``BuiltSystem`` container: an OpenMM Topology, System, positions and box that travel together."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openmm as mm
from openmm import app, unit

#: Version of the on-disk layout written by :meth:`BuiltSystem.save`.
FORMAT_VERSION = 1
#: 1 amu/nm^3 = 1.66053906660e-3 g/cm^3.
AMU_PER_NM3_IN_G_PER_CM3 = 1.66053906660e-3
_FILES = ("system.xml", "topology.pdb", "state.xml", "metadata.json")


def _as_nm_array(quantity: Any, name: str) -> np.ndarray:
    """Return a float64 NumPy array in nm from an ``openmm.unit`` length quantity; refuse plain numbers."""
    if not unit.is_quantity(quantity):
        raise TypeError(f"{name} must be an openmm.unit Quantity with length units (e.g. * unit.nanometer), "
                        f"got plain {type(quantity).__name__}")
    if not quantity.unit.is_compatible(unit.nanometer):
        raise TypeError(f"{name} must have length units, got {quantity.unit}")
    value = quantity.value_in_unit(unit.nanometer)
    try:
        return np.array([[float(c) for c in row] for row in value], dtype=np.float64)
    except TypeError as error:
        raise ValueError(f"{name} must be a sequence of 3-vectors: {error}") from None


def _jsonable(value: Any) -> Any:
    """Convert metadata values (quantities, NumPy scalars, tuples) to JSON-friendly Python objects."""
    if unit.is_quantity(value):
        return {"value": _jsonable(value._value), "unit": str(value.unit)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass
class BuiltSystem:
    """An all-atom (or bead) OpenMM model ready to simulate.

    Attributes
    ----------
    topology : openmm.app.Topology
        Atoms, residues, chains and bonds. Its periodic box is kept equal to ``box_vectors``.
    system : openmm.System
        Forces, masses (amu), constraints.
    positions : openmm.unit.Quantity
        (N, 3) float64 NumPy array in nm.
    box_vectors : openmm.unit.Quantity or None
        (3, 3) float64 NumPy array in nm, or None for a non-periodic model.
    temperature : openmm.unit.Quantity
        Temperature the model was built / equilibrated for (K).
    metadata : dict
        JSON-serialisable description: builder name, arguments, force field, mixing rule, charge scale,
        density (g/cm^3), seed.
    """

    topology: app.Topology
    system: mm.System
    positions: unit.Quantity
    box_vectors: unit.Quantity | None
    temperature: unit.Quantity
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.topology, app.Topology):
            raise TypeError(f"topology must be an openmm.app.Topology, got {type(self.topology).__name__}")
        if not isinstance(self.system, mm.System):
            raise TypeError(f"system must be an openmm.System, got {type(self.system).__name__}")
        xyz = _as_nm_array(self.positions, "positions")
        n_atoms, n_particles = self.topology.getNumAtoms(), self.system.getNumParticles()
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f"positions must have shape (n_atoms, 3), got {xyz.shape}")
        if not (xyz.shape[0] == n_atoms == n_particles):
            raise ValueError(f"positions ({xyz.shape[0]}), topology atoms ({n_atoms}) and system particles "
                             f"({n_particles}) must have the same count")
        if not np.all(np.isfinite(xyz)):
            raise ValueError("positions contain NaN or infinite values")
        self.positions = unit.Quantity(xyz, unit.nanometer)
        if self.box_vectors is not None:
            box = _as_nm_array(self.box_vectors, "box_vectors")
            if box.shape != (3, 3) or not np.all(np.isfinite(box)) or np.linalg.det(box) <= 0:
                raise ValueError("box_vectors must be three finite, right-handed 3-vectors with positive volume")
            self.box_vectors = unit.Quantity(box, unit.nanometer)
            self.topology.setPeriodicBoxVectors([mm.Vec3(*row) for row in box] * unit.nanometer)
        elif self.system.usesPeriodicBoundaryConditions():
            raise ValueError("the system is periodic: pass box_vectors")
        if not unit.is_quantity(self.temperature) or not self.temperature.unit.is_compatible(unit.kelvin):
            raise TypeError("temperature must be an openmm.unit Quantity in kelvin (e.g. 300 * unit.kelvin)")
        kelvin = float(self.temperature.value_in_unit(unit.kelvin))
        if not (math.isfinite(kelvin) and kelvin > 0):
            raise ValueError(f"temperature must be positive and finite, got {kelvin} K")
        self.temperature = kelvin * unit.kelvin
        if not isinstance(self.metadata, dict):
            raise TypeError("metadata must be a dict")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_openmm(cls, topology: app.Topology, system: mm.System, positions: unit.Quantity,
                    box_vectors: unit.Quantity | None = None, temperature: unit.Quantity = 300 * unit.kelvin,
                    metadata: dict | None = None) -> "BuiltSystem":
        """Wrap any OpenMM model a user brings.

        ``positions`` (nm quantity) must match the topology's atoms and the system's particles and be finite.
        For a periodic system without ``box_vectors`` the topology's box, else the system's default box, is used.
        """
        if box_vectors is None and isinstance(system, mm.System) and system.usesPeriodicBoundaryConditions():
            box_vectors = None if not isinstance(topology, app.Topology) else topology.getPeriodicBoxVectors()
            if box_vectors is None:
                box_vectors = system.getDefaultPeriodicBoxVectors()
        meta = {"builder": "from_openmm"}
        meta.update(metadata or {})
        return cls(topology, system, positions, box_vectors, temperature, meta)

    # ------------------------------------------------------------------ derived quantities
    @property
    def n_atoms(self) -> int:
        return self.system.getNumParticles()

    def density(self) -> unit.Quantity | None:
        """Mass density in g/cm^3 from the system's masses and the box, or None if non-periodic."""
        if self.box_vectors is None:
            return None
        mass_amu = sum(self.system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(self.n_atoms))
        volume_nm3 = float(np.linalg.det(self.box_vectors.value_in_unit(unit.nanometer)))
        return mass_amu * AMU_PER_NM3_IN_G_PER_CM3 / volume_nm3 * unit.gram / unit.centimeter**3

    def context(self, integrator: mm.Integrator | None = None, platform: mm.Platform | str | None = None
                ) -> mm.Context:
        """A Context on ``platform`` (default: OpenMM's fastest) with this model's positions and box."""
        integrator = integrator or mm.VerletIntegrator(0.001)
        if isinstance(platform, str):
            platform = mm.Platform.getPlatformByName(platform)
        ctx = mm.Context(self.system, integrator) if platform is None else mm.Context(self.system, integrator,
                                                                                         platform)
        if self.box_vectors is not None:
            ctx.setPeriodicBoxVectors(*[mm.Vec3(*row) for row in self.box_vectors.value_in_unit(unit.nanometer)])
        ctx.setPositions(self.positions)
        return ctx

    def potential_energy(self, platform: mm.Platform | str | None = "Reference") -> unit.Quantity:
        """Potential energy (kJ/mol) of the stored positions."""
        ctx = self.context(platform=platform)
        return ctx.getState(getEnergy=True).getPotentialEnergy()

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> str:
        """Write system.xml, topology.pdb (with CONECT bonds), state.xml (exact positions/box), metadata.json.

        Refuses, writing nothing, if ``directory`` exists and is not empty unless ``overwrite=True``.
        Returns the directory path.
        """
        directory = os.fspath(directory)
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise ValueError(f"{directory} exists and is not a directory")
        if os.path.isdir(directory) and os.listdir(directory) and not overwrite:
            raise ValueError(f"{directory} is not empty; pass overwrite=True or choose a new directory")
        # Serialise everything before touching the disk so an error leaves nothing half-written.
        system_xml = mm.XmlSerializer.serialize(self.system)
        state_xml = mm.XmlSerializer.serialize(self._state())
        meta = _jsonable(dict(self.metadata))
        meta.update({"format_version": FORMAT_VERSION, "temperature_K": self.temperature.value_in_unit(unit.kelvin)})
        meta_json = json.dumps(meta, indent=2, sort_keys=True)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "system.xml"), "w") as handle:
            handle.write(system_xml)
        with open(os.path.join(directory, "state.xml"), "w") as handle:
            handle.write(state_xml)
        with open(os.path.join(directory, "topology.pdb"), "w") as handle:
            app.PDBFile.writeFile(self.topology, self.positions, handle, keepIds=False)
        with open(os.path.join(directory, "metadata.json"), "w") as handle:
            handle.write(meta_json + "\n")
        return directory

    def _state(self) -> mm.State:
        # A Reference context stores positions as doubles, so the State (and its XML, written with 17
        # significant digits) holds them bit-exactly. The context uses an empty System: cheap for any model.
        probe = mm.System()
        for _ in range(self.n_atoms):
            probe.addParticle(1.0)
        if self.box_vectors is not None:
            probe.setDefaultPeriodicBoxVectors(*[mm.Vec3(*r) for r in self.box_vectors.value_in_unit(unit.nanometer)])
        ctx = mm.Context(probe, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
        if self.box_vectors is not None:
            ctx.setPeriodicBoxVectors(*[mm.Vec3(*r) for r in self.box_vectors.value_in_unit(unit.nanometer)])
        ctx.setPositions(self.positions)
        return ctx.getState(getPositions=True)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "BuiltSystem":
        """Restore a model written by :meth:`save` (positions and box bit-equal)."""
        directory = os.fspath(directory)
        missing = [name for name in _FILES if not os.path.isfile(os.path.join(directory, name))]
        if missing:
            raise ValueError(f"{directory} is not a saved BuiltSystem (missing {', '.join(missing)})")
        with open(os.path.join(directory, "metadata.json")) as handle:
            meta = json.load(handle)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory}: unsupported format_version {meta.get('format_version')}")
        with open(os.path.join(directory, "system.xml")) as handle:
            system = mm.XmlSerializer.deserialize(handle.read())
        with open(os.path.join(directory, "state.xml")) as handle:
            state = mm.XmlSerializer.deserialize(handle.read())
        topology = app.PDBFile(os.path.join(directory, "topology.pdb")).topology
        if topology.getNumAtoms() != system.getNumParticles():
            raise ValueError(f"{directory}/topology.pdb has {topology.getNumAtoms()} atoms but system.xml has "
                             f"{system.getNumParticles()} particles (duplicate atom names in a residue?)")
        positions = state.getPositions(asNumpy=True)
        box = state.getPeriodicBoxVectors(asNumpy=True) if system.usesPeriodicBoundaryConditions() else None
        temperature = meta.pop("temperature_K") * unit.kelvin
        meta.pop("format_version")
        return cls(topology, system, positions, box, temperature, meta)
