"""Input checking shared by the analysis functions: strip ``openmm.unit`` quantities and check shapes."""
import numpy as np
from openmm import unit

from ..units import strip_units


def as_float_array(value, quantity_unit, name: str) -> np.ndarray:
    """``value`` as a finite float64 array in ``quantity_unit``: :func:`openmm_cgml.units.strip_units` with
    ``finite=True`` (a Quantity is converted, a plain array is assumed to be in ``quantity_unit``)."""
    return strip_units(value, quantity_unit, name, finite=True)


def as_float(value, quantity_unit, name: str) -> float:
    """A scalar ``value`` as a float in ``quantity_unit``."""
    array = as_float_array(value, quantity_unit, name)
    if array.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {array.shape}")
    return float(array)


def as_trajectory(positions, name: str = "positions") -> np.ndarray:
    """Positions in nm as a (T, N, 3) float64 array; a single (N, 3) frame becomes T = 1."""
    x = as_float_array(positions, unit.nanometer, name)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (T, N, 3) or (N, 3) in nm, got {x.shape}")
    return x


def as_box(box, n_frames: int, name: str = "box") -> np.ndarray:
    """Orthorhombic box edge lengths in nm as a (T, 3) array, from (3,) or (T, 3)."""
    b = as_float_array(box, unit.nanometer, name)
    if b.shape == (3,):
        b = np.broadcast_to(b, (n_frames, 3))
    if b.shape != (n_frames, 3):
        raise ValueError(f"{name} must have shape (3,) or ({n_frames}, 3) (orthorhombic edge lengths, nm), "
                         f"got {b.shape}")
    if np.any(b <= 0.0):
        raise ValueError(f"{name} edge lengths must be positive")
    return b


def as_labels(species, n: int, name: str = "species") -> np.ndarray:
    """A per-bead label array of length ``n``."""
    labels = np.asarray(species)
    if labels.shape != (n,):
        raise ValueError(f"{name} must give one label per bead ({n}), got shape {labels.shape}")
    return labels
