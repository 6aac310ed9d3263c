"""Batched replica engine: R replicas of one or several bead systems advanced together as one batched graph.

Replica ``r`` draws its noise from ``step_noise(seeds[r], step, ...)`` exactly as a :class:`CGMLIntegrator` with
``seed=seeds[r]`` does, and the batched graph keeps replicas apart (own box, no edges between replicas), so each
replica follows the same trajectory as the OpenMM integrator started from the same state and seed.
"""
import os
import signal
import threading
import time
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from ..data import CGDatasetWriter
from .integrator import SimulationBlowUp, check_step, displacement_bound
from .step import LearnedStep, step_noise

#: Written into a run's output directory when it stops on a blow-up.
LAST_GOOD_STATE = "last_good_state.npz"
#: The resumable state of a run in its output directory (rewritten atomically every ``checkpoint_every`` steps).
CHECKPOINT = "checkpoint.npz"
_CHECKPOINT_VERSION = 1


class RunInterrupted(KeyboardInterrupt):
    """A run stopped on request (Ctrl-C / SIGINT, or ``stop_after``) at a step boundary, with a checkpoint saved."""

    def __init__(self, step_index: int, message: str):
        super().__init__(message)
        self.step_index = step_index


def _save_npz(path: str, **arrays):
    """``np.savez`` to ``path`` atomically (temporary file, fsync, rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class _StopRequest:
    """While active, the first SIGINT (Ctrl-C) only sets ``requested`` so that the run stops at the next step
    boundary with a checkpoint; a second one interrupts at once (the last checkpoint stays valid)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class ReplicaEngine:
    """Advance R replicas of one or several CG systems with a learned model, as one batched graph (CPU or GPU).

    Parameters
    ----------
    step : LearnedStep or list of LearnedStep
        The single-replica step of one bead system (then ``positions`` is (R, N, 3) or (N, 3)), or a list with
        one such step per replica, all from one model (several systems; then ``positions`` is a list of
        (N_r, 3) arrays).
    positions : length (nm)
        Starting bead positions, unwrapped.
    seeds : sequence of int, optional
        One seed per replica (default ``0 .. R-1``).
    box : length (nm), optional
        (3,) or (R, 3) orthorhombic box lengths, or None for a non-periodic model.
    history : length (nm per model step), optional
        Starting velocity histories, (R, H, N, 3) / (H, N, 3), or a list of (H, N_r, 3) arrays (default zeros).
    device : str
        Torch device for the model and state ("cpu", "cuda").
    max_displacement : length (nm), optional
        Largest physical bead displacement in one step (blow-up bound; default ``integrator.displacement_bound``).
    """

    def __init__(self, step, positions, seeds: Optional[Sequence[int]] = None, box=None, history=None,
                 device: str = "cpu", max_displacement=None):
        if isinstance(step, (list, tuple)):
            steps, xs = list(step), [np.asarray(p, dtype=np.float32) for p in positions]
            if len(xs) != len(steps):
                raise ValueError(f"got {len(xs)} position sets for {len(steps)} steps")
        else:
            x = np.asarray(positions, dtype=np.float32)
            xs = list(x[None] if x.ndim == 2 else x)
            steps = [step] * len(xs)
        for k, (st, x) in enumerate(zip(steps, xs)):
            if x.ndim != 2 or x.shape[1] != 3:
                raise ValueError(f"replica {k}: positions must have shape (N, 3) in nm, got {x.shape}")
            if not np.isfinite(x).all():
                raise ValueError(f"replica {k}: positions contain NaN or inf")
            if int(st.n_replicas) != 1 or int(st.n_beads) != x.shape[0]:
                raise ValueError(f"replica {k}: the step is for {st.n_beads} beads x {st.n_replicas} replicas; give "
                                 f"the single-replica step of this {x.shape[0]}-bead system")
        self.n_replicas = len(xs)
        self.sizes = [x.shape[0] for x in xs]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        first = steps[0]
        self.device = torch.device(device)
        self.step_module = LearnedStep.concatenate(steps).to(self.device)
        self.history_length = int(first.history_length)
        self.n_refine = int(first.n_refine)
        self.timestep_ps = float(first.timestep_ps)
        self.periodic = bool(first.periodic)
        self.max_displacement_nm = displacement_bound(first, max_displacement)
        self.seeds = list(range(self.n_replicas)) if seeds is None else [int(s) for s in seeds]
        if len(self.seeds) != self.n_replicas:
            raise ValueError(f"got {len(self.seeds)} seeds for {self.n_replicas} replicas")
        if self.periodic != (box is not None):
            raise ValueError("the model is periodic: give a box" if self.periodic
                             else "the model is not periodic but a box was given")
        self.boxes = None
        if box is not None:
            self.boxes = np.broadcast_to(np.asarray(box, dtype=np.float32), (self.n_replicas, 3)).copy()
            if not (np.isfinite(self.boxes).all() and (self.boxes > 0).all()):
                raise ValueError(f"box lengths must be positive nm, got {self.boxes.tolist()}")
            first.check_box(self.boxes)
        hl = self.history_length
        if history is None:
            hs = [np.zeros((hl, n, 3), dtype=np.float32) for n in self.sizes]
        elif isinstance(history, (list, tuple)):
            hs = [np.asarray(h, dtype=np.float32) for h in history]
        else:
            h = np.asarray(history, dtype=np.float32)
            hs = list(np.broadcast_to(h, (self.n_replicas,) + h.shape[-3:]))
        for k, (h, n) in enumerate(zip(hs, self.sizes)):
            if h.shape != (hl, n, 3):
                raise ValueError(f"replica {k}: history must have shape ({hl}, {n}, 3), got {h.shape}")
        self._x = np.concatenate(xs)  # (sum N, 3) float32 nm, unwrapped
        self._h = np.concatenate(hs, axis=1)  # (H, sum N, 3)
        self.step_index = 0

    @property
    def positions(self) -> List[np.ndarray]:
        """Current positions of each replica, (N_r, 3) nm."""
        return [self._x[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    @property
    def time_ps(self) -> float:
        return self.step_index * self.timestep_ps

    def _noise(self):
        dyn, ref = [], []
        for seed, n in zip(self.seeds, self.sizes):
            d, r = step_noise(seed, self.step_index, n, self.n_refine)
            dyn.append(d)
            ref.append(r)
        return torch.cat(dyn).to(self.device), torch.cat(ref, dim=1).to(self.device)

    def advance(self):
        """One learned step of every replica; raises :class:`SimulationBlowUp` and keeps the last good state."""
        x = torch.from_numpy(self._x).to(self.device)
        h = torch.from_numpy(self._h).to(self.device)
        box = (torch.from_numpy(self.boxes).to(self.device) if self.boxes is not None
               else torch.zeros(0, device=self.device))
        dyn, ref = self._noise()
        with torch.no_grad():
            try:
                x_new, h_new = self.step_module(x, h, box, dyn, ref)
            except RuntimeError as err:  # e.g. graph building on positions the model itself made NaN
                blow_up = SimulationBlowUp(f"learned step {self.step_index}: the model failed inside the step "
                                           f"({str(err).splitlines()[0]}); last good state kept")
                blow_up.state = self._state_arrays()
                raise blow_up from None
        x_new = x_new.cpu().numpy().astype(np.float32)
        moved = h_new[-1].cpu().numpy()
        for k, (a, b) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
            try:
                check_step(x_new[a:b], moved[a:b], self.step_index, self.max_displacement_nm)
            except SimulationBlowUp as err:
                blow_up = SimulationBlowUp(f"replica {k}: {err}")
                blow_up.state = self._state_arrays()
                raise blow_up from None
        self._x, self._h = x_new, np.ascontiguousarray(h_new.cpu().numpy(), dtype=np.float32)
        self.step_index += 1

    def _state_arrays(self) -> dict:
        return dict(positions=self._x, history=self._h, sizes=np.asarray(self.sizes), step_index=self.step_index,
                    seeds=np.asarray(self.seeds), boxes=self.boxes if self.boxes is not None else np.zeros((0, 3)),
                    timestep_ps=self.timestep_ps)

    def save_state(self, path: str, **extra):
        """Write the engine's state to ``path`` (.npz, atomically): positions and velocity history (nm, all
        replicas' beads concatenated), replica sizes, step index, seeds, boxes (nm) and time step (ps), plus
        ``extra`` arrays."""
        _save_npz(path, **self._state_arrays(), **extra)

    def load_state(self, path: str) -> dict:
        """Restore positions, history and step index from a :meth:`save_state` file of this same set of replicas
        (same sizes, seeds, boxes and time step, else a one-line ValueError); returns all arrays of the file."""
        try:
            with np.load(path, allow_pickle=False) as data:
                saved = {k: data[k] for k in data.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"{path} is not a readable replica-engine state ({err})") from None
        mine = self._state_arrays()
        for name in ("sizes", "seeds", "boxes", "timestep_ps"):
            if name not in saved or not np.array_equal(np.asarray(saved[name]), np.asarray(mine[name])):
                raise ValueError(f"{path} holds a state of other replicas ({name} differ); resume with the same "
                                 "settings or choose another output directory")
        if saved["positions"].shape != self._x.shape or saved["history"].shape != self._h.shape:
            raise ValueError(f"{path} holds a state of another bead system or model history length")
        self._x = np.ascontiguousarray(saved["positions"], dtype=np.float32)
        self._h = np.ascontiguousarray(saved["history"], dtype=np.float32)
        self.step_index = int(saved["step_index"])
        return saved

    def _open_writers(self, out_dir: str, beadmap, provenance: Optional[dict], frames: Optional[Sequence[int]]):
        """Writers of ``out_dir/replica_r.h5``: new files, or (``frames`` given: resuming) the existing files cut
        back to ``frames[r]`` frames, dropping what was written after the checkpoint."""
        maps = list(beadmap) if isinstance(beadmap, (list, tuple)) else [beadmap] * self.n_replicas
        if len(maps) != self.n_replicas or any(m is None or m.n_beads != n for m, n in zip(maps, self.sizes)):
            raise ValueError("writing trajectories needs the BeadMap of every replica's bead system")
        os.makedirs(out_dir, exist_ok=True)
        paths = [os.path.join(out_dir, f"replica_{k}.h5") for k in range(self.n_replicas)]
        if frames is None:
            clash = [p for p in paths if os.path.exists(p)]
            if clash:
                raise ValueError(f"{clash[0]} exists; choose another output directory")
            info = dict(provenance or {}, timestep_ps=self.timestep_ps)
            return [CGDatasetWriter.create(p, m, dict(info, seed=s), self.periodic)
                    for p, m, s in zip(paths, maps, self.seeds)]
        writers = []
        for path, n in zip(paths, frames):
            if not os.path.exists(path):
                raise ValueError(f"{path} is missing; the run in {out_dir} cannot be resumed")
            writer = CGDatasetWriter(path)
            if writer.n_frames < int(n):
                writer.close()
                raise ValueError(f"{path} has {writer.n_frames} frames but its checkpoint expects {int(n)}; "
                                 "the run cannot be resumed")
            writer.truncate(int(n))
            writers.append(writer)
        return writers

    def run(self, n_steps: int, out_dir: Optional[str] = None, beadmap=None, report_every: int = 1,
            progress: bool = True, provenance: Optional[dict] = None, checkpoint_every: int = 0,
            resume: bool = False, run_info: str = "", stop_after: Optional[int] = None,
            on_step: Optional[Callable[["ReplicaEngine"], None]] = None) -> dict:
        """Advance ``n_steps`` and write every ``report_every``-th frame of replica r to ``out_dir/replica_r.h5``.

        Parameters
        ----------
        n_steps : int
            Learned steps to advance from the current state (after a resume: from the checkpoint's step).
        out_dir : str, optional
            Output directory; ``beadmap`` is the BeadMap of the system, or a list with one per replica.
        report_every : int
            Frame interval in steps, counted from step 0 (so a resumed run writes the same frames).
        checkpoint_every : int
            With ``out_dir``: save ``out_dir/checkpoint.npz`` (state, frames written, ``run_info``) at the start,
            every ``checkpoint_every`` steps (0: only at the start and the end), on a stop and at the end.
            Frames are flushed to disk as they are written.
        resume : bool
            Continue the run in ``out_dir`` from its checkpoint (state restored, frames written after the
            checkpoint dropped); its ``run_info`` must equal this one's. The result equals the uninterrupted run.
        stop_after : int, optional
            Stop (as on Ctrl-C) after this many steps of this call.
        on_step : callable, optional
            Called with the engine after every step (progress hooks, tests).

        Returns throughput figures: simulated ns/day (per replica and summed over replicas) and replica-steps/s.

        Raises
        ------
        RunInterrupted
            Ctrl-C (SIGINT) or ``stop_after``: the run stopped at a step boundary after saving a checkpoint.
        SimulationBlowUp
            The files end with the last good frame (written even between report steps), the full last good
            state is saved to ``out_dir/last_good_state.npz``.
        """
        if n_steps < 0 or report_every < 1 or checkpoint_every < 0:
            raise ValueError("n_steps and checkpoint_every must be >= 0 and report_every >= 1")
        writers: List[CGDatasetWriter] = []
        checkpoint = os.path.join(out_dir, CHECKPOINT) if out_dir is not None else None
        if resume:
            if checkpoint is None or not os.path.exists(checkpoint):
                raise ValueError(f"{out_dir} holds no checkpoint to resume from")
            saved = self.load_state(checkpoint)
            if str(saved.get("run_info", "")) != run_info:
                raise ValueError(f"{out_dir} holds a run with other settings; rerun its own command, or choose "
                                 "another output directory")
            writers = self._open_writers(out_dir, beadmap, provenance, saved["frames"])
        elif out_dir is not None:
            writers = self._open_writers(out_dir, beadmap, provenance, None)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_steps, unit="step", desc=f"{self.n_replicas} replicas, {sum(self.sizes)} beads")

        def write():
            for k, (w, x) in enumerate(zip(writers, self.positions)):
                w.append(x, self.boxes[k] if self.boxes is not None else None, self.time_ps)
                w.flush()  # frames survive a kill

        def save_checkpoint():
            if writers:
                self.save_state(checkpoint, frames=np.asarray([w.n_frames for w in writers]), run_info=run_info,
                                format_version=_CHECKPOINT_VERSION)

        done, start = 0, time.perf_counter()
        try:
            with _StopRequest() as stop:
                if self.step_index == 0 and not resume:
                    write()
                if not resume:
                    save_checkpoint()
                start = time.perf_counter()
                for done in range(1, n_steps + 1):
                    try:
                        self.advance()
                    except SimulationBlowUp:
                        if writers:
                            if self.step_index % report_every:  # the last good frame was not a report frame
                                write()
                            self.save_state(os.path.join(out_dir, LAST_GOOD_STATE))
                        raise
                    if self.step_index % report_every == 0:
                        write()
                    if bar is not None:
                        bar.update(1)
                    if on_step is not None:
                        on_step(self)
                    if stop.requested or (stop_after is not None and done >= stop_after and done < n_steps):
                        save_checkpoint()
                        raise RunInterrupted(self.step_index, f"stopped at learned step {self.step_index} with a "
                                             "checkpoint; run the same command to resume")
                    if checkpoint_every and self.step_index % checkpoint_every == 0:
                        save_checkpoint()
                save_checkpoint()
            seconds = max(time.perf_counter() - start, 1e-12)
        finally:
            for w in writers:
                w.close()
            if bar is not None:
                bar.close()
        ns = n_steps * self.timestep_ps / 1000.0
        return {
            "replicas": self.n_replicas,
            "steps": n_steps,
            "seconds": seconds,
            "ns_per_day_per_replica": ns / seconds * 86400.0,
            "ns_per_day_total": ns * self.n_replicas / seconds * 86400.0,
            "replica_steps_per_s": n_steps * self.n_replicas / seconds,
        }
