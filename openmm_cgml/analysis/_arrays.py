"""Input checking shared by the analysis functions: strip ``openmm.unit`` quantities and check shapes."""
import numpy as np
from openmm import unit


def as_float_array(value, quantity_unit, name: str) -> np.ndarray:
    """``value`` as a float64 array in ``quantity_unit`` (a Quantity is converted, a plain array is assumed in it)."""
    if isinstance(value, unit.Quantity):
        value = value.value_in_unit(quantity_unit)
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be numeric (or an openmm.unit.Quantity), got {type(value).__name__}") from None
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


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


def wrap_into_box(x: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Positions (..., 3) wrapped into [0, box) (floating-point rounding can give exactly ``box``: fold to 0)."""
    wrapped = x - box * np.floor(x / box)
    wrapped[wrapped >= box] = 0.0
    wrapped[wrapped < 0.0] = 0.0
    return wrapped


def as_labels(species, n: int, name: str = "species") -> np.ndarray:
    """A per-bead label array of length ``n``."""
    labels = np.asarray(species)
    if labels.shape != (n,):
        raise ValueError(f"{name} must give one label per bead ({n}), got shape {labels.shape}")
    return labels
