"""Batched replica engine: R replicas of one bead system advanced together as one batched graph.

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
from ..mapping import BeadMap
from .integrator import SimulationBlowUp, check_step
from .step import LearnedStep, step_noise


class ReplicaEngine:
    """Advance R replicas of one CG system with a :class:`LearnedStep`, on CPU or GPU.

    Args:
        step: the (single-replica, eager) learned step of this bead system; the engine batches it.
        positions: (R, N, 3) or (N, 3) starting bead positions, nm (unwrapped).
        seeds: one seed per replica (default ``0 .. R-1``).
        box: (3,) or (R, 3) orthorhombic box lengths in nm, or None for a non-periodic model.
        history: (R, H, N, 3) or (H, N, 3) starting velocity history in nm per model step (default zeros).
        device: torch device for the model and state ("cpu", "cuda").
        max_displacement: largest physical bead displacement in one step, nm (blow-up bound).
    """

    def __init__(self, step: LearnedStep, positions, seeds: Optional[Sequence[int]] = None, box=None, history=None,
                 device: str = "cpu", max_displacement: float = 2.0):
        x = np.asarray(positions, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"positions must have shape (R, N, 3) or (N, 3) in nm, got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("positions contain NaN or inf")
        self.n_replicas, self.n_beads = x.shape[0], x.shape[1]
        if int(step.n_replicas) != 1 or int(step.n_beads) != self.n_beads:
            raise ValueError(f"the step is for {step.n_beads} beads x {step.n_replicas} replicas; give the "
                             f"single-replica step of this {self.n_beads}-bead system")
        self.device = torch.device(device)
        self.step_module = step.batched(self.n_replicas).to(self.device)
        self.history_length = int(step.history_length)
        self.n_refine = int(step.n_refine)
        self.timestep_ps = float(step.timestep_ps)
        self.periodic = bool(step.periodic)
        self.max_displacement_nm = float(max_displacement)
        self.seeds = list(range(self.n_replicas)) if seeds is None else [int(s) for s in seeds]
        if len(self.seeds) != self.n_replicas:
            raise ValueError(f"got {len(self.seeds)} seeds for {self.n_replicas} replicas")
        if self.periodic != (box is not None):
            raise ValueError("the model is periodic: give a box" if self.periodic
                             else "the model is not periodic but a box was given")
        boxes = None
        if box is not None:
            boxes = np.broadcast_to(np.asarray(box, dtype=np.float32), (self.n_replicas, 3)).copy()
            if not (np.isfinite(boxes).all() and (boxes > 0).all()):
                raise ValueError(f"box lengths must be positive nm, got {boxes.tolist()}")
            step.check_box(boxes)
        if history is None:
            h = np.zeros((self.n_replicas, self.history_length, self.n_beads, 3), dtype=np.float32)
        else:
            h = np.broadcast_to(np.asarray(history, dtype=np.float32),
                                (self.n_replicas, self.history_length, self.n_beads, 3)).copy()
        self.positions = x  # (R, N, 3) float32 nm, unwrapped
        self.history = h  # (R, H, N, 3)
        self.boxes = boxes
        self.step_index = 0

    @property
    def time_ps(self) -> float:
        return self.step_index * self.timestep_ps

    def _noise(self):
        dyn, ref = [], []
        for seed in self.seeds:
            d, r = step_noise(seed, self.step_index, self.n_beads, self.n_refine)
            dyn.append(d)
            ref.append(r)
        return torch.cat(dyn).to(self.device), torch.cat(ref, dim=1).to(self.device)

    def advance(self):
        """One learned step of every replica; raises :class:`SimulationBlowUp` and keeps the last good state."""
        r, n, hl = self.n_replicas, self.n_beads, self.history_length
        x = torch.from_numpy(self.positions.reshape(r * n, 3)).to(self.device)
        h = torch.from_numpy(self.history.transpose(1, 0, 2, 3).reshape(hl, r * n, 3)).to(self.device)
        box = (torch.from_numpy(self.boxes).to(self.device) if self.boxes is not None
               else torch.zeros(0, device=self.device))
        dyn, ref = self._noise()
        with torch.no_grad():
            x_new, h_new = self.step_module(x, h, box, dyn, ref)
        x_new = x_new.cpu().numpy().reshape(r, n, 3)
        h_new = h_new.cpu().numpy().reshape(hl, r, n, 3).transpose(1, 0, 2, 3)
        for k in range(r):
            try:
                check_step(self.positions[k], x_new[k], self.step_index, self.max_displacement_nm)
            except SimulationBlowUp as err:
                raise SimulationBlowUp(f"replica {k}: {err}") from None
        self.positions, self.history = x_new.astype(np.float32), np.ascontiguousarray(h_new, dtype=np.float32)
        self.step_index += 1

    def run(self, n_steps: int, out_dir: Optional[str] = None, beadmap: Optional[BeadMap] = None,
            report_every: int = 1, progress: bool = True, provenance: Optional[dict] = None) -> dict:
        """Advance ``n_steps`` and write every ``report_every``-th frame of replica r to ``out_dir/replica_r.h5``.

        Returns throughput figures: simulated ns/day (per replica and summed over replicas) and replica-steps/s.
        On a blow-up the files hold every frame up to the last good state, then the error propagates.
        """
        if n_steps < 0 or report_every < 1:
            raise ValueError("n_steps must be >= 0 and report_every >= 1")
        writers: List[CGDatasetWriter] = []
        if out_dir is not None:
            if beadmap is None or beadmap.n_beads != self.n_beads:
                raise ValueError("writing trajectories needs the BeadMap of this bead system")
            os.makedirs(out_dir, exist_ok=True)
            paths = [os.path.join(out_dir, f"replica_{k}.h5") for k in range(self.n_replicas)]
            clash = [p for p in paths if os.path.exists(p)]
            if clash:
                raise ValueError(f"{clash[0]} exists; choose another output directory")
            info = dict(provenance or {}, timestep_ps=self.timestep_ps)
            writers = [CGDatasetWriter.create(p, beadmap, dict(info, seed=s), self.periodic)
                       for p, s in zip(paths, self.seeds)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_steps, unit="step", desc=f"{self.n_replicas} replicas x {self.n_beads} beads")

        def write():
            for k, w in enumerate(writers):
                w.append(self.positions[k], self.boxes[k] if self.boxes is not None else None, self.time_ps)

        try:
            if self.step_index == 0:
                write()
            start = time.perf_counter()
            for i in range(n_steps):
                self.advance()
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
