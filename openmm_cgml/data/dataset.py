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
            self._file = h5py.File(path, "r")
        except OSError as err:
            raise ValueError(f"{path} is not a readable HDF5 CG dataset: {err}") from None
        f = self._file
        if f.attrs.get("format_version") != FORMAT_VERSION or "positions" not in f:
            self._file.close()
            raise ValueError(f"{path} is not an openmm-cgml dataset of format {FORMAT_VERSION}")
        self.path = path
        self.positions = f["positions"]
        self.time = f["time"][:]
        self.box = f["box"][:] if "box" in f else None
        self.periodic = bool(f.attrs["periodic"])
        self.beadmap = BeadMap.from_dict(json.loads(f["beadmap"][()].decode("utf-8")))
        self.provenance = json.loads(f["provenance"][()].decode("utf-8"))

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


def contact_distances(paths, max_frames: int = 200) -> dict:
    """Closest approach (nm) of non-bonded bead pairs per bead-type pair, over frames of CG datasets.

    A learned run in which two beads come closer than (a fraction of) what the all-atom reference ever showed
    has a *collision*. Returns ``{"type_names": [...], "min_distance_nm": K x K list}`` with ``None`` for type
    pairs never seen within 2 nm. Frames are taken evenly from each file (at most ``max_frames`` per file).
    """
    from scipy.spatial import cKDTree

    names: list = []
    table: dict = {}
    for path in [paths] if isinstance(paths, str) else paths:
        with CGDataset(path) as ds:
            bm = ds.beadmap
            names += [n for n in bm.type_names if n not in names]
            types = np.asarray([names.index(bm.type_names[t]) for t in bm.bead_types])
            bonded = {tuple(p) for p in np.sort(bm.bonds, axis=1).tolist()}
            for t in np.linspace(0, ds.n_frames - 1, min(max_frames, ds.n_frames)).astype(int):
                x = np.asarray(ds.positions[t], dtype=np.float64)
                box = ds.box[t].astype(np.float64) if ds.box is not None else None
                tree = cKDTree(np.mod(x, box) if box is not None else x, boxsize=box)
                for i, j in tree.query_pairs(2.0, output_type="ndarray"):
                    if (min(i, j), max(i, j)) in bonded:
                        continue
                    d = x[i] - x[j]
                    if box is not None:
                        d -= box * np.round(d / box)
                    key = tuple(sorted((types[i], types[j])))
                    table[key] = min(table.get(key, np.inf), float(np.linalg.norm(d)))
    k = len(names)
    matrix = [[table.get(tuple(sorted((a, b)))) for b in range(k)] for a in range(k)]
    return {"type_names": names, "min_distance_nm": matrix}
