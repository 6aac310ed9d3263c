"""Periodic geometry in one place: minimum image, wrapping, unwrapping and centroid removal (stage 0).

Every stage imports these instead of writing its own copy, so the box conventions cannot diverge. This module
imports only NumPy and PyTorch; the ``*_torch`` functions are TorchScript-compatible (the learned step and the
radius graph are scripted whole).

Conventions
-----------
* Lengths are nm. Positions and displacements have shape ``(..., 3)``.
* Orthorhombic boxes are edge lengths: ``(3,)`` for one box, ``(T, 3)`` for one box per frame (NPT), or any
  shape that broadcasts against the positions (e.g. ``(T, 1, 3)`` against ``(T, N, 3)``).
  :func:`minimum_image_triclinic` takes box *vectors* (rows a, b, c) instead, ``(3, 3)`` or ``(T, 3, 3)``.
* Minimum image: ``d - L * round(d / L)`` (round half to even), i.e. components in [-L/2, L/2].
  A caller that wants positions centred on the origin (DiG samples) uses the minimum image of the position.
* Wrapping: into [0, L) only; floating-point rounding that would give exactly ``L`` is folded to 0, so the
  result is always a valid input to periodic k-d trees (``scipy.spatial.cKDTree(boxsize=L)``).
* Unwrapping assumes every particle moves less than half of each box edge between consecutive frames.
"""
from typing import List, Optional, Tuple

import numpy as np
import torch

__all__ = [
    "minimum_image",
    "minimum_image_triclinic",
    "minimum_image_torch",
    "wrap",
    "wrap_torch",
    "unwrap",
    "remove_centroid",
    "remove_centroids_by_graph",
    "bond_forest",
    "make_whole_torch",
]


def minimum_image(delta, box):
    """Minimum-image displacement(s) in an orthorhombic box.

    Parameters
    ----------
    delta : (..., 3) array, nm
        Displacement vectors.
    box : None or array broadcastable against ``delta``, nm
        Box edge lengths: (3,), (T, 3) with ``delta`` (T, 3), or e.g. (T, 1, 3) with ``delta`` (T, N, 3).
        None: no periodic boundaries (``delta`` is returned as is).

    Returns
    -------
    (..., 3) array, nm
        ``delta - box * round(delta / box)``: each component in [-L/2, L/2]; a new array.
    """
    if box is None:
        return delta
    return delta - box * np.round(delta / box)


def minimum_image_triclinic(delta: np.ndarray, box_vectors: np.ndarray) -> np.ndarray:
    """Minimum-image displacement(s) in a reduced triclinic (or orthorhombic) box given by its vectors.

    Parameters
    ----------
    delta : (..., 3) array, nm
        Displacements; with one box per frame, (T, n, 3).
    box_vectors : (3, 3) or (T, 3, 3) array, nm
        Box vectors as rows a, b, c in OpenMM's reduced form (a along x, b in the xy plane), so that
        subtracting c, then b, then a removes the whole-box shifts.

    Returns
    -------
    (..., 3) array, nm
        A new array; for a diagonal box the same values as :func:`minimum_image` with the diagonal.
    """
    squeeze = box_vectors.ndim == 2 and delta.ndim == 2
    box = box_vectors[None] if box_vectors.ndim == 2 else box_vectors
    d = (delta[None] if squeeze else delta).copy()
    for k in (2, 1, 0):  # c first: reduced boxes have c_z, b_y, a_x on the diagonal
        vec = box[:, k, :]  # (T, 3)
        shift = np.round(d[..., k] / vec[:, k, None])
        d -= shift[..., None] * vec[:, None, :]
    return d[0] if squeeze else d


