"""Polymer benchmark (issue #11): long-time properties of held-out class-II chains against their ground truth.

    python -m benchmarks.polymer                      # benchmarks/results/polymer.json and polymer.png
    python -m benchmarks.polymer --data DIR --config CONFIG --out FILE.json

The ground truth is each class-II chain's fine MD (``benchmarks.polymer.make_datasets``; a run still in
progress is used as far as it got, and the JSON says so), without its first ``--discard-steps`` (the collapse
from the random-walk start takes ~30-40k steps). Baseline (a) is plain MD of the training length
(class I's ``steps``): the first such window of every ground-truth run, and, as the expected error of one
short run, the mean of the metrics over all non-overlapping windows. The learned model (b: without score
refinement, c: supervised GNN) is not run yet. Metrics: :mod:`benchmarks.polymer.metrics`.
"""
from __future__ import annotations

import os

import numpy as np

from ..common import Stopwatch, benchmark_parser, figure_path, machine, write_json
from .make_datasets import DEFAULT_CONFIG, REPO, _timestep_ps, load_config, load_fine_observables
from .metrics import aggregate, chain_metrics, com_diffusivity, contact_yardsticks, exact_com_diffusivity

GOALS = {"rg2_mean_abs_rel_error": 0.05, "tau_mean_abs_log10_ratio": 0.15, "rg2_js_mean": 0.02}


