"""DiG on the polymer benchmark (issue #14): equilibrium structures of held-out class-II chains from a DiG model
trained on the class-I short trajectories, against the class-II ground truth.

    python -m benchmarks.polymer.dig                   # train (or reuse) <data>/dig, sample, seed rollouts
    python -m benchmarks.polymer.dig --retrain --iterations 6000 --samples 500
    python -m benchmarks.polymer.dig --method ode --out benchmarks/results/polymer_dig_heun.json  # 50 Heun steps

Sampling: the probability-flow ODE by DPM-Solver++(2M) in 20 steps (20 score evaluations), by default; ``--method
ode`` integrates the same ODE with 50 Heun steps (100 evaluations).

Training: denoising score matching on every class-I CG frame (60 sequences, 14 beads each). The model is
conditioned on the chain's descriptor only: each bead's type is embedded from its atom graph (the fine beads
inside it) by the embedding GNN the dynamics models use, so class-II bead types it never saw get embeddings too.

Graph: fully connected (every bead sees every other). A 14-bead CG chain has 182 ordered pairs, and a cutoff
shorter than the chain (Rg ~ 1 nm, end-to-end distances up to ~5 nm) would leave the overall shape, which is what
Rg^2 measures, unlearnable; a finite cutoff is for periodic boxes only.

Scores per class-II chain, against its ground truth after the equilibration cut (``--discard-steps``):
JS divergence and relative error of the CG Rg^2 distribution (20 bins at the truth's quantiles, as
``benchmarks.polymer`` does), of the end-to-end distance, and of the pooled CG bond lengths. Speed: DiG
independent samples per second against fine MD's, where MD makes one independent sample per 2 tau_int of its Rg^2
series, at the fine-MD cost measured in this run (one thread each).

Seeding (``--seed-steps``): the learned polymer model (``benchmarks.polymer.learn``) rolled out from DiG samples,
from the ground truth's equilibrated frame, and from the unequilibrated first frame, for the first 10 % of the
ground-truth length; Rg^2 over that window against the truth says whether DiG starts remove equilibration.
Writes benchmarks/results/polymer_dig.json and polymer_dig.png.
"""
from __future__ import annotations

import math
import os

import numpy as np

from openmm_cgml.dig.sampler import DEFAULT_STEPS

from ..common import Stopwatch, benchmark_parser, figure_path, machine, set_threads, write_json
from .learn import DISCARD_STEPS, rollout_engine, rollout_steps, start_frames, train_model
from .make_datasets import DEFAULT_CONFIG, REPO, _timestep_ps, dataset_chains, load_config
from .metrics import rg2_js_divergence, relaxation_time

GOALS = {"rg2_js_mean": 0.02, "rg2_mean_abs_rel_error": 0.05, "samples_per_s_vs_md": 100.0}
DIG_CONFIG = dict(hidden=64, n_layers=4, heads=4, n_rbf=32, n_time=16, embed_dim=16, gaussian_skip=True,
                  cutoff=None, batch_size=64, lr=1e-3, lr_final=1e-4, ema_decay=0.999, checkpoint_every=500,
                  n_steps=500, seed=0)


def chain_rg2(frames, masses) -> np.ndarray:
    """Mass-weighted Rg^2 (nm^2) of each frame (F, N, 3) of one chain."""
    from openmm_cgml.analysis import radius_of_gyration_squared

    return radius_of_gyration_squared(np.asarray(frames, float), np.asarray(masses, float),
                                      np.zeros(len(masses), int))[:, 0]


def end_to_end(frames) -> np.ndarray:
    x = np.asarray(frames, float)
    return np.linalg.norm(x[:, -1] - x[:, 0], axis=1)


def bond_length_sample(frames, bonds) -> np.ndarray:
    from openmm_cgml.analysis import bond_lengths

    return bond_lengths(np.asarray(frames, float), bonds).ravel()


def compare(pred_frames, true_frames, beadmap) -> dict:
    """Rg^2, end-to-end and bond-length agreement of one chain's structures with its ground truth."""
    out = {}
    for name, fn in (("rg2", lambda f: chain_rg2(f, beadmap.bead_masses)), ("end_to_end", end_to_end),
                     ("bond_length", lambda f: bond_length_sample(f, beadmap.bonds))):
        p, t = fn(pred_frames), fn(true_frames)
        out[f"{name}_js"] = rg2_js_divergence(p, t)
        out[f"{name}_pred"], out[f"{name}_true"] = float(p.mean()), float(t.mean())
        out[f"{name}_rel_error"] = float(p.mean() / t.mean() - 1.0)
    return out


