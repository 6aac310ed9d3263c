"""Close Li⁺–Li⁺ pairs in the all-atom references: how often two Li⁺ come within 0.5 nm, every frame counted.

    python -m benchmarks.ion_pairs [--data A.h5 B.h5 ...] [--within 0.5]

#12 asks a learned model for no Li–Li RDF weight below 0.5 nm. This measures what the all-atom truth itself puts
there, composition by composition (default: every campaign reference; each is marked held out or training as in
the manifest): the closest Li–Li distance over the whole run, the frames holding a pair within ``--within`` nm,
and the mean number of Li⁺ within that distance of a Li⁺ (the figure ``benchmarks/accuracy.py`` reports as
``neighbours_within_0.5nm`` LI-LI, there on a subsample of frames). Writes ``benchmarks/results/ion_pairs.json``.
"""
import glob
import os

import numpy as np

from openmm_cgml.data import CGDataset
from openmm_cgml.pbc import minimum_image
from openmm_cgml.reference.campaign import load_campaign
from openmm_cgml.training.loop import provenance_path

from .common import DATA, benchmark_parser, composition, machine, write_json


def closest_pairs(positions: np.ndarray, box: np.ndarray, within: float) -> dict:
    """Closest distance (nm) between any two of the beads in ``positions`` (T, n, 3) over all frames, the frames
    with a pair closer than ``within`` nm, and the number of such pairs summed over frames."""
    delta = minimum_image(positions[:, :, None] - positions[:, None], box[:, None, None])
    upper = np.triu_indices(positions.shape[1], 1)
    r = np.linalg.norm(delta, axis=-1)[:, upper[0], upper[1]]  # (T, pairs)
    close = r < within
    return {"closest_nm": float(r.min()), "frames_with_pair": int(close.any(axis=1).sum()),
            "pair_frames": int(close.sum())}


def li_pairs(path: str, within: float) -> dict:
    """:func:`closest_pairs` of a dataset's Li⁺ beads, with the neighbours per Li⁺ within ``within`` nm."""
    with CGDataset(path) as ds:
        li = np.flatnonzero(np.asarray(ds.beadmap.bead_species()) == "LI")
        positions = np.asarray(ds.positions[:, li], dtype=np.float64)
        box = np.asarray(ds.box, dtype=np.float64)
    if li.size < 2:
        raise ValueError(f"{path} holds fewer than two Li+ beads")
    row = closest_pairs(positions, box, within)
    n_frames = int(positions.shape[0])
    # each close pair is a neighbour of both its Li+: analysis.coordination_number's figure, without a second pass
    row.update(n_li=int(li.size), n_frames=n_frames, neighbours_per_li=2.0 * row["pair_frames"] / (li.size * n_frames))
    return row


def held_out_names() -> set:
    """The campaign manifest's held-out system names."""
    campaign = load_campaign(os.path.join(DATA, "campaign.yaml"))
    return {system.name for system in campaign.systems if system.role == "heldout"}


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__, "ion_pairs")
    parser.add_argument("--data", nargs="+", default=None, help="CG datasets (default: every campaign reference)")
    parser.add_argument("--within", type=float, default=0.5, help="pair distance, nm (default: %(default)s)")
    args = parser.parse_args(argv)
    paths = args.data or sorted(glob.glob(os.path.join(DATA, "peo_litfsi_*", "reference", "cg.h5")))
    held_out = held_out_names()
    rows = []
    for path in paths:
        system = path.split(os.sep)[-3]
        row = {"dataset": provenance_path(path), "role": "held out" if system in held_out else "training",
               **composition(path), **li_pairs(path, args.within)}
        rows.append(row)
        print(f"{system:34s} {row['role']:8s} {row['n_li']:3d} Li+ {row['n_frames']:6d} frames  closest "
              f"{row['closest_nm']:.3f} nm  frames with a pair < {args.within:g} nm: {row['frames_with_pair']:4d}  "
              f"Li+ per Li+: {row['neighbours_per_li']:.2e}")
    write_json({"machine": machine(), "within_nm": args.within, "datasets": rows}, args.out)


if __name__ == "__main__":
    main()
