"""Excluded volume of the learned step: non-bonded beads closer than a hard-core distance are pushed apart.

Why it is needed: the score GNN learns a repulsion only where its training frames have density. A bead-type pair
the all-atom data never brings close (Li⁺–Li⁺ in PEO/LiTFSI) gets no learned repulsion at all, so a prediction
that lands two such beads on top of each other is not repaired (held-out EO4/LiTFSI: a learned Li–Li RDF peak at
0.03 nm). Learned CG force fields meet the same gap with a prior for the unsampled region (CGSchNet, Husic et
al. 2020); here the prior is a hard core, applied as a projection, so it has no stiffness or step size to tune.

The hard-core distance of a type pair is a fraction (``ModelConfig.hard_core``) of its closest approach in the
training data (``contacts.json``, :mod:`openmm_cgml.data.contacts`). Everything is TorchScript-compatible: the
projection is part of the exported step that the compiled plugin runs.
"""
from typing import Optional

import torch

from ..nn.backbone import scatter_sum
from ..nn.graph import radius_graph

#: Sweeps of :func:`push_apart` before it gives up on a crowded frame (each sweep removes every overlap it sees).
MAX_SWEEPS = 10
#: An overlapping pair is separated to this multiple of its core distance: the slack keeps the small pushes of
#: its neighbours' overlaps in the same sweep from re-creating it (without it, crowded frames converge slowly).
SLACK = 1.02


def bond_keys(bonds: torch.Tensor, n_beads: int) -> torch.Tensor:
    """Sorted keys ``i * n_beads + j`` of the bonded pairs (both orders), the pairs :func:`push_apart` skips."""
    b = bonds.reshape(-1, 2).to(torch.long)
    keys = torch.cat([b[:, 0] * n_beads + b[:, 1], b[:, 1] * n_beads + b[:, 0]])
    return torch.sort(keys).values


def push_apart(x: torch.Tensor, types: torch.Tensor, core: torch.Tensor, masses: torch.Tensor,
               bonded: torch.Tensor, box: Optional[torch.Tensor], batch: torch.Tensor,
               max_sweeps: int = MAX_SWEEPS, slack: float = SLACK) -> torch.Tensor:
    """``x`` (N, 3) nm with non-bonded beads i, j moved to at least ``core[types[i], types[j]]`` nm apart.

    Each sweep finds the overlapping pairs (a radius graph within the largest core distance; minimum image
    under PBC) and separates each along its line to ``slack`` times its core (:data:`SLACK`), the move split
    inversely to mass so that the pair's centre of mass stays put. Pairs of one sweep move together, so a bead in
    several overlaps can end slightly farther than needed; sweeps repeat until no overlap is left or
    ``max_sweeps`` have run.

    Args:
        x: (N, 3) positions, nm. types: (N,) index of each bead's row of ``core``.
        core: (K, K) symmetric hard-core distances, nm (0: no core). masses: (N,) amu.
        bonded: sorted pair keys from :func:`bond_keys` (never pushed). box: None or (3,) / (B, 3) nm.
        batch: (N,) replica of each bead (no pair spans two replicas).
    """
    n = x.shape[0]
    cutoff = float(core.max())
    if cutoff <= 0.0 or n < 2:
        return x
    for _ in range(max_sweeps):
        edge_index, edge_vec = radius_graph(x, cutoff, box, batch)
        j, i = edge_index[0], edge_index[1]
        r = torch.linalg.norm(edge_vec, dim=1)
        overlap = core[types[i], types[j]] - r
        close = (overlap > 0) & (r > 0)  # coincident beads (r = 0) have no direction to separate along
        if bonded.numel() > 0:
            close = close & ~torch.isin(i * n + j, bonded)
        if not bool(close.any()):
            break
        i, j, r, edge_vec = i[close], j[close], r[close], edge_vec[close]
        overlap = slack * core[types[i], types[j]] - r
        # edge_vec = x_i - x_j: bead i moves away from j by its mass share of the overlap (j does so in the
        # reverse edge, which the radius graph also lists), so the pair ends slack * core apart.
        share = masses[j] / (masses[i] + masses[j])
        x = x + scatter_sum((overlap * share / r).unsqueeze(1) * edge_vec, i, n)
    return x
