"""Pareto front of refinement cost, time step and accuracy (issue #13).

    python -m benchmarks.pareto                          # benchmarks/results/pareto.json and pareto.png
    python -m benchmarks.pareto --only polymer --polymer-steps 1000 --settings none pc:5x0 langevin:8x5

A setting is a refinement (``simulate.parse_refine``: ``model``, ``none`` or ``SCHEME:LxK``) of a model, whose
time step is the model's: on the polymer, the 5-tau model and models of other steps (``--polymer-timesteps``,
trained on the same class-I data with the same architecture); on PEO/LiTFSI, the shipped 100 ps model (longer
PEO steps need the campaign's training systems). Each setting is judged on both ground truths, in this one run and on one thread:

* polymer: the held-out class-II chains of ``benchmarks.polymer`` rolled out from their first kept ground-truth
  frame for ``--polymer-steps`` model steps (all chains batched; resumable under
  ``benchmarks/data/polymer/rollouts/pareto/``), scored with the polymer benchmark's metrics (<Rg^2> error, Rg^2
  JS, log10 tau ratio, collisions); cost in simulated chain-ns per wall-second, and the ratio to the fine MD
  of the same chains measured in this run;
* PEO/LiTFSI: ``--replicas`` replicas of the shipped model started from frames of the longest held-out all-atom
  reference for ``--peo-ns`` each, scored against that reference: log10 D errors from the diffusive regime only
  (withheld where either MSD exponent is below 0.9), first RDF peaks of Li-Li and Li-PEO, Li-Li RDF weight below
  0.5 nm, collisions per bead per frame, broken CG bonds; cost in simulated ns per wall-second of one replica, and the ratio to
  all-atom OpenMM (CPU platform, one thread) of the same box measured in this run.

The front is the set of settings that no other setting beats in both cost and error (error: polymer <Rg^2>
error + |log10 tau|; PEO: |Li-PEO peak height error| + Li-Li pairs below 0.5 nm per Li + 100 x collisions per bead
+ 10 x the fraction of CG bonds stretched past 1.5x the longest all-atom bond).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from .common import Stopwatch, benchmark_parser, figure_path, machine, set_threads, write_json

#: Refinement settings of the front; ``model`` is each model's shipped default.
SETTINGS = ["none", "model", "langevin:8x5", "langevin:2x2", "pc:3x0", "pc:4x0", "pc:5x0", "pc:2x1"]
HELDOUT_REFERENCES = ["peo_litfsi_eo6_li8_450K", "peo_litfsi_eo4_li9_450K"]
LI_LI_CLOSE_NM = 0.5


def _variant_dir(spec: str, frames_per_step=None) -> str:
    where = "pareto" if frames_per_step is None else f"pareto/fps{int(frames_per_step)}"
    return where + "/" + spec.replace(":", "-")


def pareto_front(costs, errors) -> list[int]:
    """Indices of the points that no other point beats in both cost and error (lower is better in both)."""
    points = list(zip(costs, errors))
    front = []
    for i, (c, e) in enumerate(points):
        if c is None or e is None:
            continue
        dominated = any(c2 is not None and e2 is not None and c2 <= c and e2 <= e and (c2 < c or e2 < e)
                        for j, (c2, e2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def polymer_front(settings, n_steps: int, progress: bool = True, timesteps=(), timestep_settings=()) -> dict:
    """Polymer rows: one short class-II rollout per setting, scored like ``benchmarks.polymer``; then
    ``timestep_settings`` for each model of ``timesteps`` (frames per model step, trained here by
    ``benchmarks.polymer.learn.train_model`` if missing), each rollout covering the same simulated time."""
    from openmm_cgml.simulate import parse_refine

    from .polymer.__main__ import _truth, fine_md_cost, learned_scores, rollout_records
    from .polymer.learn import DISCARD_STEPS, run_rollout, train_model
    from .polymer.make_datasets import DEFAULT_CONFIG, REPO, _timestep_ps, load_config
    from .polymer.metrics import contact_yardsticks, exact_com_diffusivity

    config = load_config(DEFAULT_CONFIG)
    data_root = os.path.join(REPO, config.get("output", "benchmarks/data/polymer"))
    base, _ = train_model(data_root)
    records, facts, bonds = _truth(config, data_root, "class_II", DISCARD_STEPS)
    sticks = [contact_yardsticks(r["frames"], b) for r, b in zip(records, bonds)]
    p = config["physics"]
    dt = _timestep_ps(p)[0]
    d_exact = exact_com_diffusivity(p["temperature_K"], p["chain_length"], p["mass_amu"], _timestep_ps(p)[1])
    with open(os.path.join(data_root, "class_II", "sequences.json")) as handle:
        fine = fine_md_cost(config, json.load(handle)["sequences"])
    rows = []
    cases = [(None, spec) for spec in settings] + [(k, spec) for k in timesteps for spec in timestep_settings]
    for frames_per_step, spec in cases:
        model, model_dir = train_model(data_root, frames_per_step=frames_per_step, progress=progress)
        frame_every = max(1, round(config["datasets"]["class_II"]["frame_interval"] * dt / model.timestep_ps))
        variant = _variant_dir(spec, frames_per_step)
        steps = int(round(n_steps * base.timestep_ps / model.timestep_ps))
        run_rollout(config, data_root, model, model_dir, variant, n_steps=steps, progress=progress,
                    refine=parse_refine(spec))
        pred, info = rollout_records(data_root, variant, frame_every)
        scores = learned_scores(pred, records, bonds, sticks, d_exact)["aggregate"]
        chain_ns = info["n_chains"] * info["steps_done"] * model.timestep_ps / 1000.0
        s_per_chain_ns = info["wall_s"] / chain_ns
        rows.append({"setting": spec, "model": os.path.relpath(model_dir, REPO),
                     "score_evaluations_per_step": info["n_refine_evaluations_per_step"],
                     "timestep_ps": model.timestep_ps, "steps": info["steps_done"], "blow_up": info["blow_up"],
                     **scores, "chain_ns_per_wall_s": 1.0 / s_per_chain_ns,
                     "speedup_vs_fine_md": fine["s_per_chain_ns"] / s_per_chain_ns,
                     "error": scores["rg2_mean_abs_rel_error"] + scores["tau_mean_abs_log10_ratio"]})
    return {"fine_md": fine, "ground_truth": facts, "rows": rows}


def _reference_copy(root: str, tmp: str):
    """The longest held-out all-atom reference (copied: the campaign may be appending to it) and its system."""
    from openmm_cgml.data import CGDataset

    best = None
    for name in HELDOUT_REFERENCES:
        path = os.path.join(root, name, "reference", "cg.h5")
        if os.path.exists(path):
            copy = os.path.join(tmp, name + ".h5")
            shutil.copyfile(path, copy)
            with CGDataset(copy) as ds:
                n = ds.n_frames
            if best is None or n > best[2]:
                best = (name, copy, n)
    if best is None:
        raise FileNotFoundError(f"none of the held-out references {HELDOUT_REFERENCES} exists under {root}")
    return best[0], best[1], os.path.join(root, best[0], "system")


def _bond_lengths(positions, box, bonds) -> np.ndarray:
    """Minimum-image CG bond lengths (frames, bonds), nm."""
    from openmm_cgml.pbc import minimum_image

    d = positions[:, bonds[:, 1]] - positions[:, bonds[:, 0]]
    return np.linalg.norm(minimum_image(d, box[:, None, :]), axis=-1)


def peo_front(settings, ns: float, replicas: int, aa_steps: int, progress: bool = True, model_dir=None) -> dict:
    """PEO/LiTFSI rows: a model (default: the shipped one) per setting against the longest held-out all-atom
    reference."""
    from openmm_cgml.analysis import (collision_thresholds, coordination_number, count_collisions,
                                      diffusivity_comparison, first_peak, rdf)
    from openmm_cgml.data import CGDataset
    from openmm_cgml.simulate import LearnedStep, ReplicaEngine, SimulationBlowUp, parse_refine
    from openmm_cgml.simulate.calibrate import true_history
    from openmm_cgml.simulate.step import refine_settings
    from openmm_cgml.systems import BuiltSystem
    from openmm_cgml.training.model import load_model, model_path

    from .allatom_throughput import throughput

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "data")
    model_dir = model_path(model_dir)  # None: the default; a shipped model's name or a directory
    model = load_model(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        name, ref_path, system_dir = _reference_copy(root, tmp)
        with CGDataset(ref_path) as ds:
            ref_x = np.asarray(ds.positions[:], dtype=np.float32)
            ref_box = np.asarray(ds.box, dtype=np.float64)
            beadmap, interval = ds.beadmap, ds.frame_interval_ps
        aa = throughput(BuiltSystem.load(system_dir), 100, aa_steps, threads=1)
        species = np.asarray(beadmap.bead_species())
        stride = int(round(model.timestep_ps / interval))
        h = model.history_length
        starts = np.linspace(h * stride, ref_x.shape[0] - 1, replicas).astype(int)
        history = true_history(ref_x, starts, stride, h)
        box = ref_box[0]
        r_max = 0.45 * float(box.min())
        pairs = {"LI-LI": ("LI", "LI"), "LI-PEO": ("LI", "PEO")}

        def peaks(x, boxes):
            return {k: first_peak(*rdf(x, boxes, species == a, species == b, r_max, n_bins=60))
                    for k, (a, b) in pairs.items()}

        ref_peaks = peaks(ref_x, ref_box)
        bonds = np.asarray(beadmap.bonds, dtype=int).reshape(-1, 2)
        longest_bond = float(_bond_lengths(ref_x, ref_box, bonds).max())
        thresholds = collision_thresholds(model_dir, beadmap)
        n_steps = int(np.ceil(ns * 1000.0 / model.timestep_ps))
        rows, blown_up, seen = [], [], set()
        for spec in settings:
            resolved = json.dumps(refine_settings(model.config, parse_refine(spec)), sort_keys=True)
            if resolved in seen:  # e.g. "model" and "langevin:8x5" on the shipped model: run once
                continue
            seen.add(resolved)
            step = LearnedStep.from_model(model, beadmap, refine=parse_refine(spec))
            engine = ReplicaEngine(step, ref_x[starts], seeds=list(range(replicas)), box=box, history=history)
            out = os.path.join(tmp, spec.replace(":", "-"))
            try:
                with Stopwatch() as clock:
                    engine.run(n_steps, out_dir=out, beadmap=beadmap, progress=progress)
            except SimulationBlowUp as err:  # a setting that cannot run is reported, not scored
                blown_up.append({"setting": spec, "score_evaluations_per_step": int(step.n_refine),
                                 "message": str(err)})
                continue
            paths = [os.path.join(out, f"replica_{r}.h5") for r in range(replicas)]
            table = diffusivity_comparison(ref_path, paths)
            cg_x = []
            for path in paths:
                with CGDataset(path) as ds:
                    cg_x.append(np.asarray(ds.positions[:]))
            cg_x = np.concatenate(cg_x)
            boxes = np.tile(box, (cg_x.shape[0], 1))
            cg_peaks = peaks(cg_x, boxes)
            collisions = float(count_collisions(cg_x, box, beadmap, thresholds).mean() / beadmap.n_beads)
            # unordered Li-Li pairs below 0.5 nm per Li: half the Li-Li coordination number
            li_close = 0.5 * coordination_number(cg_x, boxes, species == "LI", species == "LI", LI_LI_CLOSE_NM)
            # a CG bond stretched past 1.5x the longest all-atom one counts as broken (chains falling apart)
            broken = float((_bond_lengths(cg_x, boxes, bonds) > 1.5 * longest_bond).mean())
            ns_per_s = replicas * n_steps * model.timestep_ps / 1000.0 / clock.seconds
            height_error = cg_peaks["LI-PEO"][1] / ref_peaks["LI-PEO"][1] - 1.0
            rows.append({"setting": spec, "score_evaluations_per_step": int(step.n_refine),
                         "timestep_ps": model.timestep_ps, "ns_per_wall_s": ns_per_s,
                         "speedup_vs_allatom": ns_per_s * 86400.0 / aa["ns_per_day"],
                         "diffusivity": table, "rdf_first_peak": {"allatom": ref_peaks, "cg": cg_peaks},
                         "li_peo_peak_height_rel_error": height_error, "li_li_pairs_below_0.5nm_per_li": li_close,
                         "collisions_per_bead_per_frame": collisions, "bond_break_fraction": broken,
                         "error": abs(height_error) + li_close + 100.0 * collisions + 10.0 * broken})
    return {"model": model_dir, "reference": name, "reference_ns": float(ref_x.shape[0] * interval / 1000.0),
            "n_beads": beadmap.n_beads, "replicas": replicas, "cg_ns_per_replica": n_steps * model.timestep_ps / 1e3,
            "allatom": aa, "rows": rows, "blown_up": blown_up}


def _plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [(k, result[k]) for k in ("polymer", "peo_litfsi") if result.get(k)]
    fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4.5), squeeze=False)
    for ax, (name, part) in zip(axes[0], parts):
        speed = "speedup_vs_fine_md" if name == "polymer" else "speedup_vs_allatom"
        rows = part["rows"]
        xs, ys = [r[speed] for r in rows], [r["error"] for r in rows]
        ax.scatter(xs, ys, c=[r["score_evaluations_per_step"] for r in rows], cmap="viridis")
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(f"{r['setting']} ({r['score_evaluations_per_step']}, {r['timestep_ps']:.3g} ps)", (x, y),
                        fontsize=7)
        front = part["front"]
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "r--", lw=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("speed-up vs " + ("fine MD" if name == "polymer" else "all-atom OpenMM") + " (1 thread)")
        ax.set_ylabel("error (lower is better; see pareto.json)")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, "pareto", threads=1)
    parser.add_argument("--only", choices=["polymer", "peo_litfsi"], default=None)
    parser.add_argument("--settings", nargs="+", default=SETTINGS)
    parser.add_argument("--polymer-steps", type=int, default=1000,
                        help="model steps per class-II rollout of the default (5-tau) model")
    parser.add_argument("--polymer-timesteps", type=int, nargs="*", default=[20],
                        help="other polymer model steps, in dataset frames (default 20 = 10 tau; trained if missing)")
    parser.add_argument("--timestep-settings", nargs="*", default=["model", "pc:5x0", "none"],
                        help="the settings run with the other time steps")
    parser.add_argument("--peo-ns", type=float, default=10.0, help="CG ns per PEO/LiTFSI replica")
    parser.add_argument("--replicas", type=int, default=2, help="PEO/LiTFSI replicas per setting")
    parser.add_argument("--aa-steps", type=int, default=1000, help="all-atom steps timed for the ratio")
    parser.add_argument("--model", default=None, help="PEO/LiTFSI model directory (default: the shipped model)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    result = {"benchmark": "pareto", "machine": machine(args.threads)}
    with Stopwatch() as clock:
        if args.only in (None, "polymer"):
            result["polymer"] = polymer_front(args.settings, args.polymer_steps, progress=not args.quiet,
                                              timesteps=args.polymer_timesteps,
                                              timestep_settings=args.timestep_settings)
        if args.only in (None, "peo_litfsi"):
            result["peo_litfsi"] = peo_front(args.settings, args.peo_ns, args.replicas, args.aa_steps,
                                             progress=not args.quiet, model_dir=args.model)
    for name, speed in (("polymer", "speedup_vs_fine_md"), ("peo_litfsi", "speedup_vs_allatom")):
        if result.get(name):
            rows = result[name]["rows"]
            result[name]["front"] = pareto_front([1.0 / r[speed] for r in rows], [r["error"] for r in rows])
            for r in rows:
                print(f"{name:10s} {r['setting']:14s} {r['timestep_ps']:7.3g} ps evals {r['score_evaluations_per_step']:3d}  "
                      f"speed-up {r[speed]:9.3g}  error {r['error']:.3f}")
    result["wall_s"] = clock.seconds
    write_json(result, args.out)
    _plot(result, figure_path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
