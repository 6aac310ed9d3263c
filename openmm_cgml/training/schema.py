"""One validated dataclass <-> dict/YAML conversion for every configuration of the training stage.

A configuration class is a ``@dataclass`` deriving from :class:`Config`. On construction each field is checked
against its annotation (``int``, ``float``, ``bool``, ``str``, ``dict``, ``list``, ``Optional[...]``) and the class's
``validate()`` checks ranges; ``from_dict`` refuses unknown keys and ``from_yaml`` reports unreadable YAML, all with
one-line ``ValueError`` messages that say what to fix.
"""
import dataclasses
import math
import numbers
import os
import typing
from typing import Any, Union

import yaml

from ..yamlio import read_yaml_mapping


class Config:
    """Mixin of the training configurations: field type checks, ``validate()``, dict and YAML round trips."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(type(self).__name__, f.name, getattr(self, f.name), hints[f.name]))
        self.validate()

    def validate(self):
        """Range checks of the subclass (raise ``ValueError`` in one line); called on construction."""

    @classmethod
    def field_names(cls) -> list:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict):
        """Build from a mapping of field values; unknown keys are refused (a typo must not fall back to a default)."""
        if not isinstance(values, dict):
            raise ValueError(f"a {cls.__name__} needs a mapping of its keys, got {type(values).__name__}")
        unknown = sorted(str(k) for k in set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown {_label(cls)} config keys {unknown}; valid keys: {sorted(cls.field_names())}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str):
        return cls.from_dict(read_yaml_mapping(path, f"{_label(cls)} config"))

    @classmethod
    def coerce(cls, config):
        """``config`` as an instance: an instance (re-validated), a dict of fields, a YAML path, or None (defaults)."""
        if config is None:
            return cls()
        if isinstance(config, (str, os.PathLike)):
            return cls.from_yaml(str(config))
        if isinstance(config, dict):
            return cls.from_dict(config)
        if not isinstance(config, cls):
            raise TypeError(f"config must be a {cls.__name__}, a dict of its fields or a YAML file path")
        config.__post_init__()  # fields may have been assigned after construction
        return config

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str):
        """Write the fields as YAML, atomically (a temporary file renamed into place)."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)


def _label(cls) -> str:
    return getattr(cls, "config_label", cls.__name__)


def _coerce(owner: str, name: str, value: Any, hint) -> Any:
    """``value`` checked (and converted to the plain Python type) against the annotation ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(owner, name, value, inner[0])
        return value
    where = f"{owner}.{name}"
    if hint is bool:
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            return bool(value)
        raise ValueError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise ValueError(f"{where} must be an integer, got {value!r}")
    if hint is float:
        number = value
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if isinstance(number, numbers.Real) and not isinstance(number, bool) and math.isfinite(float(number)):
            return float(number)
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where} must be a string, got {value!r}")
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise ValueError(f"{where} must be a mapping, got {value!r}")
    if hint in (list, tuple) or origin in (list, tuple, typing.Sequence):
        if isinstance(value, (list, tuple)):
            return list(value) if (hint is list or origin is list) else value
        raise ValueError(f"{where} must be a list, got {value!r}")
    return value


def check(condition: bool, message: str):
    """Raise ``ValueError(message)`` unless ``condition`` (range checks in ``validate``)."""
    if not condition:
        raise ValueError(message)
