"""Training the dynamics, score and embedding GNNs on CG datasets, with checkpoints and exact resume.

One training example is a *window* of H + 2 frames spaced ``frames_per_step`` dataset frames apart: H + 1 input
positions give the current position and H velocities (displacements per model step), the last frame gives the
target acceleration ``a = x_{t+1} - x_t - h[-1]`` (Gaussian NLL of the dynamics GNN) and the frame that the score
GNN learns to denoise (denoising score matching over the noise ladder). The embedding GNN is trained end to end
through both losses.

``out_dir`` holds ``config.yaml``, ``checkpoint.pt`` (model, optimiser, RNG states of torch/numpy/python and the
data order, saved as plain tensors/lists and loaded with ``weights_only=True``) and finally the model directory
(``cgml_model.json`` + ``weights.safetensors``). Every random draw of a run comes from one seeded
``torch.Generator``, so a run killed and resumed from its checkpoint ends with exactly the same weights as an
uninterrupted run.
"""
import math
import os
import random
import warnings
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..nn.dynamics import gaussian_nll
from ..nn.embedding import TypeGraphs
from ..nn.score import denoising_loss
from .config import TrainConfig
from .model import BeadVocabulary, CGModel

CHECKPOINT = "checkpoint.pt"
CONFIG_FILE = "config.yaml"
MAPPING_KEYS = ("atoms_per_bead", "single_bead_residues", "whole_residues")


class Trajectory:
    """One CG dataset held in memory: positions (T, N, 3) nm, boxes (T, 3) nm or None, bead types as indices into
    the shared vocabulary, masses (N,) amu, CG bonds (M, 2)."""

    def __init__(self, path, positions, boxes, types, masses, bonds, frame_interval_ps):
        self.path = path
        self.positions = torch.as_tensor(np.asarray(positions, dtype=np.float32))
        self.boxes = None if boxes is None else torch.as_tensor(np.asarray(boxes, dtype=np.float32))
        self.types = torch.as_tensor(np.asarray(types, dtype=np.int64))
        self.masses = torch.as_tensor(np.asarray(masses, dtype=np.float32))
        self.bonds = torch.as_tensor(np.asarray(bonds, dtype=np.int64)).reshape(-1, 2)
        self.frame_interval_ps = frame_interval_ps

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_beads(self) -> int:
        return int(self.positions.shape[1])


def load_trajectories(dataset_paths: Sequence[str], config: TrainConfig):
    """Read CG datasets; returns (trajectories, vocabulary, mapping settings, periodic, frame interval ps)."""
    from ..data.dataset import CGDataset

    if isinstance(dataset_paths, (str, os.PathLike)):
        dataset_paths = [dataset_paths]
    if not dataset_paths:
        raise ValueError("give at least one CG dataset file to train on")
    vocab = BeadVocabulary([], [])
    trajectories, mapping, periodic, interval = [], None, None, None
    for path in map(str, dataset_paths):
        with CGDataset(path) as ds:
            bm = ds.beadmap
            types = [vocab.add(bm.type_names[t], bm.type_graphs[t]) for t in np.asarray(bm.bead_types)]
            n = ds.n_frames if config.max_frames is None else min(ds.n_frames, int(config.max_frames))
            dt = ds.frame_interval_ps
            if interval is None:
                interval, periodic = dt, ds.periodic
                ref = (ds.provenance or {}).get("reference_config") or {}
                mapping = {k: ref[k] for k in MAPPING_KEYS if k in ref}
            elif not math.isclose(dt, interval, rel_tol=1e-6):
                raise ValueError(f"{path} has frames every {dt} ps but the first dataset every {interval} ps")
            elif ds.periodic != periodic:
                raise ValueError(f"{path} and the first dataset differ in periodicity; train on one kind")
            positions = np.asarray(ds.positions[:n], dtype=np.float32)
            boxes = None if ds.box is None else np.asarray(ds.box[:n], dtype=np.float32)
            if boxes is not None and float(boxes.min()) < 2.0 * max(config.cutoff, config.score_cutoff or 0.0):
                raise ValueError(f"{path}: box edge {float(boxes.min()):.3f} nm is shorter than twice the cutoff")
            trajectories.append(Trajectory(path, positions, boxes, types, bm.bead_masses, bm.bonds, dt))
    return trajectories, vocab, mapping, bool(periodic), float(interval)


