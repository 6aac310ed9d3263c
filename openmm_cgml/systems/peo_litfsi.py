"""PEO / LiTFSI polymer electrolyte: force field (CL&P / OPLS-AA) and an all-atom box builder.

The force field lives in ``data/peo_litfsi.xml`` (this project's own OpenMM XML written from the CL&P tables,
MIT licence). Ion charges (Li+ and TFSI-) are multiplied by ``charge_scale`` (default 0.8) after
``ForceField.createSystem``: particle charges of the ion atoms and the charge products of their 1-4 exceptions
are scaled, so the XML itself carries the full CL&P charges and any scale can be used.

Mixing rule. OPLS prescribes geometric mixing of sigma and epsilon; OpenMM's NonbondedForce uses
Lorentz-Berthelot (arithmetic sigma). Exact geometric mixing needs a CustomNonbondedForce and costs 2.5-10x in
speed, so the default is ``mixing="lorentz-berthelot"`` (plain NonbondedForce) and ``mixing="geometric"``
moves Lennard-Jones into a CustomNonbondedForce (same cutoff and dispersion correction; the NonbondedForce keeps
Coulomb/PME and the 1-4 exceptions, whose sigma becomes the geometric mean).
Measured effect on the 400 K density (small box: 4 x CH3O(CH2CH2O)6CH3 + 2 LiTFSI, 270 atoms, seed 0, same
build schedule, then NPT at 1 bar, density averaged over the second half) is measured by
``python -m benchmarks.allatom_throughput --mixing-density`` and written to benchmarks/results/mixing_density.json.
Measured (40 ps build + 100 ps NPT, 1 thread): Lorentz-Berthelot 1.114 +- 0.025 g/cm^3, geometric 1.119 +- 0.031
g/cm^3 (+0.5 %, inside the fluctuation), while the geometric run took 2.2x as long.
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import openmm as mm
from openmm import app, unit

from .built import AMU_PER_NM3_IN_G_PER_CM3, BuiltSystem
from .geometry import pack_molecules, place_atom, zmatrix_to_cartesian

#: Path of the shipped force-field XML.
PEO_LITFSI_XML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "peo_litfsi.xml")

MIXING_RULES = ("lorentz-berthelot", "geometric")
ION_RESIDUES = ("LI", "TFS")

# TFSI starting geometry, from CL&P ntf2.zmat (MIT licence, A. Padua): (name, j, r/A, k, theta, l, phi),
# 1-based references as in the file. Residue atom names follow the force-field template "TFS".
_TFSI_ZMATRIX = [
    ("C1", "CBT"), ("F11", "F1", 1, 1.332), ("F12", "F1", 1, 1.332, 2, 107.1),
    ("F13", "F1", 1, 1.332, 2, 107.1, 3, 120.0), ("S1", "SBT", 1, 1.818, 2, 111.8, 3, -120.0),
    ("N", "NBT", 5, 1.700, 1, 102.6, 3, 60.0), ("O11", "OBT", 5, 1.443, 1, 102.6, 6, 120.0),
    ("O12", "OBT", 5, 1.443, 1, 102.6, 6, -120.0), ("S2", "SBT", 6, 1.700, 5, 120.0, 1, 90.0),
    ("O21", "OBT", 9, 1.443, 6, 102.6, 5, -30.0), ("O22", "OBT", 9, 1.443, 6, 102.6, 5, -150.0),
    ("C2", "CBT", 9, 1.818, 6, 102.6, 5, 90.0), ("F21", "F1", 12, 1.332, 9, 107.1, 6, 60.0),
    ("F22", "F1", 12, 1.332, 9, 107.1, 6, -60.0), ("F23", "F1", 12, 1.332, 9, 107.1, 6, 180.0),
]
_TFSI_BONDS = [("C1", "F11"), ("C1", "F12"), ("C1", "F13"), ("C1", "S1"), ("S1", "O11"), ("S1", "O12"),
               ("S1", "N"), ("N", "S2"), ("S2", "O21"), ("S2", "O22"), ("S2", "C2"), ("C2", "F21"),
               ("C2", "F22"), ("C2", "F23")]
_ELEMENT = {"C": "C", "F": "F", "S": "S", "N": "N", "O": "O", "H": "H"}


def peo_litfsi_forcefield() -> app.ForceField:
    """The shipped CL&P/OPLS-AA PEO + Li + TFSI force field as an ``openmm.app.ForceField``."""
    return app.ForceField(PEO_LITFSI_XML)


# ---------------------------------------------------------------------------------------------- molecules
def tfsi_coordinates() -> tuple[list[str], np.ndarray]:
    """Atom names and Cartesian coordinates (nm) of one TFSI- from the CL&P z-matrix."""
    rows = []
    for entry in _TFSI_ZMATRIX:
        refs = entry[2:]
        row = []
        for pos, value in enumerate(refs):
            # z-matrix: (atom index 1-based, value) pairs; lengths A -> nm.
            row.append(value - 1 if pos % 2 == 0 else (value / 10.0 if pos == 1 else value))
        rows.append(tuple(row))
    return [entry[0] for entry in _TFSI_ZMATRIX], zmatrix_to_cartesian(rows)


def peo_chain_coordinates(n_eo: int) -> tuple[list[tuple[str, list[str]]], np.ndarray]:
    """All-trans CH3O(CH2CH2O)nCH3: residues [(name, atom names)] (PEH, n x PEO, PET) and coordinates (nm).

    The backbone is a planar zig-zag (C-O 0.141 nm, C-C 0.1529 nm, angles 109.5 deg, torsions 180 deg);
    hydrogens (0.109 nm) sit at torsions +-60 deg (CH2) or 180/+-60 deg (CH3) about the backbone.
    """
    if not isinstance(n_eo, (int, np.integer)) or n_eo < 1:
        raise ValueError(f"eo_per_chain must be an integer >= 1, got {n_eo!r}")
    backbone = ["C", "O"] + ["C", "C", "O"] * n_eo + ["C"]
    rows: list[tuple] = [()]
    for i in range(1, len(backbone)):
        bond = 0.1529 if backbone[i] == backbone[i - 1] == "C" else 0.141
        rows.append((i - 1, bond) if i == 1 else (i - 1, bond, i - 2, 109.5) if i == 2
                    else (i - 1, bond, i - 2, 109.5, i - 3, 180.0))
    spine = zmatrix_to_cartesian(rows)
    last = len(backbone) - 1

    def hydrogens(i: int, torsions: tuple) -> list[np.ndarray]:
        a, b = (i + 2, i + 1) if i == 0 else (i - 2, i - 1)
        return [place_atom(spine[a], spine[b], spine[i], 0.109, 109.5, t) for t in torsions]

    residues: list[tuple[str, list[str]]] = [("PEH", ["C", "H1", "H2", "H3", "O"])]
    coords = [spine[0], *hydrogens(0, (180.0, 60.0, -60.0)), spine[1]]
    for k in range(n_eo):
        c1, c2, o = 2 + 3 * k, 3 + 3 * k, 4 + 3 * k
        residues.append(("PEO", ["C1", "H11", "H12", "C2", "H21", "H22", "O"]))
        coords += [spine[c1], *hydrogens(c1, (60.0, -60.0)), spine[c2], *hydrogens(c2, (60.0, -60.0)), spine[o]]
    residues.append(("PET", ["C", "H1", "H2", "H3"]))
    coords += [spine[last], *hydrogens(last, (180.0, 60.0, -60.0))]
    return residues, np.array(coords)


def _add_chain(topology: app.Topology, residues: list[tuple[str, list[str]]]) -> None:
    chain = topology.addChain()
    previous_o = None
    for name, atom_names in residues:
        residue = topology.addResidue(name, chain)
        atoms = {n: topology.addAtom(n, app.Element.getBySymbol(_ELEMENT[n[0]]), residue) for n in atom_names}
        if name == "PEO":
            for a, b in [("C1", "H11"), ("C1", "H12"), ("C1", "C2"), ("C2", "H21"), ("C2", "H22"), ("C2", "O")]:
                topology.addBond(atoms[a], atoms[b])
            head = atoms["C1"]
        else:
            for h in ("H1", "H2", "H3"):
                topology.addBond(atoms["C"], atoms[h])
            if name == "PEH":
                topology.addBond(atoms["C"], atoms["O"])
            head = atoms["C"]
        if previous_o is not None:
            topology.addBond(previous_o, head)
        previous_o = atoms.get("O")


def _add_li(topology: app.Topology) -> None:
    residue = topology.addResidue("LI", topology.addChain())
    topology.addAtom("LI", app.Element.getBySymbol("Li"), residue)


def _add_tfsi(topology: app.Topology, names: list[str]) -> None:
    residue = topology.addResidue("TFS", topology.addChain())
    atoms = {n: topology.addAtom(n, app.Element.getBySymbol(_ELEMENT[n[0]]), residue) for n in names}
    for a, b in _TFSI_BONDS:
        topology.addBond(atoms[a], atoms[b])


def _topology_and_templates(n_chains: int, eo_per_chain: int, n_salt: int) -> tuple[app.Topology, list]:
    topology = app.Topology()
    chain_residues, chain_xyz = peo_chain_coordinates(eo_per_chain)
    tfsi_names, tfsi_xyz = tfsi_coordinates()
    templates = []
    for _ in range(n_chains):
        _add_chain(topology, chain_residues)
        templates.append(chain_xyz)
    for _ in range(n_salt):
        _add_tfsi(topology, tfsi_names)
        templates.append(tfsi_xyz)
    for _ in range(n_salt):
        _add_li(topology)
        templates.append(np.zeros((1, 3)))
    return topology, templates


def peo_litfsi_topology(n_chains: int, eo_per_chain: int, n_salt: int) -> app.Topology:
    """Topology (no box) of ``n_chains`` CH3O(CH2CH2O)nCH3 chains, then ``n_salt`` TFSI (TFS), then ``n_salt``
    Li (LI), one topology chain per molecule, with bonds and elements."""
    return _topology_and_templates(n_chains, eo_per_chain, n_salt)[0]


# ---------------------------------------------------------------------------------------------- system
def scale_ion_charges(system: mm.System, topology: app.Topology, charge_scale: float) -> None:
    """Multiply charges of atoms in LI/TFS residues by ``charge_scale`` in the NonbondedForce, in place,
    including the charge products of their exceptions (TFSI intramolecular 1-4 pairs)."""
    nonbonded = next(f for f in system.getForces() if isinstance(f, mm.NonbondedForce))
    scale = np.ones(system.getNumParticles())
    for atom in topology.atoms():
        if atom.residue.name in ION_RESIDUES:
            scale[atom.index] = charge_scale
    for i in np.nonzero(scale != 1.0)[0]:
        q, sigma, epsilon = nonbonded.getParticleParameters(int(i))
        nonbonded.setParticleParameters(int(i), q * charge_scale, sigma, epsilon)
    for k in range(nonbonded.getNumExceptions()):
        i, j, qq, sigma, epsilon = nonbonded.getExceptionParameters(k)
        if scale[i] != 1.0 or scale[j] != 1.0:
            nonbonded.setExceptionParameters(k, i, j, qq * scale[i] * scale[j], sigma, epsilon)


def use_geometric_mixing(system: mm.System) -> mm.CustomNonbondedForce:
    """Move Lennard-Jones from the NonbondedForce into a CustomNonbondedForce with OPLS geometric mixing
    (sigma_ij = sqrt(sigma_i sigma_j), epsilon_ij = sqrt(epsilon_i epsilon_j)), in place.

    All NonbondedForce exceptions become exclusions of the custom force; exceptions that carry Lennard-Jones
    (the scaled 1-4 pairs) get the geometric sigma. Cutoff, periodicity and long-range dispersion correction
    follow the NonbondedForce. Returns the added force.
    """
    nonbonded = next(f for f in system.getForces() if isinstance(f, mm.NonbondedForce))
    lj = mm.CustomNonbondedForce("4*eps*((sig/r)^12-(sig/r)^6); sig=sqrt(sigma1*sigma2); "
                                 "eps=sqrt(epsilon1*epsilon2)")
    lj.addPerParticleParameter("sigma")
    lj.addPerParticleParameter("epsilon")
    method = nonbonded.getNonbondedMethod()
    if method == mm.NonbondedForce.NoCutoff:
        lj.setNonbondedMethod(mm.CustomNonbondedForce.NoCutoff)
    elif method == mm.NonbondedForce.CutoffNonPeriodic:
        lj.setNonbondedMethod(mm.CustomNonbondedForce.CutoffNonPeriodic)
    else:
        lj.setNonbondedMethod(mm.CustomNonbondedForce.CutoffPeriodic)
    lj.setCutoffDistance(nonbonded.getCutoffDistance())
    lj.setUseSwitchingFunction(nonbonded.getUseSwitchingFunction())
    lj.setSwitchingDistance(nonbonded.getSwitchingDistance())
    lj.setUseLongRangeCorrection(method != mm.NonbondedForce.NoCutoff and nonbonded.getUseDispersionCorrection())
    sigmas, epsilons = [], []
    for i in range(nonbonded.getNumParticles()):
        q, sigma, epsilon = nonbonded.getParticleParameters(i)
        lj.addParticle([sigma, epsilon])
        sigmas.append(sigma.value_in_unit(unit.nanometer))
        epsilons.append(epsilon)
        nonbonded.setParticleParameters(i, q, sigma, 0.0)
    for k in range(nonbonded.getNumExceptions()):
        i, j, qq, sigma, epsilon = nonbonded.getExceptionParameters(k)
        lj.addExclusion(i, j)
        if epsilon.value_in_unit(unit.kilojoule_per_mole) != 0.0:
            nonbonded.setExceptionParameters(k, i, j, qq, math.sqrt(sigmas[i] * sigmas[j]), epsilon)
    system.addForce(lj)
    return lj


def peo_litfsi_system(topology: app.Topology, charge_scale: float = 0.8, mixing: str = "lorentz-berthelot",
                      cutoff: unit.Quantity | None = None, constraints=app.HBonds) -> mm.System:
    """OpenMM System for a PEO/LiTFSI topology (residues PEH/PEO/PET, LI, TFS).

    With a periodic box on ``topology`` it uses PME with ``cutoff`` (default 0.9 nm) and the long-range
    dispersion correction; without one, no cutoff (useful for exact reference energies).
    ``charge_scale`` multiplies the Li+/TFSI- charges; ``mixing`` is "lorentz-berthelot" or "geometric".
    """
    if mixing not in MIXING_RULES:
        raise ValueError(f"mixing must be one of {MIXING_RULES}, got {mixing!r}")
    if not (isinstance(charge_scale, (int, float)) and 0.0 < charge_scale <= 1.0):
        raise ValueError(f"charge_scale must be a number in (0, 1], got {charge_scale!r}")
    periodic = topology.getPeriodicBoxVectors() is not None
    kwargs = {"constraints": constraints, "rigidWater": False}
    if periodic:
        kwargs.update(nonbondedMethod=app.PME, nonbondedCutoff=cutoff if cutoff is not None else 0.9 * unit.nanometer,
                      ewaldErrorTolerance=5e-4)
    else:
        kwargs.update(nonbondedMethod=app.NoCutoff)
    system = peo_litfsi_forcefield().createSystem(topology, **kwargs)
    if periodic:
        next(f for f in system.getForces() if isinstance(f, mm.NonbondedForce)).setUseDispersionCorrection(True)
    if charge_scale != 1.0:
        scale_ion_charges(system, topology, float(charge_scale))
    if mixing == "geometric":
        use_geometric_mixing(system)
    return system


# ---------------------------------------------------------------------------------------------- builder
#: Target densities (g/cm^3) of the packed start box and of the melt that sets the cutoff.
PACKING_DENSITY = 0.15
MELT_DENSITY = 1.25


def _platform(platform):
    if platform is None or isinstance(platform, mm.Platform):
        return platform
    if isinstance(platform, str):
        return mm.Platform.getPlatformByName(platform)
    raise TypeError(f"platform must be None, a name or an openmm.Platform, got {type(platform).__name__}")


def _kelvin(value, name="temperature") -> float:
    if not unit.is_quantity(value) or not value.unit.is_compatible(unit.kelvin):
        raise TypeError(f"{name} must be an openmm.unit Quantity in kelvin (e.g. 400 * unit.kelvin)")
    kelvin = float(value.value_in_unit(unit.kelvin))
    if not kelvin > 0:
        raise ValueError(f"{name} must be positive, got {kelvin} K")
    return kelvin


def _density(system: mm.System, box: np.ndarray) -> float:
    mass = sum(system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles()))
    return mass * AMU_PER_NM3_IN_G_PER_CM3 / float(np.linalg.det(box))


def _check_build_args(n_chains, eo_per_chain, n_salt, temperature, mixing, equilibration_ps,
                      compression_pressure) -> float:
    """Validate :func:`build_peo_litfsi`'s arguments; returns the temperature in K."""
    for name, value, low in (("n_chains", n_chains, 1), ("eo_per_chain", eo_per_chain, 1), ("n_salt", n_salt, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    kelvin = _kelvin(temperature)
    if mixing not in MIXING_RULES:
        raise ValueError(f"mixing must be one of {MIXING_RULES}, got {mixing!r}")
    if not (isinstance(equilibration_ps, (int, float)) and equilibration_ps >= 0):
        raise ValueError(f"equilibration_ps must be a number >= 0, got {equilibration_ps!r}")
    if not unit.is_quantity(compression_pressure) or not compression_pressure.unit.is_compatible(unit.bar):
        raise TypeError("compression_pressure must be an openmm.unit Quantity in pressure units (e.g. * unit.bar)")
    return kelvin


def _pack_loose_box(topology: app.Topology, templates: list, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """Pack the molecules at random into a loose cubic box and set it on ``topology``.

    The box edge gives ``PACKING_DENSITY`` but is at least one all-trans chain length (+0.6 nm) so that packing
    never fails; the cutoff is min(0.9 nm, 0.45 x the edge at ``MELT_DENSITY``), so that it still fits (under half
    the edge) once the barostat has compressed the box. Returns positions (nm), box matrix (nm) and cutoff (nm).
    """
    chain_xyz = templates[0]
    mass = sum(atom.element.mass.value_in_unit(unit.dalton) for atom in topology.atoms())
    extent = np.linalg.norm(chain_xyz.max(axis=0) - chain_xyz.min(axis=0))
    loose_edge = max((mass * AMU_PER_NM3_IN_G_PER_CM3 / PACKING_DENSITY) ** (1 / 3), extent + 0.6)
    dense_edge = (mass * AMU_PER_NM3_IN_G_PER_CM3 / MELT_DENSITY) ** (1 / 3)
    cutoff = min(0.9, 0.45 * dense_edge)
    xyz = np.vstack(pack_molecules(templates, loose_edge, rng, min_distance=0.25))
    box = np.eye(3) * loose_edge
    topology.setPeriodicBoxVectors([mm.Vec3(*row) for row in box] * unit.nanometer)
    return xyz, box, cutoff


def _compression_context(system: mm.System, kelvin: float, compression_pressure: unit.Quantity, seed: int,
                         platform: mm.Platform | None) -> tuple[mm.Context, mm.LangevinMiddleIntegrator,
                                                                mm.MonteCarloBarostat]:
    """Add the compression barostat (the System's last force) and make a 1 fs Langevin context for it."""
    # Frequent volume moves during compression: the barostat's adaptive step then grows fast from a loose box.
    barostat = mm.MonteCarloBarostat(compression_pressure, kelvin * unit.kelvin, 5)
    barostat.setRandomNumberSeed(int(seed) + 1)
    system.addForce(barostat)
    integrator = mm.LangevinMiddleIntegrator(kelvin * unit.kelvin, 1.0 / unit.picosecond, 0.001 * unit.picosecond)
    integrator.setRandomNumberSeed(int(seed) + 2)
    context = mm.Context(system, integrator) if platform is None else mm.Context(system, integrator, platform)
    return context, integrator, barostat


def _minimise(context: mm.Context, xyz: np.ndarray, box: np.ndarray, kelvin: float, seed: int, report) -> None:
    """Set the packed positions and box, minimise (tolerance 10 kJ/mol/nm, 2000 iterations), draw velocities."""
    context.setPeriodicBoxVectors(*[mm.Vec3(*row) for row in box])
    context.setPositions(xyz * unit.nanometer)
    mm.LocalEnergyMinimizer.minimize(context, 10.0, 2000)
    report(f"minimised: {context.getState(getEnergy=True).getPotentialEnergy()}")
    context.setVelocitiesToTemperature(kelvin * unit.kelvin, int(seed) + 3)


def _equilibrate(context: mm.Context, integrator: mm.Integrator, barostat: mm.MonteCarloBarostat,
                 system: mm.System, total_ps: float, report) -> None:
    """Compression (50 %, the first <= 2 ps at 1 fs, then 2 fs), NPT at 1 bar (30 %), NVT (20 %), in place.

    The barostat, ``system``'s last force, is removed for the NVT stage (also when ``total_ps`` is 0), so
    ``system`` comes back without it.
    """
    def run(ps: float, label: str) -> None:
        dt = integrator.getStepSize().value_in_unit(unit.picosecond)
        integrator.step(int(round(ps / dt)))
        state = context.getState(getEnergy=True)
        box_now = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
        report(f"{label}: {ps:.1f} ps, density {_density(system, box_now):.3f} g/cm3, "
               f"E_pot {state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole):.0f} kJ/mol")

    if total_ps <= 0:
        system.removeForce(system.getNumForces() - 1)
        return
    warm = min(2.0, 0.5 * total_ps)
    run(warm, "warm-up 1 fs, compression")
    integrator.setStepSize(0.002 * unit.picosecond)
    run(max(0.5 * total_ps - warm, 0.0), "compression")
    context.setParameter(mm.MonteCarloBarostat.Pressure(), 1.0)
    barostat.setFrequency(25)
    context.reinitialize(preserveState=True)
    run(0.3 * total_ps, "NPT 1 bar")
    # NVT: drop the barostat (the last force) and keep positions, velocities and the current box.
    system.removeForce(system.getNumForces() - 1)
    context.reinitialize(preserveState=True)
    run(0.2 * total_ps, "NVT")


def _final_state(context: mm.Context) -> tuple[np.ndarray, np.ndarray]:
    """Unwrapped positions (nm) and box matrix (nm) of ``context``."""
    state = context.getState(getPositions=True, enforcePeriodicBox=False)
    box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
    return state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), box


def _build_metadata(n_chains, eo_per_chain, n_salt, kelvin: float, charge_scale, mixing: str, seed,
                    total_ps: float, compression_pressure: unit.Quantity, density: float, cutoff: float,
                    seconds: float) -> dict:
    """The JSON-serialisable ``BuiltSystem.metadata`` of a :func:`build_peo_litfsi` run."""
    return {
        "builder": "build_peo_litfsi",
        "args": {"n_chains": int(n_chains), "eo_per_chain": int(eo_per_chain), "n_salt": int(n_salt),
                 "temperature_K": kelvin, "charge_scale": float(charge_scale), "mixing": mixing, "seed": int(seed),
                 "equilibration_ps": total_ps,
                 "compression_pressure_bar": float(compression_pressure.value_in_unit(unit.bar))},
        "ff": "openmm_cgml/systems/data/peo_litfsi.xml (CL&P il.ff, OPLS-AA; MIT licence)",
        "mixing": mixing, "charge_scale": float(charge_scale), "density_g_cm3": density, "seed": int(seed),
        "cutoff_nm": cutoff, "timestep_ps": 0.002, "constraints": "HBonds", "build_seconds": seconds,
    }


def build_peo_litfsi(n_chains: int = 22, eo_per_chain: int = 8, n_salt: int = 11,
                     temperature: unit.Quantity = 400 * unit.kelvin, charge_scale: float = 0.8,
                     mixing: str = "lorentz-berthelot", seed: int = 0, equilibration_ps: float = 60.0,
                     platform: mm.Platform | str | None = None, progress: bool = True,
                     compression_pressure: unit.Quantity = 1000 * unit.bar) -> BuiltSystem:
    """Build and equilibrate a box of ``n_chains`` CH3O(CH2CH2O)nCH3 chains (n = ``eo_per_chain``) with
    ``n_salt`` LiTFSI ion pairs (CL&P/OPLS-AA, ion charges x ``charge_scale``).

    The defaults are the project's *default box*: 22 chains of 8 EO units + 11 LiTFSI (1606 atoms, EO:Li = 16:1).
    A copy built once with 100 ps of equilibration ships with the package (:func:`~openmm_cgml.systems.default_box`,
    used by ``cgml demo``): 2.61 nm wide at 400 K, every edge >= 2.5 nm, over three times the shipped model's
    0.8 nm cutoff. The shipped model was trained on the earlier, smaller default box, ``n_chains=6, n_salt=3``
    (438 atoms, 1.69 nm), which stays cheap enough for hours-long reference MD on two CPU cores.

    Steps: all-trans chains and z-matrix TFSI are packed at random (overlap rejection) into a loose cubic box
    (about 0.15 g/cm^3, at least one chain length wide); energy minimisation; NPT compression at
    ``compression_pressure`` (half of ``equilibration_ps``); NPT at 1 bar (30 %); NVT (20 %). Langevin middle
    integrator, 2 fs (1 fs for the first 2 ps), friction 1/ps, HBonds constraints, PME with
    cutoff = min(0.9 nm, 0.45 x the box edge at 1.25 g/cm^3), MonteCarloBarostat every 5 steps (compression) /
    25 steps (1 bar).
    The final box and positions come from the end of the NVT stage; ``metadata["density_g_cm3"]`` holds the
    density and ``metadata["build_seconds"]`` the wall time.
    """
    kelvin = _check_build_args(n_chains, eo_per_chain, n_salt, temperature, mixing, equilibration_ps,
                               compression_pressure)
    platform = _platform(platform)
    start = time.perf_counter()

    def report(message: str) -> None:
        if progress:
            print(f"[build_peo_litfsi {time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    topology, templates = _topology_and_templates(int(n_chains), int(eo_per_chain), int(n_salt))
    xyz, box, cutoff = _pack_loose_box(topology, templates, np.random.default_rng(seed))
    report(f"packed {topology.getNumAtoms()} atoms in a {box[0, 0]:.2f} nm box; cutoff {cutoff:.3f} nm")

    system = peo_litfsi_system(topology, charge_scale=charge_scale, mixing=mixing, cutoff=cutoff * unit.nanometer)
    context, integrator, barostat = _compression_context(system, kelvin, compression_pressure, seed, platform)
    _minimise(context, xyz, box, kelvin, seed, report)
    total = float(equilibration_ps)
    _equilibrate(context, integrator, barostat, system, total, report)
    positions, box_final = _final_state(context)
    del context, integrator

    # The returned System has no barostat: NVT at the equilibrated box; the user adds one for NPT.
    system.setDefaultPeriodicBoxVectors(*[mm.Vec3(*row) for row in box_final])
    density = _density(system, box_final)
    seconds = time.perf_counter() - start
    report(f"done: {topology.getNumAtoms()} atoms, density {density:.3f} g/cm3, {seconds:.0f} s")
    metadata = _build_metadata(n_chains, eo_per_chain, n_salt, kelvin, charge_scale, mixing, seed, total,
                               compression_pressure, density, cutoff, seconds)
    return BuiltSystem(topology, system, positions * unit.nanometer, box_final * unit.nanometer,
                       kelvin * unit.kelvin, metadata)
