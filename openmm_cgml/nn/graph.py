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


def _cell_ranges(cell_id: torch.Tensor, n_slots: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Beads sorted by cell (order), and the start and count of each cell's run in that order; the extra last
    slot is an empty sentinel cell."""
    order = torch.argsort(cell_id)
    counts = torch.bincount(cell_id, minlength=n_slots + 1)
    starts = torch.cumsum(counts, 0) - counts
    return order, starts, counts


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

    Uses a cell list (cells at least ``cutoff`` wide), so cost grows linearly with the number of beads. Edges come
    in canonical order (by target bead, then source bead).

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
    order, starts, counts = _cell_ranges(cell_id, n_slots)
    # Invalid (outside a non-periodic grid) cells point at the sentinel empty slot.
    neigh = _neighbour_cells(cell3, n_cells, batch, periodic, n_slots)  # (N, K)
    n_neigh = neigh.shape[1]
    if box is not None and bool((box == box[0]).all()):
        box = box[:1]  # one box for all graphs (the usual case): broadcast it instead of a row per candidate
    # Every bead against every bead of its neighbour cells, without padding to the fullest cell, a chunk of
    # target beads at a time: the candidates' temporaries then stay in cache, so the cost per bead is flat.
    indices: List[torch.Tensor] = []
    vectors: List[torch.Tensor] = []
    chunk = 2048  # target beads per block of candidates
    for start in range(0, n, chunk):
        neigh_id = neigh[start:start + chunk].reshape(-1)  # block b = bead start + b // K, its (b % K)-th cell
        sizes = counts.index_select(0, neigh_id)
        total = int(sizes.sum().item())
        block = torch.repeat_interleave(torch.arange(neigh_id.shape[0], device=device), sizes, output_size=total)
        within = torch.arange(total, device=device) - (torch.cumsum(sizes, 0) - sizes).index_select(0, block)
        src = order.index_select(0, starts.index_select(0, neigh_id).index_select(0, block) + within)
        dst = start + torch.div(block, n_neigh, rounding_mode="floor")
        index, vec = _close_pairs(pos, cutoff, src, dst, box, batch)
        indices.append(index)
        vectors.append(vec)
    if len(indices) == 0:
        return torch.zeros((2, 0), dtype=torch.long, device=device), pos.new_zeros((0, 3))
    return torch.cat(indices, dim=1), torch.cat(vectors, dim=0)


def _close_pairs(pos: torch.Tensor, cutoff: float, src: torch.Tensor, dst: torch.Tensor,
                 box: Optional[torch.Tensor], batch: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The candidate pairs (self-pairs excluded) closer than ``cutoff``, in canonical order (by target, then
    source), so any superset of candidates gives the same edges in the same order."""
    # index_select and one nonzero: boolean-mask indexing of ~10^7 candidates is several times slower
    vec = pos.index_select(0, dst) - pos.index_select(0, src)
    if box is not None:
        # ``box`` (1, 3) broadcasts to every candidate; (B, 3) gives each candidate its graph's box
        vec = minimum_image_torch(vec, box if box.shape[0] == 1 else box.index_select(0, batch.index_select(0, dst)))
    close = torch.nonzero(((vec * vec).sum(dim=1) < cutoff * cutoff) & (src != dst)).squeeze(1)
    src, dst = src.index_select(0, close), dst.index_select(0, close)
    rank = torch.argsort(dst * pos.shape[0] + src)
    return torch.stack([src.index_select(0, rank), dst.index_select(0, rank)], dim=0), \
        vec.index_select(0, close.index_select(0, rank))


def radius_graph_from_candidates(
    pos: torch.Tensor,
    cutoff: float,
    candidates: torch.Tensor,
    box: Optional[torch.Tensor] = None,
    batch: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`radius_graph` from candidate pairs (2, P) that contain every pair within ``cutoff`` (a
    :func:`neighbour_candidates` list): the same edges in the same order, without a cell search."""
    if batch is None:
        batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
    if box is not None and (box.dim() == 1 or bool((box == box[0]).all())):
        box = box.reshape(-1, 3)[:1]
    return _close_pairs(pos, cutoff, candidates[0], candidates[1], box, batch)


def verlet_skin(skin: float, cutoff: float, box: Optional[torch.Tensor]) -> float:
    """``skin`` (nm) cut so that a :func:`neighbour_candidates` list of ``cutoff + skin`` stays within half the
    smallest box edge (the minimum-image condition); 0 (a fresh search each call) where no skin fits."""
    if box is None:
        return skin
    return max(0.0, min(skin, 0.4999 * float(box.min()) - cutoff))


def neighbour_candidates(
    pos: torch.Tensor,
    cutoff: float,
    skin: float,
    reference: torch.Tensor,
    candidates: torch.Tensor,
    box: Optional[torch.Tensor] = None,
    batch: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A Verlet list: ``(candidates, reference)`` pairs within ``cutoff + skin`` nm of the positions
    ``reference``, rebuilt only when a bead has moved more than ``skin / 2`` since then (or the bead count
    changed: pass empty tensors to force a build). Any pair within ``cutoff`` of ``pos`` is then a candidate:
    neither bead has moved more than skin / 2. Positions are unwrapped nm, as everywhere in the step."""
    if reference.shape == pos.shape and candidates.numel() > 0:
        moved = ((pos - reference) ** 2).sum(dim=1).max() if pos.shape[0] > 0 else pos.new_zeros(())
        if bool(moved <= 0.25 * skin * skin):
            return candidates, reference
    index, _ = radius_graph(pos, cutoff + skin, box, batch)
    return index, pos.detach().clone()


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
    candidates: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Radius edges plus CG-bond edges (a bonded pair within the cutoff appears once per type); the radius edges
    from ``candidates`` (a :func:`neighbour_candidates` list) when given, else from a fresh cell search.

    Returns edge_index (2, E), edge_vec (E, 3) nm, edge_type (E,) with RADIUS_EDGE / BOND_EDGE.
    """
    if candidates is None:
        r_index, r_vec = radius_graph(pos, cutoff, box, batch)
    else:
        r_index, r_vec = radius_graph_from_candidates(pos, cutoff, candidates, box, batch)
    b_index, b_vec = bond_edges(pos, bonds, box, batch)
    # Literal 0/1 (= RADIUS_EDGE / BOND_EDGE): TorchScript cannot read module-level constants.
    r_type = torch.zeros((r_index.shape[1],), dtype=torch.long, device=pos.device)
    b_type = torch.ones((b_index.shape[1],), dtype=torch.long, device=pos.device)
    return (
        torch.cat([r_index, b_index], dim=1),
        torch.cat([r_vec, b_vec], dim=0),
        torch.cat([r_type, b_type], dim=0),
    )
