"""How far a model's own runs drift from the data, composition by composition: rollout / data MSD at 1 ns.

    python -m benchmarks.rollout_drift [--model MODEL] [--data A.h5 B.h5 ...] [--replicas 3] [--steps 25]
                                       [--refine SPEC]

One measuring pass of ``cgml calibrate`` (``calibrate_noise`` with ``iterations=0``: nothing is fitted): from frames
spread over each dataset, ``--replicas`` rollouts of ``--steps`` model steps, each residue's bead MSD at 1 ns after a
5-step burn-in, over the data's MSD at the same lag. By default the datasets are the campaign's PEO/LiTFSI
references of at least 3 ns (each marked as trained on or not: in the model's ``training_data.json`` or not). Writes
``benchmarks/results/rollout_drift.json`` (ratio per dataset and residue, the composition of each, and the slope
of log ratio against log chain length per residue) and ``rollout_drift.png`` (ratio against EO units per chain).

A calibrated model has a geometric-mean ratio near 1 over its calibration sets; the spread around it is what one
factor per residue cannot remove. ``--refine`` (a ``cgml simulate --refine`` spec, e.g. ``none`` for the dynamics
GNN alone) shows what the refinement adds to it.
"""
import glob
import json
import os

import numpy as np

from openmm_cgml.data import CGDataset
from openmm_cgml.simulate.calibrate import calibrate_noise
from openmm_cgml.simulate.step import parse_refine
from openmm_cgml.training.loop import DATA_FILE, provenance_path
from openmm_cgml.training.model import DEFAULT_MODEL, model_path

from .common import DATA, benchmark_parser, composition, figure_path, machine, set_threads, write_json


def trained_on(model: str) -> set:
    """The datasets (repository-relative paths) of a model's ``training_data.json``; empty if it has none."""
    path = os.path.join(model_path(model), DATA_FILE)
    if not os.path.exists(path):
        return set()
    with open(path) as handle:
        return {provenance_path(p) for p in json.load(handle)["datasets"]}


def nanoseconds(path: str) -> float:
    """The length of a dataset, ns."""
    with CGDataset(path) as ds:
        return float(ds.time[-1] - ds.time[0]) / 1000.0


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    species = sorted(result["slope_vs_chain_length"])
    fig, axes = plt.subplots(1, len(species), figsize=(4.2 * len(species), 3.6), sharey=True)
    for ax, sp in zip(np.atleast_1d(axes), species):
        for row in result["datasets"]:
            unseen = row["role"] == "not trained on"
            ax.scatter(row["eo_per_chain"], row["msd_ratio"][sp], marker="s" if unseen else "o",
                       c=[[(row["temperature_K"] - 350) / 100, 0.2, 1 - (row["temperature_K"] - 350) / 100]],
                       edgecolors="k" if unseen else "none", s=45)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        lengths = sorted({row["eo_per_chain"] for row in result["datasets"]})
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("EO units per chain")
        slope = result["slope_vs_chain_length"][sp]
        ax.set_title(sp if slope is None else f"{sp}: slope {slope:+.2f}")
    np.atleast_1d(axes)[0].set_ylabel("rollout / data MSD at 1 ns")
    fig.suptitle(f"{os.path.basename(result['model'])}: circles trained on, squares not; blue 350 K, red 450 K",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__, "rollout_drift", threads=1)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", nargs="+", default=None,
                        help="CG datasets (default: every campaign reference with at least 3 ns)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25, help="model steps per rollout (5 of them burn-in)")
    parser.add_argument("--refine", default="model", help="refinement spec (default: the model's own)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    paths = args.data or sorted(p for p in glob.glob(os.path.join(DATA, "peo_litfsi_*", "reference", "cg.h5")))
    if args.data is None:  # only references long enough to give a stable 1-ns MSD
        paths = [p for p in paths if nanoseconds(p) >= 3.0 - 1e-6]
    seen = trained_on(args.model)
    measured = calibrate_noise(args.model, paths, n_steps=args.steps, replicas=args.replicas, iterations=0,
                               refine=parse_refine(args.refine))
    ratios = measured["history"][0]["msd_ratio"]
    rows = []
    for p in paths:
        name = provenance_path(p)
        rows.append({"dataset": name, "role": "trained on" if name in seen else "not trained on", **composition(p),
                     "msd_ratio": {sp: per_set[p] for sp, per_set in ratios.items()}})
    length = np.log([r["eo_per_chain"] for r in rows])
    slopes = {sp: float(np.polyfit(length, np.log([r["msd_ratio"][sp] for r in rows]), 1)[0])
              if len(set(length)) > 1 else None for sp in ratios}  # None: one chain length, no trend to fit
    result = {"machine": machine(args.threads), "model": provenance_path(model_path(args.model)),
              "noise_scale": measured["noise_scale"], "lag_ps": measured["lag_ps"], "n_steps": args.steps,
              "burn_in": measured["burn_in"], "replicas": args.replicas, "refine": args.refine, "datasets": rows,
              "slope_vs_chain_length": slopes}
    write_json(result, args.out)
    plot(result, figure_path(args.out))
    for r in rows:
        print(f"{r['dataset']:60s} {r['role']:10s} EO{r['eo_per_chain']:<3d} "
              + " ".join(f"{sp} {v:5.2f}" for sp, v in sorted(r["msd_ratio"].items())))
    print("slope of log ratio vs log EO per chain:", slopes)


if __name__ == "__main__":
    main()
