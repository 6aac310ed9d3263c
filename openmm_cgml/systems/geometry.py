"""Small geometry helpers for building starting structures (all lengths in nm, angles in degrees)."""
from __future__ import annotations

import numpy as np

from ..pbc import minimum_image, remove_centroid


def place_atom(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle_deg: float,
               torsion_deg: float) -> np.ndarray:
    """Position of atom d with |cd| = bond, angle b-c-d = angle_deg and dihedral a-b-c-d = torsion_deg.

    Natural-extension reference frame construction; a, b, c must not be collinear.
    """
    bc = c - b
    bc /= np.linalg.norm(bc)
    normal = np.cross(b - a, bc)
    norm = np.linalg.norm(normal)
    if norm < 1e-12:
        raise ValueError("place_atom: reference atoms a, b, c are collinear")
    normal /= norm
    theta, phi = np.radians(angle_deg), np.radians(torsion_deg)
    local = np.array([-bond * np.cos(theta), bond * np.sin(theta) * np.cos(phi), bond * np.sin(theta) * np.sin(phi)])
    frame = np.column_stack([bc, np.cross(normal, bc), normal])
    return c + frame @ local


def zmatrix_to_cartesian(rows: list[tuple]) -> np.ndarray:
    """Cartesian coordinates (nm) from a z-matrix.

    ``rows[i]`` is ``()`` for the first atom, ``(j, r)``, ``(j, r, k, theta)`` or ``(j, r, k, theta, l, phi)``
    with 0-based reference indices j, k, l < i, bond r in nm, angle i-j-k and dihedral i-j-k-l in degrees.
    The first atom sits at the origin, the second on +x, the third in the xy plane.
    """
    xyz = np.zeros((len(rows), 3))
    for i, row in enumerate(rows):
        if i == 0:
            continue
        if i == 1:
            xyz[1] = xyz[row[0]] + np.array([row[1], 0.0, 0.0])
        elif i == 2:
            j, r, k, theta = row[:4]
            # A pseudo-reference off the j-k axis gives a torsion of 0 -> atom in the xy plane.
            ref = xyz[k] + np.array([0.0, 1.0, 0.0]) if abs(xyz[k][1] - xyz[j][1]) < 1e-9 else xyz[k] + [0, 0, 1.0]
            xyz[2] = place_atom(ref, xyz[k], xyz[j], r, theta, 0.0)
        else:
            j, r, k, theta, l, phi = row
            xyz[i] = place_atom(xyz[l], xyz[k], xyz[j], r, theta, phi)
    return xyz


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed 3x3 rotation matrix (from a random unit quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def minimum_image_distances(points: np.ndarray, others: np.ndarray, box_length: float | None) -> np.ndarray:
    """Pairwise distances (len(points), len(others)) in a cubic box of side ``box_length`` (None: no PBC)."""
    delta = minimum_image(points[:, None, :] - others[None, :, :], box_length)
    return np.sqrt((delta * delta).sum(-1))


def pack_molecules(templates: list[np.ndarray], box_length: float, rng: np.random.Generator,
                   min_distance: float = 0.2, max_tries: int = 2000) -> list[np.ndarray]:
    """Place rigid copies of ``templates`` (each an (n, 3) array, nm) at random orientations and positions in a
    periodic cube of side ``box_length`` nm, rejecting any copy closer than ``min_distance`` nm to an already
    placed atom (minimum image). Returns the placed coordinates in template order (wrapped centres)."""
    placed: list[np.ndarray] = []
    occupied = np.zeros((0, 3))
    for index, template in enumerate(templates):
        centred = remove_centroid(template)
        for _ in range(max_tries):
            trial = centred @ random_rotation(rng).T + rng.uniform(0.0, box_length, size=3)
            if len(occupied) == 0 or minimum_image_distances(trial, occupied, box_length).min() >= min_distance:
                placed.append(trial)
                occupied = np.vstack([occupied, trial])
                break
        else:
            raise ValueError(f"could not place molecule {index} without overlap after {max_tries} tries; "
                             f"use a larger box (lower packing density)")
    return placed
