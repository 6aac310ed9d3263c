"""Neighbour graphs of beads: periodic radius graph (cell list, linear cost) and CG-bond edges.

Conventions (PyG): ``edge_index[0]`` is the source bead j, ``edge_index[1]`` the target bead i, and
``edge_vec = x_i - x_j`` (minimum image under PBC), so messages flow j -> i along ``edge_vec``.
Positions are float tensors in nm; boxes are orthorhombic edge lengths in nm, one row per graph.
Everything here is TorchScript-compatible so the learned step can be exported whole.
"""
from typing import List, Optional, Tuple

import torch

from ..pbc import minimum_image_torch

#: Kept for older imports; the one implementation is :func:`openmm_cgml.pbc.minimum_image_torch`.
minimum_image = minimum_image_torch

RADIUS_EDGE: int = 0
BOND_EDGE: int = 1


def _axis_offsets(n: int, periodic: bool) -> List[int]:
    # With fewer than 3 cells along an axis, -1/0/+1 would visit a cell twice under PBC.
    if periodic and n == 1:
        return [0]
    if periodic and n == 2:
        return [0, 1]
    return [-1, 0, 1]


def _periodic_cells(pos: torch.Tensor, cutoff: float, box: torch.Tensor,
                    batch: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cell (N, 3) of each bead and cells per axis (3,) of a periodic grid; ``box`` (B, 3) nm, one row per graph.

    The grid has the same number of cells per axis in every graph (from the smallest box), each >= ``cutoff``."""
    frac = pos / box[batch]
    frac = frac - torch.floor(frac)  # fractional coordinates in [0, 1): the wrapped position / box
    n_cells = torch.clamp(torch.floor(box.min(dim=0).values / cutoff), min=1).long()
    cell3 = torch.minimum(torch.floor(frac * n_cells.to(pos.dtype)).long(), n_cells - 1)
    return cell3, n_cells


def _open_cells(pos: torch.Tensor, cutoff: float, batch: torch.Tensor,
                n_graphs: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cell (N, 3) of each bead and cells per axis (3,) of a grid over each graph's bounding box (no PBC)."""
    n = pos.shape[0]
    lo = torch.full((n_graphs, 3), 1e30, dtype=pos.dtype, device=pos.device)
    lo = lo.scatter_reduce(0, batch.unsqueeze(1).expand(n, 3), pos, reduce="amin", include_self=True)
    rel = pos - lo[batch]
    extent = rel.max(dim=0).values if n > 0 else torch.zeros(3, dtype=pos.dtype, device=pos.device)
    # Cells at least `cutoff` wide; widened when the beads are spread far apart (e.g. an exploded sample),
    # so the cell table never outgrows ~8 cells per bead.
    cell = float(cutoff)
    n_cells = torch.clamp(torch.floor(extent / cell), min=0).long() + 1
    limit = max(8 * n, 64)
    while int(torch.prod(n_cells).item()) * n_graphs > limit:
        cell = cell * 1.5
        n_cells = torch.clamp(torch.floor(extent / cell), min=0).long() + 1
    cell3 = torch.minimum(torch.floor(rel / cell).long(), n_cells - 1)
    return cell3, n_cells


def _cell_table(cell_id: torch.Tensor, n_slots: int) -> torch.Tensor:
    """(n_slots + 1, max_occupancy) bead indices per cell, -1 where empty; the last row is an all-empty sentinel."""
    n = cell_id.shape[0]
    order = torch.argsort(cell_id)
    sorted_cells = cell_id[order]
    counts = torch.bincount(sorted_cells, minlength=n_slots)
    max_occ = int(counts.max().item()) if n > 0 else 1
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=cell_id.device) - starts[sorted_cells]
    table = torch.full((n_slots + 1, max_occ), -1, dtype=torch.long, device=cell_id.device)
    table[sorted_cells, rank] = order
    return table


def _neighbour_cells(cell3: torch.Tensor, n_cells: torch.Tensor, batch: torch.Tensor, periodic: bool,
                     sentinel: int) -> torch.Tensor:
    """(N, K) ids of the cells around each bead's cell (itself included); ``sentinel`` outside an open grid."""
    device = cell3.device
    nx, ny, nz = int(n_cells[0]), int(n_cells[1]), int(n_cells[2])
    offsets: List[List[int]] = []
    for ox in _axis_offsets(nx, periodic):
        for oy in _axis_offsets(ny, periodic):
            for oz in _axis_offsets(nz, periodic):
                offsets.append([ox, oy, oz])
    off = torch.tensor(offsets, dtype=torch.long, device=device)  # (K, 3)
    neigh3 = cell3.unsqueeze(1) + off.unsqueeze(0)  # (N, K, 3)
    dims = n_cells.view(1, 1, 3)
    if periodic:
        valid_cell = torch.ones(neigh3.shape[:2], dtype=torch.bool, device=device)
        neigh3 = torch.remainder(neigh3, dims)
    else:
        valid_cell = ((neigh3 >= 0) & (neigh3 < dims)).all(dim=2)
        neigh3 = torch.minimum(torch.clamp(neigh3, min=0), dims - 1)
    neigh_id = ((batch.unsqueeze(1) * nx + neigh3[..., 0]) * ny + neigh3[..., 1]) * nz + neigh3[..., 2]
    return torch.where(valid_cell, neigh_id, torch.full_like(neigh_id, sentinel))


