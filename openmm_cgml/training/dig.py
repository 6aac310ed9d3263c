"""Training DiG by denoising score matching on CG frames, with checkpoints and exact resume.

An output directory holds ``config.yaml`` (the training configuration), ``checkpoint.pt`` (model, EMA, optimiser
and RNG state; loaded with ``weights_only=True``) and, at the end, the model written by
``nn.io.save_model_dir(kind="cgml-dig")``. :func:`load_dig` reads it back.
"""
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import yaml

from ..nn.dig_model import Descriptor, DiGScoreModel
from ..nn.io import load_model_dir, save_model_dir
from ..nn.sde import VPSDE

MODEL_KIND = "cgml-dig"
CHECKPOINT = "checkpoint.pt"
CONFIG_FILE = "config.yaml"


@dataclass
class DiGConfig:
    """Hyper-parameters of a DiG model and its training (lengths in nm)."""

    # network
    hidden: int = 64
    n_layers: int = 4
    heads: int = 4
    n_rbf: int = 32
    n_time: int = 16
    embed_dim: int = 16
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
    # optimisation
    batch_size: int = 32
    n_iterations: int = 5000
    lr: float = 1e-3
    lr_final: float = 1e-4  # cosine decay from lr to lr_final
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # 0 disables the exponential moving average of the weights
    checkpoint_every: int = 500
    seed: int = 0
    # data
    stride: int = 1  # use every stride-th frame
    max_frames: Optional[int] = None  # per dataset, after striding

    @classmethod
    def from_dict(cls, values: dict) -> "DiGConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown DiG config keys {unknown}; valid keys: {sorted(names)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str) -> "DiGConfig":
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of DiG config keys")
        return cls.from_dict(values)

    def to_yaml(self, path: str):
        with open(path, "w") as f:
            yaml.safe_dump(dataclasses.asdict(self), f, sort_keys=False)

    def make_sde(self) -> VPSDE:
        return VPSDE(self.schedule, self.beta_min, self.beta_max, self.n_steps)

    def make_model(self, n_types: int, length_scale: float) -> DiGScoreModel:
        return DiGScoreModel(n_types, length_scale, self.cutoff, None, self.hidden, self.n_layers, self.heads,
                             self.n_rbf, self.n_time, self.embed_dim, self.time_max_freq,
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
            self.frames = self.frames - self.frames.mean(dim=1, keepdim=True)

    @property
    def periodic(self) -> bool:
        return self.boxes is not None

    def rms_coordinate(self) -> float:
        """RMS of a centred coordinate, nm (the default length scale)."""
        f = self.frames - self.frames.mean(dim=1, keepdim=True)
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
        eps = eps - eps.mean(dim=1, keepdim=True)
    tt = t.view(b, 1, 1)
    y_t = sde.marginal_mean_coef(tt) * y0 + sde.marginal_std(tt) * eps
    types, bonds, batch = descriptor.batched(b)
    pred = model(y_t.reshape(b * n, 3), t, types.to(device), bonds.to(device), batch.to(device),
                 None if boxes is None else boxes.to(device))
    return ((pred.reshape(b, n, 3) - eps) ** 2).mean()


def cosine_lr(config, iteration: int, n_iterations: int) -> float:
    """Learning rate at ``iteration``: cosine from config.lr to config.lr_final (a pure function, so resume is exact)."""
    frac = min(iteration / max(n_iterations, 1), 1.0)
    return config.lr_final + 0.5 * (config.lr - config.lr_final) * (1.0 + math.cos(math.pi * frac))


class TrainingRun:
    """Model + EMA + optimiser + RNG with checkpointing; shared by the DSM and PIDP trainers.

    ``loss_fn(model, generator) -> scalar`` is called once per iteration.
    """

    def __init__(self, model: DiGScoreModel, config, out_dir: Optional[str], device, extra: dict):
        self.model = model.to(device)
        self.config = config
        self.out_dir = out_dir
        self.device = device
        self.extra = extra
        self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(int(config.seed))
        self.iteration = 0
        self.losses: List[float] = []

    def checkpoint_path(self) -> Optional[str]:
        return None if self.out_dir is None else os.path.join(self.out_dir, CHECKPOINT)

    def save_checkpoint(self):
        if self.out_dir is None:
            return
        state = {
            "model": self.model.state_dict(),
            "ema": self.ema,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "iteration": self.iteration,
            "losses": list(self.losses),
        }
        tmp = self.checkpoint_path() + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path())

    def load_checkpoint(self):
        state = torch.load(self.checkpoint_path(), map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.iteration = int(state["iteration"])
        self.losses = [float(v) for v in state["losses"]]

    def _update_ema(self):
        decay = self.config.ema_decay
        if decay <= 0:
            self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return
        d = min(decay, (1.0 + self.iteration) / (10.0 + self.iteration))
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                if v.dtype.is_floating_point:
                    self.ema[k].mul_(d).add_(v.detach(), alpha=1.0 - d)
                else:
                    self.ema[k].copy_(v)

    def run(self, loss_fn: Callable, progress: bool = True, desc: str = "DiG", callback: Optional[Callable] = None):
        """Iterate until ``config.n_iterations``; ``callback(iteration, loss)`` runs after each step (logging,
        early stop by raising)."""
        n_total = int(self.config.n_iterations)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n_total, initial=self.iteration, desc=desc, unit="it")
        self.model.train()
        while self.iteration < n_total:
            for group in self.optimizer.param_groups:
                group["lr"] = cosine_lr(self.config, self.iteration, n_total)
            loss = loss_fn(self.model, self.generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"DiG loss became {float(loss)} at iteration {self.iteration}; lower lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.iteration += 1
            self._update_ema()
            value = float(loss.detach())
            self.losses.append(value)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            if self.config.checkpoint_every and self.iteration % int(self.config.checkpoint_every) == 0:
                self.save_checkpoint()
            if callback is not None:
                callback(self.iteration, value)
        if bar is not None:
            bar.close()
        self.model.eval()

    def final_model(self) -> DiGScoreModel:
        """The model with the EMA weights loaded."""
        self.model.load_state_dict(self.ema)
        return self.model.eval()

    def save_model(self, sde: VPSDE, type_names: Optional[Sequence[str]]):
        if self.out_dir is None:
            return
        config = {"model": self.model.config(), "sde": sde.config()}
        extra = dict(self.extra)
        extra.update({"type_names": list(type_names) if type_names is not None else None,
                      "training": dataclasses.asdict(self.config), "iterations": self.iteration,
                      "final_loss": self.losses[-1] if self.losses else None})
        save_model_dir(self.out_dir, MODEL_KIND, config, self.ema, extra, overwrite=True)


def prepare_out_dir(out_dir: Optional[str], config, resume: bool):
    """Create ``out_dir`` (or check it for resuming) and write config.yaml; returns whether a checkpoint exists."""
    if out_dir is None:
        return False
    ckpt = os.path.join(out_dir, CHECKPOINT)
    if (os.path.exists(ckpt) or os.path.exists(os.path.join(out_dir, "cgml_model.json"))) and not resume:
        raise ValueError(f"{out_dir} already holds a training run; pass resume=True or choose another directory")
    if resume and os.path.exists(os.path.join(out_dir, CONFIG_FILE)):
        saved = type(config).from_yaml(os.path.join(out_dir, CONFIG_FILE))
        if dataclasses.asdict(saved) != dataclasses.asdict(config):
            raise ValueError(f"config differs from the one saved in {out_dir}; resume with the same config")
    os.makedirs(out_dir, exist_ok=True)
    config.to_yaml(os.path.join(out_dir, CONFIG_FILE))
    return os.path.exists(ckpt)


def descriptor_to_dict(descriptor: Descriptor) -> dict:
    """JSON form of a descriptor (stored with the model so ``cgml sample`` knows the trained systems)."""
    return {"bead_types": descriptor.bead_types.tolist(), "bonds": descriptor.bonds.tolist(),
            "box": None if descriptor.box is None else descriptor.box.tolist()}


def descriptor_from_dict(values: dict) -> Descriptor:
    return Descriptor(values["bead_types"], values["bonds"] or None, values.get("box"))


def fit_dig(
    frame_sets: Sequence[FrameSet],
    config: Optional[DiGConfig] = None,
    n_types: Optional[int] = None,
    type_names: Optional[Sequence[str]] = None,
    out_dir: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    resume: bool = False,
    progress: bool = True,
    extra: Optional[dict] = None,
    callback: Optional[Callable[[int, float], None]] = None,
) -> Tuple[DiGScoreModel, VPSDE]:
    """Train a DiG model by denoising score matching on in-memory frame sets; returns (EMA model, sde).

    Each iteration draws one system (probability proportional to its frame count) and ``batch_size`` of its
    frames. With ``out_dir`` the run is checkpointed every ``checkpoint_every`` iterations and ``resume=True``
    continues a checkpointed run exactly (same weights as an uninterrupted run); the final model is saved there.
    ``callback(iteration, loss)`` is called after every iteration.
    """
    config = config or DiGConfig()
    if not frame_sets:
        raise ValueError("fit_dig needs at least one frame set")
    device = torch.device(device)
    n_types = n_types or max(int(fs.descriptor.bead_types.max()) + 1 for fs in frame_sets)
    length = config.length_scale
    if length is None:
        length = float(np.sqrt(np.mean([fs.rms_coordinate() ** 2 for fs in frame_sets])))
        length = max(length, 1e-3)
    sde = config.make_sde()
    with torch.random.fork_rng(devices=[]):  # seeded weight initialisation without touching the global RNG
        torch.manual_seed(int(config.seed))
        model = config.make_model(n_types, length)
    has_ckpt = prepare_out_dir(out_dir, config, resume)
    extra = dict(extra or {})
    extra.setdefault("systems", [descriptor_to_dict(fs.descriptor) for fs in frame_sets])
    run = TrainingRun(model, config, out_dir, device, extra)
    if resume and has_ckpt:
        run.load_checkpoint()
    weights = torch.tensor([float(fs.frames.shape[0]) for fs in frame_sets])

    def loss_fn(model, gen):
        k = int(torch.multinomial(weights, 1, generator=gen)) if len(frame_sets) > 1 else 0
        fs = frame_sets[k]
        idx = torch.randint(0, fs.frames.shape[0], (config.batch_size,), generator=gen)
        y0 = fs.frames[idx].to(device) / length
        boxes = None if fs.boxes is None else fs.boxes[idx]
        return denoising_loss(model, sde, y0, fs.descriptor, gen, config.t_min, boxes)

    run.run(loss_fn, progress, "DiG DSM", callback)
    run.save_checkpoint()
    model = run.final_model()
    run.save_model(sde, type_names)
    return model, sde


MAPPING_KEYS = ("atoms_per_bead", "single_bead_residues", "whole_residues")


def frame_sets_from_datasets(dataset_paths: Sequence[str], config: DiGConfig):
    """Read CG datasets into frame sets with a shared bead-type vocabulary.

    Returns (frame_sets, type_names, beadmaps, mapping) where ``mapping`` holds the mapping settings
    (atoms_per_bead, single_bead_residues, whole_residues) found in the first dataset's provenance.
    """
    from ..data.dataset import CGDataset

    if isinstance(dataset_paths, (str, os.PathLike)):
        dataset_paths = [dataset_paths]
    if not dataset_paths:
        raise ValueError("give at least one CG dataset file to train DiG on")
    vocab: List[str] = []
    sets, beadmaps, mapping = [], [], {}
    for path in dataset_paths:
        if not os.path.exists(str(path)):
            raise FileNotFoundError(f"CG dataset {path} does not exist")
        with CGDataset(str(path)) as ds:
            bm = ds.beadmap
            ref = (ds.provenance or {}).get("reference_config") or {}
            if not mapping:
                mapping = {k: ref[k] for k in MAPPING_KEYS if k in ref}
            names = [str(n) for n in bm.type_names]
            for name in names:
                if name not in vocab:
                    vocab.append(name)
            types = np.array([vocab.index(names[k]) for k in np.asarray(bm.bead_types)], dtype=np.int64)
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
            desc = Descriptor(types, np.asarray(bm.bonds, dtype=np.int64).reshape(-1, 2),
                              None if boxes is None else boxes[0])
            if boxes is not None:
                frames = frames - boxes[:, None, :] * np.floor(frames / boxes[:, None, :])  # wrap into the box
            sets.append(FrameSet(frames, desc, boxes))
            beadmaps.append(bm)
    return sets, vocab, beadmaps, mapping


def _as_config(config) -> "DiGConfig":
    if isinstance(config, (str, os.PathLike)):
        return DiGConfig.from_yaml(str(config))
    if isinstance(config, dict):
        return DiGConfig.from_dict(config)
    if config is None:
        return DiGConfig()
    if not isinstance(config, DiGConfig):
        raise TypeError("config must be a DiGConfig, a dict of its fields or a YAML file path")
    return config


def train_dig(
    dataset_paths: Union[str, Sequence[str]],
    out_dir: str,
    config: Union[DiGConfig, dict, str, None] = None,
    device: Union[str, torch.device] = "cpu",
    resume: bool = False,
    progress: bool = True,
) -> str:
    """Train DiG by denoising score matching on CG dataset files; returns the model directory ``out_dir``.

    ``config`` is a :class:`DiGConfig`, a dict of its fields, or a YAML file path. The model directory also gets
    ``beadmap_<k>.json`` for each training system (so samples can be written with a bead topology) and records
    the datasets' mapping settings in its ``extra["mapping"]``.
    """
    config = _as_config(config)
    sets, vocab, beadmaps, mapping = frame_sets_from_datasets(dataset_paths, config)
    paths = [str(dataset_paths)] if isinstance(dataset_paths, (str, os.PathLike)) else [str(p) for p in dataset_paths]
    fit_dig(sets, config, len(vocab), vocab, out_dir, device, resume, progress,
            extra={"trained_on": [os.path.abspath(p) for p in paths], "method": "dsm", "mapping": mapping})
    for k, bm in enumerate(beadmaps):
        bm.to_json(os.path.join(out_dir, f"beadmap_{k}.json"))
    return out_dir


def train_dig_main(dataset_paths, out_dir: str, config_path: Optional[str] = None, device: str = "cpu",
                   resume: bool = True) -> str:
    """``cgml train-dig DATASET... -o DIG_DIR [--config YAML] [--device D] [--no-resume]``: train and print
    where the model went; returns ``out_dir``."""
    train_dig(dataset_paths, out_dir, config_path, device, resume, progress=True)
    print(f"DiG model written to {out_dir}")
    return out_dir


def load_dig(path: str) -> Tuple[DiGScoreModel, VPSDE, Optional[List[str]]]:
    """Load a DiG model directory; returns (model in eval mode, its SDE, bead-type vocabulary or None)."""
    config, state_dict, extra = load_model_dir(path, MODEL_KIND)
    try:
        model = DiGScoreModel(**config["model"])
        sde = VPSDE(**config["sde"])
        model.load_state_dict(state_dict)
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"{path} does not hold a consistent DiG model: {err}") from None
    return model.eval(), sde, extra.get("type_names")


def load_dig_systems(path: str) -> List[Descriptor]:
    """Descriptors of the systems a DiG model directory was trained on (in training order)."""
    _, _, extra = load_model_dir(path, MODEL_KIND)
    return [descriptor_from_dict(d) for d in extra.get("systems") or []]
