"""Batched replica engine: R replicas of one or several bead systems advanced together as one batched graph.

Replica ``r`` draws its noise from ``step_noise(seeds[r], step, ...)`` exactly as a :class:`CGMLIntegrator` with
``seed=seeds[r]`` does, and the batched graph keeps replicas apart (own box, no edges between replicas), so each
replica follows the same trajectory as the OpenMM integrator started from the same state and seed.
"""
import os
import time
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..data import CGDatasetWriter
from .integrator import SimulationBlowUp, check_step
from .step import LearnedStep, step_noise

#: Written into a run's output directory when it stops on a blow-up.
LAST_GOOD_STATE = "last_good_state.npz"


class ReplicaEngine:
    """Advance R replicas of one or several CG systems with a learned model, as one batched graph (CPU or GPU).

    Args:
        step: the single-replica :class:`LearnedStep` of one bead system (then ``positions`` is (R, N, 3) or
            (N, 3)), or a list with one such step per replica, all from one model (several systems; then
            ``positions`` is a list of (N_r, 3) arrays).
        positions: starting bead positions, nm (unwrapped).
        seeds: one seed per replica (default ``0 .. R-1``).
        box: (3,) or (R, 3) orthorhombic box lengths in nm, or None for a non-periodic model.
        history: starting velocity histories in nm per model step, (R, H, N, 3) / (H, N, 3), or a list of
            (H, N_r, 3) arrays (default zeros).
        device: torch device for the model and state ("cpu", "cuda").
        max_displacement: largest physical bead displacement in one step, nm (blow-up bound).
    """

    def __init__(self, step, positions, seeds: Optional[Sequence[int]] = None, box=None, history=None,
                 device: str = "cpu", max_displacement: float = 2.0):
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
        self.max_displacement_nm = float(max_displacement)
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
            x_new, h_new = self.step_module(x, h, box, dyn, ref)
        x_new = x_new.cpu().numpy().astype(np.float32)
        for k, (a, b) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
            try:
                check_step(self._x[a:b], x_new[a:b], self.step_index, self.max_displacement_nm)
            except SimulationBlowUp as err:
                raise SimulationBlowUp(f"replica {k}: {err}") from None
        self._x, self._h = x_new, np.ascontiguousarray(h_new.cpu().numpy(), dtype=np.float32)
        self.step_index += 1

    def save_state(self, path: str):
        """Write the engine's state to ``path`` (.npz): positions and velocity history (nm, all replicas'
        beads concatenated), replica sizes, step index, seeds and boxes (nm)."""
        np.savez(path, positions=self._x, history=self._h, sizes=np.asarray(self.sizes),
                 step_index=self.step_index, seeds=np.asarray(self.seeds),
                 boxes=self.boxes if self.boxes is not None else np.zeros((0, 3)), timestep_ps=self.timestep_ps)

    def run(self, n_steps: int, out_dir: Optional[str] = None, beadmap=None,
            report_every: int = 1, progress: bool = True, provenance: Optional[dict] = None) -> dict:
        """Advance ``n_steps`` and write every ``report_every``-th frame of replica r to ``out_dir/replica_r.h5``.

        ``beadmap`` is the BeadMap of the system, or a list with one per replica (needed to write files).

        Returns throughput figures: simulated ns/day (per replica and summed over replicas) and replica-steps/s.
        On a blow-up the files end with the last good frame (written even between report steps), the full last good
        state (positions, velocity history, step index, seeds, boxes) is saved to ``out_dir/last_good_state.npz``,
        and the :class:`SimulationBlowUp` propagates.
        """
        if n_steps < 0 or report_every < 1:
            raise ValueError("n_steps must be >= 0 and report_every >= 1")
        writers: List[CGDatasetWriter] = []
        if out_dir is not None:
            maps = list(beadmap) if isinstance(beadmap, (list, tuple)) else [beadmap] * self.n_replicas
            if len(maps) != self.n_replicas or any(m is None or m.n_beads != n for m, n in zip(maps, self.sizes)):
                raise ValueError("writing trajectories needs the BeadMap of every replica's bead system")
            os.makedirs(out_dir, exist_ok=True)
            paths = [os.path.join(out_dir, f"replica_{k}.h5") for k in range(self.n_replicas)]
            clash = [p for p in paths if os.path.exists(p)]
            if clash:
                raise ValueError(f"{clash[0]} exists; choose another output directory")
            info = dict(provenance or {}, timestep_ps=self.timestep_ps)
            writers = [CGDatasetWriter.create(p, m, dict(info, seed=s), self.periodic)
                       for p, m, s in zip(paths, maps, self.seeds)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_steps, unit="step", desc=f"{self.n_replicas} replicas, {sum(self.sizes)} beads")

        def write():
            for k, (w, x) in enumerate(zip(writers, self.positions)):
                w.append(x, self.boxes[k] if self.boxes is not None else None, self.time_ps)

        try:
            if self.step_index == 0:
                write()
            start = time.perf_counter()
            for i in range(n_steps):
                try:
                    self.advance()
                except SimulationBlowUp:
                    if writers:
                        if i % report_every:  # the last good frame was not a report frame
                            write()
                        self.save_state(os.path.join(out_dir, LAST_GOOD_STATE))
                    raise
                if (i + 1) % report_every == 0:
                    write()
                if bar is not None:
                    bar.update(1)
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
