"""Training the dynamics, score and embedding GNNs on CG datasets, with checkpoints and exact resume.

One training example is a *window* of H + 2 frames spaced ``frames_per_step`` dataset frames apart: H + 1 input
positions give the current position and H velocities (displacements per model step), the last frame gives the
target acceleration ``a = x_{t+1} - x_t - h[-1]`` (Gaussian NLL of the dynamics GNN) and the frame that the score
GNN learns to denoise (denoising score matching over the noise ladder). The embedding GNN is trained end to end
through both losses.

The loss of a batch (:class:`DynamicsScoreObjective`) plugs into the one training loop
(:class:`~openmm_cgml.training.loop.TrainingLoop`), which keeps ``out_dir``'s ``config.yaml``,
``training_data.json`` and ``checkpoint.pt`` (the data order included). Once training has completed ``out_dir``
also becomes the model directory (``cgml_model.json`` + ``weights.safetensors``) with its ``contacts.json``. Every
random draw of a run comes from one seeded ``torch.Generator``, so a run killed and resumed from its checkpoint
ends with exactly the same weights as an uninterrupted run.

Under ``torchrun`` (:mod:`~openmm_cgml.training.distributed`) each rank takes a contiguous share of every batch of
``batch_size`` windows and draws the noise of the whole batch, keeping its slice, so N ranks follow the
single-process run; rank 0 writes the run directory and the model.
"""
import math
import os
import warnings
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..data import contact_distances, read_contacts, write_contacts
from ..nn.dynamics import gaussian_nll, shell_mean, shell_pairs
from ..nn.embedding import TypeGraphs
from ..nn.score import denoising_loss, type_balance
from ..pbc import bond_forest
from . import distributed
from .config import TrainConfig
from .loop import TrainingLoop, array_digest, prepare_run_dir, provenance_path
from .model import BeadVocabulary, CGModel, load_model

MAPPING_KEYS = ("atoms_per_bead", "single_bead_residues", "whole_residues")


class Trajectory:
    """One CG dataset held in memory: positions (T, N, 3) nm, boxes (T, 3) nm or None, bead types as indices into
    the shared vocabulary, masses (N,) amu, CG bonds (M, 2), molecule index of each bead (N,)."""

    def __init__(self, path, positions, boxes, types, masses, bonds, frame_interval_ps):
        self.path = path
        self.positions = torch.as_tensor(np.asarray(positions, dtype=np.float32))
        self.boxes = None if boxes is None else torch.as_tensor(np.asarray(boxes, dtype=np.float32))
        self.types = torch.as_tensor(np.asarray(types, dtype=np.int64))
        self.masses = torch.as_tensor(np.asarray(masses, dtype=np.float32))
        self.bonds = torch.as_tensor(np.asarray(bonds, dtype=np.int64)).reshape(-1, 2)
        self.molecule = torch.as_tensor(bond_forest(self.bonds.numpy(), self.n_beads)[3], dtype=torch.long)
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
        frames, types, masses, bonds, batch, boxes, molecule = [], [], [], [], [], [], []
        start = n_molecules = 0
        for b, (i, t) in enumerate(windows.tolist()):
            traj = trajectories[i]
            frames.append(traj.positions[t + offsets])  # (H + 2, N, 3)
            types.append(traj.types)
            masses.append(traj.masses)
            bonds.append(traj.bonds + start)
            batch.append(torch.full((traj.n_beads,), b, dtype=torch.long))
            molecule.append(traj.molecule + n_molecules)
            n_molecules += int(traj.molecule.max()) + 1 if traj.n_beads else 0
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
        self.molecule = torch.cat(molecule).to(device)
        self.n_molecules = n_molecules
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


