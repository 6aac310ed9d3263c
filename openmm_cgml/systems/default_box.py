"""The shipped default PEO/LiTFSI box: built and equilibrated once, loaded in about a second (``cgml demo``).

``data/default_box/`` holds a :meth:`BuiltSystem.save` directory without its ``system.xml`` (1.25 MB for this
box): ``topology.pdb`` (atoms, residues, CONECT bonds), ``state.xml`` (positions, bit-exact, and the box),
``metadata.json`` (the build's arguments, cutoff, density) and ``PROVENANCE.md``. :func:`default_box` rebuilds
the System from the shipped force-field XML with the build's charge scale, mixing rule and cutoff; the
metadata's ``potential_energy_kJ_mol`` (Reference platform, computed from the original System at build time)
checks that the rebuilt System is the one that was equilibrated.

How it was made (:func:`make_default_box`, once, on the shared 2-core machine)::

    OMP_NUM_THREADS=1 OPENMM_CPU_THREADS=1 python -c \\
        "from openmm_cgml.systems.default_box import make_default_box; make_default_box()"

i.e. ``build_peo_litfsi(**DEFAULT_BOX_BUILD)``: 22 x CH3O(CH2CH2O)8CH3 + 11 LiTFSI (1606 atoms, Li:EO = 1:16),
400 K, seed 0, 100 ps equilibration (50 ps compression at 1000 bar, 30 ps NPT at 1 bar, 20 ps NVT), CPU platform,
1 thread, OpenMM 8.6.1: a cubic box of edge 2.613 nm at 1.110 g/cm^3 (``data/default_box/PROVENANCE.md``).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import openmm as mm
from openmm import unit

from .built import FORMAT_VERSION, BuiltSystem, read_metadata, read_openmm_xml, read_topology
from .peo_litfsi import build_peo_litfsi, peo_litfsi_system

#: Where the shipped box lives (package data).
DEFAULT_BOX_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "default_box")
#: The :func:`build_peo_litfsi` arguments the shipped box was made with (stated explicitly, not "the defaults").
DEFAULT_BOX_BUILD = dict(n_chains=22, eo_per_chain=8, n_salt=11, temperature=400 * unit.kelvin, charge_scale=0.8,
                         mixing="lorentz-berthelot", seed=0, equilibration_ps=100.0, platform="CPU")
_FILES = ("topology.pdb", "state.xml", "metadata.json")


def default_box(directory: str | os.PathLike = DEFAULT_BOX_DIR) -> BuiltSystem:
    """The shipped, pre-equilibrated default PEO/LiTFSI box as a :class:`BuiltSystem` (no build).

    22 x CH3O(CH2CH2O)8CH3 + 11 LiTFSI, 1606 atoms, 400 K, made by
    ``build_peo_litfsi(n_chains=22, eo_per_chain=8, n_salt=11, temperature=400 K, charge_scale=0.8,
    mixing="lorentz-berthelot", seed=0, equilibration_ps=100.0, platform="CPU")`` with ``OPENMM_CPU_THREADS=1``
    (see ``data/default_box/PROVENANCE.md`` for the edge and density). Positions and box are those at the end
    of the NVT stage, bit-exact; the System is rebuilt from the shipped force field with the build's cutoff.
    ``directory`` loads another directory written by :func:`save_without_system`.
    """
    directory = os.fspath(directory)
    meta = read_metadata(directory, _FILES, "a shipped box")
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION or meta.get(
            "builder") != "build_peo_litfsi":
        raise ValueError(f"{directory}/metadata.json: not a build_peo_litfsi box of format_version {FORMAT_VERSION}")
    state = read_openmm_xml(os.path.join(directory, "state.xml"), "State")
    topology = read_topology(directory)
    box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
    topology.setPeriodicBoxVectors([mm.Vec3(*row) for row in box] * unit.nanometer)
    system = peo_litfsi_system(topology, charge_scale=meta["charge_scale"], mixing=meta["mixing"],
                               cutoff=meta["cutoff_nm"] * unit.nanometer)
    system.setDefaultPeriodicBoxVectors(*[mm.Vec3(*row) for row in box])
    temperature = meta.pop("temperature_K") * unit.kelvin
    meta.pop("format_version")
    return BuiltSystem(topology, system, state.getPositions(asNumpy=True), box * unit.nanometer, temperature, meta)


def save_without_system(built: BuiltSystem, directory: str | os.PathLike) -> str:
    """Write ``built`` as :meth:`BuiltSystem.save` does, minus ``system.xml``, into the new ``directory``;
    :func:`default_box` rebuilds the System. Adds ``potential_energy_kJ_mol`` (Reference platform) to the
    metadata."""
    directory = os.fspath(directory)
    energy = built.potential_energy("Reference").value_in_unit(unit.kilojoule_per_mole)
    with_energy = BuiltSystem(built.topology, built.system, built.positions, built.box_vectors, built.temperature,
                              dict(built.metadata, potential_energy_kJ_mol=float(energy)))
    with tempfile.TemporaryDirectory() as tmp:
        full = with_energy.save(os.path.join(tmp, "box"))
        os.makedirs(directory)
        for name in _FILES:
            shutil.copy2(os.path.join(full, name), os.path.join(directory, name))
    return directory


def make_default_box(directory: str | os.PathLike = DEFAULT_BOX_DIR, progress: bool = True) -> BuiltSystem:
    """Build the default box with :data:`DEFAULT_BOX_BUILD` and write it with :func:`save_without_system`
    (run once with ``OMP_NUM_THREADS=1 OPENMM_CPU_THREADS=1``; ``directory`` must not exist)."""
    built = build_peo_litfsi(progress=progress, **DEFAULT_BOX_BUILD)
    built.metadata["made_with"] = {"openmm_version": mm.version.full_version,
                                   "openmm_cpu_threads": os.environ.get("OPENMM_CPU_THREADS"),
                                   "call": "openmm_cgml.systems.default_box.make_default_box()"}
    save_without_system(built, directory)
    edges = np.diag(built.box_vectors.value_in_unit(unit.nanometer))
    print(f"wrote {directory}: {built.n_atoms} atoms, box {edges.min():.3f} nm, density "
          f"{built.metadata['density_g_cm3']:.3f} g/cm3, built in {built.metadata['build_seconds']:.0f} s")
    return built
