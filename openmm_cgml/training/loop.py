"""The one checkpointed, resumable training loop that every trainer plugs its loss into.

A trainer is an *objective*: a small object with

* ``names``: the names of the loss terms it reports (e.g. ``("nll", "dsm")``);
* ``loss(model, generator) -> (total, terms)``: the loss on one batch, a differentiable scalar ``total`` and a
  tuple of floats, one per name. All randomness comes from ``generator``.

and optionally ``start(generator)`` (first draws of a fresh run, e.g. the data order), ``after_step(model,
generator, iteration) -> dict`` (bookkeeping after the optimiser step, e.g. end of an epoch; returns extra progress
bar fields), ``state_dict()`` / ``load_state_dict(state)`` (what it must checkpoint) and, for data-parallel
training, ``shard(rank, world_size)`` (from then on ``loss`` returns this rank's contribution to the mean over the
whole batch; see :mod:`~openmm_cgml.training.distributed`). The loop owns the model,
the Adam optimiser, the cosine learning-rate schedule, gradient clipping, the exponential moving average of the
weights, divergence detection, the progress bar and the checkpoints. Computing the loss of a batch is kept apart
from the loop so that data-parallel training can wrap the same loop.

A run directory holds ``config.yaml`` (the run's configuration), ``training_data.json`` (a fingerprint of the
training data, recorded when the run starts) and ``checkpoint.pt``: model, EMA, optimiser, the run's generator, the
global torch/NumPy/Python RNG states, the iteration and the loss history, saved as plain tensors, numbers and lists
with ``torch.save`` and loaded with ``weights_only=True``. A run killed and resumed from its checkpoint ends with
exactly the weights of an uninterrupted run.

Inside a process group of more than one rank (``torchrun``) the loop trains under DistributedDataParallel: the
objective is sharded, the divergence check and the reported losses use the values summed over ranks, gradients
are clipped after DDP's all-reduce (identical on every rank, so EMA and the optimiser stay in step), and only rank
0 writes checkpoints; every rank resumes from the same ``checkpoint.pt``.
"""
import hashlib
import json
import math
import os
import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from . import distributed
from .schema import Config, check

CHECKPOINT = "checkpoint.pt"
CONFIG_FILE = "config.yaml"
DATA_FILE = "training_data.json"
MANIFEST = "cgml_model.json"