class BatchShare:
    """Where one rank's windows sit in the whole batch: ``n_graphs`` windows and ``n_beads`` beads in all, this
    rank's ``graphs`` and ``beads`` (slices)."""

    def __init__(self, n_graphs: int, graphs: slice, n_beads: int, beads: slice):
        self.n_graphs, self.graphs, self.n_beads, self.beads = int(n_graphs), graphs, int(n_beads), beads

    @classmethod
    def whole(cls, wb: "WindowBatch") -> "BatchShare":
        n_beads = int(wb.next.shape[0])
        return cls(wb.n_graphs, slice(0, wb.n_graphs), n_beads, slice(0, n_beads))

    @property
    def fraction(self) -> float:
        """This share's part of the batch mean (its fraction of the beads: both losses are means per bead)."""
        return (self.beads.stop - self.beads.start) / self.n_beads


def draw_noise(gen: torch.Generator, config: TrainConfig, n_inputs: int, share: BatchShare, n_levels: int):
    """The random draws of a whole batch, in a fixed order: input-noise steps (n_inputs, n_beads, 3) or None,
    noise-level indices (n_graphs,) and standard normals (n_beads, 3), both None without the score loss."""
    steps = level = z = None
    if config.dynamics_weight > 0 and config.input_noise > 0:
        steps = torch.randn((n_inputs, share.n_beads, 3), generator=gen)
    if config.score_weight > 0:
        lowest = int(config.score_levels) or n_levels  # levels fall from sigma_max: the lowest are the last
        level = torch.randint(n_levels - lowest, n_levels, (share.n_graphs,), generator=gen)
        z = torch.randn((share.n_beads, 3), generator=gen)
    return steps, level, z