def _truth(config: dict, data_root: str, name: str, discard_steps: int = 0) -> tuple[list[dict], dict, list]:
    """Per-chain ground-truth records (CG Rg^2, COM, CG frames) after ``discard_steps``, run facts, and each
    chain's CG bonds."""
    from openmm_cgml.data import CGDataset

    ds_cfg = config["datasets"][name]
    folder = os.path.join(data_root, name)
    fine = load_fine_observables(folder)
    dt_obs = _timestep_ps(config["physics"])[0] * ds_cfg["observable_interval"]
    skip_obs, skip_frames = (-(-discard_steps // ds_cfg[key]) for key in ("observable_interval", "frame_interval"))
    records, bonds = [], []
    for k in range(fine["rg2_cg"].shape[1]):
        with CGDataset(os.path.join(folder, f"chain_{k:03d}.h5")) as ds:
            frames = np.asarray(ds.positions[skip_frames:], float)
            bonds.append(ds.beadmap.bonds)
        records.append({"rg2": fine["rg2_cg"][skip_obs:, k], "com": fine["com"][skip_obs:, k], "frames": frames,
                        "dt_ps": dt_obs,
                        "frame_dt_ps": _timestep_ps(config["physics"])[0] * ds_cfg["frame_interval"]})
    steps = (len(fine["time"]) - 1) * ds_cfg["observable_interval"]
    facts = {"dataset": name, "steps": int(steps), "steps_planned": int(ds_cfg["steps"]),
             "discarded_steps": int(skip_obs * ds_cfg["observable_interval"]),
             "complete": steps >= ds_cfg["steps"], "n_chains": len(records), "observable_dt_ps": dt_obs}
    return records, facts, bonds


def _window(record: dict, start_ps: float, length_ps: float) -> dict:
    """The part of a record in [start, start + length] ps (the CG frames too)."""
    n = int(round(length_ps / record["dt_ps"]))
    i = int(round(start_ps / record["dt_ps"]))
    f0, f1 = (int(round(t / record["frame_dt_ps"])) for t in (start_ps, start_ps + length_ps))
    return {"rg2": record["rg2"][i:i + n + 1], "com": record["com"][i:i + n + 1], "dt_ps": record["dt_ps"],
            "frames": record["frames"][f0:f1 + 1]}


def plain_md_baseline(records, bonds, d_exact: float, train_ps: float) -> dict:
    """Baseline (a): training-length windows of the ground-truth runs, scored against the whole run."""
    first, windows = [], []
    for record, chain_bonds in zip(records, bonds):
        yardsticks = contact_yardsticks(record["frames"], chain_bonds)
        total_ps = (len(record["rg2"]) - 1) * record["dt_ps"]
        starts = np.arange(0.0, total_ps - train_ps + 1e-9, train_ps)
        scores = [chain_metrics(_window(record, s, train_ps), record, d_exact, chain_bonds, yardsticks)
                  for s in starts]
        first.append(scores[0])
        windows.append(aggregate(scores))
    return {"first_window": {"per_chain": first, "aggregate": aggregate(first)},
            "all_windows": {"n_windows_per_chain": int(len(starts)),
                            "aggregate": {k: float(np.mean([w[k] for w in windows if w[k] is not None]))
                                          for k in windows[0] if k != "n_chains" and windows[0][k] is not None}}}


def _block_rel_stderr(series, n_blocks: int = 20) -> float:
    blocks = np.array_split(np.asarray(series, float), n_blocks)
    means = np.array([b.mean() for b in blocks if len(b)])
    return float(means.std(ddof=1) / np.sqrt(len(means)) / np.mean(series)) if len(means) > 1 else float("nan")


def _parity_plot(per_chain: list[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, (key, label) in zip(axes, (("rg2", "<Rg²> CG (nm²)"), ("tau", "τ Rg² (ps)"))):
        true = np.array([c[f"{key}_true_{'nm2' if key == 'rg2' else 'ps'}"] for c in per_chain])
        pred = np.array([c[f"{key}_pred_{'nm2' if key == 'rg2' else 'ps'}"] for c in per_chain])
        ax.scatter(true, pred, s=14, label="(a) plain MD, training length")
        lo, hi = min(true.min(), pred.min()) * 0.9, max(true.max(), pred.max()) * 1.1
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"ground truth {label}")
        ax.set_ylabel(f"predicted {label}")
        if key == "tau":
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].legend(fontsize=7)
    fig.suptitle("Held-out class-II chains")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(config: dict, data_root: str, out: str, truth: str = "class_II", train: str = "class_I",
        discard_steps: int = 250_000) -> dict:
    with Stopwatch() as clock:
        records, facts, bonds = _truth(config, data_root, truth, discard_steps)
        p = config["physics"]
        d_exact = exact_com_diffusivity(p["temperature_K"], p["chain_length"], p["mass_amu"],
                                        _timestep_ps(p)[1])
        train_ps = config["datasets"][train]["steps"] * _timestep_ps(p)[0]
        baseline = plain_md_baseline(records, bonds, d_exact, train_ps)
    first = baseline["first_window"]["per_chain"]
    result = {
        "benchmark": "polymer", "ground_truth": facts, "training_length_ps": train_ps,
        "training_length_steps": config["datasets"][train]["steps"], "D_exact_nm2_per_ps": d_exact,
        # The ground truth's own COM diffusivity (MSD to 10 % of the run) against the exact k_B T / (N m gamma).
        "ground_truth_D_log10_ratio_vs_exact": [
            float(np.log10(com_diffusivity(r["com"], r["dt_ps"], max_lag_fraction=0.1) / d_exact)) for r in records],
        "ground_truth_tau_ps": [c["tau_true_ps"] for c in first],
        "ground_truth_rg2_nm2": [c["rg2_true_nm2"] for c in first],
        # The ground truth's own noise: standard error of <Rg^2> from 20 blocks, relative to <Rg^2>.
        "ground_truth_rg2_rel_stderr": [_block_rel_stderr(r["rg2"]) for r in records],
        "ground_truth_tau_per_run_length": [
            c["tau_true_ps"] / ((facts["steps"] - facts["discarded_steps"]) * _timestep_ps(p)[0]) for c in first],
        "baselines": {"a_plain_md_training_length": baseline},
        "not_run": {"b_learned_without_refinement": "later session", "learned_with_refinement": "later session",
                    "c_supervised_gnn": "later session"},
        "goals": GOALS, "wall_s": clock.seconds, "machine": machine(1),
    }
    write_json(result, out)
    _parity_plot(baseline["first_window"]["per_chain"], figure_path(out))
    return result


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, "polymer", threads=1)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--data", default=None, help="dataset root (default: the config's 'output')")
    parser.add_argument("--truth", default="class_II", help="ground-truth dataset (default: %(default)s)")
    parser.add_argument("--train", default="class_I", help="dataset whose length is the training length")
    parser.add_argument("--discard-steps", type=int, default=250_000,
                        help="ground-truth steps dropped as equilibration (default: %(default)s)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    data_root = args.data or os.path.join(REPO, config.get("output", "benchmarks/data/polymer"))
    result = run(config, data_root, args.out, truth=args.truth, train=args.train, discard_steps=args.discard_steps)
    agg = result["baselines"]["a_plain_md_training_length"]
    gt = result["ground_truth"]
    print(f"ground truth: {gt['n_chains']} chains, {gt['steps']} of {gt['steps_planned']} steps "
          f"(first {gt['discarded_steps']} discarded)"
          f"{'' if gt['complete'] else ' (still running)'}")
    for label, block in (("first window", agg["first_window"]["aggregate"]),
                         ("all windows", agg["all_windows"]["aggregate"])):
        print(f"(a) plain MD {result['training_length_steps']} steps, {label}: "
              f"<Rg²> MARE {block['rg2_mean_abs_rel_error']:.3f}, JS {block['rg2_js_mean']:.3f}, "
              f"|log10 tau ratio| {block['tau_mean_abs_log10_ratio']:.3f}, "
              f"|log10 D ratio| {block['diffusivity_mean_abs_log10_ratio']:.3f}")
    print(f"wrote {args.out} and {figure_path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
