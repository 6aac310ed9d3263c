"""Training DiG by denoising score matching on CG frames, with checkpoints and exact resume.

The loss of a batch (:class:`DSMObjective`) plugs into the one training loop
(:class:`~openmm_cgml.training.loop.TrainingLoop`): an output directory holds ``config.yaml`` (the training
configuration), ``training_data.json`` (a fingerprint of the frames), ``checkpoint.pt`` (model, EMA, optimiser and
RNG state; loaded with ``weights_only=True``) and, at the end, the model written by
``nn.io.save_model_dir(kind="cgml-dig")``. :func:`load_dig` reads it back.
"""
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..nn.dig_model import Descriptor, DiGScoreModel
from ..nn.embedding import BeadVocabulary
from ..pbc import remove_centroid, wrap
from ..nn.io import load_model_dir, save_model_dir
from ..nn.sde import SCHEDULES, VPSDE
from .loop import OptimConfig, TrainingLoop, array_digest, prepare_run_dir, provenance_path
from .schema import check

MODEL_KIND = "cgml-dig"


@dataclass
class DiGConfig(OptimConfig):
    """Hyper-parameters of a DiG model and its training (lengths in nm); the optimisation fields are those of
    :class:`~openmm_cgml.training.loop.OptimConfig` (``batch_size`` counts frames)."""

    config_label = "DiG"

    # network
    hidden: int = 64
    n_layers: int = 4
    heads: int = 4
    n_rbf: int = 32
    n_time: int = 16
    embed_dim: int = 16  # bead embedding from each type's atom graph (the dynamics models' BeadEmbedding)
    embed_hidden: int = 32
    embed_layers: int = 2
    time_max_freq: float = 1000.0  # highest frequency of the sinusoidal diffusion-time features
    gaussian_skip: bool = False  # eps = sigma(t) y + network (non-periodic systems; see DiGScoreModel)
    cutoff: Optional[float] = None  # nm; None = fully connected graph (small, non-periodic systems)
    length_scale: Optional[float] = None  # nm per diffusion unit; None = RMS centred coordinate of the data
    # forward SDE
    schedule: str = "sigmoid"
    beta_min: float = 0.1
    beta_max: float = 20.0
    n_steps: int = 500
    t_min: float = 1e-3
    # optimisation (defaults that differ from OptimConfig's)
    batch_size: int = 32
    ema_decay: float = 0.999  # 0 disables the exponential moving average of the weights
    checkpoint_every: int = 500
    # data
    stride: int = 1  # use every stride-th frame
    max_frames: Optional[int] = None  # per dataset, after striding

    def validate(self):
        super().validate()
        sizes = ("hidden", "n_layers", "heads", "n_rbf", "n_time", "embed_dim", "embed_hidden", "embed_layers",
                 "n_steps", "stride")
        small = [name for name in sizes if getattr(self, name) < 1]
        check(not small, f"{', '.join(small)} must be >= 1")
        check(self.hidden % self.heads == 0, f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        check(self.time_max_freq > 0, f"time_max_freq must be > 0, got {self.time_max_freq}")
        check(self.cutoff is None or self.cutoff > 0, f"cutoff must be > 0 nm or null, got {self.cutoff}")
        check(self.length_scale is None or self.length_scale > 0,
              f"length_scale must be > 0 nm or null, got {self.length_scale}")
        check(self.schedule in SCHEDULES, f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        check(0 < self.beta_min < self.beta_max, f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}")
        check(0 < self.t_min < 1, f"t_min must be in (0, 1), got {self.t_min}")
        check(self.max_frames is None or self.max_frames >= 1, f"max_frames must be >= 1, got {self.max_frames}")

    def make_sde(self) -> VPSDE:
        return VPSDE(self.schedule, self.beta_min, self.beta_max, self.n_steps)

    def make_model(self, length_scale: float) -> DiGScoreModel:
        return DiGScoreModel(length_scale, self.cutoff, None, self.hidden, self.n_layers, self.heads, self.n_rbf,
                             self.n_time, self.embed_dim, self.embed_hidden, self.embed_layers, self.time_max_freq,
                             self.make_sde().config() if self.gaussian_skip else None)


class FrameSet:
    """Frames of one system for training: positions (F, N, 3) nm, its descriptor, boxes (F, 3) nm or None."""

    def __init__(self, frames, descriptor: Descriptor, boxes=None):
        self.frames = torch.as_tensor(np.asarray(frames, dtype=np.float32))
        if self.frames.dim() != 3 or self.frames.shape[1:] != (descriptor.n_beads, 3):
            raise ValueError(f"frames must be (F, {descriptor.n_beads}, 3) nm, got {tuple(self.frames.shape)}")
        if self.frames.shape[0] == 0:
            raise ValueError("a frame set needs at least one frame")
        self.descriptor = descriptor
        self.boxes = None if boxes is None else torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 3)
        if self.boxes is None and descriptor.periodic:
            self.boxes = descriptor.box.unsqueeze(0).expand(self.frames.shape[0], 3).clone()
        if self.boxes is None:
            self.frames = remove_centroid(self.frames)

    @property
    def periodic(self) -> bool:
        return self.boxes is not None

    def rms_coordinate(self) -> float:
        """RMS of a centred coordinate, nm (the default length scale)."""
        f = remove_centroid(self.frames)
        return float(torch.sqrt((f**2).mean()))


def denoising_loss(
    model: DiGScoreModel,
    sde: VPSDE,
    y0: torch.Tensor,
    descriptor: Descriptor,
    generator: torch.Generator,
    t_min: float,
    boxes: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Denoising score matching with noise prediction: E_t,eps |eps_model(y_t, t) - eps|^2 (per coordinate).

    ``y0`` (B, N, 3) are dimensionless clean coordinates; t ~ U(t_min, 1). Non-periodic systems draw eps in the
    centroid-free subspace so the target lives where the model's output does.
    """
    b, n, _ = y0.shape
    device = y0.device
    t = (t_min + (1.0 - t_min) * torch.rand(b, generator=generator)).to(device)
    eps = torch.randn(y0.shape, generator=generator).to(device)
    if boxes is None:
        eps = remove_centroid(eps)
    tt = t.view(b, 1, 1)
    y_t = sde.marginal_mean_coef(tt) * y0 + sde.marginal_std(tt) * eps
    bonds, batch = descriptor.batched(b)
    embed = model.embed(descriptor).repeat(b, 1)
    pred = model(y_t.reshape(b * n, 3), t, embed, bonds.to(device), batch.to(device),
                 None if boxes is None else boxes.to(device))
    return ((pred.reshape(b, n, 3) - eps) ** 2).mean()


class DSMObjective:
    """Denoising score matching for :class:`~openmm_cgml.training.loop.TrainingLoop`: each batch is one system
    (drawn with probability proportional to its frame count) and ``batch_size`` of its frames."""

    names = ("loss",)

    def __init__(self, frame_sets: Sequence["FrameSet"], sde: VPSDE, config: DiGConfig, length_scale: float, device):
        self.frame_sets, self.sde, self.config = list(frame_sets), sde, config
        self.length_scale, self.device = float(length_scale), torch.device(device)
        self.weights = torch.tensor([float(fs.frames.shape[0]) for fs in self.frame_sets])

    def loss(self, model: DiGScoreModel, generator: torch.Generator):
        sets = self.frame_sets
        k = int(torch.multinomial(self.weights, 1, generator=generator)) if len(sets) > 1 else 0
        fs = sets[k]
        idx = torch.randint(0, fs.frames.shape[0], (self.config.batch_size,), generator=generator)
        y0 = fs.frames[idx].to(self.device) / self.length_scale
        boxes = None if fs.boxes is None else fs.boxes[idx]
        total = denoising_loss(model, self.sde, y0, fs.descriptor, generator, self.config.t_min, boxes)
        return total, (float(total.detach()),)


def vocabulary_of(descriptors: Sequence[Descriptor]) -> Optional[BeadVocabulary]:
    """The named bead types of the training systems (None when a system's types are known only by index)."""
    if any(d.type_names is None for d in descriptors):
        return None
    vocab = BeadVocabulary([], [])
    for d in descriptors:
        for k in torch.unique(d.bead_types).tolist():
            vocab.add(d.type_names[k], d.type_graphs[k])
    return vocab


def save_dig_model(loop: TrainingLoop, sde: VPSDE, descriptors: Sequence[Descriptor], extra: dict):
    """Write the trained (EMA) DiG model of ``loop`` into its run directory (no-op without one), with the
    vocabulary of the ``descriptors`` it was trained on."""
    if loop.out_dir is None:
        return
    config = {"model": loop.model.config(), "sde": sde.config()}
    extra = dict(extra)
    vocab = vocabulary_of(descriptors)
    extra.update({"vocab": vocab.to_dict() if vocab is not None else None,
                  "training": loop.config.to_dict(), "iterations": loop.iteration,
                  "final_loss": loop.losses[-1][0] if loop.losses else None})
    save_model_dir(loop.out_dir, MODEL_KIND, config, loop.final_state_dict(), extra, overwrite=True)


def frames_fingerprint(frame_sets: Sequence["FrameSet"]) -> dict:
    """What identifies the training frames of a run: per system its frame and bead counts, bead types, and a
    hash of its first and last frames."""
    return {
        "n_frames": [int(fs.frames.shape[0]) for fs in frame_sets],
        "n_beads": [int(fs.frames.shape[1]) for fs in frame_sets],
        "bead_types": [fs.descriptor.bead_types.tolist() for fs in frame_sets],
        "type_names": [fs.descriptor.type_names for fs in frame_sets],
        "frames_sha256": [array_digest(fs.frames[0].numpy(), fs.frames[-1].numpy()) for fs in frame_sets],
    }


def descriptor_to_dict(descriptor: Descriptor) -> dict:
    """JSON form of a descriptor (stored with the model so ``cgml sample`` knows the trained systems)."""
    return {"bead_types": descriptor.bead_types.tolist(), "bonds": descriptor.bonds.tolist(),
            "box": None if descriptor.box is None else descriptor.box.tolist(),
            "type_graphs": descriptor.type_graphs, "type_names": descriptor.type_names}


def descriptor_from_dict(values: dict) -> Descriptor:
    return Descriptor(values["bead_types"], values["bonds"] or None, values.get("box"), values.get("type_graphs"),
                      values.get("type_names"))


def fit_dig(
    frame_sets: Sequence[FrameSet],
    config: Optional[DiGConfig] = None,
    out_dir: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    resume: bool = False,
    progress: bool = True,
    extra: Optional[dict] = None,
    callback: Optional[Callable[[int, float], None]] = None,
    init: Optional[DiGScoreModel] = None,
) -> Tuple[DiGScoreModel, VPSDE]:
    """Train a DiG model by denoising score matching on in-memory frame sets; returns (EMA model, sde).

    ``init`` fine-tunes a trained model (e.g. PIDP-pre-trained from an energy) instead of starting from random
    weights: the network settings of ``config`` must match it, and its length scale is kept.

    Each iteration draws one system (probability proportional to its frame count) and ``batch_size`` of its
    frames. With ``out_dir`` the run is checkpointed every ``checkpoint_every`` iterations and ``resume=True``
    continues a checkpointed run exactly (same weights as an uninterrupted run); the final model is saved there.
    ``callback(iteration, loss)`` is called after every iteration.
    """
    config = DiGConfig.coerce(config)
    if not frame_sets:
        raise ValueError("fit_dig needs at least one frame set")
    device = torch.device(device)
    length = init.length_scale if init is not None else config.length_scale
    if length is None:
        length = float(np.sqrt(np.mean([fs.rms_coordinate() ** 2 for fs in frame_sets])))
        length = max(length, 1e-3)
    sde = config.make_sde()
    with torch.random.fork_rng(devices=[]):  # seeded weight initialisation without touching the global RNG
        torch.manual_seed(int(config.seed))
        model = config.make_model(length)
    fingerprint = frames_fingerprint(frame_sets)
    if init is not None:
        if init.config() != model.config():
            diff = sorted(k for k, v in model.config().items() if init.config().get(k) != v)
            raise ValueError(f"the model to fine-tune has other network settings ({', '.join(diff)}); use its config")
        model.load_state_dict(init.state_dict())
        fingerprint["init_sha256"] = array_digest(*[v.detach().cpu().numpy() for v in init.state_dict().values()])
    has_ckpt = prepare_run_dir(out_dir, config, resume, fingerprint)
    extra = dict(extra or {})
    extra.setdefault("systems", [descriptor_to_dict(fs.descriptor) for fs in frame_sets])
    loop = TrainingLoop(model, config, DSMObjective(frame_sets, sde, config, length, device), out_dir, device,
                        desc="DiG DSM")
    loop.run(resume=has_ckpt, progress=progress,
             callback=None if callback is None else (lambda i, terms: callback(i, terms[0])))
    save_dig_model(loop, sde, [fs.descriptor for fs in frame_sets], extra)
    model = loop.model
    model.load_state_dict(loop.final_state_dict())
    return model.eval(), sde


MAPPING_KEYS = ("atoms_per_bead", "single_bead_residues", "whole_residues")


def frame_sets_from_datasets(dataset_paths: Sequence[str], config: DiGConfig):
    """Read CG datasets into frame sets with a shared bead-type vocabulary.

    Returns (frame_sets, beadmaps, mapping) where ``mapping`` holds the mapping settings
    (atoms_per_bead, single_bead_residues, whole_residues) found in the first dataset's provenance.
    """
    from ..data.dataset import CGDataset

    if isinstance(dataset_paths, (str, os.PathLike)):
        dataset_paths = [dataset_paths]
    if not dataset_paths:
        raise ValueError("give at least one CG dataset file to train DiG on")
    sets, beadmaps, mapping = [], [], {}
    for path in dataset_paths:
        if not os.path.exists(str(path)):
            raise FileNotFoundError(f"CG dataset {path} does not exist")
        with CGDataset(str(path)) as ds:
            bm = ds.beadmap
            ref = (ds.provenance or {}).get("reference_config") or {}
            if not mapping:
                mapping = {k: ref[k] for k in MAPPING_KEYS if k in ref}
            sel = slice(None, None, max(int(config.stride), 1))
            frames = np.asarray(ds.positions[sel], dtype=np.float32)
            boxes = None if ds.box is None else np.asarray(ds.box[sel], dtype=np.float32)
            if config.max_frames is not None:
                frames = frames[: config.max_frames]
                boxes = None if boxes is None else boxes[: config.max_frames]
            if frames.shape[0] == 0:
                raise ValueError(f"{path} holds no frames to train on")
            if boxes is not None and config.cutoff is None:
                raise ValueError(f"{path} is periodic: set a finite DiG cutoff (nm) in the config")
            desc = Descriptor.from_beadmap(bm, None if boxes is None else boxes[0])
            if boxes is not None:
                frames = wrap(frames, boxes[:, None, :])
            sets.append(FrameSet(frames, desc, boxes))
            beadmaps.append(bm)
    return sets, beadmaps, mapping


def train_dig(
    dataset_paths: Union[str, Sequence[str]],
    out_dir: str,
    config: Union[DiGConfig, dict, str, None] = None,
    device: Union[str, torch.device] = "cpu",
    resume: bool = False,
    progress: bool = True,
    callback: Optional[Callable[[int, float], None]] = None,
) -> str:
    """Train DiG by denoising score matching on CG dataset files; returns the model directory ``out_dir``.

    ``config`` is a :class:`DiGConfig`, a dict of its fields, or a YAML file path; ``callback(iteration, loss)``
    runs after every iteration (logging; raise to stop). A resume on other data or with another config is
    refused. The model directory also gets
    ``beadmap_<k>.json`` for each training system (so samples can be written with a bead topology) and records
    the datasets' mapping settings in its ``extra["mapping"]``.
    """
    config = DiGConfig.coerce(config)
    sets, beadmaps, mapping = frame_sets_from_datasets(dataset_paths, config)
    paths = [str(dataset_paths)] if isinstance(dataset_paths, (str, os.PathLike)) else [str(p) for p in dataset_paths]
    fit_dig(sets, config, out_dir, device, resume, progress,
            extra={"trained_on": [provenance_path(p) for p in paths], "method": "dsm", "mapping": mapping},
            callback=callback)
    for k, bm in enumerate(beadmaps):  # each written under a temporary name, then renamed
        path = os.path.join(out_dir, f"beadmap_{k}.json")
        bm.to_json(path + ".tmp")
        os.replace(path + ".tmp", path)
    return out_dir


def train_dig_main(dataset_paths, out_dir: str, config_path: Optional[str] = None, device: str = "cpu",
                   resume: bool = True) -> str:
    """``cgml train-dig DATASET... -o DIG_DIR [--config YAML] [--device D] [--no-resume]``: train and print
    where the model went; returns ``out_dir``."""
    train_dig(dataset_paths, out_dir, config_path, device, resume, progress=True)
    print(f"DiG model written to {out_dir}")
    return out_dir


def load_dig(path: str) -> Tuple[DiGScoreModel, VPSDE, Optional[BeadVocabulary]]:
    """Load a DiG model directory; returns (model in eval mode, its SDE, its :class:`BeadVocabulary` or None)."""
    config, state_dict, extra = load_model_dir(path, MODEL_KIND)
    try:
        model = DiGScoreModel(**config["model"])
        sde = VPSDE(**config["sde"])
        model.load_state_dict(state_dict)
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"{path} does not hold a consistent DiG model: {err}") from None
    vocab = extra.get("vocab")
    return model.eval(), sde, BeadVocabulary(**vocab) if vocab else None


def load_dig_systems(path: str) -> List[Descriptor]:
    """Descriptors of the systems a DiG model directory was trained on (in training order)."""
    _, _, extra = load_model_dir(path, MODEL_KIND)
    return [descriptor_from_dict(d) for d in extra.get("systems") or []]
