"""Polymer benchmark (issue #11): long-time properties of held-out class-II chains against their ground truth.

    python -m benchmarks.polymer                      # benchmarks/results/polymer.json and polymer.png
    python -m benchmarks.polymer --data DIR --config CONFIG --out FILE.json

The ground truth is each class-II chain's fine MD (``benchmarks.polymer.make_datasets``; a run still in
progress is used as far as it got, and the JSON says so), without its first ``--discard-steps`` (the collapse
from the random-walk start takes ~30-40k steps). Methods, each scored per chain and aggregated
(:mod:`benchmarks.polymer.metrics`):

* ``learned``: the CG model trained on the class-I short trajectories, rolled out with score refinement from
  the ground truth's first kept frame for the rest of its length (``python -m benchmarks.polymer.learn``);
* (a) plain MD of the training length (class I's ``steps``): the first such window of every ground-truth run,
  and, as the expected error of one short run, the mean over all non-overlapping windows;
* (b) the same learned model without score refinement;
* (c) a supervised GNN that predicts <Rg^2> and tau from the CG graph (:mod:`benchmarks.polymer.supervised`),
  trained here on the class-I short-trajectory labels.

Without rollouts (b) and the learned model are listed under ``not_run``. When the model exists, the cost of
fine MD and of the learned model per simulated ns is measured one after the other in this run.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..common import Stopwatch, benchmark_parser, figure_path, machine, write_json
from .learn import DISCARD_STEPS, ROLLOUT_INFO
from .make_datasets import DEFAULT_CONFIG, REPO, _timestep_ps, load_config, load_fine_observables
from .metrics import (aggregate, chain_metrics, com_diffusivity, contact_yardsticks, exact_com_diffusivity,
                      relaxation_time)

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


def plain_md_baseline(records, bonds, yardsticks, d_exact: float, train_ps: float) -> dict:
    """Baseline (a): training-length windows of the ground-truth runs, scored against the whole run."""
    first, windows = [], []
    for record, chain_bonds, sticks in zip(records, bonds, yardsticks):
        total_ps = (len(record["rg2"]) - 1) * record["dt_ps"]
        starts = np.arange(0.0, total_ps - train_ps + 1e-9, train_ps)
        scores = [chain_metrics(_window(record, s, train_ps), record, d_exact, chain_bonds, sticks)
                  for s in starts]
        first.append(scores[0])
        windows.append(aggregate(scores))
    return {"first_window": {"per_chain": first, "aggregate": aggregate(first)},
            "all_windows": {"n_windows_per_chain": int(len(starts)),
                            "aggregate": {k: float(np.mean([w[k] for w in windows if w[k] is not None]))
                                          for k in windows[0] if k != "n_chains" and windows[0][k] is not None}}}


def rollout_records(data_root: str, variant: str, frame_every: int) -> tuple[list[dict], dict] | None:
    """Each chain's record from a learned rollout (``benchmarks.polymer.learn``), or None if there is none:
    mass-weighted CG Rg^2 and centre of mass every model step, every ``frame_every``-th frame."""
    from openmm_cgml.analysis import radius_of_gyration_squared
    from openmm_cgml.data import CGDataset

    folder = os.path.join(data_root, "rollouts", variant)
    info_path = os.path.join(folder, ROLLOUT_INFO)
    if not os.path.exists(info_path):
        return None
    with open(info_path) as handle:
        info = json.load(handle)
    records = []
    for k in range(info["n_chains"]):
        with CGDataset(os.path.join(folder, f"replica_{k}.h5")) as ds:
            x = np.asarray(ds.positions[:], float)
            m = np.asarray(ds.beadmap.bead_masses, float)
        rg2 = radius_of_gyration_squared(x, m, np.zeros(len(m), int))[:, 0]
        records.append({"rg2": rg2, "com": np.einsum("n,tnd->td", m, x) / m.sum(), "frames": x[::frame_every],
                        "dt_ps": info["model_timestep_ps"]})
    return records, info


def learned_scores(records, truth, bonds, yardsticks, d_exact: float) -> dict:
    per_chain = [chain_metrics(p, t, d_exact, b, y) for p, t, b, y in zip(records, truth, bonds, yardsticks)]
    return {"per_chain": per_chain, "aggregate": aggregate(per_chain)}


def supervised_scores(predictions: list[dict], truth) -> dict:
    """Baseline (c): point predictions of <Rg^2> and tau (no distribution, no dynamics: JS and D do not apply)."""
    per_chain = []
    for pred, record in zip(predictions, truth):
        rg2_true, tau_true = float(np.mean(record["rg2"])), relaxation_time(record["rg2"], record["dt_ps"])
        per_chain.append({"rg2_pred_nm2": pred["rg2_pred_nm2"], "rg2_true_nm2": rg2_true,
                          "tau_pred_ps": pred["tau_pred_ps"], "tau_true_ps": tau_true,
                          "rg2_rel_error": pred["rg2_pred_nm2"] / rg2_true - 1.0,
                          "tau_log10_ratio": float(np.log10(pred["tau_pred_ps"] / tau_true))})
    return {"per_chain": per_chain, "aggregate": aggregate(per_chain)}


def fine_md_cost(config: dict, sequences, fine_steps: int = 20_000) -> dict:
    """Wall time per simulated chain-ns of fine MD of ``sequences`` (all chains in one System, CPU, one thread)."""
    import openmm as mm
    from openmm import unit

    from .make_datasets import _build

    p = config["physics"]
    dt, friction = _timestep_ps(p)
    built = _build(config, sequences, seed=0)
    integrator = mm.LangevinMiddleIntegrator(p["temperature_K"] * unit.kelvin, friction / unit.picosecond,
                                             dt * unit.picosecond)
    context = mm.Context(built.system, integrator, mm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(built.positions)
    integrator.step(100)  # warm-up: neighbour list, first kernels
    with Stopwatch() as clock:
        integrator.step(fine_steps)
    return {"steps": fine_steps, "wall_s": clock.seconds,
            "s_per_chain_ns": clock.seconds / (len(sequences) * fine_steps * dt / 1000.0)}


def simulation_speed(config: dict, model, beadmaps, positions, sequences, fine_steps: int = 20_000,
                     model_steps: int = 100, copies: int = 8) -> dict:
    """Wall time per simulated chain-ns of fine MD (:func:`fine_md_cost`) and of the learned model (with and
    without refinement; the chains once, and ``copies`` times in one batch), measured one after the other in this
    process (one thread). A chain-ns is one chain advanced by one ns, so batches of any size compare."""
    from .learn import VARIANTS, rollout_engine

    n = len(sequences)
    out = {"n_chains": n, "fine_md": fine_md_cost(config, sequences, fine_steps)}
    fine = out["fine_md"]["s_per_chain_ns"]
    for variant, refine in VARIANTS.items():
        out[variant] = {}
        for k in sorted({1, int(copies)}):
            engine = rollout_engine(model, list(beadmaps) * k, list(positions) * k, refine)
            engine.advance()  # warm-up
            with Stopwatch() as clock:
                for _ in range(model_steps):
                    engine.advance()
            s_per = clock.seconds / (n * k * model_steps * model.timestep_ps / 1000.0)
            out[variant][f"x{k}"] = {"chains": n * k, "steps": model_steps, "wall_s": clock.seconds,
                                     "s_per_chain_ns": s_per, "speedup_vs_fine_md": fine / s_per}
    return out


def _block_rel_stderr(series, n_blocks: int = 20) -> float:
    blocks = np.array_split(np.asarray(series, float), n_blocks)
    means = np.array([b.mean() for b in blocks if len(b)])
    return float(means.std(ddof=1) / np.sqrt(len(means)) / np.mean(series)) if len(means) > 1 else float("nan")


METHOD_LABELS = {"learned": "learned (dynamics + score refinement)",
                 "b_learned_without_refinement": "(b) learned, no refinement",
                 "a_plain_md_training_length": "(a) plain MD, training length",
                 "c_supervised_gnn": "(c) supervised GNN"}


def _parity_plot(methods: dict, path: str) -> str:
    """Predicted vs ground-truth <Rg^2> and tau across the held-out chains, one marker per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, (key, unit_, label) in zip(axes, (("rg2", "nm2", "<Rg²> CG (nm²)"), ("tau", "ps", "τ Rg² (ps)"))):
        lo, hi = np.inf, -np.inf
        for name, per_chain in methods.items():
            true = np.array([c[f"{key}_true_{unit_}"] for c in per_chain])
            pred = np.array([c[f"{key}_pred_{unit_}"] for c in per_chain])
            ax.scatter(true, pred, s=14, label=METHOD_LABELS.get(name, name), alpha=0.8)
            lo, hi = min(lo, true.min(), pred.min()), max(hi, true.max(), pred.max())
        ax.plot([lo * 0.9, hi * 1.1], [lo * 0.9, hi * 1.1], "k--", lw=0.8)
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


