"""Initial states for learned CG simulations drawn from a DiG model (independent equilibrium-like structures)."""
from typing import Optional, Union

import numpy as np
import torch

from ..nn.dig_model import DiGScoreModel
from ..pbc import minimum_image_torch, wrap_torch
from .sampler import DiGSampler


def _min_pair_distance(x: torch.Tensor, box: Optional[torch.Tensor]) -> torch.Tensor:
    """Smallest bead-bead distance (nm) of each structure in x (B, N, 3)."""
    d = x.unsqueeze(2) - x.unsqueeze(1)  # (B, N, N, 3)
    if box is not None:
        d = minimum_image_torch(d, box)
    r = torch.linalg.norm(d, dim=-1)
    n = x.shape[1]
    r = r + torch.eye(n, dtype=r.dtype).unsqueeze(0) * 1e9
    return r.reshape(x.shape[0], -1).min(dim=1).values


def initial_states(
    n: int,
    system,
    dig: Union[str, DiGSampler, DiGScoreModel],
    box=None,
    seed: int = 0,
    method: str = "dpm",
    steps: Optional[int] = None,
    min_distance: Optional[float] = None,
    max_rounds: int = 10,
    batch_size: int = 64,
    device: str = "cpu",
    allow_unseen_types: bool = False,
) -> np.ndarray:
    """``n`` starting structures (n, N, 3) float32 nm for learned simulations, sampled independently by DiG.

    Args:
        system: the BeadMap (or Descriptor) of the system to seed; its bead types must be known to the model
            unless ``allow_unseen_types`` (then they are embedded from their atom graphs).
        dig: a DiG model directory (``cgml train-dig`` output), a :class:`DiGSampler` or a :class:`DiGScoreModel`.
        box: (3,) nm (or a Quantity) for periodic systems; structures are then wrapped into [0, box).
            Non-periodic structures are returned with their centroid at the origin.
        method, steps: DiG sampling method ("dpm": probability-flow ODE by DPM-Solver, default 20 steps; "ode":
            the same ODE by Heun, 50 steps; "ancestral").
        min_distance: nm; structures with two beads closer than this are redrawn (up to ``max_rounds`` rounds),
            so a simulation never starts from an overlap. Raises ValueError if not enough structures pass.
        seed: seeds the draws (same seed, same structures).
    """
    if int(n) < 1:
        raise ValueError(f"n must be a positive number of structures, got {n}")
    sampler = dig if isinstance(dig, DiGSampler) else DiGSampler(dig, device=device,
                                                                 allow_unseen_types=allow_unseen_types)
    if box is not None and hasattr(box, "value_in_unit"):
        from openmm import unit

        box = box.value_in_unit(unit.nanometer)
    if box is not None:
        box = np.array(box, dtype=np.float32).reshape(-1)  # a writable copy (np.diag gives read-only views)
    desc = sampler.descriptor(system, box)
    box_t = desc.box
    kept = []
    n_kept = 0
    for attempt in range(int(max_rounds)):
        need = int(n) - n_kept
        draw = sampler.sample(need if min_distance is None else max(need * 2, 8), desc, method=method, steps=steps,
                              seed=int(seed) + 7919 * attempt, batch_size=batch_size)
        if min_distance is not None:
            draw = draw[_min_pair_distance(draw, box_t) >= float(min_distance)]
        kept.append(draw[:need])
        n_kept += min(need, draw.shape[0])
        if n_kept >= int(n):
            break
    if n_kept < int(n):
        raise ValueError(f"only {n_kept} of {n} DiG structures kept all beads >= {min_distance} nm apart after "
                         f"{max_rounds} rounds; lower min_distance or improve the model")
    x = torch.cat(kept)[: int(n)]
    if box_t is not None:
        x = wrap_torch(x, box_t)
    return x.numpy().astype(np.float32)


__all__ = ["initial_states"]