def window_losses(model: CGModel, graphs: TypeGraphs, wb: WindowBatch, config: TrainConfig,
                  levels: torch.Tensor, gen: torch.Generator,
                  share: Optional[BatchShare] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(Gaussian NLL of the accelerations, denoising score-matching loss) of one batch of windows.

    ``share``: ``wb`` is this part of a larger batch (data-parallel training); the noise of the whole batch is
    drawn from ``gen`` and this part's slice used, so the draws do not depend on how the batch is split.
    """
    device = wb.next.device
    share = BatchShare.whole(wb) if share is None else share
    steps, level, z = draw_noise(gen, config, wb.inputs.shape[0], share, levels.shape[0])
    embed = model.embedding(graphs)[wb.types]
    zero = torch.zeros((), device=device)
    nll, dsm = zero, zero
    if config.dynamics_weight > 0:
        inputs = wb.inputs
        if config.input_noise > 0:
            # GNS: a random walk of noise on the input positions, std input_noise at the current frame; the target
            # is corrected so that x_noisy + v_noisy + a lands on the true next frame.
            steps = steps[:, share.beads].to(device) * (config.input_noise / math.sqrt(inputs.shape[0]))
            inputs = inputs + torch.cumsum(steps, dim=0)
        hist = inputs[1:] - inputs[:-1]
        x = inputs[-1]
        target = wb.next - x - hist[-1]
        if model.dynamics.shell_radius > 0:  # carried beads: their displacement relative to their shell's mean
            carried = torch.tensor(model.carried(model.vocab.type_names), device=device)[wb.types]
            ion, shell = shell_pairs(x, carried, model.dynamics.shell_radius, wb.box, wb.batch)
            moved = wb.next - x
            target = torch.where(carried.unsqueeze(1), moved - shell_mean(moved, ion, shell), target)
        mean, std, shared = model.dynamics(x, hist, embed, wb.masses, wb.bonds, wb.box, wb.batch, None,
                                           wb.molecule, wb.n_molecules)
        if model.dynamics.molecule_noise:
            nll = gaussian_nll(target, mean, std, model.dynamics.accel_scale, shared, wb.molecule, wb.n_molecules)
        else:
            nll = gaussian_nll(target, mean, std, model.dynamics.accel_scale)
    if config.score_weight > 0:
        sigma = levels[level[share.graphs]].to(device)[wb.batch]
        z = z[share.beads].to(device)
        score = model.score(wb.next + sigma.unsqueeze(1) * z, sigma, embed, wb.masses, wb.bonds, wb.box, wb.batch)
        dsm = denoising_loss(score, z, sigma, type_balance(wb.types) if config.score_type_balance else None)
    return nll, dsm


class DynamicsScoreObjective:
    """The loss of the CG model for :class:`~openmm_cgml.training.loop.TrainingLoop`: Gaussian NLL of the dynamics
    GNN plus denoising score matching of the score GNN, on batches of windows drawn epoch by epoch in a shuffled
    order; the validation losses are measured at the end of every epoch."""

    names = ("nll", "dsm")

    def __init__(self, model: CGModel, config: TrainConfig, trajectories, train_windows, val_windows, device):
        self.config = config
        self.trajectories = trajectories
        self.train_windows = train_windows
        self.val_windows = val_windows
        self.device = torch.device(device)
        self.graphs = TypeGraphs(model.vocab.type_graphs).to(self.device)
        self.levels = torch.tensor(model.config.levels(), dtype=torch.float32)
        self.epoch = 0
        self.order = torch.arange(train_windows.shape[0])
        self.cursor = 0
        self.validation: List[dict] = []
        self.rank, self.world_size = 0, 1

    def shard(self, rank: int, world_size: int):
        """From now on :meth:`loss` is ``rank``'s contribution (of ``world_size``) to the batch mean."""
        self.rank, self.world_size = int(rank), int(world_size)

    def start(self, generator: torch.Generator):
        self.order = torch.randperm(self.train_windows.shape[0], generator=generator)

    def loss(self, model: CGModel, generator: torch.Generator):
        config = self.config
        idx = self.order[self.cursor: self.cursor + int(config.batch_size)]
        if self.world_size > 1:
            return self._share_loss(model, generator, self.train_windows[idx])
        wb = WindowBatch(self.trajectories, self.train_windows[idx], config, self.device)
        nll, dsm = window_losses(model, self.graphs, wb, config, self.levels, generator)
        total = config.dynamics_weight * nll + config.score_weight * dsm
        return total, (float(nll.detach()), float(dsm.detach()))

    def _share_loss(self, model: CGModel, generator: torch.Generator, windows: torch.Tensor):
        """This rank's share of the batch ``windows``: its losses times its fraction of the batch."""
        config = self.config
        beads = np.cumsum([0] + [self.trajectories[i].n_beads for i in windows[:, 0].tolist()])
        lo, hi = distributed.share_bounds(windows.shape[0], self.rank, self.world_size)
        share = BatchShare(windows.shape[0], slice(lo, hi), int(beads[-1]), slice(int(beads[lo]), int(beads[hi])))
        if hi == lo:  # fewer windows than ranks (end of an epoch): draw the noise to stay in step, add nothing
            draw_noise(generator, config, int(config.history_length) + 1, share, self.levels.shape[0])
            # a zero touching one parameter only: the others count as unused here, so DDP leaves the grads of
            # parameters no rank used as None, as in one process (Adam's state stays the same)
            return next(model.parameters()).sum() * 0.0, (0.0, 0.0)
        wb = WindowBatch(self.trajectories, windows[lo:hi], config, self.device)
        nll, dsm = window_losses(model, self.graphs, wb, config, self.levels, generator, share)
        frac = share.fraction
        total = frac * (config.dynamics_weight * nll + config.score_weight * dsm)
        return total, (frac * float(nll.detach()), frac * float(dsm.detach()))

    def after_step(self, model: CGModel, generator: torch.Generator, iteration: int) -> dict:
        self.cursor += int(self.config.batch_size)
        if self.cursor >= self.order.shape[0]:  # end of an epoch: validate, reshuffle
            if self.val_windows.shape[0] > 0:
                self.validation.append(self.validate(model, iteration))
            self.epoch += 1
            self.cursor = 0
            self.order = torch.randperm(self.train_windows.shape[0], generator=generator)
        return {"val_nll": f"{self.validation[-1]['nll']:.3f}"} if self.validation else {}

    def validate(self, model: CGModel, iteration: int) -> dict:
        """Mean losses over (up to max_validation_windows) validation windows with a fixed noise seed."""
        windows = self.val_windows[: int(self.config.max_validation_windows)]
        gen = torch.Generator().manual_seed(int(self.config.seed) + 1)
        totals = [0.0, 0.0]
        model.eval()
        with torch.no_grad():
            chunks = windows.split(int(self.config.batch_size))
            for chunk in chunks:
                wb = WindowBatch(self.trajectories, chunk, self.config, self.device)
                nll, dsm = window_losses(model, self.graphs, wb, self.config, self.levels, gen)
                totals[0] += float(nll) / len(chunks)
                totals[1] += float(dsm) / len(chunks)
        model.train()
        return {"epoch": self.epoch, "iteration": iteration, "nll": totals[0], "dsm": totals[1]}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "order": self.order, "cursor": self.cursor,
                "validation": [[v["epoch"], v["iteration"], v["nll"], v["dsm"]] for v in self.validation]}

    def load_state_dict(self, state: dict):
        if state["order"].shape[0] != self.train_windows.shape[0]:
            raise ValueError("the checkpoint was written for other training data; use the same datasets to resume")
        self.epoch, self.cursor, self.order = int(state["epoch"]), int(state["cursor"]), state["order"]
        self.validation = [dict(zip(("epoch", "iteration", "nll", "dsm"), v)) for v in state["validation"]]


