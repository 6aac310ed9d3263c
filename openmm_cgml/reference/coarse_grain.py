"""Coarse-grain an existing all-atom trajectory (any format mdtraj reads) into a CG dataset."""
import os
import struct
from typing import Optional

import mdtraj
import numpy as np

from ..data import CGDatasetWriter
from ..mapping import BeadMap
from ..pbc import unwrap


def check_trajectory_file(path: str) -> None:
    """Refuse, in one line, a trajectory mdtraj would misread: missing, HDF5 without PyTables, a DCD that is not
    one or is truncated (mdtraj silently reads the frames that are complete)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"trajectory {path} does not exist")
    if path.endswith((".h5", ".hdf5")):
        try:
            import tables  # noqa: F401  (mdtraj's HDF5 reader needs PyTables)
        except ImportError:
            raise ValueError(f"{path}: reading mdtraj HDF5 trajectories needs PyTables (pip install tables); "
                             "or convert the trajectory to DCD/XTC") from None
    if path.endswith(".dcd"):
        header, expected = dcd_frame_counts(path)
        if header > expected:
            raise ValueError(f"{path} is truncated: its header says {header} frames but it holds {expected} "
                             "complete frames")


def dcd_frame_counts(path: str) -> tuple:
    """(frames the DCD header announces, complete frames the file holds), read from the CHARMM/NAMD layout."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    for endian in "<>":
        if len(head) >= 8 and struct.unpack(endian + "i", head[:4])[0] == 84 and head[4:8] == b"CORD":
            break
    else:
        raise ValueError(f"{path} is not a DCD file (no CORD header)")
    try:
        icntrl = struct.unpack(endian + "20i", head[8:88])
        offset = 92  # 4 + 84 + 4
        (title_len,) = struct.unpack(endian + "i", head[offset:offset + 4])
        offset += 8 + title_len
        (natoms,) = struct.unpack(endian + "i", head[offset + 4:offset + 8])
        offset += 12
    except struct.error:
        raise ValueError(f"{path} is not a DCD file (header cut short)") from None
    n_fixed = icntrl[8]
    if n_fixed or natoms <= 0:
        return icntrl[0], icntrl[0]  # fixed-atom DCDs have variable frames: leave the count to mdtraj
    has_cell = icntrl[19] != 0 and icntrl[10] != 0
    frame = (56 if has_cell else 0) + 3 * (8 + 4 * natoms) + (8 + 4 * natoms if icntrl[19] and icntrl[11] else 0)
    return icntrl[0], max(0, (size - offset) // frame)


def unwrap_bead_trajectory(positions: np.ndarray, box: Optional[np.ndarray]) -> np.ndarray:
    """Make bead trajectories continuous in time: positions (T, N, 3) nm, box (T, 3) nm orthorhombic.

    Each frame-to-frame displacement is replaced by its minimum image, so beads must move less than half a box
    edge between frames (true for frames a few ps apart).
    """
    if box is None or len(positions) < 2:
        return positions
    return unwrap(positions, box).astype(np.float32)


def coarse_grain_trajectory(
    trajectory: str,
    topology: str,
    beadmap: BeadMap,
    out_path: str,
    provenance: Optional[dict] = None,
    chunk: int = 500,
    overwrite: bool = False,
) -> str:
    """Map the all-atom ``trajectory`` (with ``topology``, e.g. a PDB) to beads and write a CG dataset.

    Frames are read in chunks, molecules made whole per frame by the mapper, and bead positions unwrapped
    across frames. Times come from the trajectory file (ps).
    """
    if os.path.exists(out_path) and not overwrite:
        raise ValueError(f"{out_path} already exists; pass overwrite=True or choose another file")
    if os.path.isdir(out_path):
        raise ValueError(f"{out_path} is a directory; the output is one .h5 file")
    check_trajectory_file(trajectory)
    if not os.path.isfile(topology):
        raise FileNotFoundError(f"topology {topology} does not exist")
    try:
        top = mdtraj.load_topology(topology)
    except Exception as err:
        raise ValueError(f"topology {topology} could not be read ({err})") from None
    if top.n_atoms != beadmap.n_atoms:
        raise ValueError(f"topology {topology} has {top.n_atoms} atoms but the bead map expects {beadmap.n_atoms}")
    # Written to a temporary file that replaces out_path only when complete: nothing half-written, ever.
    tmp = f"{out_path}.tmp{os.getpid()}"
    periodic = None
    writer = None
    last = None
    try:
        for frames in mdtraj.iterload(trajectory, top=top, chunk=chunk):
            if periodic is None:
                periodic = frames.unitcell_lengths is not None
                meta = dict(provenance or {}, source_trajectory=os.path.abspath(trajectory))
                writer = CGDatasetWriter.create(tmp, beadmap, meta, periodic, overwrite=True)
            beads = beadmap.map_trajectory(frames)
            box = frames.unitcell_lengths.astype(np.float32) if periodic else None
            if last is not None:  # continue the unwrapping across chunk boundaries
                beads = unwrap_bead_trajectory(np.concatenate([last[0][None], beads]),
                                               None if box is None else np.concatenate([last[1][None], box]))[1:]
            else:
                beads = unwrap_bead_trajectory(beads, box)
            writer.append(beads, box, frames.time)
            last = (beads[-1], None if box is None else box[-1])
        if writer is None:
            raise ValueError(f"{trajectory} holds no frames")
        writer.close()
        writer = None
        os.replace(tmp, out_path)
    except OSError as err:
        raise ValueError(f"{trajectory} could not be read as a trajectory of {topology} ({err})") from None
    finally:
        if writer is not None:
            writer.close()
        if os.path.exists(tmp):
            os.remove(tmp)
    return out_path
