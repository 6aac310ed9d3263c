"""The ``BuiltSystem`` container: an OpenMM Topology, System, positions and box that travel together."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openmm as mm
from openmm import app, unit

from ..units import strip_units

#: Version of the on-disk layout written by :meth:`BuiltSystem.save`.
FORMAT_VERSION = 1
#: 1 amu/nm^3 = 1.66053906660e-3 g/cm^3.
AMU_PER_NM3_IN_G_PER_CM3 = 1.66053906660e-3
_FILES = ("system.xml", "topology.pdb", "state.xml", "metadata.json")


#: XML element types whose deserialization runs Python code (the PythonForce's function is a pickle).
_UNSAFE_TYPES = ("PythonForce",)


def check_safe_xml(text: str, source: str, expected_root: str) -> None:
    """Refuse, before OpenMM deserializes it, an XML file that would run code or is not what it claims to be.

    ``XmlSerializer.deserialize`` unpickles the function of every ``PythonForce`` (arbitrary code). The XML is
    parsed here with the standard library (character references decoded, as OpenMM's parser does), every
    element's ``type`` is checked, and DTDs/entities (never written by OpenMM) are refused.
    """
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ValueError(f"{source}: DTDs and entities are not allowed in an OpenMM XML file")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as err:
        raise ValueError(f"{source} is not valid XML: {err}") from None
    if root.tag != expected_root:
        raise ValueError(f"{source} holds an OpenMM {root.tag}, not a {expected_root}")
    for element in root.iter():
        kind = element.get("type", "")
        if kind in _UNSAFE_TYPES or "function" in element.attrib:
            raise ValueError(f"{source} contains a {kind or element.tag} (a pickled Python function, which would run "
                             "code when loaded); refusing to load it")


def read_metadata(directory: str, files, what: str):
    """``directory/metadata.json`` (parsed) after checking that every one of ``files`` exists; a one-line
    ValueError naming ``what`` the directory should be otherwise."""
    missing = [name for name in files if not os.path.isfile(os.path.join(directory, name))]
    if missing:
        raise ValueError(f"{directory} is not {what} (missing {', '.join(missing)})")
    try:
        with open(os.path.join(directory, "metadata.json")) as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{directory}/metadata.json is not valid JSON ({err.msg})") from None


def read_openmm_xml(path: str, expected_root: str):
    """The OpenMM object serialized in ``path``, checked by :func:`check_safe_xml` before OpenMM sees it
    (deserializing a PythonForce would already run code); a one-line ValueError if it is unreadable."""
    with open(path) as handle:
        text = handle.read()
    check_safe_xml(text, path, expected_root)
    try:
        return mm.XmlSerializer.deserialize(text)
    except Exception as err:
        raise ValueError(f"{path} is not a readable OpenMM file "
                         f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def read_topology(directory: str) -> app.Topology:
    """``directory/topology.pdb`` (with its CONECT bonds); a one-line ValueError if it is unreadable."""
    try:
        return app.PDBFile(os.path.join(directory, "topology.pdb")).topology
    except Exception as err:
        raise ValueError(f"{directory}/topology.pdb is not a readable PDB file ({err})") from None


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
        xyz = strip_units(self.positions, unit.nanometer, "positions", require_units=True)
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
            box = strip_units(self.box_vectors, unit.nanometer, "box_vectors", require_units=True)
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

    def fingerprint(self) -> str:
        """SHA-256 of what makes a run of this model: its System XML, topology, start positions, box, temperature.

        Used to refuse continuing a reference run with another system (e.g. after ``cgml build --overwrite``).
        """
        digest = hashlib.sha256()
        system_xml = mm.XmlSerializer.serialize(self.system)
        digest.update(system_xml.split("\n", 2)[-1].encode())  # skip the header naming the OpenMM version
        for atom in self.topology.atoms():
            element = atom.element.symbol if atom.element is not None else ""
            digest.update(f"{atom.residue.name}:{atom.name}:{element};".encode())
        # bonds as a sorted set: a PDB round trip (save/load) keeps the bonds but not their order
        for i, j in sorted(tuple(sorted((a.index, b.index))) for a, b in self.topology.bonds()):
            digest.update(f"{i}-{j};".encode())
        digest.update(np.ascontiguousarray(self.positions.value_in_unit(unit.nanometer), np.float64).tobytes())
        if self.box_vectors is not None:
            digest.update(np.ascontiguousarray(self.box_vectors.value_in_unit(unit.nanometer), np.float64).tobytes())
        digest.update(repr(float(self.temperature.value_in_unit(unit.kelvin))).encode())
        return digest.hexdigest()

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> str:
        """Write system.xml, topology.pdb (with CONECT bonds), state.xml (exact positions/box), metadata.json.

        Refuses, writing nothing, if ``directory`` exists and is not empty unless ``overwrite=True``. The files
        are written to a new directory next to it that then takes its place, so a failure leaves the old
        directory as it was, and ``overwrite=True`` replaces the *whole* directory: a reference run saved in it
        (``reference/``) goes with the old system instead of being continued with the new one. To protect
        unrelated data, ``overwrite`` only replaces a directory written by :meth:`save` or one without
        subdirectories. Returns the directory path.
        """
        directory = os.fspath(directory)
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise ValueError(f"{directory} exists and is not a directory")
        occupied = os.path.isdir(directory) and bool(os.listdir(directory))
        if occupied and not overwrite:
            raise ValueError(f"{directory} is not empty; pass overwrite=True or choose a new directory")
        if occupied and not os.path.isfile(os.path.join(directory, "metadata.json")) and any(
                os.path.isdir(os.path.join(directory, name)) for name in os.listdir(directory)):
            raise ValueError(f"{directory} holds subdirectories but no saved system; refusing to overwrite it")
        # Serialise everything before touching the disk so an error leaves nothing half-written.
        system_xml = mm.XmlSerializer.serialize(self.system)
        state_xml = mm.XmlSerializer.serialize(self._state())
        meta = _jsonable(dict(self.metadata))
        meta.update({"format_version": FORMAT_VERSION, "temperature_K": self.temperature.value_in_unit(unit.kelvin)})
        meta_json = json.dumps(meta, indent=2, sort_keys=True)
        parent = os.path.dirname(os.path.abspath(directory))
        os.makedirs(parent, exist_ok=True)
        staging = os.path.join(parent, f".{os.path.basename(os.path.abspath(directory))}.saving-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        try:
            with open(os.path.join(staging, "system.xml"), "w") as handle:
                handle.write(system_xml)
            with open(os.path.join(staging, "state.xml"), "w") as handle:
                handle.write(state_xml)
            with open(os.path.join(staging, "topology.pdb"), "w") as handle:
                app.PDBFile.writeFile(self.topology, self.positions, handle, keepIds=False)
            with open(os.path.join(staging, "metadata.json"), "w") as handle:
                handle.write(meta_json + "\n")
            _swap_in(staging, directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
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
        meta = read_metadata(directory, _FILES, "a saved BuiltSystem")
        if not isinstance(meta, dict) or "temperature_K" not in meta or meta.get("format_version") != FORMAT_VERSION:
            found = meta.get("format_version") if isinstance(meta, dict) else None
            raise ValueError(f"{directory}/metadata.json: not a saved system of format_version {FORMAT_VERSION} "
                             f"(format_version {found})")
        system = read_openmm_xml(os.path.join(directory, "system.xml"), "System")
        state = read_openmm_xml(os.path.join(directory, "state.xml"), "State")
        topology = read_topology(directory)
        if topology.getNumAtoms() != system.getNumParticles():
            raise ValueError(f"{directory}/topology.pdb has {topology.getNumAtoms()} atoms but system.xml has "
                             f"{system.getNumParticles()} particles (duplicate atom names in a residue?)")
        positions = state.getPositions(asNumpy=True)
        box = state.getPeriodicBoxVectors(asNumpy=True) if system.usesPeriodicBoundaryConditions() else None
        temperature = meta.pop("temperature_K") * unit.kelvin
        meta.pop("format_version")
        return cls(topology, system, positions, box, temperature, meta)


def _swap_in(staging: str, directory: str) -> None:
    """Make the complete directory ``staging`` become ``directory``, removing what ``directory`` held."""
    if not os.path.exists(directory):
        os.rename(staging, directory)
        return
    old = staging + ".old"
    try:
        os.rename(directory, old)
    except OSError:  # e.g. a mount point or the current directory of another process: replace the contents
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
        return
    os.rename(staging, directory)
    shutil.rmtree(old, ignore_errors=True)
