"""Bead-spring polymer models in real units: multi-type chains in implicit solvent and Kremer-Grest melts.

Units: length sigma (default 0.5 nm), energy epsilon (default k_B T at ``temperature``, kJ/mol), bead mass
(default 100 amu); the LJ time unit is tau = sigma * sqrt(mass / epsilon) (about 3.2 ps for the defaults at
300 K), and ``metadata["tau_ps"]`` records it. A time step of 0.005-0.01 tau suits LangevinMiddleIntegrator with
friction ~1/tau.

* ``kind="chain"``: free (non-periodic) chains whose beads have types (default A, B, C) with per-type LJ
  well depths (epsilon_ij = sqrt(eps_i eps_j), common sigma), LJ cut and shifted at 2.5 sigma. Bonds are
  harmonic (r0 = sigma, k = 100 epsilon/sigma^2; bonded pairs excluded from LJ) or FENE (as Kremer-Grest;
  bonded pairs keep LJ, which supplies the repulsion).
* ``kind="kremer-grest"``: periodic melt at bead density 0.85 sigma^-3, WCA (LJ cut at 2^(1/6) sigma and shifted
  up by epsilon) between all pairs, FENE bonds k = 30 epsilon/sigma^2, R0 = 1.5 sigma.

Beads have no element (``None``); each chain is one residue ("POL") in its own topology chain. Atom names are
the one-character bead type followed by the bead's index in the chain in base 36 ("A0", "A1", ..., "BZ", "C10"),
unique within a residue so that PDB files keep every bead (Kremer-Grest beads have type "K"); the per-chain type
strings are in ``metadata["sequences"]``.
"""
from __future__ import annotations

import math

import numpy as np
import openmm as mm
from openmm import app, unit

from .built import BuiltSystem
from .geometry import minimum_image_distances

BEAD_SPRING_KINDS = ("chain", "kremer-grest")
_KB = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)


def _positive(value, name: str, unit_: unit.Unit) -> float:
    if not unit.is_quantity(value) or not value.unit.is_compatible(unit_):
        raise TypeError(f"{name} must be an openmm.unit Quantity compatible with {unit_}")
    number = float(value.value_in_unit(unit_))
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return number


