"""The trained CG model: embedding + dynamics + score GNNs, their configuration and bead-type vocabulary.

A model directory (``nn.io`` format, kind ``cgml-dynamics``) stores the :class:`ModelConfig` as JSON, the weights
of the three networks as safetensors (keys ``embedding.*``, ``dynamics.*``, ``score.*``) and, in ``extra``, the
bead-type vocabulary (type names and atom graphs) the model was trained on.
"""
import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from torch import nn

from ..data.contacts import read_contacts
from ..nn.dynamics import DynamicsGNN
from ..nn.embedding import BeadEmbedding, BeadVocabulary  # noqa: F401 (re-exported)
from ..nn.io import load_model_dir, save_model_dir
from ..nn.score import SCHEMES, ScoreGNN, sigma_levels
from .schema import Config, check

MODEL_KIND = "cgml-dynamics"
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained")
REGISTRY_FILE = os.path.join(PRETRAINED_DIR, "registry.json")


def _read_registry() -> dict:
    """``{"default": name, "models": {name: {"path": directory under pretrained/, ...}}}``."""
    with open(REGISTRY_FILE) as f:
        return json.load(f)


_REGISTRY = _read_registry()
#: The shipped models by name (``load_model(name)``); later models join ``pretrained/registry.json``.
PRETRAINED_MODELS = {name: os.path.join(PRETRAINED_DIR, entry["path"]) for name, entry in _REGISTRY["models"].items()}
#: Directory of the default shipped model (the PEO/LiTFSI demo model): what ``load_model()`` loads.
DEFAULT_MODEL = PRETRAINED_MODELS[_REGISTRY["default"]]


def model_path(name_or_path: Optional[str] = None) -> str:
    """The directory of a shipped model given by name, or ``name_or_path`` itself if it is a path.

    ``None`` gives the default model. A string that is neither a registered name nor a path (no directory
    separator, nothing on disk) is refused in one line listing the known names.
    """
    if name_or_path is None:
        return DEFAULT_MODEL
    name = os.fspath(name_or_path)
    if name in PRETRAINED_MODELS:
        return PRETRAINED_MODELS[name]
    if os.path.exists(name) or os.sep in name or "/" in name or name.startswith("."):
        return name
    raise ValueError(f"unknown model {name!r}: neither a shipped model (known: {sorted(PRETRAINED_MODELS)}) nor "
                     "an existing model directory")