def mean_abs(rows, key) -> float:
    return float(np.mean([abs(r[key]) for r in rows]))


def summary(rows) -> dict:
    keys = ("rg2_js", "rg2_rel_error", "end_to_end_js", "end_to_end_rel_error", "bond_length_js",
            "bond_length_rel_error")
    return {("rg2_js_mean" if k == "rg2_js" else f"{k}_mean" if k.endswith("_js") else f"{k}_mean_abs"):
            mean_abs(rows, k) for k in keys}


def by_training_coverage(config: dict, rows) -> dict:
    """The class-II scores split by whether a chain's solvophobic fraction lies within the range of the class-I
    training sequences: inside it DiG interpolates between compositions it saw, outside it extrapolates. Adds each
    chain's realised sequence statistics to its row."""
    from openmm_cgml.systems.sequences import sequence_statistics

    from .make_datasets import dataset_sequences

    train = [sequence_statistics(q)["solvophobic_fraction"] for q in dataset_sequences(config, "class_I")]
    lo, hi = min(train), max(train)
    for row, q in zip(rows, dataset_sequences(config, "class_II")):
        row.update(sequence_statistics(q))
    out = {"training_solvophobic_fraction": [lo, hi]}
    for name, part in (("inside", [r for r in rows if lo <= r["solvophobic_fraction"] <= hi]),
                       ("outside", [r for r in rows if not lo <= r["solvophobic_fraction"] <= hi])):
        out[name] = {"n_chains": len(part), **(summary(part) if part else {})}
    return out


def train_dig_model(data_root: str, iterations: int, retrain: bool, progress: bool, cutoff=None):
    """The DiG model in ``<data_root>/dig`` (``dig_cutoff<nm>`` with a radius graph): trained on every class-I
    chain unless it is already there."""
    from openmm_cgml.training.dig import DiGConfig, train_dig

    out = os.path.join(data_root, "dig" if cutoff is None else f"dig_cutoff{cutoff:g}")
    if retrain or not os.path.exists(os.path.join(out, "cgml_model.json")):
        config = DiGConfig(n_iterations=int(iterations), **{**DIG_CONFIG, "cutoff": cutoff})
        with Stopwatch() as clock:
            train_dig(dataset_chains(data_root, "class_I"), out, config, resume=not retrain, progress=progress)
        return out, clock.seconds
    return out, None