def radius_graph(
    pos: torch.Tensor,
    cutoff: float,
    box: Optional[torch.Tensor] = None,
    batch: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (j, i), j != i, of the same graph closer than ``cutoff`` nm.

    Uses a cell list (cells at least ``cutoff`` wide), so cost grows linearly with the number of beads.

    Args:
        pos: (N, 3) positions, nm. Under PBC they may be unwrapped; they are wrapped internally.
        cutoff: radius, nm.
        box: None (no PBC) or orthorhombic box lengths, (3,) or (B, 3) nm; every edge must be >= 2 * cutoff.
        batch: (N,) graph index of each bead (sorted or not), or None for a single graph.

    Returns:
        edge_index (2, E) int64 and edge_vec (E, 3) = x_i - x_j (minimum image), nm.
    """
    n = pos.shape[0]
    device = pos.device
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=device)
    n_graphs = int(batch.max().item()) + 1 if n > 0 else 1
    periodic = box is not None
    if box is not None:
        if box.dim() == 1:
            box = box.unsqueeze(0).expand(n_graphs, 3)
        if bool((box < 2.0 * cutoff).any()):
            raise ValueError(f"box edge {float(box.min())} nm is shorter than twice the cutoff ({cutoff} nm)")
        cell3, n_cells = _periodic_cells(pos, cutoff, box, batch)
    else:
        cell3, n_cells = _open_cells(pos, cutoff, batch, n_graphs)

    nx, ny, nz = int(n_cells[0]), int(n_cells[1]), int(n_cells[2])
    n_slots = n_graphs * nx * ny * nz
    cell_id = ((batch * nx + cell3[:, 0]) * ny + cell3[:, 1]) * nz + cell3[:, 2]
    table = _cell_table(cell_id, n_slots)
    # Invalid (outside a non-periodic grid) cells point at the sentinel all-empty last row.
    neigh_id = _neighbour_cells(cell3, n_cells, batch, periodic, n_slots)
    cand = table[neigh_id].reshape(n, -1)  # (N, K * max_occ)
    tgt = torch.arange(n, device=device).unsqueeze(1).expand_as(cand)
    keep = (cand >= 0) & (cand != tgt)
    src = cand[keep]
    dst = tgt[keep]
    vec = pos[dst] - pos[src]
    if box is not None:
        vec = minimum_image_torch(vec, box[batch[dst]])
    close = (vec * vec).sum(dim=1) < cutoff * cutoff
    edge_index = torch.stack([src[close], dst[close]], dim=0)
    return edge_index, vec[close]


def bond_edges(
    pos: torch.Tensor, bonds: torch.Tensor, box: Optional[torch.Tensor] = None, batch: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both directions of every CG bond (bonds: (M, 2) bead pairs) with minimum-image edge vectors, nm."""
    edge_index = torch.cat([bonds.t(), bonds.t().flip(0)], dim=1)
    vec = pos[edge_index[1]] - pos[edge_index[0]]
    if box is not None:
        if box.dim() == 1:
            vec = minimum_image_torch(vec, box.unsqueeze(0))
        else:
            assert batch is not None, "a per-graph box needs the batch vector"
            vec = minimum_image_torch(vec, box[batch[edge_index[1]]])
    return edge_index, vec


def build_edges(
    pos: torch.Tensor,
    cutoff: float,
    bonds: torch.Tensor,
    box: Optional[torch.Tensor] = None,
    batch: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Radius edges plus CG-bond edges (a bonded pair within the cutoff appears once per type).

    Returns edge_index (2, E), edge_vec (E, 3) nm, edge_type (E,) with RADIUS_EDGE / BOND_EDGE.
    """
    r_index, r_vec = radius_graph(pos, cutoff, box, batch)
    b_index, b_vec = bond_edges(pos, bonds, box, batch)
    # Literal 0/1 (= RADIUS_EDGE / BOND_EDGE): TorchScript cannot read module-level constants.
    r_type = torch.zeros((r_index.shape[1],), dtype=torch.long, device=pos.device)
    b_type = torch.ones((b_index.shape[1],), dtype=torch.long, device=pos.device)
    return (
        torch.cat([r_index, b_index], dim=1),
        torch.cat([r_vec, b_vec], dim=0),
        torch.cat([r_type, b_type], dim=0),
    )
