"""Rollout calibration: per-residue factors on the dynamics GNN's predicted spread (``ModelConfig.noise_scale``).

A dynamics GNN is trained on one-step windows that start from all-atom frames. In its own rollouts it starts from
frames it made, which are slightly more disordered, and the score GNN's refinement adds a little random motion of
its own, so the rollouts move faster than the data the model was trained on. The calibration runs short rollouts
from frames of the training sets, compares each residue's mean-squared displacement at one lag with the data's, and
scales that residue's predicted spread until the two agree. Where the drift depends on chain length, the factor
can follow a power of the molecule's size (``fit_size``). Only training data are used, so held-out systems stay a
test.
"""
import os
import shutil
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..data import CGDataset
from ..nn.io import load_model_dir, save_model_dir
from ..training.model import MODEL_KIND, load_model, model_path
from .engine import ReplicaEngine
from .step import LearnedStep


def true_history(x: np.ndarray, frames, stride: int, history_length: int) -> np.ndarray:
    """(F, H, N, 3) velocity histories at reference frames ``frames`` (F,) of unwrapped positions ``x`` (T, N, 3)
    nm: the displacements over the H model steps (``stride`` frames each) that end there, last = most recent, as
    ``LearnedStep`` takes them (nm per step)."""
    ends = np.asarray(frames)[:, None] - np.arange(history_length)[::-1] * stride  # (F, H) frame each step ends on
    return x[ends] - x[ends - stride]


def msd_at_lag(x: np.ndarray, lag: int, species: Sequence[str]) -> Dict[str, float]:
    """Each species' mean-squared displacement (nm²) at ``lag`` frames of unwrapped positions x (T, N, 3), averaged
    over every time origin and bead of the species."""
    d2 = ((x[lag:] - x[:-lag]) ** 2).sum(-1).mean(0)  # (N,)
    species = np.asarray(species)
    return {str(s): float(d2[species == s].mean()) for s in np.unique(species)}


def mean_ratio(per_set: Dict[str, float]) -> float:
    """The geometric mean of one residue's rollout / data MSD ratios over the datasets (what the calibration
    drives to 1)."""
    return float(np.exp(np.mean(np.log(list(per_set.values())))))


@dataclass
class CalibrationSet:
    """One training set's reference: unwrapped positions (T, N, 3) nm at the model step, box (3,) nm, bead map."""

    name: str
    positions: np.ndarray
    box: Optional[np.ndarray]
    beadmap: object

    @classmethod
    def load(cls, path: str, timestep_ps: float) -> "CalibrationSet":
        with CGDataset(path) as ds:
            x = np.asarray(ds.positions[:], dtype=np.float32)
            box = None if ds.box is None else np.asarray(ds.box[0], dtype=np.float32)
            beadmap, interval = ds.beadmap, ds.frame_interval_ps
        stride = int(round(timestep_ps / interval))
        if stride < 1 or abs(stride * interval - timestep_ps) > 1e-6:
            raise ValueError(f"{path}: the model step {timestep_ps} ps is not a multiple of its frame interval "
                             f"{interval} ps")
        return cls(path, x[::stride], box, beadmap)


def molecule_sizes(beadmap) -> Dict[str, float]:
    """Each species' mean molecule size, beads per molecule, averaged over its beads."""
    size, species = beadmap.bead_molecule_sizes(), np.asarray(beadmap.bead_species())
    return {str(s): float(size[species == s].mean()) for s in np.unique(species)}


SLOPE_RANGE = (1.0, 6.0)  # bounds on the measured response d log(MSD ratio) / d log(factor)


def _secant(change: Optional[tuple], first: float) -> float:
    """The response slope from (change of log ratio, change of log factor) between two passes, kept within
    ``SLOPE_RANGE``; ``first`` where there is no previous pass or the factor did not move."""
    if not change or abs(change[1]) <= 1e-3:
        return first
    return float(np.clip(change[0] / change[1], *SLOPE_RANGE))


