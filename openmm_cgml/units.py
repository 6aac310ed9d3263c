"""Stripping ``openmm.unit`` quantities at the boundary (stage 0): one helper, :func:`strip_units`.

Public functions accept quantities (or plain numbers already in the documented unit) and convert them once,
here; everything inside the package is plain floats in nm, ps, amu, kJ/mol and K.
"""
from typing import Optional, Sequence

import numpy as np
from openmm import unit

__all__ = ["UnitsError", "strip_units"]

_KIND = {
    unit.nanometer: "a length (e.g. nanometers)",
    unit.picosecond: "a time (e.g. picoseconds)",
    unit.amu: "a mass (e.g. daltons)",
    unit.kelvin: "a temperature (e.g. kelvin)",
    unit.kilojoule_per_mole: "an energy (e.g. kilojoules per mole)",
}


class UnitsError(TypeError, ValueError):
    """A value without the required units, with incompatible units, or not numeric.

    It is both a ``ValueError`` (bad input: the CLI prints it as one line) and a ``TypeError`` (what these
    checks raised before they were gathered here), as ``numpy.AxisError`` is both ``ValueError`` and
    ``IndexError``.
    """


def _kind(in_unit) -> str:
    return _KIND.get(in_unit, f"in units compatible with {in_unit}")


def _shape_ok(shape: tuple, expected: Sequence[Optional[int]]) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def strip_units(value, in_unit, name: str, *, shape: Optional[Sequence[Optional[int]]] = None,
                require_units: bool = False, finite: bool = False, dtype=np.float64) -> np.ndarray:
    """``value`` as a float NumPy array of plain numbers in ``in_unit``.

    Parameters
    ----------
    value : openmm.unit.Quantity, number, array, list of Vec3, or Quantity-wrapped list
        A Quantity is converted to ``in_unit``; anything else is taken to be in ``in_unit`` already.
    in_unit : openmm.unit.Unit
        The unit of the returned numbers (e.g. ``unit.nanometer``).
    name : str
        The argument's name, used in error messages.
    shape : sequence of int or None, optional
        Required shape; ``None`` entries match any length (e.g. ``(None, 3)`` for N positions).
    require_units : bool
        Refuse plain numbers (for arguments whose documented type is a Quantity).
    finite : bool
        Refuse NaN and infinite values.
    dtype : NumPy float dtype
        dtype of the result (default float64).

    Returns
    -------
    numpy.ndarray
        A new array (never a view of ``value``).

    Raises
    ------
    UnitsError
        (a ``ValueError`` and a ``TypeError``) no units where ``require_units``, incompatible units, not numeric.
    ValueError
        Wrong shape, or NaN / infinite values where ``finite``.
    """
    if unit.is_quantity(value):
        if not value.unit.is_compatible(in_unit):
            raise UnitsError(f"{name} must be {_kind(in_unit)}, got unit {value.unit}") from None
        value = value.value_in_unit(in_unit)
    elif require_units:
        raise UnitsError(f"{name} must carry units: an openmm.unit Quantity such as value * unit.{in_unit.get_name()}"
                         f", got plain {type(value).__name__}") from None
    try:
        array = np.array(value, dtype=dtype)
    except (TypeError, ValueError):
        try:  # e.g. a list of Vec3 mixed with other sequences, or a ragged list
            array = np.array([[float(c) for c in row] for row in value], dtype=dtype)
        except (TypeError, ValueError):
            raise UnitsError(f"{name} must be numeric ({_kind(in_unit)}; an array, a list of 3-vectors or an "
                             f"openmm.unit.Quantity), got {type(value).__name__}") from None
    if shape is not None and not _shape_ok(array.shape, shape):
        wanted = "(" + ", ".join("N" if e is None else str(e) for e in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{name} must have shape {wanted} in {in_unit.get_name()}, got {array.shape}") from None
    if finite and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values") from None
    return array
