"""The learned CG step as a pure function of explicit state (TorchScript-compatible).

``LearnedStep.forward(x, h, box, dyn_noise, refine_noise) -> (x_new, h_new)``:

    a      = mu + sigma * dyn_noise        dynamics GNN: Gaussian over the acceleration, nm/step² (with molecule
                                           noise, a noise shared within each molecule: ``sample_acceleration``)
                                           shell motion (carried beads, e.g. Li+): their Gaussian is over the
                                           displacement relative to the mean one of the beads within
                                           shell_radius, so x_pred = x + shell_mean(h[-1] + a) + a for them
    x_pred = x + h[-1] + a                 semi-implicit Euler with dt = 1 model step (h[-1] + a capped at a
                                           multiple of the bead type's longest training step if the model sets
                                           step_cap)
    x_new  = refine(x_pred)                score GNN: annealed Langevin or predictor-corrector, consuming
                                           refine_noise in order
    x_new  = push_apart(x_new)             hard core and bond cap (if the model sets them): no non-bonded pair
                                           closer than a fraction of its closest approach in the training data,
                                           no bond longer than a multiple of the longest one there
    x_new  = whole(x_new)                  periodic: every molecule whole, at its predicted image
    h_new  = cat(h[1:], x_new - x)        (minimum image for a bead ``whole`` relabelled by box vectors)

Positions are unwrapped nm; ``h`` (H, N, 3) holds displacements per model step (``h[-1]`` most recent); ``box`` is
(3,) nm, (B, 3) nm for a batch of B replicas, or an empty tensor for a non-periodic system. All randomness comes in
as arguments; :func:`step_noise` derives it from (seed, step index), so every wrapper (OpenMM integrator, batched
engine, scripted module) produces the same trajectory for the same seed.
"""
import copy
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..data.contacts import contact_table, rdf_onset, rdf_wall, step_table
from ..nn.dynamics import (cluster_loadings, ion_partners, molecule_mean, sample_acceleration, shell_mean,
                           shell_pairs)
from ..nn.score import SCHEMES, refine_evaluations, wall_score
from ..pbc import bond_forest, make_whole_torch, minimum_image_torch
from .excluded_volume import bond_keys, push_apart

_MASK64 = (1 << 64) - 1
#: Verlet skin (nm) of the neighbour list the refinement's score evaluations share; it changes no result.
REFINE_SKIN_NM = 0.2


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def noise_seed(seed: int, step: int) -> int:
    """Stable 63-bit seed of step ``step`` of stream ``seed`` (independent of Python's hash randomisation)."""
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ (int(step) & _MASK64)) & ((1 << 63) - 1)