def data_fingerprint(trajectories: List[Trajectory]) -> dict:
    """What identifies the training data of a run: the dataset paths and, per dataset, its frame and bead counts
    and a hash of its first and last frames (of the frames used)."""
    return {
        "datasets": [provenance_path(t.path) for t in trajectories],
        "n_frames": [t.n_frames for t in trajectories],
        "n_beads": [t.n_beads for t in trajectories],
        "frames_sha256": [array_digest(t.positions[0].numpy(), t.positions[-1].numpy()) for t in trajectories],
    }


def _initial_model(config: TrainConfig, vocab: BeadVocabulary) -> Optional[CGModel]:
    """The model that ``config.init_from`` names (None without one), checked against the training data's bead
    types: fine-tuning keeps its embedding table, so the types must be the same, in the same order."""
    if config.init_from is None:
        return None
    start = load_model(config.init_from)
    if list(start.vocab.type_names) != list(vocab.type_names):
        raise ValueError(f"init_from {config.init_from!r} was trained on the bead types {list(start.vocab.type_names)},"
                         f" the training data have {list(vocab.type_names)}; fine-tune on data with the same types")
    return start


#: Parameters a fine-tune may add to its ``init_from`` model: they start at zero, so the grown model first predicts
#: what the old one did (``molecule_memory: true`` on a model trained without it).
GROWN_PARAMETERS = ("dynamics.memory_head.",)


