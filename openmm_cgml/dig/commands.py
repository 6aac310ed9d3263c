"""Functions behind ``cgml sample`` (and ``cgml train-dig``, which lives in training.dig): thin, file-level wrappers."""
import os
from typing import Optional

import numpy as np

from ..pbc import wrap
from ..training.dig import load_dig_systems, train_dig_main
from .sampler import DiGSampler

SAMPLE_FORMATS = (".npz", ".h5", ".hdf5", ".dcd")


def _beadmap(dig_dir: str, system: int):
    from ..mapping import BeadMap

    path = os.path.join(dig_dir, f"beadmap_{system}.json")
    return BeadMap.from_json(path) if os.path.exists(path) else None


def sample_main(
    dig_dir: str,
    n: int,
    out: str,
    seed: int = 0,
    method: str = "dpm",
    steps: Optional[int] = None,
    system: int = 0,
    batch_size: int = 256,
    device: str = "cpu",
    overwrite: bool = False,
) -> str:
    """``cgml sample DIG_DIR -n N -o OUT [--seed S] [--method dpm|ode|ancestral] [--steps K] [--system I]``.

    Draws ``n`` independent structures of training system ``system`` and writes them to ``out``: ``.npz``
    (``positions`` (n, N, 3) nm, ``box`` if periodic), ``.h5``/``.hdf5`` (a CG dataset, frames = samples, time =
    sample index in ps, provenance marks them as independent DiG samples) or ``.dcd`` (with the bead topology; the
    model directory's ``beadmap_<system>.json`` is needed for .h5 and .dcd). Returns ``out``.
    """
    ext = os.path.splitext(out)[1].lower()
    if ext not in SAMPLE_FORMATS:
        raise ValueError(f"unknown output format {ext!r} for {out}; use one of {SAMPLE_FORMATS}")
    if os.path.exists(out) and not overwrite:
        raise ValueError(f"{out} exists; choose another path or pass overwrite=True")
    systems = load_dig_systems(dig_dir)
    if not 0 <= int(system) < len(systems):
        raise ValueError(f"{dig_dir} was trained on {len(systems)} system(s); --system must be 0..{len(systems) - 1}")
    desc = systems[int(system)]
    beadmap = _beadmap(dig_dir, int(system))
    if ext != ".npz" and beadmap is None:
        raise ValueError(f"{dig_dir} has no beadmap_{system}.json, needed for {ext} output; write .npz instead")
    sampler = DiGSampler(dig_dir, device=device)
    x = sampler.sample(int(n), desc, method=method, steps=steps, seed=seed, batch_size=batch_size, progress=True)
    pos = x.numpy().astype(np.float32)
    box = None if desc.box is None else desc.box.numpy().astype(np.float32)
    if box is not None:
        pos = wrap(pos, box)  # [0, box), as simulations and datasets store them
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    if ext == ".npz":
        arrays = {"positions": pos} if box is None else {"positions": pos, "box": box}
        tmp = out + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, out)
    elif ext in (".h5", ".hdf5"):
        from ..data.dataset import write_dataset

        boxes = None if box is None else np.repeat(box[None], len(pos), axis=0)
        provenance = {"source": "dig", "dig_model": os.path.abspath(dig_dir), "method": method, "seed": int(seed),
                      "independent_samples": True}
        write_dataset(out, beadmap, pos, boxes, np.arange(len(pos), dtype=np.float64), provenance, overwrite)
    else:
        import mdtraj

        top = beadmap.to_mdtraj_topology()
        traj = mdtraj.Trajectory(pos, top)
        if box is not None:
            traj.unitcell_lengths = np.repeat(box[None], len(pos), axis=0)
            traj.unitcell_angles = np.full((len(pos), 3), 90.0, dtype=np.float32)
        traj.save_dcd(out)
    print(f"wrote {len(pos)} DiG samples of {pos.shape[1]} beads to {out}")
    return out


__all__ = ["sample_main", "train_dig_main"]