def step_noise(seed: int, step: int, n_beads: int, n_refine: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Standard normals for one learned step: ``dyn_noise`` (n_beads, 3) and ``refine_noise`` (n_refine, n_beads, 3).

    Drawn on the CPU from a ``torch.Generator`` seeded by :func:`noise_seed`, float32; move them to the model's
    device if it is not the CPU.
    """
    gen = torch.Generator().manual_seed(noise_seed(seed, step))
    dyn = torch.randn((int(n_beads), 3), generator=gen, dtype=torch.float32)
    refine = torch.randn((int(n_refine), int(n_beads), 3), generator=gen, dtype=torch.float32)
    return dyn, refine


def _ladder_levels(ladder: list, scheme: str, k: int, span: int) -> list:
    """``k`` of the model's noise levels (nm, decreasing): the last k for annealed Langevin; for ``pc``, k levels
    spread evenly over the last ``span`` (fewer, better-placed levels covering the same noise range; the score
    was trained on the ladder's levels only, so they stay on it)."""
    if k <= 0:
        return []
    if scheme != "pc" or span <= k or k == 1:
        return ladder[len(ladder) - k:]
    index = np.unique(np.round(np.linspace(len(ladder) - span, len(ladder) - 1, k)).astype(int))
    return [ladder[i] for i in index]


#: Keys of the ``refine`` dict of :meth:`LearnedStep.from_model`.
REFINE_KEYS = ("scheme", "levels", "n_levels", "steps_per_level", "step_size", "denoise", "temperature", "hard_core",
               "bond_cap", "core_rdf", "rdf_wall", "cluster_noise", "step_cap")


def _setting(config, refine, key: str, field: str = "") -> float:
    """Setting ``key`` of a ``refine`` dict, else the model config's ``field`` (default: the same name), else 0."""
    value = float(getattr(config, field or key, 0.0))
    return float(refine.get(key, value)) if isinstance(refine, dict) else value


def _repairs(config, refine) -> Tuple[float, float, float]:
    """The hard-core fraction, bond-cap multiple and RDF-onset core (``ModelConfig.hard_core``, ``.bond_cap``,
    ``.core_rdf``) of ``refine``: none without refinement (False)."""
    if refine is False or refine == 0:
        return 0.0, 0.0, 0.0
    core, cap, onset = (_setting(config, refine, key) for key in ("hard_core", "bond_cap", "core_rdf"))
    if not 0.0 <= core <= 1.0:
        raise ValueError(f"hard_core must be a fraction of the closest approach in [0, 1], got {core}")
    if cap != 0.0 and cap < 1.0:
        raise ValueError(f"bond_cap must be 0 (off) or a multiple >= 1 of the longest training bond, got {cap}")
    if not 0.0 <= onset < 1.0 or (onset > 0 and core <= 0):
        raise ValueError(f"core_rdf must be an RDF value in [0, 1) and needs hard_core > 0, got {onset}")
    return core, cap, onset


def _denoise(config, refine) -> float:
    """The noise level (nm) of the final denoising step (``ModelConfig.refine_denoise``) of ``refine``; none
    without refinement (False)."""
    if refine is False or refine == 0:
        return 0.0
    sigma = _setting(config, refine, "denoise", "refine_denoise")
    if sigma < 0:
        raise ValueError(f"denoise must be a noise level >= 0 nm (0: off), got {sigma}")
    return sigma


def _temperatures(config, refine) -> Tuple[float, Dict[str, float]]:
    """The temperature of the refinement's Langevin noise and its per-residue overrides
    (``ModelConfig.refine_temperature``, ``.refine_residue_temperature``) of ``refine``, whose ``temperature``, if
    it has one, is every bead's."""
    temperature = _setting(config, refine, "temperature", "refine_temperature")
    if temperature < 0:
        raise ValueError(f"the refinement temperature must be >= 0 (1: standard Langevin), got {temperature}")
    given = isinstance(refine, dict) and "temperature" in refine
    return temperature, {} if given else dict(config.refine_residue_temperature)


def _bead_temperatures(config, refine, beadmap) -> torch.Tensor:
    """(N,) refinement temperature of each bead of ``beadmap`` (:func:`_temperatures`)."""
    temperature, by_residue = _temperatures(config, refine)
    return torch.tensor([by_residue.get(s, temperature) for s in beadmap.bead_species()], dtype=torch.float32)


def _rdf_wall(config, refine) -> float:
    """The multiple of the training-RDF walls added to the score (``ModelConfig.rdf_wall``) of ``refine``; none
    without refinement (False)."""
    if refine is False or refine == 0:
        return 0.0
    weight = _setting(config, refine, "rdf_wall")
    if weight < 0:
        raise ValueError(f"rdf_wall must be a multiple >= 0 of the training-RDF wall (0: off), got {weight}")
    return weight


def _cluster_noise(config, refine) -> float:
    """The ion-cluster noise fraction (``ModelConfig.cluster_noise``) of ``refine``; it belongs to the dynamics'
    sampling, so ``refine=False`` keeps the model's."""
    fraction = _setting(config, refine, "cluster_noise")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"cluster_noise must be a fraction in [0, 1), got {fraction}")
    return fraction


def _step_cap(config, refine) -> float:
    """The step-cap multiple (``ModelConfig.step_cap``) of ``refine``; like the cluster noise it belongs to the
    dynamics, so ``refine=False`` keeps the model's."""
    multiple = _setting(config, refine, "step_cap")
    if multiple != 0.0 and multiple < 1.0:
        raise ValueError(f"step_cap must be 0 (off) or a multiple >= 1 of the longest training step, got {multiple}")
    return multiple


def _refine_settings(config, refine) -> Tuple[str, list, int, float]:
    """(scheme, levels nm, steps per level, step size nm²) from the model defaults overridden by ``refine``."""
    ladder = config.levels()
    scheme = str(getattr(config, "refine_scheme", "langevin"))
    n_levels, steps, size = int(config.refine_levels), int(config.refine_steps_per_level), float(config.refine_step_size)
    span = int(getattr(config, "refine_span", 0)) or n_levels
    levels = _ladder_levels(ladder, scheme, n_levels, span)
    if refine is False or refine == 0:
        return scheme, [], 0, size
    if refine is not None and refine is not True:
        if not isinstance(refine, dict):
            raise TypeError("refine must be None (model defaults), False (no refinement) or a dict of settings")
        unknown = sorted(set(refine) - set(REFINE_KEYS))
        if unknown:
            raise ValueError(f"unknown refinement settings {unknown}; use {', '.join(REFINE_KEYS)}")
        scheme = str(refine.get("scheme", scheme))
        if "levels" in refine:
            levels = [float(s) for s in refine["levels"]]
            if any(s <= 0 for s in levels):
                raise ValueError("refinement levels must be positive noise levels in nm")
        elif "n_levels" in refine:
            k = int(refine["n_levels"])
            if not 0 <= k <= len(ladder):
                raise ValueError(f"n_levels must be between 0 and the model's {len(ladder)} noise levels")
            levels = _ladder_levels(ladder, scheme, k, span)
        steps = int(refine.get("steps_per_level", steps))
        size = float(refine.get("step_size", size))
        if steps < 0 or size <= 0:
            raise ValueError("steps_per_level must be >= 0 and step_size > 0 nm²")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown refinement scheme {scheme!r}; use one of {list(SCHEMES)}")
    if refine_evaluations(scheme, len(levels), steps) == 0:
        return scheme, [], 0, size
    return scheme, levels, steps, size


def refine_settings(config, refine=None) -> dict:
    """The refinement ``LearnedStep.from_model(model, ..., refine)`` runs: scheme, levels (nm), steps per level,
    step size (nm²), score evaluations per step, hard-core fraction and bond cap (for run records)."""
    scheme, levels, steps, size = _refine_settings(config, refine)
    core, cap, onset = _repairs(config, refine)
    denoise = _denoise(config, refine)
    temperature, by_residue = _temperatures(config, refine)
    return {"scheme": scheme, "levels": [float(s) for s in levels], "steps_per_level": steps, "step_size": size,
            "denoise": denoise, "temperature": temperature, "residue_temperature": by_residue,
            "evaluations": refine_evaluations(scheme, len(levels), steps) + int(denoise > 0),
            "hard_core": core, "bond_cap": cap, "core_rdf": onset, "rdf_wall": _rdf_wall(config, refine),
            "cluster_noise": _cluster_noise(config, refine), "step_cap": _step_cap(config, refine)}


def parse_refine(spec: str):
    """The ``refine`` argument of :meth:`LearnedStep.from_model` from a command-line spec.

    ``"model"``: the model's default; ``"none"``: dynamics only; ``"SCHEME:LxK"`` (e.g. ``"pc:4x0"``,
    ``"langevin:8x5"``): L noise levels with K steps per level: for ``langevin`` the model's last L levels and K
    Langevin steps each; for ``pc`` L levels spread over the noise range of the model's default refinement
    (``refine_span`` levels, else ``refine_levels``) and K corrector steps each. Suffixes ``,core=F`` and
    ``,cap=G`` set the hard-core fraction and the bond cap (``ModelConfig.hard_core``, ``.bond_cap``; e.g.
    ``"model,core=0.9,cap=1.2"``, ``"none,core=0.9"``); ``,step=S`` the Langevin step size at the lowest level, nm²
    (``ModelConfig.refine_step_size``; e.g. ``"pc:8x4,step=2e-6"``); ``,rdf=G`` raises each type pair's hard core to
    where its training RDF first reaches G (``ModelConfig.core_rdf``; e.g. ``"model,rdf=0.1"``); ``,cluster=F`` the
    ion-cluster noise fraction (``ModelConfig.cluster_noise``; e.g. ``"model,cluster=0.95"``); ``,wall=W`` W times
    the training-RDF walls of ``ModelConfig.rdf_wall_pairs`` in the score (``ModelConfig.rdf_wall``; e.g.
    ``"model,wall=0"``); ``,denoise=S`` a
    final noise-free denoising step at noise level S nm (``ModelConfig.refine_denoise``; e.g.
    ``"model,denoise=0.003"``); ``,temp=T`` the temperature of every bead's refinement noise
    (``ModelConfig.refine_temperature``, over any ``.refine_residue_temperature``; e.g. ``"model,temp=1"``);
    ``,stepcap=F`` the step cap, F times each bead type's longest training step, 0 off (``ModelConfig.step_cap``;
    e.g. ``"model,stepcap=0"``).
    """
    text, *suffixes = [part.strip() for part in str(spec).strip().lower().split(",")]
    settings = _parse_refinement(text, spec)
    if not suffixes:
        return settings
    repairs = {}
    for suffix in suffixes:
        key, _, value = suffix.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if key == "core" and 0.0 <= number <= 1.0:
            repairs["hard_core"] = number
        elif key == "cap" and (number == 0.0 or number >= 1.0):
            repairs["bond_cap"] = number
        elif key == "step" and number > 0 and settings is not False:
            repairs["step_size"] = number
        elif key == "rdf" and 0.0 <= number < 1.0:
            repairs["core_rdf"] = number
        elif key == "denoise" and number >= 0.0 and settings is not False:
            repairs["denoise"] = number
        elif key == "cluster" and 0.0 <= number < 1.0:
            repairs["cluster_noise"] = number
        elif key == "wall" and number >= 0.0 and settings is not False:
            repairs["rdf_wall"] = number
        elif key == "temp" and number >= 0.0 and settings is not False:
            repairs["temperature"] = number
        elif key == "stepcap" and (number == 0.0 or number >= 1.0):
            repairs["step_cap"] = number
        else:
            raise ValueError(f"refinement {spec!r}: suffixes must be ,core=F with F a fraction in [0, 1], ,cap=G "
                             "with G 0 or >= 1, ,step=S with S > 0 nm², ,denoise=S with S >= 0 nm, ,rdf=G with G in "
                             "[0, 1), ,wall=W with W >= 0, ,temp=T with T >= 0, ,cluster=F with F in [0, 1) or ,stepcap=F with F 0 "
                             "or >= 1 "
                             "(e.g. ,core=0.9,cap=1.2,step=2e-6,rdf=0.1)")
    base = {"n_levels": 0} if settings is False else dict(settings or {})
    return {**base, **repairs}


def _parse_refinement(text: str, spec: str):
    if text == "model":
        return None
    if text == "none":
        return False
    scheme, _, shape = text.partition(":")
    levels, _, steps = shape.partition("x")
    if scheme not in SCHEMES or not levels.isdigit() or not steps.isdigit():
        raise ValueError(f"refinement {spec!r} is not model, none or SCHEME:LxK with SCHEME one of {list(SCHEMES)} "
                         "(e.g. pc:4x0, langevin:8x5), optionally with ,core=F and ,cap=G")
    return {"scheme": scheme, "n_levels": int(levels), "steps_per_level": int(steps)}


def _training_table(model, beadmap, key: str, unseen, setting: str) -> torch.Tensor:
    """(K, K) ``contacts.json`` table ``key`` of ``model``'s training data for ``beadmap``'s types, nm."""
    table = None if model.contacts is None else contact_table(model.contacts, beadmap.type_names, key, unseen)
    if table is None:
        raise ValueError(f"{setting} needs the model's contacts.json with {key} (the statistics of its training "
                         f"data, written by training); set {setting} to 0")
    return torch.as_tensor(table, dtype=torch.float32)


def _wall_tables(model, beadmap) -> Tuple[torch.Tensor, torch.Tensor]:
    """(K, K) slope (nm^-1) and reach (nm) of the training-RDF walls (``data.contacts.rdf_wall``) of the model's
    ``rdf_wall_pairs`` for ``beadmap``'s types; 0 for every other pair."""
    walls = None if model.contacts is None else rdf_wall(model.contacts, model.config.rdf_wall_pairs)
    tables = None if walls is None else [contact_table(walls, beadmap.type_names, key, 0.0)
                                          for key in ("slope_per_nm", "reach_nm")]
    if tables is None or tables[0] is None:
        raise ValueError(f"rdf_wall needs the model's contacts.json with rdf_g and a rising RDF edge for "
                         f"{model.config.rdf_wall_pairs}; set rdf_wall to 0")
    return tuple(torch.as_tensor(t, dtype=torch.float32) for t in tables)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class LearnedStep(nn.Module):
    """One learned step of a fixed bead system (or of B replicas of it, see :meth:`batched`).

    Build it with :meth:`from_model`; ``torch.jit.script(step)`` gives an identical TorchScript module.
    Plain attributes read by wrappers: ``timestep_ps`` (ps per step), ``history_length`` (H), ``n_refine``
    (annealed-Langevin evaluations per step = rows of ``refine_noise``), ``periodic``, ``n_beads`` (all replicas),
    ``n_replicas``.
    """

    timestep_ps: float
    history_length: int
    n_refine: int
    periodic: bool
    scheme: str
    skin: float
    steps_per_level: int
    step_size: float
    denoise: float
    n_beads: int
    n_replicas: int
    tree_sizes: List[int]
    n_molecules: int
    molecule_noise: bool
    hard_core: float
    bond_cap: float
    shell_radius: float
    cluster_noise: float
    rdf_wall: float
    step_cap: float

    def __init__(self, dynamics: nn.Module, score: nn.Module, embed: torch.Tensor, masses: torch.Tensor,
                 bonds: torch.Tensor, timestep_ps: float, periodic: bool, levels=(), steps_per_level: int = 0,
                 step_size: float = 1e-6, batch: Optional[torch.Tensor] = None, n_replicas: int = 1,
                 scheme: str = "langevin", hard_core: float = 0.0, core: Optional[torch.Tensor] = None,
                 bead_types: Optional[torch.Tensor] = None, bond_cap: float = 0.0,
                 cap: Optional[torch.Tensor] = None, carried: Optional[torch.Tensor] = None,
                 cluster_noise: float = 0.0, cluster_ion: Optional[torch.Tensor] = None,
                 cluster_reach: Optional[torch.Tensor] = None, denoise: float = 0.0, rdf_wall: float = 0.0,
                 wall_slope: Optional[torch.Tensor] = None, wall_reach: Optional[torch.Tensor] = None,
                 temperature=1.0, noise_scale: Optional[torch.Tensor] = None, step_cap: float = 0.0,
                 max_step: Optional[torch.Tensor] = None):
        super().__init__()
        self.dynamics = dynamics
        self.score = score
        n = int(embed.shape[0])
        self.register_buffer("embed", embed.detach().to(torch.float32).clone())
        self.register_buffer("masses", torch.as_tensor(masses, dtype=torch.float32).reshape(n).clone())
        self.register_buffer("bonds", torch.as_tensor(bonds, dtype=torch.long).reshape(-1, 2).clone())
        parent, child, self.tree_sizes, molecule = bond_forest(self.bonds.cpu().numpy(), n)
        self.register_buffer("tree_parent", torch.as_tensor(parent))
        self.register_buffer("tree_child", torch.as_tensor(child))
        self.register_buffer("molecule", torch.as_tensor(molecule))
        self.n_molecules = int(molecule.max()) + 1 if n else 0
        self.molecule_noise = bool(dynamics.molecule_noise)
        self.register_buffer("levels", torch.tensor([float(s) for s in levels], dtype=torch.float32))
        batch = torch.zeros(n, dtype=torch.long) if batch is None else torch.as_tensor(batch, dtype=torch.long)
        self.register_buffer("batch", batch.reshape(n).clone())
        # hard core and bond cap: (K, K) distances nm over bead_types (N,), all zero when off (see excluded_volume)
        types = torch.zeros(n, dtype=torch.long) if bead_types is None else torch.as_tensor(bead_types)
        self.register_buffer("bead_types", types.to(torch.long).reshape(n).clone())
        given = [int(t.shape[0]) for t in (core, cap) if t is not None]
        k = given[0] if given else (int(self.bead_types.max()) + 1 if n else 1)
        self.hard_core, self.bond_cap = float(hard_core), float(bond_cap)
        off = torch.zeros((k, k))
        self.register_buffer("core", (off if core is None or self.hard_core <= 0 else torch.as_tensor(core))
                             .to(torch.float32).clone())
        self.register_buffer("cap", (off if cap is None or self.bond_cap <= 0 else torch.as_tensor(cap))
                             .to(torch.float32).clone())
        self.register_buffer("bonded", bond_keys(self.bonds.cpu(), n))
        # training-RDF walls in the score: (K, K) slope nm^-1 (rdf_wall times the fit) and reach nm, the beads (M,)
        # of the types that have one (see nn.score.wall_score); all zero when off
        on = rdf_wall > 0 and wall_slope is not None and wall_reach is not None
        self.rdf_wall = float(rdf_wall) if on else 0.0
        self.register_buffer("wall_slope", (torch.as_tensor(wall_slope) if on else off)
                             .to(torch.float32).clone())
        self.register_buffer("wall_reach", (torch.as_tensor(wall_reach) if on else off).to(torch.float32).clone())
        walled = (self.wall_slope > 0).any(dim=1)[self.bead_types] if n else torch.zeros(0, dtype=torch.bool)
        self.register_buffer("wall_beads", torch.nonzero(walled).flatten())
        # shell motion: (N,) which beads move relative to their shell; none when the model has no shell radius
        carried = torch.zeros(n, dtype=torch.bool) if carried is None else torch.as_tensor(carried, dtype=torch.bool)
        self.shell_radius = float(dynamics.shell_radius) if bool(carried.any()) else 0.0
        self.register_buffer("carried", carried.reshape(n).clone())
        # ion-cluster noise: (N,) which beads are ions and each bead's binding radius as a partner (nm, 0: none)
        ion = torch.zeros(n, dtype=torch.bool) if cluster_ion is None else torch.as_tensor(cluster_ion)
        reach = torch.zeros(n) if cluster_reach is None else torch.as_tensor(cluster_reach)
        self.cluster_noise = float(cluster_noise) if self.molecule_noise and bool(ion.any()) else 0.0
        self.register_buffer("cluster_ion", ion.to(torch.bool).reshape(n).clone())
        self.register_buffer("cluster_reach", reach.to(torch.float32).reshape(n).clone())
        size = torch.bincount(self.molecule, minlength=self.n_molecules) if n else torch.zeros(0, dtype=torch.long)
        self.register_buffer("lone", (size[self.molecule] == 1) if n else torch.zeros(0, dtype=torch.bool))
        # (N,) factor on each bead's predicted spread (ModelConfig.noise_scale; ones when uncalibrated)
        scale = torch.ones(n) if noise_scale is None else torch.as_tensor(noise_scale)
        self.register_buffer("noise_scale", scale.to(torch.float32).reshape(n).clone())
        # (N,) longest displacement per step a bead may make before refinement, nm (ModelConfig.step_cap times its
        # type's longest training step); empty when off
        self.step_cap = float(step_cap) if max_step is not None and step_cap > 0 else 0.0
        cap_nm = torch.zeros(0) if self.step_cap == 0.0 else torch.as_tensor(max_step).reshape(n)
        self.register_buffer("max_step", cap_nm.to(torch.float32).clone())
        self.timestep_ps = float(timestep_ps)
        self.history_length = int(dynamics.history_length)
        self.scheme = str(scheme)
        self.skin = REFINE_SKIN_NM
        self.steps_per_level = int(steps_per_level) if len(levels) else 0
        self.n_refine = refine_evaluations(self.scheme, len(levels), self.steps_per_level)
        self.step_size = float(step_size)
        self.denoise = float(denoise)
        # (N,) temperature of each bead's refinement noise (ModelConfig.refine_temperature and its per-residue
        # overrides); a number is every bead's
        self.register_buffer("temperature", torch.as_tensor(temperature, dtype=torch.float32).expand(n).clone())
        self.periodic = bool(periodic)
        self.n_beads = n
        self.n_replicas = int(n_replicas)

    @classmethod
    def from_model(cls, model, beadmap, refine=None, allow_unseen_types: bool = False) -> "LearnedStep":
        """The step of ``model`` for the beads of ``beadmap``.

        Parameters
        ----------
        model : CGModel
            A loaded model (``training.load_model``).
        beadmap : BeadMap
            The bead system (``mapping.BeadMap``); its periodicity must match the model's.
        refine : None, False or dict
            None for the model's default refinement, False for none (dynamics only), or a dict with any of
            ``scheme`` ("langevin" or "pc", see ``ScoreGNN.refine``), ``levels`` (list of noise levels, nm,
            decreasing), ``n_levels`` (use the model's last n levels), ``steps_per_level`` (Langevin steps per
            level; corrector steps for "pc"), ``step_size`` (nm², alpha at the last level), ``denoise`` (noise
            level sigma, nm, of a final noise-free step x + sigma² s(x, sigma) after the refinement, the Tweedie
            estimate of the clean frame; 0: none; default ``ModelConfig.refine_denoise``), ``temperature``
            (of every bead's refinement noise, scaled by its square root; default ``ModelConfig.refine_temperature``
            with the per-residue ``.refine_residue_temperature``), ``hard_core``
            (fraction of each bead-type pair's closest approach in the training data below which non-bonded
            beads are pushed apart; 0: none; default ``ModelConfig.hard_core``), ``core_rdf`` (raise each pair's
            core to where its pooled training RDF first reaches this value; 0: off; needs hard_core > 0),
            ``rdf_wall`` (multiple of the repulsive walls fitted to the training RDFs of ``ModelConfig.rdf_wall_pairs``
            that is added to the score in every evaluation; 0: off; default ``ModelConfig.rdf_wall``),
            ``bond_cap`` (multiple of each type pair's longest training bond beyond which bonded beads are pulled
            together; 0: none),
            ``cluster_noise`` (ion-cluster noise fraction in [0, 1), see ``nn.dynamics``; its ions and binding radii
            are ``ModelConfig.cluster_ions`` and ``.cluster_radius_nm``; default ``ModelConfig.cluster_noise``),
            ``step_cap`` (multiple >= 1 of each bead type's longest one-step displacement in the training data that
            caps a bead's dynamics step before the refinement; 0: none; default ``ModelConfig.step_cap``; kept
            with ``refine=False``).
        allow_unseen_types : bool
            Run bead types the model was not trained on (their embeddings are computed by the embedding GNN
            from their atom graphs) instead of refusing them.
        """
        used = sorted({beadmap.type_names[t] for t in np.unique(np.asarray(beadmap.bead_types))})
        unknown = model.vocab.unseen(used)
        if unknown and not allow_unseen_types:
            raise ValueError(
                f"the model was not trained on bead types {unknown}; pass allow_unseen_types=True to extrapolate "
                "from their atom graphs, or train on data that contains them"
            )
        if bool(beadmap.periodic) != bool(model.periodic):
            raise ValueError(
                "the model was trained on periodic systems but this system is not periodic" if model.periodic
                else "the model was trained without periodic boundaries but this system is periodic"
            )
        scheme, levels, steps, size = _refine_settings(model.config, refine)
        hard_core, bond_cap, core_rdf = _repairs(model.config, refine)
        core = cap = None
        if hard_core > 0:
            core = hard_core * _training_table(model, beadmap, "min_distance_nm", None, "hard_core")
        if core_rdf > 0:  # pairs that never reach it keep the fraction of their closest approach
            onset = None if model.contacts is None else rdf_onset(model.contacts, core_rdf)
            table = None if onset is None else contact_table(onset, beadmap.type_names, "onset_nm", 0.0)
            if table is None:
                raise ValueError("core_rdf needs the model's contacts.json with rdf_g (written by training since "
                                 "core_rdf exists); set core_rdf to 0")
            core = torch.maximum(core, torch.as_tensor(table, dtype=torch.float32))
        if bond_cap > 0:  # type pairs never bonded in the data get no cap
            cap = bond_cap * _training_table(model, beadmap, "max_bond_nm", 0.0, "bond_cap")
        step_cap, max_step = _step_cap(model.config, refine), None
        if step_cap > 0:
            table = None if model.contacts is None else step_table(model.contacts, beadmap.type_names)
            if table is None:
                raise ValueError("step_cap needs the model's contacts.json with max_step_nm (written by training "
                                 "since step_cap exists); set step_cap to 0")
            max_step = step_cap * torch.as_tensor(table, dtype=torch.float32)
        wall, wall_slope, wall_reach = _rdf_wall(model.config, refine), None, None
        if wall > 0:
            wall_slope, wall_reach = _wall_tables(model, beadmap)
            wall_slope = wall * wall_slope
        device = next(model.parameters()).device
        with torch.no_grad():
            table = model.embedding.embed_types(beadmap.type_graphs)
        embed = table[torch.as_tensor(np.asarray(beadmap.bead_types), dtype=torch.long, device=device)]
        dynamics = copy.deepcopy(model.dynamics).eval()
        score = copy.deepcopy(model.score).eval()
        for p in list(dynamics.parameters()) + list(score.parameters()):
            p.requires_grad_(False)
        types = torch.as_tensor(np.asarray(beadmap.bead_types, dtype=np.int64))
        carried = torch.as_tensor(model.carried(beadmap.type_names), dtype=torch.bool)[types]
        cluster = _cluster_noise(model.config, refine)
        ion, reach = model.cluster_species(beadmap.type_names)
        if cluster > 0 and not (model.config.molecule_noise and any(ion) and any(r > 0 for r in reach)):
            raise ValueError("cluster_noise needs a molecule-noise model whose config names cluster_ions and "
                             "cluster_radius_nm (binding radius per partner residue, nm) of this system's beads")
        return cls(dynamics, score, embed, torch.as_tensor(np.asarray(beadmap.bead_masses, dtype=np.float32)),
                   torch.as_tensor(np.asarray(beadmap.bonds, dtype=np.int64)), model.timestep_ps, model.periodic,
                   levels, steps, size, scheme=scheme, hard_core=hard_core, core=core,
                   bead_types=types, bond_cap=bond_cap,
                   cap=cap, carried=carried, cluster_noise=cluster,
                   cluster_ion=torch.as_tensor(ion, dtype=torch.bool)[types],
                   cluster_reach=torch.as_tensor(reach, dtype=torch.float32)[types],
                   denoise=_denoise(model.config, refine), rdf_wall=wall, wall_slope=wall_slope,
                   wall_reach=wall_reach, temperature=_bead_temperatures(model.config, refine, beadmap),
                   noise_scale=torch.as_tensor(model.bead_noise_scales(beadmap), dtype=torch.float32),
                   step_cap=step_cap, max_step=None if max_step is None else max_step[types]).to(device)

    def check_box(self, box_lengths):
        """Raise a one-line ValueError unless every box edge (nm) is at least twice the model's largest cutoff
        (minimum-image neighbour search needs it)."""
        cutoff = max(float(self.dynamics.cutoff), float(self.score.cutoff), float(self.wall_reach.max()))
        shortest = float(np.min(np.asarray(box_lengths, dtype=np.float64)))
        if shortest < 2.0 * cutoff:
            raise ValueError(f"the periodic box ({shortest:.3f} nm) is shorter than twice the model's cutoff "
                             f"({cutoff:g} nm); simulate a larger system")

    def batched(self, n_replicas: int) -> "LearnedStep":
        """A step advancing ``n_replicas`` independent copies of this system at once.

        Positions are (n_replicas * N, 3) with replica r in rows r*N .. (r+1)*N - 1, the box (n_replicas, 3) nm.
        """
        if int(n_replicas) < 1:
            raise ValueError(f"n_replicas must be >= 1, got {n_replicas}")
        return LearnedStep.concatenate([self] * int(n_replicas))

    @classmethod
    def concatenate(cls, steps) -> "LearnedStep":
        """One step advancing several single-replica steps of the same model (e.g. different systems) together:
        replica r's beads follow replica r-1's, each replica has its own box row and no edges to the others."""
        first = steps[0]
        for other in steps:
            if other.n_replicas != 1:
                raise ValueError("concatenate() expects single-replica steps")
            same = (other.dynamics is first.dynamics or _same_weights(other.dynamics, first.dynamics)) and \
                (other.score is first.score or _same_weights(other.score, first.score))
            if not same or other.timestep_ps != first.timestep_ps or other.periodic != first.periodic or \
                    other.steps_per_level != first.steps_per_level or other.step_size != first.step_size or \
                    other.scheme != first.scheme or other.hard_core != first.hard_core or \
                    other.denoise != first.denoise or other.rdf_wall != first.rdf_wall or \
                    other.bond_cap != first.bond_cap or other.cluster_noise != first.cluster_noise or \
                    other.step_cap != first.step_cap or \
                    not torch.equal(other.levels, first.levels):
                raise ValueError("replicas advanced together must use one model with the same refinement settings")
        sizes = torch.tensor([int(s.n_beads) for s in steps], device=first.bonds.device)
        offsets = torch.cumsum(sizes, 0) - sizes
        bonds = torch.cat([s.bonds + int(o) for s, o in zip(steps, offsets.tolist())])
        # each replica keeps its own type table: one block each (replicas never interact)
        type_offsets = np.cumsum([0] + [int(s.core.shape[0]) for s in steps[:-1]])
        return LearnedStep(
            first.dynamics, first.score, torch.cat([s.embed for s in steps]), torch.cat([s.masses for s in steps]),
            bonds, first.timestep_ps, first.periodic, first.levels.tolist(), first.steps_per_level, first.step_size,
            torch.arange(len(steps), device=first.bonds.device).repeat_interleave(sizes), len(steps), first.scheme,
            first.hard_core, torch.block_diag(*[s.core for s in steps]),
            torch.cat([s.bead_types + int(o) for s, o in zip(steps, type_offsets)]),
            first.bond_cap, torch.block_diag(*[s.cap for s in steps]), torch.cat([s.carried for s in steps]),
            first.cluster_noise, torch.cat([s.cluster_ion for s in steps]), torch.cat([s.cluster_reach for s in steps]),
            first.denoise, first.rdf_wall, torch.block_diag(*[s.wall_slope for s in steps]),
            torch.block_diag(*[s.wall_reach for s in steps]), torch.cat([s.temperature for s in steps]),
            torch.cat([s.noise_scale for s in steps]), first.step_cap,
            torch.cat([s.max_step for s in steps]) if first.step_cap > 0 else None,
        ).to(first.embed.device)

    def _whole(self, x: torch.Tensor, x_pred: torch.Tensor, bead_box: torch.Tensor) -> torch.Tensor:
        """``x`` with every molecule whole and at the periodic image of its predicted centre of mass; ``bead_box``
        (3,) or (N, 3) nm, one row per bead.

        The networks see bonds by minimum image, so when a predicted bond stretches past half a box the refinement
        can pull a bead to its partner's next image: the state is right modulo the box, but the unwrapped chain
        would straddle it, corrupting Rg², MSDs and the next velocity history. Rebuilding each molecule along its
        bond tree fixes that; the refinement moves a centre of mass far less than half a box, so the whole-box
        shift back to the predicted centre is unambiguous."""
        whole = make_whole_torch(x, bead_box, self.tree_parent, self.tree_child, self.tree_sizes)
        d = molecule_mean(whole - x_pred, self.masses, self.molecule, self.n_molecules)
        return whole - bead_box * torch.round(d / bead_box)

    def repair(self, x: torch.Tensor, box: Optional[torch.Tensor], refine_noise: torch.Tensor) -> torch.Tensor:
        """The second half of a step: the score GNN's refinement of positions x (N, 3) nm, its final denoising
        step, then the hard core and the bond cap; ``box`` (3,) / (B, 3) nm or None, ``refine_noise`` one row of
        normals per evaluation."""
        wall: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = None
        if self.rdf_wall > 0:
            wall = (self.wall_beads, self.bead_types, self.wall_slope, self.wall_reach)
        if self.n_refine > 0:
            x = self.score.refine(x, self.levels, self.steps_per_level, self.step_size, refine_noise, self.embed,
                                  self.masses, self.bonds, box, self.batch, self.scheme, self.skin, wall,
                                  self.temperature)
        if self.denoise > 0:  # Tweedie: the mean clean frame given x at this noise level (Song et al. 2021's last step)
            sigma = x.new_full((x.shape[0],), self.denoise)
            score = self.score(x, sigma, self.embed, self.masses, self.bonds, box, self.batch)
            if wall is not None:
                score = score + wall_score(x, wall, box, self.batch)
            x = x + self.denoise ** 2 * score
        if self.hard_core > 0 or self.bond_cap > 0:
            x = push_apart(x, self.bead_types, self.core, self.masses, self.bonded, box, self.batch, self.bonds,
                           self.cap)
        return x

    def forward(self, x: torch.Tensor, h: torch.Tensor, box: torch.Tensor, dyn_noise: torch.Tensor,
                refine_noise: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One step: x (N, 3) nm, h (H, N, 3) nm/step, box (3,) / (B, 3) nm or empty -> (x_new, h_new)."""
        if x.shape[0] != self.n_beads:
            raise ValueError("positions do not match the step's number of beads")
        if h.shape[0] != self.history_length:
            raise ValueError("velocity history length does not match the model's history_length")
        box_opt: Optional[torch.Tensor] = None
        if box.numel() > 0:
            if not self.periodic:
                raise ValueError("this model is not periodic: pass an empty box tensor")
            box_opt = box
        elif self.periodic:
            raise ValueError("this model is periodic: pass the box edge lengths (nm)")
        mean, std, shared = self.dynamics(x, h, self.embed, self.masses, self.bonds, box_opt, self.batch, None,
                                          self.molecule, self.n_molecules)
        std, shared = std * self.noise_scale, shared * self.noise_scale
        if self.molecule_noise:
            group = self.molecule
            if self.cluster_noise > 0:
                ions, partners = ion_partners(x, self.cluster_ion, self.cluster_reach, box_opt, self.batch)
                std, shared, group = cluster_loadings(std, shared, self.molecule, ions, partners, self.lone,
                                                      self.cluster_noise)
            a = sample_acceleration(mean, std, shared, group, self.n_molecules, dyn_noise)
        else:
            a = mean + std.unsqueeze(1) * dyn_noise
        moved = h[-1] + a
        if self.shell_radius > 0:
            ion, shell = shell_pairs(x, self.carried, self.shell_radius, box_opt, self.batch)
            moved = torch.where(self.carried.unsqueeze(1), a + shell_mean(moved, ion, shell), moved)
        if self.step_cap > 0:  # shorten, never turn: a capped bead keeps its predicted direction
            length = torch.linalg.vector_norm(moved, dim=1, keepdim=True)
            moved = moved * torch.clamp(self.max_step.unsqueeze(1) / length.clamp(min=1e-12), max=1.0)
        x_pred = x + moved
        # A non-finite prediction skips the refinement (whose graph building would fail on it) and is returned
        # as it is, so every wrapper reports it as a blow-up of this step.
        finite = bool(torch.isfinite(x_pred).all())
        x_new = self.repair(x_pred, box_opt, refine_noise) if finite else x_pred
        moved = x_new - x
        if box_opt is not None and self.tree_child.numel() > 0 and finite:
            bead_box = box_opt if box_opt.dim() == 1 else box_opt[self.batch]
            whole = self._whole(x_new, x_pred, bead_box)
            # A bead relabelled by whole box vectors did not travel them: its history gets the minimum-image
            # displacement (else a chain broken past half the box would feed a box-length velocity to the next step).
            relabelled = (whole != x_new).any(dim=1, keepdim=True)
            moved = torch.where(relabelled, minimum_image_torch(whole - x, bead_box), whole - x)
            x_new = whole
        h_new = torch.cat([h[1:], moved.unsqueeze(0)], dim=0)
        return x_new, h_new


def rollout(step: nn.Module, x: torch.Tensor, h: torch.Tensor, box: torch.Tensor, seed: int, n_steps: int,
            start_step: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run ``n_steps`` steps from step index ``start_step``, step k drawing ``step_noise(seed, k)``, so the result
    equals the OpenMM integrator's and the engine's trajectory for the same seed.

    Parameters
    ----------
    step : LearnedStep
        The (eager or scripted) step.
    x : length (nm)
        (N, 3) starting positions, unwrapped.
    h : length (nm per step)
        (H, N, 3) starting velocity history.
    box : length (nm)
        (3,) box lengths, or an empty tensor for a non-periodic model.
    seed, n_steps, start_step : int
        Random stream, number of steps, index of the first step.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Positions after each step, (n_steps, N, 3) nm, and the final history (H, N, 3) nm per step.
    """
    frames = []
    device = x.device
    with torch.no_grad():
        for k in range(start_step, start_step + int(n_steps)):
            dyn, ref = step_noise(seed, k, x.shape[0], int(step.n_refine))
            x, h = step(x, h, box, dyn.to(device), ref.to(device))
            frames.append(x)
    if not frames:
        return x.new_zeros((0,) + tuple(x.shape)), h
    return torch.stack(frames), h