def goal_verdicts(methods: dict) -> dict:
    """Per goal metric: the learned model's figure, whether it meets the goal and beats every baseline."""
    learned = methods.get("learned")
    out = {}
    for key, goal in GOALS.items():
        value = None if learned is None else learned["aggregate"].get(key)
        baselines = {name: m["aggregate"].get(key) for name, m in methods.items() if name != "learned"}
        out[key] = {"goal": goal, "learned": value, "met": value is not None and value <= goal,
                    "baselines": baselines,
                    "beats_all_baselines": value is not None and all(v is None or value < v
                                                                      for v in baselines.values())}
    return out


def run(config: dict, data_root: str, out: str, truth: str = "class_II", train: str = "class_I",
        discard_steps: int = DISCARD_STEPS, supervised: dict | None = None, speed: dict | None = None) -> dict:
    """Score every method present in ``data_root`` against the ground truth; writes ``out`` and its plot.

    ``supervised``: keywords of :func:`~benchmarks.polymer.supervised.supervised_baseline` (None: defaults);
    ``speed``: keywords of :func:`simulation_speed` (``fine_steps``, ``model_steps``), measured when the learned
    model exists (None: defaults, False: skip)."""
    from .learn import start_frames
    from .supervised import supervised_baseline

    with Stopwatch() as clock:
        records, facts, bonds = _truth(config, data_root, truth, discard_steps)
        yardsticks = [contact_yardsticks(r["frames"], b) for r, b in zip(records, bonds)]
        p = config["physics"]
        dt = _timestep_ps(p)[0]
        d_exact = exact_com_diffusivity(p["temperature_K"], p["chain_length"], p["mass_amu"], _timestep_ps(p)[1])
        train_ps = config["datasets"][train]["steps"] * dt
        methods = {}
        model_dir = os.path.join(data_root, "model")
        model = None
        if os.path.exists(os.path.join(model_dir, "cgml_model.json")):
            from openmm_cgml.training import load_model

            model = load_model(model_dir)
        rollouts = {}
        for variant, name in (("refined", "learned"), ("plain", "b_learned_without_refinement")):
            got = None if model is None else rollout_records(
                data_root, variant, max(1, round(config["datasets"][truth]["frame_interval"] * dt / model.timestep_ps)))
            if got is not None:
                methods[name] = learned_scores(got[0], records, bonds, yardsticks, d_exact)
                rollouts[name] = {k: got[1][k] for k in ("n_steps", "steps_done", "wall_s", "blow_up",
                                                         "n_refine_evaluations_per_step", "model_timestep_ps")}
        baseline = plain_md_baseline(records, bonds, yardsticks, d_exact, train_ps)
        methods["a_plain_md_training_length"] = baseline["first_window"]
        sup = supervised_baseline(config, data_root, train=train, truth=truth, **(supervised or {}))
        methods["c_supervised_gnn"] = dict(supervised_scores(sup["per_chain"], records),
                                           fit={k: v for k, v in sup.items() if k != "per_chain"})
        cost = None
        if model is not None and speed is not False:
            maps, frames = start_frames(config, data_root, truth, discard_steps)
            with open(os.path.join(data_root, truth, "sequences.json")) as handle:
                sequences = json.load(handle)["sequences"]
            cost = simulation_speed(config, model, maps, frames, sequences, **(speed or {}))
    result = {
        "benchmark": "polymer", "ground_truth": facts, "training_length_ps": train_ps,
        "training_length_steps": config["datasets"][train]["steps"], "D_exact_nm2_per_ps": d_exact,
        # The ground truth's own COM diffusivity (MSD to 10 % of the run) against the exact k_B T / (N m gamma).
        "ground_truth_D_log10_ratio_vs_exact": [
            float(np.log10(com_diffusivity(r["com"], r["dt_ps"], max_lag_fraction=0.1) / d_exact)) for r in records],
        "ground_truth_tau_ps": [relaxation_time(r["rg2"], r["dt_ps"]) for r in records],
        "ground_truth_rg2_nm2": [float(np.mean(r["rg2"])) for r in records],
        # The ground truth's own noise: standard error of <Rg^2> from 20 blocks, relative to <Rg^2>.
        "ground_truth_rg2_rel_stderr": [_block_rel_stderr(r["rg2"]) for r in records],
        "methods": {k: {"aggregate": m["aggregate"], "per_chain": m["per_chain"],
                        **({"fit": m["fit"]} if "fit" in m else {})} for k, m in methods.items()},
        "plain_md_all_windows": baseline["all_windows"], "rollouts": rollouts,
        "not_run": [k for k in ("learned", "b_learned_without_refinement") if k not in methods],
        "goals": goal_verdicts(methods), "cost": cost, "wall_s": clock.seconds, "machine": machine(1),
    }
    write_json(result, out)
    _parity_plot({k: m["per_chain"] for k, m in methods.items()}, figure_path(out))
    return result


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, "polymer", threads=1)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--data", default=None, help="dataset root (default: the config's 'output')")
    parser.add_argument("--truth", default="class_II", help="ground-truth dataset (default: %(default)s)")
    parser.add_argument("--train", default="class_I", help="dataset whose length is the training length")
    parser.add_argument("--discard-steps", type=int, default=DISCARD_STEPS,
                        help="ground-truth steps dropped as equilibration (default: %(default)s)")
    parser.add_argument("--no-speed", action="store_true", help="skip the fine-MD vs learned timing")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    data_root = args.data or os.path.join(REPO, config.get("output", "benchmarks/data/polymer"))
    result = run(config, data_root, args.out, truth=args.truth, train=args.train, discard_steps=args.discard_steps,
                 speed=False if args.no_speed else None)
    gt = result["ground_truth"]
    print(f"ground truth: {gt['n_chains']} chains, {gt['steps']} of {gt['steps_planned']} steps "
          f"(first {gt['discarded_steps']} discarded){'' if gt['complete'] else ' (still running)'}")
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    for name, method in result["methods"].items():
        agg = method["aggregate"]
        print(f"{METHOD_LABELS[name]:40s} <Rg²> MARE {fmt(agg['rg2_mean_abs_rel_error'], '.3f')}, "
              f"JS {fmt(agg['rg2_js_mean'], '.3f')}, |log10 tau| {fmt(agg['tau_mean_abs_log10_ratio'], '.3f')}, "
              f"|log10 D| {fmt(agg['diffusivity_mean_abs_log10_ratio'], '.3f')}")
    if result["not_run"]:
        print(f"not run (python -m benchmarks.polymer.learn): {', '.join(result['not_run'])}")
    if result["cost"]:
        c = result["cost"]
        print(f"speed (one thread, s per chain-ns): fine MD {c['fine_md']['s_per_chain_ns']:.2f}; " + "; ".join(
            f"{v} {r['chains']} chains {r['s_per_chain_ns']:.3f} ({r['speedup_vs_fine_md']:.1f}x)"
            for v in ("refined", "plain") for r in c[v].values()))
    print(f"wrote {args.out} and {figure_path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