def minimum_image_torch(delta: torch.Tensor, box: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`minimum_image` for tensors (TorchScript-compatible): ``delta`` (..., 3) nm, ``box`` broadcastable
    edge lengths nm or None."""
    if box is None:
        return delta
    return delta - box * torch.round(delta / box)


def wrap(positions, box) -> np.ndarray:
    """Positions wrapped into the box, [0, L) along each axis.

    Parameters
    ----------
    positions : (..., 3) array, nm
    box : array broadcastable against ``positions``, nm
        Orthorhombic edge lengths, e.g. (3,) or (T, 1, 3).

    Returns
    -------
    (..., 3) float array, nm
        Every component in [0, L) (a value that rounds to exactly L is folded to 0).
    """
    box = np.asarray(box)
    wrapped = np.mod(positions, box)
    return np.where(wrapped >= box, 0.0, wrapped).astype(wrapped.dtype, copy=False)


def wrap_torch(positions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """:func:`wrap` for tensors (TorchScript-compatible): every component in [0, L)."""
    wrapped = torch.remainder(positions, box)
    return torch.where(wrapped >= box, torch.zeros_like(wrapped), wrapped)


def unwrap(positions, box) -> np.ndarray:
    """Undo periodic wrapping by accumulating minimum-image frame-to-frame displacements.

    Handles any number of box crossings, provided every particle moves less than half of each box edge
    between consecutive frames (faster moves are folded back; no trajectory format can tell them apart).
    Already-unwrapped input is returned unchanged under the same condition.

    Parameters
    ----------
    positions : (T, N, 3) array, nm
        Wrapped or unwrapped positions.
    box : (3,) or (T, 3) array, nm
        Orthorhombic edge lengths; the displacement from frame t - 1 to frame t uses the box of frame t (NPT).

    Returns
    -------
    (T, N, 3) array, nm
        Continuous positions starting at frame 0's; computed in the dtype of ``positions`` and ``box``.
    """
    x = np.asarray(positions)
    b = np.asarray(box)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"positions must have shape (T, N, 3) in nm, got {x.shape}")
    if b.shape not in ((3,), (x.shape[0], 3)):
        raise ValueError(f"box must have shape (3,) or ({x.shape[0]}, 3) (edge lengths, nm), got {b.shape}")
    steps = np.diff(x, axis=0)
    steps = minimum_image(steps, b[1:, None, :] if b.ndim == 2 else b)
    out = np.empty(x.shape, dtype=steps.dtype)
    out[0] = x[0]
    np.cumsum(steps, axis=0, out=out[1:])
    out[1:] += x[0]
    return out


def remove_centroid(x, masses=None):
    """Positions with the centroid (or the centre of mass) of each frame moved to the origin.

    Parameters
    ----------
    x : (..., N, 3) NumPy array or torch tensor, nm
        One or more frames of N particles (no periodic boundaries: the plain average is taken).
    masses : None or (N,) array of the same kind, amu
        None: subtract the plain centroid; else the mass-weighted centre.

    Returns
    -------
    (..., N, 3) array or tensor of the input's kind, nm
    """
    if isinstance(x, torch.Tensor):
        if masses is None:
            return x - x.mean(dim=-2, keepdim=True)
        w = torch.as_tensor(masses, dtype=x.dtype, device=x.device).unsqueeze(-1)
        return x - (x * w).sum(dim=-2, keepdim=True) / w.sum()
    if masses is None:
        return x - x.mean(axis=-2, keepdims=True)
    w = np.asarray(masses, dtype=np.float64)[:, None]
    return x - (x * w).sum(axis=-2, keepdims=True) / w.sum()


def remove_centroids_by_graph(y: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Subtract each graph's centroid from the rows of ``y`` (N, 3) nm, graphs given by ``batch`` (N,) int64.

    The projection onto the subspace where every graph's centroid is zero (TorchScript-compatible).
    """
    counts = torch.bincount(batch, minlength=n_graphs).clamp(min=1).to(y.dtype).unsqueeze(1)
    sums = torch.zeros((n_graphs,) + y.shape[1:], dtype=y.dtype, device=y.device).index_add_(0, batch, y)
    return y - (sums / counts)[batch]


def bond_forest(bonds, n_beads: int) -> Tuple[np.ndarray, np.ndarray, List[int], np.ndarray]:
    """A breadth-first spanning forest of a bond graph, for :func:`make_whole_torch`.

    Parameters
    ----------
    bonds : (B, 2) int array
        Bonded bead pairs.
    n_beads : int

    Returns
    -------
    parent, child : (E,) int64 arrays
        Tree edges in breadth-first order: every parent is a root or the child of an earlier edge.
    depth_sizes : list of int
        Number of edges at depth 1, 2, ... (edges of one depth can be applied together).
    molecule : (n_beads,) int64 array
        Connected-component label of each bead, 0 .. n_molecules - 1.
    """
    import scipy.sparse
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    b = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    graph = scipy.sparse.coo_matrix((np.ones(len(b)), (b[:, 0], b[:, 1])), shape=(n_beads, n_beads)).tocsr()
    _, molecule = connected_components(graph, directed=False)
    depth = np.zeros(n_beads, dtype=np.int64)
    parents, children = [], []
    for root in np.unique(molecule[b[:, 0]]) if len(b) else []:
        start = int(np.flatnonzero(molecule == root)[0])
        order, pred = breadth_first_order(graph, start, directed=False)
        for node in order[1:]:
            depth[node] = depth[pred[node]] + 1
        parents.append(pred[order[1:]])
        children.append(order[1:])
    parent = np.concatenate(parents).astype(np.int64) if parents else np.zeros(0, np.int64)
    child = np.concatenate(children).astype(np.int64) if children else np.zeros(0, np.int64)
    by_depth = np.argsort(depth[child], kind="stable")
    parent, child = parent[by_depth], child[by_depth]
    sizes = np.bincount(depth[child])[1:].tolist() if len(child) else []
    return parent, child, [int(k) for k in sizes], molecule.astype(np.int64)


def make_whole_torch(pos: torch.Tensor, box: torch.Tensor, parent: torch.Tensor, child: torch.Tensor,
                     depth_sizes: List[int]) -> torch.Tensor:
    """Positions (N, 3) nm with every molecule whole: each tree child moved by whole box vectors to the minimum
    image of its parent, depth by depth (:func:`bond_forest`); roots keep their positions, and a bead already at
    its parent's minimum image keeps its exact value. ``box`` (3,) or (N, 3) nm, one row per bead.
    TorchScript-compatible."""
    out = pos.clone()
    start = 0
    for size in depth_sizes:
        p, c = parent[start:start + size], child[start:start + size]
        b = box if box.dim() == 1 else box[c]
        out[c] = out[c] - b * torch.round((out[c] - out[p]) / b)
        start += size
    return out
