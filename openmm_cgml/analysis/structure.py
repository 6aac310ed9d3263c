"""Static structure: radial distribution functions, radii of gyration, whole molecules and bond lengths.

Bead collisions are in :mod:`openmm_cgml.analysis.collisions`.

Positions nm, orthorhombic boxes given as edge lengths nm, masses amu.
"""
from typing import Tuple

import numpy as np
import scipy.sparse
from openmm import unit
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree
from scipy.spatial import cKDTree

from ..pbc import minimum_image, wrap
from ._arrays import as_box, as_float, as_float_array, as_trajectory


def _as_mask(mask, n: int, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != (n,):
        raise ValueError(f"{name} must be a boolean array with one entry per bead ({n})")
    if not m.any():
        raise ValueError(f"{name} selects no beads")
    return m


def rdf(positions, box, species_a_mask, species_b_mask, r_max, n_bins: int = 100) -> Tuple[np.ndarray, np.ndarray]:
    """Radial distribution function g_AB(r) under orthorhombic periodic boundaries (minimum image).

    Counts ordered pairs (a, b) with a in A, b in B and a != b, normalised per frame by the number of such
    pairs over the box volume, so an ideal gas gives g = 1 (the convention of mdtraj, cpptraj and gmx rdf).
    Pair counting uses periodic k-d trees, so no N x N distance matrix is built.

    Args:
        positions: (T, N, 3) or (N, 3) positions, nm (wrapped or not).
        box: orthorhombic edge lengths (3,) or (T, 3), nm.
        species_a_mask, species_b_mask: (N,) boolean selections A and B (may overlap or be equal).
        r_max: largest distance, nm; at most half the smallest box edge.
        n_bins: number of equal bins on [0, r_max].

    Returns:
        r_centres (n_bins,) nm and g (n_bins,).
    """
    x = as_trajectory(positions)
    b = as_box(box, x.shape[0])
    n = x.shape[1]
    mask_a = _as_mask(species_a_mask, n, "species_a_mask")
    mask_b = _as_mask(species_b_mask, n, "species_b_mask")
    r_max = as_float(r_max, unit.nanometer, "r_max")
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, got {n_bins}")
    if not 0.0 < r_max <= 0.5 * b.min():
        raise ValueError(f"r_max must be in (0, {0.5 * b.min():g}] nm (half the smallest box edge), got {r_max:g}")
    n_pairs = int(mask_a.sum()) * int(mask_b.sum()) - int((mask_a & mask_b).sum())
    if n_pairs == 0:
        raise ValueError("species_a_mask and species_b_mask select a single common bead: no pairs")
    edges = np.linspace(0.0, r_max, n_bins + 1)
    counts = np.zeros(n_bins)
    index_a, index_b = np.flatnonzero(mask_a), np.flatnonzero(mask_b)
    for frame, frame_box in zip(x, b):
        wrapped = wrap(frame, frame_box)
        tree_a = cKDTree(wrapped[mask_a], boxsize=frame_box)
        tree_b = cKDTree(wrapped[mask_b], boxsize=frame_box)
        close = tree_a.sparse_distance_matrix(tree_b, r_max, output_type="ndarray")
        distinct = index_a[close["i"]] != index_b[close["j"]]
        counts += np.histogram(close["v"][distinct], bins=n_bins, range=(0.0, r_max))[0]
    shell_volumes = 4.0 / 3.0 * np.pi * np.diff(edges ** 3)
    norm = n_pairs * np.sum(1.0 / np.prod(b, axis=1)) * shell_volumes
    return 0.5 * (edges[1:] + edges[:-1]), counts / norm



def coordination_number(positions, box, species_a_mask, species_b_mask, r) -> float:
    """Mean number of B beads (other than itself) within ``r`` nm of an A bead, over A beads and frames.

    The weight of g_AB below ``r``: e.g. Li–Li within 0.5 nm, which all-atom PEO/LiTFSI shows
    rarely (``python -m benchmarks.ion_pairs``).
    Positions (T, N, 3) or (N, 3) nm, box (3,) or (T, 3) nm, masks (N,) boolean; ``r`` at most half the box."""
    x = as_trajectory(positions)
    b = as_box(box, x.shape[0])
    n = x.shape[1]
    mask_a = _as_mask(species_a_mask, n, "species_a_mask")
    mask_b = _as_mask(species_b_mask, n, "species_b_mask")
    r = as_float(r, unit.nanometer, "r")
    if not 0.0 < r <= 0.5 * b.min():
        raise ValueError(f"r must be in (0, {0.5 * b.min():g}] nm (half the smallest box edge), got {r:g}")
    index_a, index_b = np.flatnonzero(mask_a), np.flatnonzero(mask_b)
    total = 0
    for frame, frame_box in zip(x, b):
        wrapped = wrap(frame, frame_box)
        close = cKDTree(wrapped[mask_a], boxsize=frame_box).sparse_distance_matrix(
            cKDTree(wrapped[mask_b], boxsize=frame_box), r, output_type="ndarray")
        total += int(np.count_nonzero(index_a[close["i"]] != index_b[close["j"]]))
    return total / (index_a.size * x.shape[0])

def first_peak(r, g) -> Tuple[float, float]:
    """Position (nm) and height of the first coordination peak of an RDF.

    The first shell is the first stretch where g exceeds 1 (the ideal-gas value), up to where it next falls
    below 1; its maximum is the peak. This ignores noise on the rising edge. If g never exceeds 1, the global
    maximum is returned.
    """
    r = as_float_array(r, unit.nanometer, "r")
    g = as_float_array(g, unit.dimensionless, "g")
    if r.ndim != 1 or r.shape != g.shape or r.size == 0:
        raise ValueError(f"r and g must be 1-D of equal, non-zero length, got {r.shape} and {g.shape}")
    above = np.flatnonzero(g > 1.0)
    if above.size == 0:
        i = int(np.argmax(g))
        return float(r[i]), float(g[i])
    start = int(above[0])
    below = np.flatnonzero(g[start:] < 1.0)
    stop = start + int(below[0]) if below.size else g.size
    i = start + int(np.argmax(g[start:stop]))
    return float(r[i]), float(g[i])


def radius_of_gyration_squared(positions, masses, molecule_index) -> np.ndarray:
    """Mass-weighted squared radius of gyration of each molecule, nm².

    Rg² = sum_i m_i |r_i - r_com|² / sum_i m_i over the beads of a molecule. Positions must keep molecules
    whole (unwrapped, or made whole by the mapping); a molecule split across the box gives a wrong Rg².

    Args:
        positions: (T, N, 3) or (N, 3) positions, nm.
        masses: (N,) bead masses, amu (only ratios matter).
        molecule_index: (N,) molecule label of each bead (any integers); molecules are ordered by label.

    Returns:
        (T, n_molecules) Rg², nm².
    """
    x = as_trajectory(positions)
    n_frames, n, _ = x.shape
    m = as_float_array(masses, unit.amu, "masses")
    if m.shape != (n,) or np.any(m <= 0.0):
        raise ValueError(f"masses must hold {n} positive values (amu)")
    labels = np.asarray(molecule_index)
    if labels.shape != (n,):
        raise ValueError(f"molecule_index must have one entry per bead ({n}), got shape {labels.shape}")
    _, molecule = np.unique(labels, return_inverse=True)
    n_mol = int(molecule.max()) + 1
    total = np.bincount(molecule, weights=m, minlength=n_mol)
    # Sparse (molecules x beads) mass-fraction matrix: one product gives all centres of mass of all frames.
    weights = scipy.sparse.csr_matrix((m / total[molecule], (molecule, np.arange(n))), shape=(n_mol, n))
    flat = x.transpose(1, 0, 2).reshape(n, n_frames * 3)
    com = weights @ flat
    rel = flat - com[molecule]
    sq = (rel.reshape(n, n_frames, 3) ** 2).sum(axis=-1)
    return np.asarray(weights @ sq).T


def make_molecules_whole(positions, box, molecule_index) -> np.ndarray:
    """Shift beads by box vectors so that every molecule is whole (not split across the periodic boundary).

    Each molecule's beads are joined by a minimum spanning tree of their minimum-image distances and placed
    outwards from its first bead, each at the minimum image of its tree parent. This is exact whenever the
    tree's links (normally bonded neighbours) are shorter than half the box, so already-whole molecules,
    however long, are returned unchanged.

    Args:
        positions: (T, N, 3) or (N, 3) positions, nm.
        box: orthorhombic edge lengths (3,) or (T, 3), nm.
        molecule_index: (N,) molecule label of each bead.

    Returns:
        Positions of the same shape as given, nm.
    """
    given = as_float_array(positions, unit.nanometer, "positions")
    single = given.ndim == 2
    x = as_trajectory(given).copy()
    b = as_box(box, x.shape[0])
    labels = np.asarray(molecule_index)
    if labels.shape != (x.shape[1],):
        raise ValueError(f"molecule_index must have one entry per bead ({x.shape[1]}), got shape {labels.shape}")
    _, molecule = np.unique(labels, return_inverse=True)
    members = np.split(np.argsort(molecule, kind="stable"), np.cumsum(np.bincount(molecule))[:-1])
    for beads in members:
        if beads.size < 2:
            continue
        for f in range(x.shape[0]):
            p = x[f, beads]
            d = minimum_image(p[None, :, :] - p[:, None, :], b[f])
            # +tiny: the sparse graph would drop coincident beads' zero-length links.
            tree = minimum_spanning_tree(np.triu(np.linalg.norm(d, axis=-1) + 1e-300, k=1))
            order, parent = breadth_first_order(tree, 0, directed=False)
            for k in order[1:]:
                p[k] = p[parent[k]] + minimum_image(p[k] - p[parent[k]], b[f])
            x[f, beads] = p
    return x[0] if single else x


def bond_lengths(positions, bonds, box=None) -> np.ndarray:
    """Lengths (T, P) nm of the bonds ``bonds`` (P, 2) in every frame of ``positions`` (T, N, 3) or (N, 3) nm.

    With a box (orthorhombic edge lengths (3,) or (T, 3) nm) the minimum image is used, as the models see bonds:
    in a small box two bonded beads that move apart by more than half the box stay bonded through an image.
    """
    x = as_trajectory(positions)
    pairs = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    d = x[:, pairs[:, 0]] - x[:, pairs[:, 1]]
    if box is not None:
        d = minimum_image(d, as_box(box, x.shape[0])[:, None, :])
    return np.linalg.norm(d, axis=2)