def make_windows(trajectories: List[Trajectory], config: TrainConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """Train and validation windows, each (W, 2) rows of (trajectory index, current frame t)."""
    k, h = int(config.frames_per_step), int(config.history_length)
    frac = float(config.validation_fraction)
    split = config.split
    if split == "auto":
        split = "trajectory" if len(trajectories) >= 2 else "time"
    n_val_traj = int(math.ceil(frac * len(trajectories))) if split == "trajectory" and frac > 0 else 0
    n_val_traj = min(n_val_traj, len(trajectories) - 1)
    train, val = [], []
    for i, traj in enumerate(trajectories):
        t_all = np.arange(h * k, traj.n_frames - k)
        if i >= len(trajectories) - n_val_traj:
            val += [(i, t) for t in t_all]
        elif split == "time" and frac > 0:
            cut = int(round(traj.n_frames * (1.0 - frac)))
            train += [(i, t) for t in t_all if t + k < cut]
            val += [(i, t) for t in t_all if t - h * k >= cut]
        else:
            train += [(i, t) for t in t_all]
    if not train:
        need = (h + 1) * k + 1
        raise ValueError(f"no training windows: each dataset needs more than {need} frames for history_length={h} "
                         f"and frames_per_step={k} (plus the validation part)")
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.long).reshape(-1, 2)
    return as_tensor(train), as_tensor(val)


class WindowBatch:
    """Windows concatenated into one disconnected graph (all tensors on ``device``)."""

    def __init__(self, trajectories: List[Trajectory], windows: torch.Tensor, config: TrainConfig, device):
        k, h = int(config.frames_per_step), int(config.history_length)
        offsets = torch.arange(-h, 2) * k
        frames, types, masses, bonds, batch, boxes = [], [], [], [], [], []
        start = 0
        for b, (i, t) in enumerate(windows.tolist()):
            traj = trajectories[i]
            frames.append(traj.positions[t + offsets])  # (H + 2, N, 3)
            types.append(traj.types)
            masses.append(traj.masses)
            bonds.append(traj.bonds + start)
            batch.append(torch.full((traj.n_beads,), b, dtype=torch.long))
            if traj.boxes is not None:
                boxes.append(traj.boxes[t])
            start += traj.n_beads
        x = torch.cat(frames, dim=1).to(device)  # (H + 2, sum N, 3)
        self.inputs = x[: h + 1]
        self.next = x[h + 1]
        self.types = torch.cat(types).to(device)
        self.masses = torch.cat(masses).to(device)
        self.bonds = torch.cat(bonds).to(device)
        self.batch = torch.cat(batch).to(device)
        self.box = torch.stack(boxes).to(device) if boxes else None
        self.n_graphs = int(windows.shape[0])


def data_scales(trajectories, windows: torch.Tensor, config: TrainConfig) -> Tuple[float, float]:
    """RMS velocity (nm/step) and acceleration (nm/step²) over up to 256 evenly spaced training windows."""
    pick = windows[torch.linspace(0, windows.shape[0] - 1, min(256, windows.shape[0])).round().long()]
    vel, acc = [], []
    for chunk in pick.split(32):
        wb = WindowBatch(trajectories, chunk, config, "cpu")
        hist = wb.inputs[1:] - wb.inputs[:-1]
        vel.append(hist.reshape(-1))
        acc.append((wb.next - wb.inputs[-1] - hist[-1]).reshape(-1))
    v = float(torch.sqrt(torch.mean(torch.cat(vel) ** 2)))
    a = float(torch.sqrt(torch.mean(torch.cat(acc) ** 2)))
    if not (math.isfinite(v) and math.isfinite(a)):
        raise ValueError("training data contain non-finite displacements")
    return max(v, 1e-6), max(a, 1e-6)


