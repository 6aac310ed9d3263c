"""Invariant edge features shared by the dynamics and score GNNs (TorchScript-compatible)."""
from typing import Optional, Tuple

import torch

from .graph import bond_edges, radius_graph


def typed_edges(
    pos: torch.Tensor,
    cutoff: float,
    bonds: torch.Tensor,
    box: Optional[torch.Tensor] = None,
    batch: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Radius edges (type 0) plus both directions of every CG bond (type 1), as ``graph.build_edges``.

    Written out here so the learned step compiles with TorchScript (which cannot read the module-level edge-type
    constants of ``graph.py``). Returns edge_index (2, E), edge_vec (E, 3) = x_i - x_j nm, edge_type (E,).
    """
    r_index, r_vec = radius_graph(pos, cutoff, box, batch)
    b_index, b_vec = bond_edges(pos, bonds, box, batch)
    r_type = torch.zeros((r_index.shape[1],), dtype=torch.long, device=pos.device)
    b_type = torch.ones((b_index.shape[1],), dtype=torch.long, device=pos.device)
    return (
        torch.cat([r_index, b_index], dim=1),
        torch.cat([r_vec, b_vec], dim=0),
        torch.cat([r_type, b_type], dim=0),
    )