def calibrate_noise(model: str, datasets: Sequence[str], n_steps: int = 25, replicas: int = 2, lag_ps: float = 1000.0,
                    iterations: int = 3, burn_in: int = 5, seed: int = 0, fit_size: bool = False,
                    progress: bool = True, refine=None) -> dict:
    """Fit ``ModelConfig.noise_scale`` of ``model`` (a shipped name or a model directory) on ``datasets``.

    Each iteration runs ``replicas`` rollouts of ``n_steps`` model steps from frames spread over every dataset (all
    in one batch), measures each residue's MSD at ``lag_ps`` in the rollouts (time origins after the first
    ``burn_in`` steps, while the rollout forgets its all-atom start) and in the data, and moves the residue's factor
    so that the geometric mean over the datasets of rollout / data MSD becomes 1: a secant step in log-log, the
    first one assuming MSD ∝ factor² (the response is steeper, as a faster rollout makes frames the model moves
    faster still, so the slope is measured from the previous pass and kept between 1 and 6).

    With ``fit_size``, a residue whose molecules differ in size between the datasets also gets an exponent
    (``ModelConfig.noise_size_exponent``): the least-squares line of log MSD ratio against log molecule size
    splits each pass's error into its mean, which moves the factor at the mean size, and its slope, which moves the
    exponent by a secant step of its own (the first one assuming the steepest response, 6: a long chain's rollout
    heats up abruptly once its factor is too high), so the ratios go to 1 along the chain length, not only on
    average.

    ``refine`` is the rollouts' refinement (``LearnedStep.from_model``'s; None: the model's own). Fit only under
    the refinement the model will run with; another one serves to measure what the refinement does.

    Returns a dict: ``noise_scale`` (residue -> factor), ``noise_size_exponent`` (residue -> exponent) and
    ``history`` (per iteration: the factors and exponents used and each residue's rollout / data MSD ratio per
    dataset).
    """
    from tqdm.auto import tqdm

    cg = load_model(model)
    lag = int(round(lag_ps / cg.timestep_ps))
    if iterations < 0 or replicas < 1:
        raise ValueError(f"need iterations >= 0 and replicas >= 1, got {iterations} and {replicas}")
    if lag < 1 or burn_in < 0 or n_steps - burn_in <= lag:
        raise ValueError(f"n_steps ({n_steps}) minus burn_in ({burn_in}) must exceed the lag ({lag_ps} ps = {lag} "
                         "model steps)")
    h = cg.history_length
    sets = [CalibrationSet.load(p, cg.timestep_ps) for p in datasets]
    for s in sets:
        # refuses bead types the model was not trained on, before any work
        LearnedStep.from_model(cg, s.beadmap, refine)
        if s.positions.shape[0] < h + lag + 2:
            raise ValueError(f"{s.name} has only {s.positions.shape[0]} frames at the model step; need > {h + lag + 1}")
    scale = {str(k): float(v) for k, v in cg.config.noise_scale.items()}
    exponent = {str(k): float(v) for k, v in cg.config.noise_size_exponent.items()}
    sizes = {s.name: molecule_sizes(s.beadmap) for s in sets}
    history: List[dict] = []
    last: Dict[str, tuple] = {}  # residue -> (log factor at the mean size, log ratio, exponent, tilt), last pass
    for it in range(iterations + 1):  # the last pass only measures the final factors
        cg.config.noise_scale, cg.config.noise_size_exponent = dict(scale), dict(exponent)
        steps, x0, hist, boxes, owners = [], [], [], [], []
        for s in sets:
            step = LearnedStep.from_model(cg, s.beadmap, refine)
            for start in np.linspace(h, s.positions.shape[0] - 1, replicas).astype(int):
                steps.append(step)
                x0.append(s.positions[start])
                hist.append(true_history(s.positions, [start], 1, h)[0])
                boxes.append(s.box)
                owners.append(s)
        engine = ReplicaEngine(steps, x0, seeds=[seed + r for r in range(len(steps))], history=hist,
                               box=None if boxes[0] is None else np.stack(boxes))
        frames = [[x.copy()] for x in engine.positions]
        for _ in tqdm(range(n_steps), desc=f"calibration pass {it + 1}/{iterations + 1}", unit="step",
                      disable=not progress):
            engine.advance()
            for k, x in enumerate(engine.positions):
                frames[k].append(x.copy())
        ratios: Dict[str, Dict[str, float]] = {}
        for s in sets:
            runs = [np.stack(f[burn_in:]) for f, o in zip(frames, owners) if o is s]
            species = s.beadmap.bead_species()
            data = msd_at_lag(s.positions, lag, species)
            rollout = [msd_at_lag(r, lag, species) for r in runs]
            for sp, ref in data.items():
                ratios.setdefault(sp, {})[s.name] = float(np.mean([r[sp] for r in rollout]) / ref)
        history.append({"noise_scale": dict(scale), "noise_size_exponent": dict(exponent), "msd_ratio": ratios})
        if it == iterations:
            break
        for sp, per_set in ratios.items():
            log_n = np.log([sizes[name][sp] for name in per_set])
            log_r = np.log(list(per_set.values()))
            centre, b = float(log_n.mean()), exponent.get(sp, 0.0)
            log_ratio, log_scale = float(log_r.mean()), np.log(scale.get(sp, 1.0)) + b * centre
            # the secant acts on the factor at the mean size, and a second one moves the exponent by the fitted
            # slope of log ratio on log size
            tilt = float(np.polyfit(log_n, log_r, 1)[0]) if fit_size and np.ptp(log_n) > 1e-6 else 0.0
            previous = last.get(sp)
            slope = _secant(previous and (log_ratio - previous[1], log_scale - previous[0]), first=2.0)
            # the first exponent step assumes the steepest response: an exponent acts most on the shortest and
            # longest chains, and a long chain's rollout heats up abruptly once its factor is too high
            tilt_slope = _secant(previous and (tilt - previous[3], b - previous[2]), first=SLOPE_RANGE[1])
            last[sp] = (log_scale, log_ratio, b, tilt)
            if tilt:
                exponent[sp] = b = b - tilt / tilt_slope
            scale[sp] = float(np.exp(log_scale - log_ratio / slope - b * centre))
    return {"noise_scale": history[-1]["noise_scale"], "noise_size_exponent": history[-1]["noise_size_exponent"],
            "history": history, "lag_ps": lag * cg.timestep_ps, "n_steps": n_steps, "burn_in": burn_in,
            "replicas": replicas, "datasets": list(datasets), "molecule_sizes": sizes}


def write_calibrated(model: str, out_dir: str, result: dict) -> str:
    """Copy the model directory ``model`` to ``out_dir`` with ``result["noise_scale"]`` and
    ``result["noise_size_exponent"]`` in its config and the calibration record in its manifest's
    ``extra["calibration"]``; returns ``out_dir``. Written under a temporary name and renamed, so an interrupted
    write leaves nothing behind."""
    if os.path.exists(out_dir):
        raise FileExistsError(f"{out_dir} exists; choose a new output directory")
    tmp = out_dir.rstrip(os.sep) + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_path(model), tmp, ignore=shutil.ignore_patterns("checkpoint*"))
    config, state_dict, extra = load_model_dir(tmp, MODEL_KIND)
    config["noise_scale"] = dict(result["noise_scale"])
    config["noise_size_exponent"] = dict(result.get("noise_size_exponent", {}))
    extra["calibration"] = result
    save_model_dir(tmp, MODEL_KIND, config, state_dict, extra, overwrite=True)
    os.replace(tmp, out_dir)
    return out_dir