def _base36(number: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if number == 0:
            return text


def _bead_sequence(sequence, bead_types: tuple, chain_length: int, n_chains: int,
                   rng: np.random.Generator) -> list[list[str]]:
    """Per-chain lists of bead type names: "random", "block" (equal contiguous blocks) or an explicit list."""
    if isinstance(sequence, str) and sequence == "random":
        return [[bead_types[k] for k in rng.integers(len(bead_types), size=chain_length)] for _ in range(n_chains)]
    if isinstance(sequence, str) and sequence == "block":
        block = [bead_types[min(i * len(bead_types) // chain_length, len(bead_types) - 1)]
                 for i in range(chain_length)]
        return [list(block) for _ in range(n_chains)]
    explicit = list(sequence)
    if len(explicit) != chain_length or any(t not in bead_types for t in explicit):
        raise ValueError(f"sequence must be 'random', 'block' or {chain_length} names from {bead_types}")
    return [list(explicit) for _ in range(n_chains)]


def random_walk_chains(n_chains: int, chain_length: int, bond: float, min_distance: float,
                       rng: np.random.Generator, box_length: float | None = None, tries: int = 100) -> np.ndarray:
    """Self- and mutually-avoiding random walks (nm), shape (n_chains * chain_length, 3).

    Each bead is a step of ``bond`` nm in a random direction, accepted when it is at least ``min_distance`` nm
    (minimum image if ``box_length`` is given) from every bead already placed. If ``tries`` directions fail, the
    distance is relaxed by 5 % for that bead (down to half of ``min_distance``); a later minimisation removes the
    remaining close contacts.
    """
    start_span = box_length if box_length is not None else 1.5 * bond * (n_chains * chain_length) ** (1 / 3)
    xyz = np.zeros((n_chains * chain_length, 3))
    count = 0
    for _ in range(n_chains):
        for position in range(chain_length):
            limit = min_distance
            while True:
                for _ in range(tries):
                    if position == 0:
                        trial = rng.uniform(0.0, start_span, size=3)
                    else:
                        step = rng.normal(size=3)
                        trial = xyz[count - 1] + bond * step / np.linalg.norm(step)
                    if count == 0 or minimum_image_distances(trial[None], xyz[:count], box_length).min() >= limit:
                        break
                else:
                    if limit <= 0.5 * min_distance:
                        raise ValueError("random walk got stuck: lower the density or the chain length")
                    limit *= 0.95
                    continue
                break
            xyz[count] = trial
            count += 1
    return xyz


def _check_counts(n_chains, chain_length):
    for name, value in (("n_chains", n_chains), ("chain_length", chain_length)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if chain_length > 36**3:
        raise ValueError(f"chain_length must be at most {36**3} beads (unique 4-character PDB atom names)")


def chain_topology(types: list, elements: dict | None = None) -> tuple[app.Topology, list[tuple[int, int]]]:
    """One topology chain + one residue ("POL") per polymer, bonds along the backbone.

    ``types`` holds one list of one-letter bead type names per chain; atom names are the type followed by the
    bead's index in base 36. ``elements`` maps a type name to an ``openmm.app.Element`` (default: no element).
    Returns the topology and the (i, j) particle pairs of every backbone bond.
    """
    topology = app.Topology()
    bonds = []
    for chain_types in types:
        residue = topology.addResidue("POL", topology.addChain())
        atoms = [topology.addAtom(name + _base36(i), (elements or {}).get(name), residue)
                 for i, name in enumerate(chain_types)]
        for a, b in zip(atoms[:-1], atoms[1:]):
            topology.addBond(a, b)
            bonds.append((a.index, b.index))
    return topology, bonds


def backbone_force(bonds: list, bond: str, eps: float, sig: float) -> tuple[mm.Force, float]:
    """Harmonic (r0 = sigma, k = 100 eps/sigma^2) or FENE (k = 30 eps/sigma^2, R0 = 1.5 sigma) bonds.

    ``eps`` kJ/mol and ``sig`` nm. Returns the force and the bond length (nm) to start random walks with."""
    if bond == "fene":
        bonded = mm.CustomBondForce("-0.5*k_fene*r0_fene^2*log(1-(r/r0_fene)^2)")
        bonded.addGlobalParameter("k_fene", 30.0 * eps / sig**2)
        bonded.addGlobalParameter("r0_fene", 1.5 * sig)
        for i, j in bonds:
            bonded.addBond(i, j, [])
        return bonded, 0.97 * sig
    bonded = mm.HarmonicBondForce()
    for i, j in bonds:
        bonded.addBond(i, j, sig, 100.0 * eps / sig**2)
    return bonded, sig


def _kremer_grest_pair(n_beads: int, eps: float, sig: float, density: float) -> tuple[mm.Force, float]:
    """WCA between all pairs of a periodic melt; returns the force and the cubic box edge (nm)."""
    box_length = (n_beads / density) ** (1 / 3) * sig
    pair = mm.CustomNonbondedForce("4*eps_kg*((sig_kg/r)^12-(sig_kg/r)^6)+eps_kg")
    pair.addGlobalParameter("eps_kg", eps)
    pair.addGlobalParameter("sig_kg", sig)
    pair.setNonbondedMethod(mm.CustomNonbondedForce.CutoffPeriodic)
    for _ in range(n_beads):
        pair.addParticle([])
    pair.setCutoffDistance(2 ** (1 / 6) * sig)
    return pair, box_length


def _typed_lj_pair(types: list, well: dict, eps: float, sig: float, bonds: list, exclude_bonded: bool) -> mm.Force:
    """Per-type LJ (geometric epsilon, common sigma) cut and shifted at 2.5 sigma, non-periodic."""
    shift = 4.0 * ((1 / 2.5) ** 12 - (1 / 2.5) ** 6)
    pair = mm.CustomNonbondedForce(f"4*eps*((sig_lj/r)^12-(sig_lj/r)^6)-eps*({shift!r}); "
                                   f"eps=sqrt(epsilon1*epsilon2)")
    pair.addGlobalParameter("sig_lj", sig)
    pair.addPerParticleParameter("epsilon")
    pair.setNonbondedMethod(mm.CustomNonbondedForce.CutoffNonPeriodic)
    for chain_types in types:
        for name in chain_types:
            pair.addParticle([well[name] * eps])
    if exclude_bonded:
        for i, j in bonds:
            pair.addExclusion(i, j)
    pair.setCutoffDistance(2.5 * sig)
    return pair


def minimized_positions(system: mm.System, xyz: np.ndarray, eps: float, sig: float) -> np.ndarray:
    """Relax positions (nm) with OpenMM's minimiser on the Reference platform (tolerance eps/sigma, 500 steps)."""
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(xyz * unit.nanometer)
    mm.LocalEnergyMinimizer.minimize(context, 1.0 * eps / sig, 500)
    xyz = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    del context
    return xyz


def build_bead_spring(kind: str = "chain", n_chains: int | None = None, chain_length: int | None = None,
                      temperature: unit.Quantity = 300 * unit.kelvin, sigma: unit.Quantity = 0.5 * unit.nanometer,
                      mass: unit.Quantity = 100 * unit.dalton, epsilon: unit.Quantity | None = None,
                      bead_types: tuple = ("A", "B", "C"), type_epsilons: tuple = (1.0, 0.5, 0.25),
                      sequence="random", bond: str = "harmonic", density: float = 0.85, seed: int = 0,
                      minimize: bool = True) -> BuiltSystem:
    """Build a bead-spring polymer model (see the module docstring for the physics and units).

    Parameters
    ----------
    kind : "chain" (implicit solvent, no box) or "kremer-grest" (periodic WCA + FENE melt).
    n_chains, chain_length : defaults 1 x 30 ("chain") and 20 x 50 ("kremer-grest").
    temperature : K; sets the default ``epsilon`` = k_B T.
    sigma : bead diameter (nm). mass : bead mass (amu). epsilon : LJ energy unit (kJ/mol).
    bead_types, type_epsilons, sequence : "chain" only; per-type well depth in units of ``epsilon``;
        sequence "random", "block" or an explicit list of type names.
    bond : "harmonic" or "fene" ("chain" only; Kremer-Grest is always FENE).
    density : beads per sigma^3 ("kremer-grest" only).
    minimize : relax the random-walk start with OpenMM's minimiser (Reference platform).
    """
    if kind not in BEAD_SPRING_KINDS:
        raise ValueError(f"kind must be one of {BEAD_SPRING_KINDS}, got {kind!r}")
    kremer_grest = kind == "kremer-grest"
    n_chains = (20 if kremer_grest else 1) if n_chains is None else n_chains
    chain_length = (50 if kremer_grest else 30) if chain_length is None else chain_length
    _check_counts(n_chains, chain_length)
    kelvin = _positive(temperature, "temperature", unit.kelvin)
    sig = _positive(sigma, "sigma", unit.nanometer)
    bead_mass = _positive(mass, "mass", unit.dalton)
    eps = _KB * kelvin if epsilon is None else _positive(epsilon, "epsilon", unit.kilojoule_per_mole)
    if bond not in ("harmonic", "fene"):
        raise ValueError(f"bond must be 'harmonic' or 'fene', got {bond!r}")
    if kremer_grest:
        bond = "fene"
        if not (isinstance(density, (int, float)) and 0 < density < 1.2):
            raise ValueError(f"density must be in (0, 1.2) beads/sigma^3, got {density!r}")
    else:
        bead_types = tuple(bead_types)
        if len(bead_types) == 0 or len(type_epsilons) != len(bead_types) or min(type_epsilons) <= 0:
            raise ValueError("type_epsilons must give one positive value per bead type")
        if any(not isinstance(t, str) or len(t) != 1 or not t.isalpha() for t in bead_types):
            raise ValueError(f"bead_types must be single letters (e.g. ('A', 'B', 'C')), got {bead_types!r}")
    rng = np.random.default_rng(seed)
    n_beads = n_chains * chain_length
    types = ([["K"] * chain_length for _ in range(n_chains)] if kremer_grest
             else _bead_sequence(sequence, bead_types, chain_length, n_chains, rng))

    topology, bonds = chain_topology(types)
    system = mm.System()
    for _ in range(n_beads):
        system.addParticle(bead_mass)
    bonded, bond_length = backbone_force(bonds, bond, eps, sig)
    system.addForce(bonded)
    if kremer_grest:
        pair, box_length = _kremer_grest_pair(n_beads, eps, sig, density)
        system.setDefaultPeriodicBoxVectors(mm.Vec3(box_length, 0, 0), mm.Vec3(0, box_length, 0),
                                            mm.Vec3(0, 0, box_length))
    else:
        box_length = None
        pair = _typed_lj_pair(types, dict(zip(bead_types, type_epsilons)), eps, sig, bonds, bond == "harmonic")
    system.addForce(pair)
    cutoff = pair.getCutoffDistance().value_in_unit(unit.nanometer)

    xyz = random_walk_chains(n_chains, chain_length, bond_length, 0.8 * sig, rng, box_length)
    box = None if box_length is None else np.eye(3) * box_length
    if minimize:
        xyz = minimized_positions(system, xyz, eps, sig)
    tau = sig * math.sqrt(bead_mass / eps)
    metadata = {
        "builder": "build_bead_spring",
        "args": {"kind": kind, "n_chains": int(n_chains), "chain_length": int(chain_length), "temperature_K": kelvin,
                 "sigma_nm": sig, "mass_amu": bead_mass, "epsilon_kj_mol": eps, "bond": bond, "seed": int(seed),
                 "density_per_sigma3": float(density) if kremer_grest else None,
                 "bead_types": list(bead_types) if not kremer_grest else ["K"],
                 "type_epsilons": list(map(float, type_epsilons)) if not kremer_grest else [1.0]},
        "ff": "kremer-grest (WCA + FENE)" if kremer_grest else f"multi-type LJ chain ({bond} bonds)",
        "mixing": None if kremer_grest else "geometric epsilon, common sigma", "charge_scale": None,
        "density_g_cm3": None, "seed": int(seed), "tau_ps": tau, "cutoff_nm": cutoff,
        "sequences": ["".join(t) for t in types],
    }
    built = BuiltSystem(topology, system, xyz * unit.nanometer, None if box is None else box * unit.nanometer,
                        kelvin * unit.kelvin, metadata)
    if kremer_grest:
        built.metadata["density_g_cm3"] = built.density().value_in_unit(unit.gram / unit.centimeter**3)
    return built