def _take_weights(model: CGModel, start: CGModel, config: TrainConfig):
    """Copy ``start``'s weights into ``model`` (same architecture, or one grown by :data:`GROWN_PARAMETERS`) and
    hold the parts in ``config.freeze`` fixed."""
    problem = None
    try:
        missing, unexpected = model.load_state_dict(start.state_dict(), strict=False)
    except RuntimeError as err:  # a parameter of another shape
        lines = str(err).strip().splitlines()
        problem = lines[1 if len(lines) > 1 else 0].strip()
    else:
        missing = [k for k in missing if not k.startswith(GROWN_PARAMETERS)]
        if missing or unexpected:
            problem = f"parameters missing: {missing[:3]}, unexpected: {unexpected[:3]}"
    if problem is not None:
        raise ValueError(f"init_from {config.init_from!r} has another architecture than this config ({problem}); "
                         "use its architecture fields") from None
    for part in config.freeze:
        getattr(model, part).requires_grad_(False)  # no gradient, so Adam never moves it


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
        out_dir: directory for config.yaml, training_data.json, checkpoint.pt and, once training has completed,
            the model and its ``contacts.json`` (None: train in memory only).
        config: a :class:`TrainConfig`, a dict of its fields or a YAML path (None: defaults).
        device: "cpu", "cuda", ...
        resume: continue from ``out_dir/checkpoint.pt`` if present (exactly); a resume on other datasets or with
            another config is refused.
        callback: ``callback(iteration, nll, dsm)`` after every iteration (logging; raise to stop).
    """
    config = TrainConfig.coerce(config)
    trajectories, vocab, mapping, periodic, interval = load_trajectories(dataset_paths, config)
    train_windows, val_windows = make_windows(trajectories, config)
    if config.validation_fraction > 0 and val_windows.shape[0] == 0:
        warnings.warn("no validation windows: the held-out part of the data is shorter than one window "
                      f"({(config.history_length + 1) * config.frames_per_step + 1} frames); training without validation")
    start = _initial_model(config, vocab)
    v_scale, a_scale = (data_scales(trajectories, train_windows, config) if start is None else
                        (start.config.velocity_scale, start.config.accel_scale))
    model_config = config.model_config(timestep_ps=interval * int(config.frames_per_step), periodic=periodic,
                                       velocity_scale=v_scale, accel_scale=a_scale, mapping=mapping)
    # rank 0 prepares the run directory; under torchrun every rank learns whether to resume (or rank 0's error)
    has_ckpt = distributed.broadcast_result(prepare_run_dir, out_dir, config, resume, data_fingerprint(trajectories))
    with torch.random.fork_rng(devices=[]):  # seeded initial weights without touching the global RNG
        torch.manual_seed(int(config.seed))
        model = CGModel(model_config, vocab)
    if start is not None:
        _take_weights(model, start, config)
    objective = DynamicsScoreObjective(model, config, trajectories, train_windows, val_windows, device)
    loop = TrainingLoop(model, config, objective, out_dir, device, desc="CG model")
    loop.run(resume=has_ckpt, progress=progress and distributed.is_main(),
             callback=None if callback is None else (lambda i, terms: callback(i, *terms)))
    model = loop.model
    model.load_state_dict(loop.final_state_dict())
    if out_dir is not None and distributed.is_main():
        recent = np.asarray(loop.losses[-50:], dtype=np.float64).reshape(-1, 2)
        extra = {
            "trained_on": [provenance_path(t.path) for t in trajectories],
            "training": config.to_dict(),
            "iterations": loop.iteration,
            "final_train_nll": float(recent[:, 0].mean()) if len(recent) else None,
            "final_train_dsm": float(recent[:, 1].mean()) if len(recent) else None,
            "validation": objective.validation,
            "n_train_windows": int(train_windows.shape[0]),
            "n_validation_windows": int(val_windows.shape[0]),
        }
        # contacts.json first: a directory with a model manifest always has its collision yardstick
        write_contacts(out_dir, [t.path for t in trajectories], timestep_ps=model.timestep_ps)
        model.contacts = read_contacts(out_dir)
        model.save(out_dir, extra, overwrite=True)
    elif config.hard_core > 0 or config.step_cap > 0:  # in memory: the step's repairs still need the statistics
        model.contacts = contact_distances([t.path for t in trajectories], timestep_ps=model.timestep_ps)
    distributed.barrier()  # every rank returns once the model is on disk
    return model.eval()


def train_main(dataset_paths, out_dir: str, config_path: Optional[str] = None, device: str = "cpu",
               seed: Optional[int] = None, resume: bool = True) -> str:
    """``cgml train DATASET... -o MODEL_DIR [--config YAML] [--device D] [--seed S] [--no-resume]``.

    Trains with a progress bar, prints where the model went and its last validation losses; returns ``out_dir``.
    """
    config = TrainConfig.coerce(config_path)
    if seed is not None:
        config.seed = int(seed)
        config = TrainConfig.coerce(config)
    model = train(dataset_paths, out_dir, config, device, resume, progress=True)
    if distributed.is_main():
        print(f"CG model ({model.timestep_ps:g} ps per step, {len(model.vocab)} bead types) written to {out_dir}")
    return out_dir
