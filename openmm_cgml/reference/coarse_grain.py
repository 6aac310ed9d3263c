"""Coarse-grain an existing all-atom trajectory (any format mdtraj reads) into a CG dataset."""
import os
from typing import Optional

import mdtraj
import numpy as np

from ..data import CGDatasetWriter
from ..mapping import BeadMap


def unwrap_bead_trajectory(positions: np.ndarray, box: Optional[np.ndarray]) -> np.ndarray:
    """Make bead trajectories continuous in time: positions (T, N, 3) nm, box (T, 3) nm orthorhombic.

    Each frame-to-frame displacement is replaced by its minimum image, so beads must move less than half a box
    edge between frames (true for frames a few ps apart).
    """
    if box is None or len(positions) < 2:
        return positions
    steps = np.diff(positions, axis=0)
    steps -= box[1:, None, :] * np.round(steps / box[1:, None, :])
    return np.concatenate([positions[:1], positions[:1] + np.cumsum(steps, axis=0)], axis=0).astype(np.float32)


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
    top = mdtraj.load_topology(topology)
    if top.n_atoms != beadmap.n_atoms:
        raise ValueError(f"topology {topology} has {top.n_atoms} atoms but the bead map expects {beadmap.n_atoms}")
    periodic = None
    writer = None
    last = None
    try:
        for frames in mdtraj.iterload(trajectory, top=top, chunk=chunk):
            if periodic is None:
                periodic = frames.unitcell_lengths is not None
                meta = dict(provenance or {}, source_trajectory=os.path.abspath(trajectory))
                writer = CGDatasetWriter.create(out_path, beadmap, meta, periodic, overwrite=overwrite)
            beads = beadmap.map_trajectory(frames)
            box = frames.unitcell_lengths.astype(np.float32) if periodic else None
            if last is not None:  # continue the unwrapping across chunk boundaries
                beads = unwrap_bead_trajectory(np.concatenate([last[0][None], beads]),
                                               None if box is None else np.concatenate([last[1][None], box]))[1:]
            else:
                beads = unwrap_bead_trajectory(beads, box)
            writer.append(beads, box, frames.time)
            last = (beads[-1], None if box is None else box[-1])
    except Exception:
        if writer is not None:
            writer.close()
            os.remove(out_path)  # nothing half-written
        raise
    if writer is None:
        raise ValueError(f"{trajectory} holds no frames")
    writer.close()
    return out_path