@dataclass
class ArchitectureConfig(Config):
    """Network sizes, noise ladder and default refinement of a CG model (lengths nm); chosen by the user."""

    # embedding GNN over each bead type's atom graph
    embed_dim: int = 32
    embed_hidden: int = 32
    embed_layers: int = 2
    # dynamics GNN
    hidden: int = 64
    n_layers: int = 4
    mlp_layers: int = 2
    n_rbf: int = 16
    cutoff: float = 0.8  # nm
    history_length: int = 4
    min_std: float = 1e-3  # in units of accel_scale
    molecule_noise: bool = False  # a noise shared by each molecule's beads (DynamicsGNN)
    # the mean also follows the history velocities of each bead's molecule's centre of mass (DynamicsGNN): chain
    # centres get their own memory, apart from their beads' rattling
    molecule_memory: bool = False
    # residue names of the beads whose Gaussian is relative to their shell's mean acceleration (e.g. [LI]): the
    # beads not carried within shell_radius nm at the current step (DynamicsGNN, "shell motion")
    carried_species: List[str] = field(default_factory=list)
    shell_radius: float = 0.35  # nm
    # ion-cluster noise when sampling (nn.dynamics): a bead of a cluster_ions residue (e.g. [LI]) within the binding
    # radius of a bead of a cluster_radius_nm residue (e.g. {PEO: 0.38, TFS: 0.57}: first minima of the training
    # data's Li-PEO and Li-TFSI RDFs, nm) shares that partner's noise group, with this fraction of its variance
    cluster_noise: float = 0.0
    cluster_ions: List[str] = field(default_factory=list)
    cluster_radius_nm: Dict[str, float] = field(default_factory=dict)
    # score GNN and its noise ladder
    score_hidden: int = 64
    score_layers: int = 4
    score_cutoff: Optional[float] = None  # nm; None = the dynamics cutoff
    sigma_max: float = 1.0  # nm
    sigma_min: float = 0.001  # nm
    n_sigmas: int = 20
    # default refinement of each predicted frame over the last refine_levels levels of the ladder:
    # "langevin" (annealed Langevin, refine_steps_per_level steps per level) or "pc" (predictor-corrector:
    # refine_steps_per_level corrector steps per level plus one predictor step between levels)
    refine_scheme: str = "langevin"
    refine_levels: int = 5
    refine_span: int = 0  # "pc": the refine_levels levels are spread over the last refine_span (0: contiguous)
    refine_steps_per_level: int = 2
    refine_step_size: float = 5e-7  # nm², alpha at the last level
    # > 0: after the refinement, one noise-free denoising step x + s² score(x, s) at this noise level s (nm)
    refine_denoise: float = 0.0
    # temperature T of the refinement's Langevin noise, relative to the data's: noise scaled by sqrt(T), so the
    # correctors sample p_sigma^(1/T). Every corrector step also diffuses the beads a little, transport the dynamics
    # GNN already predicts; T < 1 cuts that extra random displacement. 1 = standard annealed Langevin
    refine_temperature: float = 1.0
    # residue name -> its beads' refinement temperature, over refine_temperature (e.g. {PEO: 1.0}). A cool
    # refinement sharpens ion coordination but also quenches a chain's internal modes, which are most of a long
    # chain's bead motion at 1 ns, so long chains run slow; missing residues: refine_temperature
    refine_residue_temperature: Dict[str, float] = field(default_factory=dict)
    # excluded volume after the refinement: no non-bonded pair closer than this fraction of that bead-type pair's
    # closest approach in the training data (contacts.json); 0 = off
    hard_core: float = 0.0
    # and bonded beads farther apart than this multiple of their type pair's longest bond in the training data
    # are pulled together (contacts.json "max_bond_nm"); 0 = off
    bond_cap: float = 0.0
    # > 0 raises each pair's hard core to where its pooled training RDF first reaches this value (contacts.json
    # "rdf_g"): a data-derived excluded volume that one rare close contact cannot shrink; 0 = off
    core_rdf: float = 0.0
    # > 0 adds this multiple of a repulsive wall to the score in every refinement evaluation, for the residue
    # pairs of rdf_wall_pairs ("A-B"): the pair's PMF fitted to the rising edge of its pooled training RDF
    # (contacts.json "rdf_g"; data.contacts.rdf_wall), where the score has almost no data to learn from; 0 = off
    rdf_wall: float = 0.0
    rdf_wall_pairs: List[str] = field(default_factory=lambda: ["LI-LI"])
    # residue name -> factor on the dynamics GNN's predicted spread (own and shared) of that residue's beads when
    # simulating; missing residues: 1. A model trained on one-step windows moves more in its own rollouts than in
    # the data (it sees its own, slightly hotter frames, and the refinement diffuses beads too); `cgml calibrate`
    # fits these factors so rollouts on the training sets reproduce their 1-ns MSD
    noise_scale: Dict[str, float] = field(default_factory=dict)
    # residue name -> exponent b: that residue's factor becomes noise_scale x (beads in the molecule)^b, so one
    # calibration can follow a drift that depends on chain length (a model's own runs move short chains too fast
    # and long ones too slow); missing residues: 0. `cgml calibrate --fit-size` fits it where chain lengths differ
    noise_size_exponent: Dict[str, float] = field(default_factory=dict)
    # > 0 caps each bead's dynamics displacement per step (before refinement) at this multiple of the longest
    # one-step displacement of its bead type in the training data (contacts.json "max_step_nm"). In a melt it never
    # acts; where the model extrapolates (a bead with no neighbours in a near-empty box) it stops a runaway
    # velocity from feeding itself step after step; 0 = off
    step_cap: float = 0.0

    def validate(self):
        super().validate()
        sizes = ("embed_dim", "embed_hidden", "embed_layers", "hidden", "n_layers", "mlp_layers", "n_rbf",
                 "history_length", "score_hidden", "score_layers", "n_sigmas")
        small = [name for name in sizes if getattr(self, name) < 1]
        check(not small, f"{', '.join(small)} must be >= 1")
        check(self.cutoff > 0 and (self.score_cutoff is None or self.score_cutoff > 0) and self.sigma_min > 0
              and self.sigma_max >= self.sigma_min, "need cutoff > 0 nm and sigma_max >= sigma_min > 0 nm")
        check(self.min_std > 0, f"min_std must be > 0, got {self.min_std}")
        check(self.shell_radius > 0, f"shell_radius must be > 0 nm, got {self.shell_radius}")
        check(all(isinstance(n, str) and n for n in self.carried_species),
              f"carried_species must be a list of residue names (e.g. [LI]), got {self.carried_species!r}")
        check(0.0 <= self.cluster_noise < 1.0, f"cluster_noise must be a fraction in [0, 1), got {self.cluster_noise}")
        check(all(isinstance(n, str) and n for n in self.cluster_ions)
              and all(isinstance(r, (int, float)) and r > 0 for r in self.cluster_radius_nm.values()),
              "cluster_ions must be a list of residue names and cluster_radius_nm a map of residue name to a "
              f"radius > 0 nm, got {self.cluster_ions!r} and {self.cluster_radius_nm!r}")
        check(0 <= self.refine_levels <= self.n_sigmas, f"refine_levels must be between 0 and n_sigmas ({self.n_sigmas})")
        check(0 <= self.refine_span <= self.n_sigmas, f"refine_span must be between 0 and n_sigmas ({self.n_sigmas})")
        check(self.refine_scheme in SCHEMES, f"refine_scheme must be one of {list(SCHEMES)}, got {self.refine_scheme!r}")
        check(self.refine_steps_per_level >= 0 and self.refine_step_size >= 0 and self.refine_denoise >= 0,
              "refine_steps_per_level, refine_step_size and refine_denoise must be >= 0")
        check(self.refine_temperature >= 0, f"refine_temperature must be >= 0, got {self.refine_temperature}")
        check(all(isinstance(n, str) and n and isinstance(t, (int, float)) and math.isfinite(t) and t >= 0
                  for n, t in self.refine_residue_temperature.items()),
              "refine_residue_temperature must map residue names to temperatures >= 0 (e.g. {PEO: 1.0}), got "
              f"{self.refine_residue_temperature!r}")
        check(0.0 <= self.hard_core <= 1.0, f"hard_core must be a fraction in [0, 1], got {self.hard_core}")
        check(self.bond_cap == 0.0 or self.bond_cap >= 1.0, f"bond_cap must be 0 (off) or >= 1, got {self.bond_cap}")
        check(self.step_cap == 0.0 or self.step_cap >= 1.0, f"step_cap must be 0 (off) or >= 1, got {self.step_cap}")
        check(0.0 <= self.core_rdf < 1.0 and (self.core_rdf == 0.0 or self.hard_core > 0),
              f"core_rdf must be an RDF value in [0, 1) and needs hard_core > 0, got {self.core_rdf}")
        check(self.rdf_wall >= 0 and all(isinstance(p, str) and len(p.split("-")) == 2 for p in self.rdf_wall_pairs),
              "rdf_wall must be >= 0 and rdf_wall_pairs a list of residue pairs such as LI-LI, got "
              f"{self.rdf_wall} and {self.rdf_wall_pairs!r}")
        check(all(isinstance(n, str) and n and isinstance(f, (int, float)) and f > 0
                  for n, f in self.noise_scale.items()),
              f"noise_scale must map residue names to factors > 0 (e.g. {{TFS: 0.8}}), got {self.noise_scale!r}")
        check(all(isinstance(n, str) and n and isinstance(b, (int, float)) and math.isfinite(b)
                  for n, b in self.noise_size_exponent.items()),
              "noise_size_exponent must map residue names to finite exponents (e.g. {PEO: 0.3}), got "
              f"{self.noise_size_exponent!r}")


