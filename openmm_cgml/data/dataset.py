"""HDF5 coarse-grained datasets: one file per trajectory.

Layout (format version 1)::

    /positions  (T, N, 3) float32  nm, unwrapped (continuous in time), extendable along T
    /box        (T, 3)    float32  nm, orthorhombic edge lengths (absent for non-periodic systems)
    /time       (T,)      float64  ps
    /beadmap    scalar string      BeadMap JSON: bead types, masses, CG bonds, atom graph of each type
    /provenance scalar string      JSON: force field, temperature, time step, seed, package version, ...
    attrs: format_version, n_beads, periodic

The bead metadata travels with the frames so that a dataset is self-describing for training and analysis.
"""
import json
import os
from typing import Optional

import h5py
import numpy as np

from ..mapping import BeadMap

FORMAT_VERSION = 1
_CHUNK_FRAMES = 64


def _text(value: str):
    return np.array(value, dtype=h5py.string_dtype("utf-8"))


class CGDataset:
    """Read-only view of a CG dataset file. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise FileNotFoundError(f"CG dataset {path} does not exist")
        try:
            # No file lock: a reader (``cgml campaign status``, analysis of a running reference) must never
            # make the run's writer fail to open its own dataset.
            self._file = h5py.File(path, "r", locking=False)
        except OSError as err:
            raise ValueError(f"{path} is not a readable HDF5 CG dataset: {err}") from None
        try:
            self._open(path)
        except Exception:
            self._file.close()
            raise

    def _open(self, path: str):
        """Read the metadata and check that every part of the file agrees with the others (one-line errors)."""
        f = self._file
        if f.attrs.get("format_version") != FORMAT_VERSION or "positions" not in f:
            raise ValueError(f"{path} is not an openmm-cgml dataset of format {FORMAT_VERSION}")
        missing = [name for name in ("time", "beadmap", "provenance") if name not in f]
        if "periodic" not in f.attrs:
            missing.append("the 'periodic' attribute")
        if missing:
            raise ValueError(f"{path} is not a complete CG dataset: it has no {', '.join(missing)}")
        self.path = path
        self.positions = f["positions"]
        self.periodic = bool(f.attrs["periodic"])
        if self.positions.ndim != 3 or self.positions.shape[2] != 3:
            raise ValueError(f"{path}: positions must have shape (frames, beads, 3), got {self.positions.shape}")
        n_frames = self.positions.shape[0]
        self.time = f["time"][:]
        if self.time.shape != (n_frames,):
            raise ValueError(f"{path}: time has {self.time.shape[0] if self.time.ndim else 0} entries but positions "
                             f"have {n_frames} frames")
        if not np.isfinite(self.time).all() or (n_frames > 1 and not (np.diff(self.time) > 0).all()):
            raise ValueError(f"{path}: time must be finite and increasing")
        self.box = f["box"][:] if "box" in f else None
        if self.periodic and self.box is None:
            raise ValueError(f"{path} is periodic but has no box")
        if self.box is not None and self.box.shape != (n_frames, 3):
            raise ValueError(f"{path}: box has shape {self.box.shape} but positions have {n_frames} frames "
                             f"(expected ({n_frames}, 3) nm)")
        if self.box is not None and not (np.isfinite(self.box).all() and (self.box > 0).all()):
            raise ValueError(f"{path}: box edges must be finite and positive")
        try:
            self.beadmap = BeadMap.from_dict(json.loads(f["beadmap"][()].decode("utf-8")))
            self.provenance = json.loads(f["provenance"][()].decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as err:
            raise ValueError(f"{path}: bead map or provenance is not valid JSON ({err})") from None
        if self.beadmap.n_beads != self.positions.shape[1]:
            raise ValueError(f"{path}: its bead map has {self.beadmap.n_beads} beads but positions have "
                             f"{self.positions.shape[1]}")
        if not isinstance(self.provenance, dict):
            raise ValueError(f"{path}: provenance must be a JSON object")

    @property
    def n_frames(self) -> int:
        return self.positions.shape[0]

    @property
    def n_beads(self) -> int:
        return self.positions.shape[1]

    @property
    def frame_interval_ps(self) -> float:
        """Time between consecutive frames, ps (uniform spacing is checked)."""
        if self.n_frames < 2:
            raise ValueError(f"{self.path} has fewer than two frames; no frame interval")
        steps = np.diff(self.time)
        if not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-9):
            raise ValueError(f"{self.path} has unevenly spaced frames")
        return float(steps[0])

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CGDatasetWriter:
    """Appends frames to a CG dataset file; used by the reference runner and by :func:`write_dataset`."""

    def __init__(self, path: str):
        self.path = path
        self._file = h5py.File(path, "r+")
        self.periodic = bool(self._file.attrs["periodic"])
        self.n_beads = int(self._file.attrs["n_beads"])

    @classmethod
    def create(
        cls, path: str, beadmap: BeadMap, provenance: dict, periodic: bool, overwrite: bool = False
    ) -> "CGDatasetWriter":
        """Create an empty dataset for ``beadmap``; refuses an existing file unless ``overwrite``."""
        if os.path.exists(path) and not overwrite:
            raise ValueError(f"{path} already exists; pass overwrite=True or choose another file")
        meta = json.dumps(provenance, sort_keys=True)  # fails before anything is written
        with h5py.File(path, "w") as f:
            n = beadmap.n_beads
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["n_beads"] = n
            f.attrs["periodic"] = bool(periodic)
            f.create_dataset("positions", (0, n, 3), maxshape=(None, n, 3), dtype="f4", chunks=(_CHUNK_FRAMES, n, 3))
            f.create_dataset("time", (0,), maxshape=(None,), dtype="f8", chunks=(1024,))
            if periodic:
                f.create_dataset("box", (0, 3), maxshape=(None, 3), dtype="f4", chunks=(1024, 3))
            f["beadmap"] = _text(json.dumps(beadmap.to_dict()))
            f["provenance"] = _text(meta)
        return cls(path)

    @property
    def n_frames(self) -> int:
        return self._file["positions"].shape[0]

    def append(self, positions, box, time):
        """Append frames: positions (k, N, 3) nm, box (k, 3) nm or None, time (k,) ps."""
        positions = np.asarray(positions, dtype=np.float32).reshape(-1, self.n_beads, 3)
        time = np.atleast_1d(np.asarray(time, dtype=np.float64))
        k = positions.shape[0]
        if time.shape != (k,):
            raise ValueError(f"got {k} frames of positions but {time.shape[0]} times")
        if not np.isfinite(positions).all():
            raise ValueError("refusing to append frames with non-finite bead positions")
        if self.periodic:
            if box is None:
                raise ValueError("this dataset is periodic: append() needs the box of every frame")
            box = np.asarray(box, dtype=np.float32).reshape(k, 3)
        t0 = self.n_frames
        f = self._file
        for name, data in (("positions", positions), ("time", time), ("box", box if self.periodic else None)):
            if data is not None:
                f[name].resize(t0 + k, axis=0)
                f[name][t0:] = data

    def truncate(self, n_frames: int):
        """Drop every frame after the first ``n_frames`` (used when resuming from a checkpoint)."""
        for name in ("positions", "time", "box"):
            if name in self._file:
                self._file[name].resize(n_frames, axis=0)

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_dataset(
    path: str,
    beadmap: BeadMap,
    positions,
    box,
    time,
    provenance: Optional[dict] = None,
    overwrite: bool = False,
) -> str:
    """Write a whole CG trajectory at once: positions (T, N, 3) nm, box (T, 3) nm or None, time (T,) ps."""
    positions = np.asarray(positions, dtype=np.float32)
    if positions.ndim != 3 or positions.shape[1:] != (beadmap.n_beads, 3):
        raise ValueError(f"positions must have shape (T, {beadmap.n_beads}, 3), got {positions.shape}")
    if np.shape(time) != (positions.shape[0],):
        raise ValueError(f"time must have shape ({positions.shape[0]},), got {np.shape(time)}")
    if box is not None and np.shape(box) != (positions.shape[0], 3):
        raise ValueError(f"box must have shape ({positions.shape[0]}, 3) nm, got {np.shape(box)}")
    if not np.isfinite(positions).all():
        raise ValueError("positions contain NaN or inf; nothing written")
    with CGDatasetWriter.create(path, beadmap, provenance or {}, box is not None, overwrite) as writer:
        writer.append(positions, box, time)
    return path