def window_losses(model: CGModel, graphs: TypeGraphs, wb: WindowBatch, config: TrainConfig,
                  levels: torch.Tensor, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """(Gaussian NLL of the accelerations, denoising score-matching loss) of one batch of windows."""
    device = wb.next.device
    embed = model.embedding(graphs)[wb.types]
    zero = torch.zeros((), device=device)
    nll, dsm = zero, zero
    if config.dynamics_weight > 0:
        inputs = wb.inputs
        if config.input_noise > 0:
            # GNS: a random walk of noise on the input positions, std input_noise at the current frame; the target
            # is corrected so that x_noisy + v_noisy + a lands on the true next frame.
            steps = torch.randn(inputs.shape, generator=gen).to(device) * (config.input_noise / math.sqrt(inputs.shape[0]))
            inputs = inputs + torch.cumsum(steps, dim=0)
        hist = inputs[1:] - inputs[:-1]
        x = inputs[-1]
        target = wb.next - x - hist[-1]
        mean, std = model.dynamics(x, hist, embed, wb.masses, wb.bonds, wb.box, wb.batch)
        nll = gaussian_nll(target, mean, std, model.dynamics.accel_scale)
    if config.score_weight > 0:
        level = torch.randint(0, levels.shape[0], (wb.n_graphs,), generator=gen)
        sigma = levels[level].to(device)[wb.batch]
        z = torch.randn(wb.next.shape, generator=gen).to(device)
        score = model.score(wb.next + sigma.unsqueeze(1) * z, sigma, embed, wb.masses, wb.bonds, wb.box, wb.batch)
        dsm = denoising_loss(score, z, sigma)
    return nll, dsm


def cosine_lr(config: TrainConfig, iteration: int) -> float:
    frac = min(iteration / max(int(config.n_iterations), 1), 1.0)
    return config.lr_final + 0.5 * (config.lr - config.lr_final) * (1.0 + math.cos(math.pi * frac))


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


class Trainer:
    """Optimisation state of one run: model, optimiser, generator, data order, loss history."""

    def __init__(self, model: CGModel, config: TrainConfig, trajectories, train_windows, val_windows, device):
        self.model = model.to(device)
        self.config = config
        self.trajectories = trajectories
        self.train_windows = train_windows
        self.val_windows = val_windows
        self.device = torch.device(device)
        self.graphs = TypeGraphs(model.vocab.type_graphs).to(self.device)
        self.levels = torch.tensor(model.config.levels(), dtype=torch.float32)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(int(config.seed))
        self.iteration = 0
        self.epoch = 0
        self.order = torch.randperm(train_windows.shape[0], generator=self.generator)
        self.cursor = 0
        self.losses: List[List[float]] = []  # [nll, dsm] per iteration
        self.validation: List[dict] = []

    # -------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": _numpy_state(),
            "python_rng": _python_state(),
            "iteration": self.iteration,
            "epoch": self.epoch,
            "order": self.order,
            "cursor": self.cursor,
            "losses": torch.tensor(self.losses, dtype=torch.float64).reshape(-1, 2),
            "validation": [[v["epoch"], v["iteration"], v["nll"], v["dsm"]] for v in self.validation],
        }

    def save_checkpoint(self, out_dir: str):
        path = os.path.join(out_dir, CHECKPOINT)
        torch.save(self.state(), path + ".tmp")
        os.replace(path + ".tmp", path)

    def load_checkpoint(self, out_dir: str):
        path = os.path.join(out_dir, CHECKPOINT)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            _set_numpy_state(state["numpy_rng"])
            _set_python_state(state["python_rng"])
            self.iteration, self.epoch, self.cursor = int(state["iteration"]), int(state["epoch"]), int(state["cursor"])
            self.order = state["order"]
            self.losses = state["losses"].tolist()
            self.validation = [dict(zip(("epoch", "iteration", "nll", "dsm"), v)) for v in state["validation"]]
        except Exception as err:  # any unreadable or inconsistent checkpoint: one clear line, nothing changed on disk
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"cannot resume from {path} ({first}); delete it or pass resume=False") from None
        if self.order.shape[0] != self.train_windows.shape[0]:
            raise ValueError(f"{path} was written for other training data; use the same datasets to resume")

    # -------------------------------------------------------------------- loop
    def validate(self) -> dict:
        """Mean losses over (up to max_validation_windows) validation windows with a fixed noise seed."""
        windows = self.val_windows[: int(self.config.max_validation_windows)]
        gen = torch.Generator().manual_seed(int(self.config.seed) + 1)
        totals = [0.0, 0.0]
        self.model.eval()
        with torch.no_grad():
            chunks = windows.split(int(self.config.batch_size))
            for chunk in chunks:
                wb = WindowBatch(self.trajectories, chunk, self.config, self.device)
                nll, dsm = window_losses(self.model, self.graphs, wb, self.config, self.levels, gen)
                totals[0] += float(nll) / len(chunks)
                totals[1] += float(dsm) / len(chunks)
        self.model.train()
        return {"epoch": self.epoch, "iteration": self.iteration, "nll": totals[0], "dsm": totals[1]}

    def run(self, out_dir: Optional[str], progress: bool = True, callback: Optional[Callable] = None):
        config = self.config
        n_total = int(config.n_iterations)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_total, initial=self.iteration, desc="CG model", unit="it")
        self.model.train()
        while self.iteration < n_total:
            for group in self.optimizer.param_groups:
                group["lr"] = cosine_lr(config, self.iteration)
            idx = self.order[self.cursor: self.cursor + int(config.batch_size)]
            wb = WindowBatch(self.trajectories, self.train_windows[idx], config, self.device)
            nll, dsm = window_losses(self.model, self.graphs, wb, config, self.levels, self.generator)
            loss = config.dynamics_weight * nll + config.score_weight * dsm
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {float(loss)} at iteration {self.iteration}; lower lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            self.optimizer.step()
            self.iteration += 1
            self.losses.append([float(nll.detach()), float(dsm.detach())])
            self.cursor += int(config.batch_size)
            if self.cursor >= self.order.shape[0]:  # end of an epoch: validate, reshuffle
                if self.val_windows.shape[0] > 0:
                    self.validation.append(self.validate())
                self.epoch += 1
                self.cursor = 0
                self.order = torch.randperm(self.train_windows.shape[0], generator=self.generator)
            if bar is not None:
                post = {"nll": f"{self.losses[-1][0]:.3f}", "dsm": f"{self.losses[-1][1]:.3f}"}
                if self.validation:
                    post["val_nll"] = f"{self.validation[-1]['nll']:.3f}"
                bar.set_postfix(post)
                bar.update(1)
            if out_dir is not None and config.checkpoint_every and self.iteration % int(config.checkpoint_every) == 0:
                self.save_checkpoint(out_dir)
            if callback is not None:
                callback(self.iteration, self.losses[-1][0], self.losses[-1][1])
        if bar is not None:
            bar.close()
        self.model.eval()