@dataclass
class OptimConfig(Config):
    """Optimisation settings shared by every trainer (learning rates per iteration of Adam)."""

    batch_size: int = 8  # examples per iteration (what an example is depends on the trainer)
    n_iterations: int = 5000
    lr: float = 1e-3
    lr_final: float = 1e-4  # cosine decay from lr to lr_final over n_iterations
    weight_decay: float = 0.0  # Adam's L2 penalty
    grad_clip: float = 1.0  # largest gradient norm; 0 disables clipping
    ema_decay: float = 0.0  # exponential moving average of the weights (the final model); 0 disables it
    checkpoint_every: int = 200  # iterations between checkpoints; 0: only at the end
    seed: int = 0

    def validate(self):
        super().validate()
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.n_iterations >= 0, f"n_iterations must be >= 0, got {self.n_iterations}")
        check(self.lr > 0 and self.lr_final >= 0, f"need lr > 0 and lr_final >= 0, got {self.lr}, {self.lr_final}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.grad_clip >= 0, f"grad_clip must be >= 0 (0: no clipping), got {self.grad_clip}")
        check(0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        check(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")


def cosine_lr(config: OptimConfig, iteration: int) -> float:
    """Learning rate at ``iteration``: cosine from ``lr`` to ``lr_final`` over ``n_iterations`` (a pure function of
    the iteration, so a resumed run follows the same schedule)."""
    frac = min(iteration / max(int(config.n_iterations), 1), 1.0)
    return config.lr_final + 0.5 * (config.lr - config.lr_final) * (1.0 + math.cos(math.pi * frac))


# ------------------------------------------------------------------------------------------- global RNG states
def _numpy_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.as_tensor(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_state(state: dict):
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                         state["gauss"]))


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_state(state: list):
    random.setstate((state[0], tuple(state[1]), state[2]))


# ------------------------------------------------------------------------------------------- run directory
def _write_json(path: str, value):
    text = json.dumps(value, indent=1, sort_keys=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def prepare_run_dir(out_dir: Optional[str], config: Config, resume: bool, fingerprint: Optional[dict] = None) -> bool:
    """Create ``out_dir`` (or check it for a resume) and record the config and data fingerprint.

    A directory that already holds a run is refused unless ``resume``; a resume with another config or on other
    data (``fingerprint`` differs from the one recorded when the run started) is refused in one line. Returns
    whether a checkpoint to resume from exists.
    """
    if out_dir is None:
        return False
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir} is a file; give a directory for the training run")
    ckpt = os.path.join(out_dir, CHECKPOINT)
    started = os.path.exists(ckpt) or os.path.exists(os.path.join(out_dir, MANIFEST))
    if started and not resume:
        raise ValueError(f"{out_dir} already holds a training run; pass resume=True or choose another directory")
    config_path, data_path = os.path.join(out_dir, CONFIG_FILE), os.path.join(out_dir, DATA_FILE)
    if resume and os.path.exists(config_path):
        saved = type(config).from_yaml(config_path).to_dict()
        diff = sorted(k for k, v in config.to_dict().items() if saved.get(k) != v)
        if diff:
            raise ValueError(f"config differs from the one saved in {out_dir} (keys {diff}); resume with the same "
                             "config or choose another directory")
    if resume and fingerprint is not None and os.path.exists(data_path):
        try:
            with open(data_path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            raise ValueError(f"{data_path} is unreadable; delete the run directory to start over") from None
        if saved != json.loads(json.dumps(fingerprint)):
            keys = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
            raise ValueError(f"{out_dir} was trained on other data ({', '.join(keys)} differ); resume with the same "
                             "datasets or choose another directory")
    os.makedirs(out_dir, exist_ok=True)
    config.to_yaml(config_path)
    if fingerprint is not None:
        _write_json(data_path, fingerprint)
    return resume and os.path.exists(ckpt)


def provenance_path(path: str) -> str:
    """``path`` as a run records it: relative to the working directory when it lies inside it, else absolute.

    A model trained in a checkout then names its data by repository paths, which stay true on every clone.
    """
    full = os.path.abspath(path)
    inside = os.path.commonpath([full, os.getcwd()]) == os.getcwd()
    return os.path.relpath(full) if inside else full


def array_digest(*arrays) -> str:
    """SHA-256 (hex, first 16 digits) of arrays' float32 bytes: a content fingerprint that ignores file names."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------- the loop
class TrainingLoop:
    """Optimise ``model`` on ``objective``'s loss with checkpoints in ``out_dir`` (None: in memory only).

    Attributes: ``iteration`` (completed iterations), ``start_iteration`` (where this call of :meth:`run` began:
    the checkpoint's iteration on a resume, 0 otherwise), ``losses`` (one list of term values per iteration).
    """

    def __init__(self, model: torch.nn.Module, config: OptimConfig, objective, out_dir: Optional[str] = None,
                 device="cpu", desc: str = "training"):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.config = config
        self.objective = objective
        self.out_dir = out_dir
        self.desc = desc
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.ema: Optional[Dict[str, torch.Tensor]] = None
        if config.ema_decay > 0:
            self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.generator = torch.Generator().manual_seed(int(config.seed))
        self.iteration = 0
        self.start_iteration = 0
        self.losses: List[List[float]] = []
        if hasattr(objective, "start"):
            objective.start(self.generator)
        self.world_size = distributed.world_size() if distributed.is_distributed() else 1
        self._ddp = None
        if self.world_size > 1:
            if not hasattr(objective, "shard"):
                raise ValueError(f"{type(objective).__name__} cannot be trained data-parallel (it has no shard()); "
                                 "run it in one process")
            objective.shard(distributed.rank(), self.world_size)
            self._ddp = distributed.wrap(self.model, objective, self.device)

    # ---------------------------------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Optional[str]:
        return None if self.out_dir is None else os.path.join(self.out_dir, CHECKPOINT)

    def state_dict(self) -> dict:
        n_terms = len(self.objective.names)
        return {
            "model": self.model.state_dict(),
            "ema": self.ema if self.ema is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": _numpy_state(),
            "python_rng": _python_state(),
            "iteration": self.iteration,
            "losses": torch.tensor(self.losses, dtype=torch.float64).reshape(-1, n_terms),
            "objective": self.objective.state_dict() if hasattr(self.objective, "state_dict") else {},
        }

    def save_checkpoint(self):
        """Write ``checkpoint.pt`` atomically (no-op without ``out_dir`` and on ranks other than 0)."""
        if self.out_dir is None or not distributed.is_main():
            return
        torch.save(self.state_dict(), self.checkpoint_path + ".tmp")
        os.replace(self.checkpoint_path + ".tmp", self.checkpoint_path)

    def load_checkpoint(self):
        """Restore everything from ``checkpoint.pt``; an unreadable or inconsistent one gives one line."""
        path = self.checkpoint_path
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state["model"])
            if self.ema is not None:
                self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
                if set(self.ema) != set(self.model.state_dict()):
                    raise KeyError("ema")
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            _set_numpy_state(state["numpy_rng"])
            _set_python_state(state["python_rng"])
            self.iteration = int(state["iteration"])
            self.losses = state["losses"].tolist()
            if hasattr(self.objective, "load_state_dict"):
                self.objective.load_state_dict(state["objective"])
        except Exception as err:  # any unreadable or inconsistent checkpoint: one clear line, nothing changed on disk
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"cannot resume from {path} ({first}); delete it or pass resume=False") from None

    # ---------------------------------------------------------------------------------------- EMA
    def _update_ema(self):
        if self.ema is None:
            return
        decay = self.config.ema_decay
        d = min(decay, (1.0 + self.iteration) / (10.0 + self.iteration))  # warm-up: early weights fade fast
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                if v.dtype.is_floating_point:
                    self.ema[k].mul_(d).add_(v.detach(), alpha=1.0 - d)
                else:
                    self.ema[k].copy_(v)

    def final_state_dict(self) -> Dict[str, torch.Tensor]:
        """The weights of the trained model: the EMA if enabled, else the current weights."""
        return self.ema if self.ema is not None else self.model.state_dict()

    # ---------------------------------------------------------------------------------------- iterations
    def step(self) -> List[float]:
        """One optimiser step on one batch; returns the loss terms."""
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_lr(self.config, self.iteration)
        if self._ddp is None:
            total, terms = self.objective.loss(self.model, self.generator)
            checked = total
        else:  # this rank's contribution to the batch mean; the check and the reported terms use the sums
            total, terms = self._ddp(self.generator)
            summed = distributed.all_reduce_sum([total.detach()] + list(terms), self.device)
            checked, terms = summed[0], summed[1:].tolist()
            total = total * self.world_size  # DDP averages the gradients over ranks
        if not torch.isfinite(checked):
            raise FloatingPointError(f"{self.desc} loss became {float(checked)} at iteration {self.iteration}; "
                                     "lower lr")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.iteration += 1
        self._update_ema()
        terms = [float(v) for v in terms]
        self.losses.append(terms)
        return terms

    def run(self, resume: bool = False, progress: bool = True,
            callback: Optional[Callable[[int, List[float]], None]] = None):
        """Iterate until ``config.n_iterations`` (from the checkpoint if ``resume``), checkpointing every
        ``checkpoint_every`` iterations and at the end. ``callback(iteration, terms)`` runs after every iteration
        (logging; raise to stop)."""
        if resume:
            self.load_checkpoint()
        self.start_iteration = self.iteration
        n_total = int(self.config.n_iterations)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_total, initial=self.iteration, desc=self.desc, unit="it")
        self.model.train()
        try:
            while self.iteration < n_total:
                terms = self.step()
                extra = self.objective.after_step(self.model, self.generator, self.iteration) \
                    if hasattr(self.objective, "after_step") else None
                if bar is not None:
                    post = {name: f"{value:.4g}" for name, value in zip(self.objective.names, terms)}
                    post.update(extra or {})
                    bar.set_postfix(post)
                    bar.update(1)
                every = int(self.config.checkpoint_every)
                if every and self.iteration % every == 0:
                    self.save_checkpoint()
                if callback is not None:
                    callback(self.iteration, terms)
        finally:
            if bar is not None:
                bar.close()
        self.save_checkpoint()
        self.model.eval()