@dataclass
class ModelConfig(ArchitectureConfig):
    """Architecture plus the settings measured from the training data (times ps, lengths nm)."""

    config_label = "model"

    # set from the training data
    timestep_ps: Optional[float] = None
    periodic: bool = False
    velocity_scale: float = 1.0  # nm per model step (RMS of the training velocities)
    accel_scale: float = 1.0  # nm per model step² (RMS of the training accelerations)
    mapping: dict = field(default_factory=dict)  # BeadMap.from_openmm settings of the training data

    def validate(self):
        super().validate()
        check(self.timestep_ps is None or self.timestep_ps > 0, f"timestep_ps must be > 0, got {self.timestep_ps}")
        check(self.velocity_scale > 0 and self.accel_scale > 0, "velocity_scale and accel_scale must be > 0")

    def levels(self) -> List[float]:
        return sigma_levels(self.sigma_max, self.sigma_min, self.n_sigmas)


class CGModel(nn.Module):
    """Embedding, dynamics and score GNNs of one learned CG model.

    Attributes: ``embedding`` (:class:`BeadEmbedding`), ``dynamics`` (:class:`DynamicsGNN`), ``score``
    (:class:`ScoreGNN`), ``config`` (:class:`ModelConfig`), ``vocab`` (:class:`BeadVocabulary`), and the shortcuts
    ``mapping`` (dict of ``BeadMap.from_openmm`` settings), ``timestep_ps``, ``periodic``, ``history_length``;
    ``contacts``: the closest approaches of its training data (``data.contact_distances``), or None if unknown.
    """

    def __init__(self, config: ModelConfig, vocab: BeadVocabulary):
        super().__init__()
        c = config
        self.config = c
        self.vocab = vocab
        self.contacts: Optional[dict] = None
        self.embedding = BeadEmbedding(c.embed_dim, c.embed_hidden, c.embed_layers, c.mlp_layers)
        self.dynamics = DynamicsGNN(c.embed_dim, c.history_length, c.cutoff, c.hidden, c.n_layers, c.mlp_layers,
                                    c.n_rbf, c.min_std, c.velocity_scale, c.accel_scale, c.molecule_noise,
                                    c.shell_radius if c.carried_species else 0.0, c.molecule_memory)
        self.score = ScoreGNN(c.embed_dim, c.score_cutoff or c.cutoff, c.score_hidden, c.score_layers, c.mlp_layers,
                              c.n_rbf)

    def carried(self, type_names) -> List[bool]:
        """Whether each bead type (names "RESIDUE:..." as in ``BeadMap.type_names``) moves relative to its shell
        (``ModelConfig.carried_species``)."""
        return [name.split(":")[0] in self.config.carried_species for name in type_names]

    def cluster_species(self, type_names) -> Tuple[List[bool], List[float]]:
        """Per bead type (names "RESIDUE:..."): whether it is an ion of the ion-cluster noise, and its binding
        radius as a partner, nm (0: none) (``ModelConfig.cluster_ions``, ``.cluster_radius_nm``)."""
        residues = [name.split(":")[0] for name in type_names]
        return ([r in self.config.cluster_ions for r in residues],
                [float(self.config.cluster_radius_nm.get(r, 0.0)) for r in residues])

    def bead_noise_scales(self, beadmap) -> np.ndarray:
        """(N,) factor on each bead's predicted spread: its residue's ``ModelConfig.noise_scale`` times the number of
        beads in its molecule to the power ``noise_size_exponent``."""
        residues = [name.split(":")[0] for name in beadmap.type_names]
        types = np.asarray(beadmap.bead_types, dtype=np.int64)
        factor = np.array([self.config.noise_scale.get(r, 1.0) for r in residues], dtype=np.float64)[types]
        exponent = np.array([self.config.noise_size_exponent.get(r, 0.0) for r in residues], dtype=np.float64)[types]
        return factor * beadmap.bead_molecule_sizes().astype(np.float64) ** exponent

    @property
    def mapping(self) -> dict:
        return dict(self.config.mapping)

    @property
    def timestep_ps(self) -> float:
        return float(self.config.timestep_ps) if self.config.timestep_ps is not None else 1.0

    @property
    def periodic(self) -> bool:
        return bool(self.config.periodic)

    @property
    def history_length(self) -> int:
        return int(self.config.history_length)

    def set_scales(self, velocity_scale: float, accel_scale: float):
        """Set the normalisation (nm per step, nm per step²) in both the config and the dynamics network."""
        self.config.velocity_scale = float(velocity_scale)
        self.config.accel_scale = float(accel_scale)
        self.dynamics.velocity_scale = float(velocity_scale)
        self.dynamics.accel_scale = float(accel_scale)

    def save(self, path: str, extra: Optional[dict] = None, overwrite: bool = False) -> str:
        """Write the model directory ``path`` (``nn.io`` format, kind ``cgml-dynamics``)."""
        info = dict(extra or {})
        info["vocab"] = self.vocab.to_dict()
        return save_model_dir(path, MODEL_KIND, self.config.to_dict(), self.state_dict(), info, overwrite)


def load_model(name_or_path: Optional[str] = None, device="cpu") -> CGModel:
    """Load a CG model: a shipped one by name (``"peo-litfsi"``), the default one (no argument), or a model
    directory written by training; returns a :class:`CGModel` in eval mode on ``device``.

    The shipped names are the keys of :data:`PRETRAINED_MODELS`; an unknown name raises a one-line
    ``ValueError`` listing them.
    """
    path = model_path(name_or_path)
    config, state_dict, extra = load_model_dir(str(path), MODEL_KIND)
    try:
        vocab = BeadVocabulary(**extra["vocab"])
        model = CGModel(ModelConfig.from_dict(config), vocab)
        model.load_state_dict(state_dict)
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} does not hold a consistent CG model: {first}") from None
    model.contacts = read_contacts(str(path))
    return model.to(device).eval()