def _as_config(config) -> TrainConfig:
    if isinstance(config, (str, os.PathLike)):
        return TrainConfig.from_yaml(str(config))
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    if config is None:
        return TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError("config must be a TrainConfig, a dict of its fields or a YAML file path")
    config.validate()
    return config


def _prepare_out_dir(out_dir: str, config: TrainConfig, resume: bool) -> bool:
    """Create ``out_dir`` and write config.yaml; returns whether a checkpoint to resume from exists."""
    ckpt = os.path.join(out_dir, CHECKPOINT)
    started = os.path.exists(ckpt) or os.path.exists(os.path.join(out_dir, "cgml_model.json"))
    if started and not resume:
        raise ValueError(f"{out_dir} already holds a training run; pass resume=True or choose another directory")
    saved_path = os.path.join(out_dir, CONFIG_FILE)
    if resume and os.path.exists(saved_path):
        saved = TrainConfig.from_yaml(saved_path)
        if saved.to_dict() != config.to_dict():
            diff = sorted(k for k, v in config.to_dict().items() if saved.to_dict().get(k) != v)
            raise ValueError(f"config differs from the one saved in {out_dir} (keys {diff}); resume with the same config")
    os.makedirs(out_dir, exist_ok=True)
    config.to_yaml(saved_path)
    return resume and os.path.exists(ckpt)


