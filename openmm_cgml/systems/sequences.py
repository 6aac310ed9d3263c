"""Sequence-defined two-type copolymer chains in implicit solvent (the ground truth of the polymer benchmark).

Each chain is a linear bead-spring copolymer of solvophobic beads ("A", LJ well ``solvophobic_epsilon``) and
solvophilic beads ("B", well ``solvophilic_epsilon``), both in units of epsilon = k_B T; pairs mix by the
geometric mean of the wells, share sigma, and are cut and shifted at 2.5 sigma. Bonds are harmonic (r0 = sigma,
k = 100 epsilon/sigma^2) and bonded pairs are excluded from LJ, as for ``build_bead_spring("chain")``.

Sequences come from a two-state Markov chain along the backbone, started from its stationary distribution, so a
:class:`SequenceClass` fixes two statistics that every generated chain scatters around:

* ``solvophobic_fraction`` f: the expected fraction of A beads;
* ``mean_block_length`` L: the expected length of a run of like beads, L = 1 / u with u the probability that
  two neighbours differ; the fraction of like neighbours is 1 - 1/L. A Bernoulli (random) sequence has
  L = 1 / (2 f (1 - f)), i.e. 2 at f = 0.5; larger L is blockier. The Markov chain switches A -> B with
  probability u / (2 f) and B -> A with u / (2 (1 - f)), which needs L >= 1 / (2 min(f, 1 - f)).

Class I (training) and class II (held out) differ in both: :data:`SEQUENCE_CLASSES`.

Many chains share one OpenMM System to amortise the per-step overhead, without interacting: each particle
carries its chain index and the pair energy is ``select(chain1 - chain2, 0, LJ)``. Chains start on a cubic grid
(``spacing``) so that the cutoff neighbour list holds (almost) only intra-chain pairs; chains that later drift
into each other still do not interact, they only cost a few more pair checks. (Measured on one loaded core,
20 x 100 beads, with the equivalent delta() factor: 7.9k chain-steps/s, against 6.2k with one
CustomNonbondedForce interaction group per chain, and 6.2k for a lone chain in its own System.)

Fine bead types carry elements (A: carbon, B: oxygen) so that :meth:`BeadMap.from_openmm` tells them apart
(its bead types hash element and bond count); masses stay those of the model (``mass``, default 100 amu).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import openmm as mm
from openmm import app, unit

from .bead_spring import _KB, _positive, backbone_force, chain_topology, minimized_positions, random_walk_chains
from .built import BuiltSystem

SOLVOPHOBIC, SOLVOPHILIC = "A", "B"
#: Elements only label the fine bead types for the mapper; masses come from the model.
BEAD_ELEMENTS = {SOLVOPHOBIC: app.element.carbon, SOLVOPHILIC: app.element.oxygen}


@dataclass(frozen=True)
class SequenceClass:
    """Statistics of a family of sequences: expected A fraction and expected block length (see the module)."""

    name: str
    solvophobic_fraction: float
    mean_block_length: float

    def __post_init__(self):
        f, length = self.solvophobic_fraction, self.mean_block_length
        if not (0.0 < f < 1.0):
            raise ValueError(f"solvophobic_fraction must be in (0, 1), got {f!r}")
        if not (math.isfinite(length) and length >= 1.0 / (2.0 * min(f, 1.0 - f)) - 1e-12):
            raise ValueError(f"mean_block_length must be >= 1 / (2 min(f, 1-f)) = {1 / (2 * min(f, 1 - f)):.3g} "
                             f"for solvophobic_fraction {f}, got {length!r}")

    def switch_probabilities(self) -> tuple[float, float]:
        """Markov switching probabilities (A -> B, B -> A) per backbone step."""
        u = 1.0 / self.mean_block_length
        return u / (2.0 * self.solvophobic_fraction), u / (2.0 * (1.0 - self.solvophobic_fraction))

    def to_dict(self) -> dict:
        return asdict(self)


#: Class I (training): half solvophobic, a little blockier than random. Class II (held out): fewer solvophobic
#: beads in longer blocks (A runs of ~3.5, B runs of ~6.5 beads).
SEQUENCE_CLASSES = {
    "I": SequenceClass("I", solvophobic_fraction=0.5, mean_block_length=2.5),
    "II": SequenceClass("II", solvophobic_fraction=0.35, mean_block_length=5.0),
}


def _sequence_class(sequence_class) -> SequenceClass:
    if isinstance(sequence_class, SequenceClass):
        return sequence_class
    try:
        return SEQUENCE_CLASSES[sequence_class]
    except (KeyError, TypeError):
        raise ValueError(f"sequence_class must be a SequenceClass or one of {sorted(SEQUENCE_CLASSES)}, "
                         f"got {sequence_class!r}") from None


def generate_sequences(sequence_class, n_chains: int, chain_length: int = 100, seed: int = 0) -> list[str]:
    """``n_chains`` sequences of ``chain_length`` beads ("A"/"B" strings) of a class, reproducible from ``seed``.

    ``sequence_class`` is a :class:`SequenceClass` or a key of :data:`SEQUENCE_CLASSES` ("I", "II")."""
    cls = _sequence_class(sequence_class)
    for name, value in (("n_chains", n_chains), ("chain_length", chain_length)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    a_to_b, b_to_a = cls.switch_probabilities()
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(n_chains):
        draws = rng.random(chain_length)
        solvophobic = [bool(draws[0] < cls.solvophobic_fraction)]
        for x in draws[1:]:
            solvophobic.append(bool(x >= a_to_b) if solvophobic[-1] else bool(x < b_to_a))
        sequences.append("".join(SOLVOPHOBIC if s else SOLVOPHILIC for s in solvophobic))
    return sequences


def sequence_statistics(sequence: str) -> dict:
    """Realised statistics of one sequence: ``solvophobic_fraction``, ``like_neighbour_fraction`` and
    ``mean_block_length`` (beads per run of like beads, chain length / number of runs)."""
    if not sequence or set(sequence) - {SOLVOPHOBIC, SOLVOPHILIC}:
        raise ValueError(f"a sequence is a non-empty string of {SOLVOPHOBIC!r}/{SOLVOPHILIC!r}, got {sequence!r}")
    changes = sum(a != b for a, b in zip(sequence[:-1], sequence[1:]))
    return {"solvophobic_fraction": sequence.count(SOLVOPHOBIC) / len(sequence),
            "like_neighbour_fraction": 1.0 - changes / (len(sequence) - 1) if len(sequence) > 1 else 1.0,
            "mean_block_length": len(sequence) / (changes + 1)}


def _sequence_pair(sequences: list, well: dict, eps: float, sig: float, bonds: list) -> mm.CustomNonbondedForce:
    """Per-type LJ cut and shifted at 2.5 sigma, only between beads of the same chain (chain index parameter)."""
    shift = 4.0 * ((1 / 2.5) ** 12 - (1 / 2.5) ** 6)
    # select(), not a delta() factor: overlapping beads of two chains would give 0 * inf = NaN.
    pair = mm.CustomNonbondedForce(f"select(chain1-chain2, 0, 4*eps*((sig_lj/r)^12-(sig_lj/r)^6)-eps*({shift!r})); "
                                   f"eps=sqrt(epsilon1*epsilon2)")
    pair.addGlobalParameter("sig_lj", sig)
    pair.addPerParticleParameter("epsilon")
    pair.addPerParticleParameter("chain")
    pair.setNonbondedMethod(mm.CustomNonbondedForce.CutoffNonPeriodic)
    pair.setCutoffDistance(2.5 * sig)
    for c, sequence in enumerate(sequences):
        for name in sequence:
            pair.addParticle([well[name] * eps, float(c)])
    for i, j in bonds:
        pair.addExclusion(i, j)
    return pair


def _grid_offsets(n_chains: int, spacing: float) -> np.ndarray:
    """Cubic-grid corners (nm) for chain starts, ``spacing`` apart."""
    side = max(1, math.ceil(n_chains ** (1 / 3) - 1e-9))
    return np.array([(i % side, (i // side) % side, i // side**2) for i in range(n_chains)], float) * spacing


def build_sequence_chains(sequences, temperature: unit.Quantity = 300 * unit.kelvin,
                          sigma: unit.Quantity = 0.5 * unit.nanometer, mass: unit.Quantity = 100 * unit.dalton,
                          epsilon: unit.Quantity | None = None, solvophobic_epsilon: float = 1.0,
                          solvophilic_epsilon: float = 0.1, spacing: unit.Quantity | None = None, seed: int = 0,
                          minimize: bool = True, metadata: dict | None = None) -> BuiltSystem:
    """Non-interacting sequence-defined chains in one non-periodic System (see the module docstring).

    Parameters
    ----------
    sequences : list of "A"/"B" strings, one per chain (e.g. from :func:`generate_sequences`).
    temperature : K; sets the default ``epsilon`` = k_B T.
    sigma : bead diameter (nm). mass : bead mass (amu). epsilon : LJ energy unit (kJ/mol).
    solvophobic_epsilon, solvophilic_epsilon : LJ wells of A and B beads in units of ``epsilon``.
    spacing : distance between chain starts on a cubic grid (nm); default 4 sigma sqrt(chain length).
    seed : seed of the random-walk starts.
    minimize : relax the start with OpenMM's minimiser (Reference platform).
    metadata : extra JSON-serialisable entries (e.g. the sequence class and the sequence seed).

    ``metadata["sequences"]`` records the sequences, ``metadata["chain_parameter"]`` the chain-index parameter.
    """
    sequences = [str(s) for s in ([sequences] if isinstance(sequences, str) else sequences)]
    if not sequences:
        raise ValueError("pass at least one sequence")
    for s in sequences:
        sequence_statistics(s)  # validates the alphabet
    kelvin = _positive(temperature, "temperature", unit.kelvin)
    sig = _positive(sigma, "sigma", unit.nanometer)
    bead_mass = _positive(mass, "mass", unit.dalton)
    eps = _KB * kelvin if epsilon is None else _positive(epsilon, "epsilon", unit.kilojoule_per_mole)
    wells = {SOLVOPHOBIC: float(solvophobic_epsilon), SOLVOPHILIC: float(solvophilic_epsilon)}
    if min(wells.values()) <= 0 or not all(map(math.isfinite, wells.values())):
        raise ValueError(f"solvophobic_epsilon and solvophilic_epsilon must be positive, got {wells}")
    longest = max(map(len, sequences))
    grid = 4.0 * sig * math.sqrt(longest) if spacing is None else _positive(spacing, "spacing", unit.nanometer)

    topology, bonds = chain_topology([list(s) for s in sequences], BEAD_ELEMENTS)
    system = mm.System()
    for _ in range(topology.getNumAtoms()):
        system.addParticle(bead_mass)
    bonded, bond_length = backbone_force(bonds, "harmonic", eps, sig)
    system.addForce(bonded)
    system.addForce(_sequence_pair(sequences, wells, eps, sig, bonds))

    rng = np.random.default_rng(seed)
    offsets = _grid_offsets(len(sequences), grid)
    xyz = np.concatenate([random_walk_chains(1, len(s), bond_length, 0.8 * sig, rng) + offsets[c]
                          for c, s in enumerate(sequences)])
    if minimize:
        xyz = minimized_positions(system, xyz, eps, sig)
    info = {
        "builder": "build_sequence_chains",
        "args": {"n_chains": len(sequences), "temperature_K": kelvin, "sigma_nm": sig, "mass_amu": bead_mass,
                 "epsilon_kj_mol": eps, "solvophobic_epsilon": wells[SOLVOPHOBIC],
                 "solvophilic_epsilon": wells[SOLVOPHILIC], "spacing_nm": grid, "seed": int(seed)},
        "ff": "two-type LJ copolymer chains (harmonic bonds), chains do not interact",
        "mixing": "geometric epsilon, common sigma", "charge_scale": None, "density_g_cm3": None,
        "seed": int(seed), "tau_ps": sig * math.sqrt(bead_mass / eps), "cutoff_nm": 2.5 * sig,
        "bead_elements": {k: v.symbol for k, v in BEAD_ELEMENTS.items()}, "chain_parameter": "chain",
        "sequences": sequences,
    }
    info.update(metadata or {})
    return BuiltSystem(topology, system, xyz * unit.nanometer, None, kelvin * unit.kelvin, info)