def truth_frames(config: dict, data_root: str, discard_steps: int):
    """Each class-II chain's BeadMap and its ground-truth CG frames after ``discard_steps``."""
    from openmm_cgml.data import CGDataset

    interval = config["datasets"]["class_II"]["frame_interval"]
    maps, frames = [], []
    for path in dataset_chains(data_root, "class_II"):
        with CGDataset(path) as ds:
            maps.append(ds.beadmap)
            frames.append(np.asarray(ds.positions[-(-discard_steps // interval):], float))
    return maps, frames


def md_samples_per_s(config: dict, data_root: str, truth, discard_steps: int) -> dict:
    """Fine MD's independent samples per second: one per 2 tau_int of the chain's CG Rg^2 series, at the cost of
    fine MD of all class-II chains measured now (one thread)."""
    from .__main__ import _truth, fine_md_cost
    from .make_datasets import dataset_sequences

    records, _, _ = _truth(config, data_root, "class_II", discard_steps)
    taus = [relaxation_time(r["rg2"], r["dt_ps"]) for r in records]
    cost = fine_md_cost(config, dataset_sequences(config, "class_II"))
    s_per_ps = cost["s_per_chain_ns"] / 1000.0
    per_chain = [1.0 / (2.0 * tau * s_per_ps) for tau in taus]
    return {"tau_int_ps_mean": float(np.mean(taus)), "tau_int_ps": taus, "fine_md": cost,
            "independent_samples_per_s": float(np.mean(per_chain))}


def sample_chains(dig_dir: str, beadmaps, n: int, method: str, steps: int | None, seed: int):
    """``n`` DiG samples of each chain (unseen bead types embedded from their atom graphs) and the wall time."""
    from openmm_cgml.dig import DiGSampler

    sampler = DiGSampler(dig_dir, allow_unseen_types=True)
    out = []
    with Stopwatch() as clock:
        for k, bm in enumerate(beadmaps):
            out.append(sampler.sample(n, bm, method=method, steps=steps, seed=seed + k, batch_size=n).numpy())
    return out, clock.seconds


def seeding(config: dict, data_root: str, dig_dir: str, beadmaps, truth, discard_steps: int, fraction: float,
            seed: int, method: str, steps, progress: bool) -> dict:
    """Rg^2 over the first ``fraction`` of a rollout of every class-II chain, started three ways, against the
    ground truth: DiG samples, the equilibrated ground-truth frame at ``discard_steps``, and the first frame
    (after only the dataset's short equilibration)."""
    from openmm_cgml.data import CGDataset
    from openmm_cgml.dig import initial_states

    model, _ = train_model(data_root, progress=progress)
    n_steps = max(1, int(round(fraction * rollout_steps(config, model, "class_II", discard_steps))))
    _, equilibrated = start_frames(config, data_root, "class_II", discard_steps)
    first = []
    for path in dataset_chains(data_root, "class_II"):
        with CGDataset(path) as ds:
            first.append(np.asarray(ds.positions[0], np.float32))
    dig_starts = [initial_states(1, bm, dig_dir, seed=seed + k, method=method, steps=steps,
                                 allow_unseen_types=True)[0]
                  for k, bm in enumerate(beadmaps)]
    out = {"model_steps": n_steps, "fraction_of_truth": fraction,
           "model_time_ps": n_steps * model.timestep_ps}
    for name, starts in (("dig", dig_starts), ("equilibrated_truth", equilibrated), ("first_frame", first)):
        engine = rollout_engine(model, beadmaps, starts, None, seed)
        frames = [[] for _ in beadmaps]
        with Stopwatch() as clock:
            for _ in range(n_steps):
                engine.advance()
                x = engine.positions  # one (N, 3) nm array per chain
                for k in range(len(beadmaps)):
                    frames[k].append(np.asarray(x[k], float))
        rows = [compare(np.stack(f), t, bm) for f, t, bm in zip(frames, truth, beadmaps)]
        out[name] = {"wall_s": clock.seconds, **summary(rows), "per_chain": rows}
    return out


def plot(result: dict, samples, truth, beadmaps, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    rows = result["dig"]["per_chain"]
    t = [r["rg2_true"] for r in rows]
    p = [r["rg2_pred"] for r in rows]
    ax = axes[0]
    ax.plot(t, p, "o")
    lo, hi = min(t + p) * 0.9, max(t + p) * 1.1
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.fill_between([lo, hi], [0.95 * lo, 0.95 * hi], [1.05 * lo, 1.05 * hi], color="0.85", label="±5 %")
    ax.set(xlabel="ground truth <Rg²> (nm²)", ylabel="DiG <Rg²> (nm²)", title="class-II chains (never seen)")
    ax.legend()
    for ax, k in zip(axes[1:], (int(np.argmin(t)), int(np.argmax(t)))):
        bm = beadmaps[k]
        rt, rp = chain_rg2(truth[k], bm.bead_masses), chain_rg2(samples[k], bm.bead_masses)
        bins = np.linspace(0, max(rt.max(), rp.max()), 40)
        ax.hist(rt, bins, density=True, alpha=0.5, label="fine MD (ground truth)")
        ax.hist(rp, bins, density=True, alpha=0.5, label="DiG samples")
        ax.set(xlabel="Rg² (nm²)", title=f"chain {k}: JS {rows[k]['rg2_js']:.3f}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, "polymer_dig", threads=1)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--data", default=None, help="dataset root (default: the config's output)")
    parser.add_argument("--iterations", type=int, default=6000, help="DSM training iterations")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--cutoff", type=float, default=None,
                        help="radius-graph cutoff (nm) instead of the full graph; its own model directory")
    parser.add_argument("--samples", type=int, default=500, help="DiG samples per class-II chain")
    parser.add_argument("--method", default="dpm", choices=("dpm", "ode", "ancestral"))
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the method's)")
    parser.add_argument("--discard-steps", type=int, default=DISCARD_STEPS)
    parser.add_argument("--seed-fraction", type=float, default=0.1,
                        help="seeded rollouts cover this fraction of the ground truth (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    config = load_config(args.config)
    data_root = args.data or os.path.join(REPO, config["output"])
    progress = not args.quiet

    dig_dir, train_s = train_dig_model(data_root, args.iterations, args.retrain, progress, args.cutoff)
    beadmaps, truth = truth_frames(config, data_root, args.discard_steps)
    samples, sample_s = sample_chains(dig_dir, beadmaps, args.samples, args.method, args.steps, args.seed)
    rows = [compare(s, t, bm) for s, t, bm in zip(samples, truth, beadmaps)]
    md = md_samples_per_s(config, data_root, truth, args.discard_steps)
    dig_rate = len(beadmaps) * args.samples / sample_s
    result = {
        "benchmark": "polymer_dig", "machine": machine(threads),
        "dig_model": os.path.relpath(dig_dir, REPO), "train_wall_s": train_s,
        "graph": ("fully connected (14 CG beads per chain)" if args.cutoff is None
                  else f"radius graph, cutoff {args.cutoff:g} nm"),
        "truth": {"dataset": "class_II", "n_chains": len(beadmaps), "discard_steps": args.discard_steps,
                  "frames_per_chain": int(truth[0].shape[0])},
        "dig": {"method": args.method, "steps": args.steps or DEFAULT_STEPS.get(args.method),
                "samples_per_chain": args.samples,
                "wall_s": sample_s, "independent_samples_per_s": dig_rate, **summary(rows), "per_chain": rows},
        "by_training_coverage": by_training_coverage(config, rows),
        "md": md,
        "samples_per_s_vs_md": dig_rate / md["independent_samples_per_s"],
        "goals": GOALS,
    }
    d = result["dig"]
    result["goals_met"] = {"rg2_js_mean": d["rg2_js_mean"] <= GOALS["rg2_js_mean"],
                           "rg2_mean_abs_rel_error": d["rg2_rel_error_mean_abs"] <= GOALS["rg2_mean_abs_rel_error"],
                           "samples_per_s_vs_md": result["samples_per_s_vs_md"] >= GOALS["samples_per_s_vs_md"]}
    if args.seed_fraction > 0:
        result["seeding"] = seeding(config, data_root, dig_dir, beadmaps, truth, args.discard_steps,
                                    args.seed_fraction, args.seed, args.method, args.steps, progress)
    write_json(result, args.out)
    plot(result, samples, truth, beadmaps, figure_path(args.out))
    print(f"DiG on {len(beadmaps)} unseen class-II chains ({args.samples} samples each, {args.method}): "
          f"Rg² JS {d['rg2_js_mean']:.3f} (goal ≤ {GOALS['rg2_js_mean']}), |<Rg²> error| "
          f"{100 * d['rg2_rel_error_mean_abs']:.1f} % (goal ≤ 5 %), end-to-end JS {d['end_to_end_js_mean']:.3f}, "
          f"bond-length JS {d['bond_length_js_mean']:.3f}")
    cov = result["by_training_coverage"]
    print(f"within class I's solvophobic-fraction range {cov['training_solvophobic_fraction']}: "
          + "; ".join(f"{name} ({cov[name]['n_chains']} chains) Rg² JS {cov[name]['rg2_js_mean']:.3f}, |<Rg²> error| "
                      f"{100 * cov[name]['rg2_rel_error_mean_abs']:.1f} %" for name in ("inside", "outside")
                      if cov[name]["n_chains"]))
    print(f"independent samples/s: DiG {dig_rate:.3g}, fine MD {md['independent_samples_per_s']:.3g} "
          f"(tau_int {md['tau_int_ps_mean']:.0f} ps): {result['samples_per_s_vs_md']:.3g}x (goal ≥ 100x)")
    for name, s in (result.get("seeding") or {}).items():
        if isinstance(s, dict) and "rg2_js_mean" in s:
            print(f"seeded rollout from {name}: first {100 * args.seed_fraction:g} % Rg² JS {s['rg2_js_mean']:.3f}, "
                  f"|<Rg²> error| {100 * s['rg2_rel_error_mean_abs']:.1f} %")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