def train(
    dataset_paths: Union[str, Sequence[str]],
    out_dir: Optional[str],
    config: Union[TrainConfig, dict, str, None] = None,
    device: Union[str, torch.device] = "cpu",
    resume: bool = True,
    progress: bool = True,
    callback: Optional[Callable[[int, float, float], None]] = None,
) -> CGModel:
    """Train the embedding, dynamics and score GNNs on CG dataset files; returns the trained :class:`CGModel`.

    Args:
        dataset_paths: one or more HDF5 CG datasets (``data.write_dataset`` / ``cgml reference``); all must share
            the frame interval and periodicity. The model time step is ``frames_per_step`` frame intervals.
        out_dir: directory for config.yaml, checkpoint.pt and the final model (None: train in memory only).
        config: a :class:`TrainConfig`, a dict of its fields or a YAML path (None: defaults).
        device: "cpu", "cuda", ... resume: continue from ``out_dir/checkpoint.pt`` if present (exactly).
        callback: ``callback(iteration, nll, dsm)`` after every iteration (logging; raise to stop).
    """
    config = _as_config(config)
    trajectories, vocab, mapping, periodic, interval = load_trajectories(dataset_paths, config)
    train_windows, val_windows = make_windows(trajectories, config)
    if config.validation_fraction > 0 and val_windows.shape[0] == 0:
        warnings.warn("no validation windows: the held-out part of the data is shorter than one window "
                      f"({(config.history_length + 1) * config.frames_per_step + 1} frames); training without validation")
    v_scale, a_scale = data_scales(trajectories, train_windows, config)
    model_config = config.model_config(timestep_ps=interval * int(config.frames_per_step), periodic=periodic,
                                       velocity_scale=v_scale, accel_scale=a_scale, mapping=mapping)
    has_ckpt = _prepare_out_dir(out_dir, config, resume) if out_dir is not None else False
    with torch.random.fork_rng(devices=[]):  # seeded initial weights without touching the global RNG
        torch.manual_seed(int(config.seed))
        model = CGModel(model_config, vocab)
    trainer = Trainer(model, config, trajectories, train_windows, val_windows, device)
    if has_ckpt:
        trainer.load_checkpoint(out_dir)
    trainer.run(out_dir, progress, callback)
    model = trainer.model
    if out_dir is not None:
        trainer.save_checkpoint(out_dir)
        recent = np.asarray(trainer.losses[-50:], dtype=np.float64).reshape(-1, 2)
        extra = {
            "trained_on": [os.path.abspath(t.path) for t in trajectories],
            "training": config.to_dict(),
            "iterations": trainer.iteration,
            "final_train_nll": float(recent[:, 0].mean()) if len(recent) else None,
            "final_train_dsm": float(recent[:, 1].mean()) if len(recent) else None,
            "validation": trainer.validation,
            "n_train_windows": int(train_windows.shape[0]),
            "n_validation_windows": int(val_windows.shape[0]),
        }
        model.save(out_dir, extra, overwrite=True)
    return model.eval()


def train_main(dataset_paths, out_dir: str, config_path: Optional[str] = None, device: str = "cpu",
               seed: Optional[int] = None, resume: bool = True) -> str:
    """``cgml train DATASET... -o MODEL_DIR [--config YAML] [--device D] [--seed S] [--no-resume]``.

    Trains with a progress bar, prints where the model went and its last validation losses; returns ``out_dir``.
    """
    config = _as_config(config_path)
    if seed is not None:
        config.seed = int(seed)
    model = train(dataset_paths, out_dir, config, device, resume, progress=True)
    print(f"CG model ({model.timestep_ps:g} ps per step, {len(model.vocab)} bead types) written to {out_dir}")
    return out_dir
