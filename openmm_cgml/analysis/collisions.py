"""Bead collisions: pairs of non-bonded beads closer than a type-pair threshold.

The thresholds come from the collision yardstick written next to a model by training (the closest approach per
bead-type pair in its data, :mod:`openmm_cgml.data.contacts`) times :data:`COLLISION_FRACTION`.
Positions nm, orthorhombic boxes given as edge lengths nm.
"""
from typing import Optional, Tuple

import numpy as np
from openmm import unit
from scipy.spatial import cKDTree

from ..data.contacts import contact_table, read_contacts
from ..pbc import minimum_image, wrap
from ._arrays import as_box, as_float_array, as_trajectory

#: A learned run has a collision when two non-bonded beads come closer than this fraction of the closest
#: approach of that bead-type pair in the training data.
COLLISION_FRACTION = 0.8


def _threshold_matrix(threshold_matrix, types, n: int) -> Tuple[np.ndarray, np.ndarray]:
    thresholds = as_float_array(threshold_matrix, unit.nanometer, "threshold_matrix")
    if thresholds.ndim == 0:
        return np.zeros(n, dtype=np.int64), thresholds.reshape(1, 1)
    if types is None:
        raise ValueError("types are required when threshold_matrix is a matrix")
    t = np.asarray(types)
    if t.shape != (n,) or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"types must be {n} integer type indices into threshold_matrix")
    k = thresholds.shape[0]
    if thresholds.shape != (k, k) or not np.allclose(thresholds, thresholds.T):
        raise ValueError(f"threshold_matrix must be a symmetric (K, K) matrix in nm, got shape {thresholds.shape}")
    if t.min() < 0 or t.max() >= k:
        raise ValueError(f"types must lie in [0, {k}) to index threshold_matrix")
    return t.astype(np.int64), thresholds


def collision_count(positions, box, types, threshold_matrix, exclude_pairs=None) -> np.ndarray:
    """Number of bead pairs closer than their type-pair threshold, per frame.

    Candidate pairs come from a (periodic) k-d tree within the largest threshold, so cost scales with the
    number of close pairs rather than N².

    Args:
        positions: (T, N, 3) or (N, 3) positions, nm.
        box: orthorhombic edge lengths (3,) or (T, 3) nm, or None without periodic boundaries.
        types: (N,) integer type of each bead (ignored when ``threshold_matrix`` is a scalar).
        threshold_matrix: (K, K) symmetric contact distances, nm, or one scalar for every pair.
        exclude_pairs: optional (P, 2) bead index pairs never counted (e.g. CG bonds).

    Returns:
        (T,) int64 collision counts (each unordered pair counted once).
    """
    x = as_trajectory(positions)
    n_frames, n, _ = x.shape
    t, thresholds = _threshold_matrix(threshold_matrix, types, n)
    if np.any(thresholds <= 0.0):
        raise ValueError("threshold_matrix entries must be positive distances (nm)")
    b = None if box is None else as_box(box, n_frames)
    cutoff = float(thresholds.max())
    if b is not None and cutoff > 0.5 * b.min():
        raise ValueError(f"the largest threshold {cutoff:g} nm exceeds half the smallest box edge")
    excluded = None
    if exclude_pairs is not None:
        pairs = np.asarray(exclude_pairs, dtype=np.int64).reshape(-1, 2)
        excluded = np.minimum(pairs[:, 0], pairs[:, 1]) * n + np.maximum(pairs[:, 0], pairs[:, 1])
    counts = np.zeros(n_frames, dtype=np.int64)
    for f in range(n_frames):
        if b is None:
            frame, tree = x[f], cKDTree(x[f])
        else:
            frame = wrap(x[f], b[f])
            tree = cKDTree(frame, boxsize=b[f])
        pairs = tree.query_pairs(cutoff, output_type="ndarray")
        if pairs.size == 0:
            continue
        d = minimum_image(frame[pairs[:, 1]] - frame[pairs[:, 0]], None if b is None else b[f])
        close = np.einsum("ij,ij->i", d, d) < thresholds[t[pairs[:, 0]], t[pairs[:, 1]]] ** 2
        if excluded is not None:
            codes = np.minimum(pairs[:, 0], pairs[:, 1]) * n + np.maximum(pairs[:, 0], pairs[:, 1])
            close &= ~np.isin(codes, excluded)
        counts[f] = int(close.sum())
    return counts


def collision_rate(positions, box, types, threshold_matrix, exclude_pairs=None) -> float:
    """Colliding pairs per bead per frame: mean of :func:`collision_count` divided by the bead count."""
    x = as_trajectory(positions)
    counts = collision_count(x, box, types, threshold_matrix, exclude_pairs)
    return float(counts.mean() / x.shape[1])


def collision_thresholds(model_path: str, beadmap) -> Optional[np.ndarray]:
    """(K, K) collision distances (nm) for ``beadmap``'s types from the model's contacts file, or None.

    Each is :data:`COLLISION_FRACTION` times the closest approach of that type pair in the training data; type
    pairs the data never showed get the strictest (smallest) known distance. None when the model has no
    contacts file or it knows none of ``beadmap``'s type pairs.
    """
    contacts = read_contacts(model_path)
    table = None if contacts is None else contact_table(contacts, beadmap.type_names)
    return None if table is None else COLLISION_FRACTION * table


def count_collisions(positions, box, beadmap, thresholds) -> np.ndarray:
    """Collisions per frame of ``beadmap``'s beads: :func:`collision_count` with its bead types, CG bonds excluded."""
    return collision_count(positions, box, beadmap.bead_types, thresholds, exclude_pairs=beadmap.bonds)
