"""Run the benchmarks and write benchmarks/results/*.json plus a markdown summary.

    python -m benchmarks              # every benchmark with its default (report-sized) settings
    python -m benchmarks --only allatom_throughput model_step
    python -m benchmarks --summary-only   # rebuild SUMMARY.md from the JSON files already in results/

Every figure in SUMMARY.md is read from a JSON file that a benchmark run wrote; nothing is typed in.
Each benchmark runs in its own process as ``python -m benchmarks.NAME`` from the repository root.
"""
import argparse
import json
import os
import subprocess
import sys

from openmm_cgml.analysis.comparison import exponent_text

from .common import DATA, HERE, RESULTS, Stopwatch, result_path, write_text

ROOT = os.path.dirname(HERE)

#: (script, extra arguments, result files it writes), in the order they run.
BENCHMARKS = [
    ("allatom_throughput", [], ["allatom_throughput.json"]),
    # Lorentz–Berthelot vs geometric mixing: 400 K NPT density of the 6 x EO8 + 3 LiTFSI box under each rule.
    ("allatom_throughput", ["--mixing-density"], ["mixing_density.json"]),
    ("model_step", [], ["model_step.json"]),
    ("speedup", [], ["speedup.json"]),
    # The default `cgml demo` (shipped box, shipped model): its wall time.
    ("demo", [], ["demo.json"]),
    # The default model's own runs against every campaign reference of >= 3 ns: rollout / data MSD at 1 ns.
    ("rollout_drift", [], ["rollout_drift.json"]),
    # The same with the dynamics GNN alone: what the refinement does to the drift.
    ("rollout_drift", ["--refine", "none", "--out", result_path("rollout_drift_no_refinement")],
     ["rollout_drift_no_refinement.json"]),
    # Close Li+-Li+ pairs (< 0.5 nm) in every all-atom campaign reference, every frame counted.
    ("ion_pairs", [], ["ion_pairs.json"]),
    ("dig", [], ["dig.json"]),
    # Trained DiG's ODE log-density vs an exact Gaussian chain; double-well free energy vs exact.
    ("dig_density", [], ["dig_density.json"]),
    # PIDP pre-training from the energy, then DSM with K MD frames, vs DSM from scratch.
    ("pidp_scale", [], ["pidp_scale.json"]),
    # Held-out composition (6 x EO8 + 5 LiTFSI; the model was trained on 3 LiTFSI), if its dataset is present.
    ("accuracy", ["--reference", os.path.join(DATA, "peo_litfsi_5salt_400K.h5"), "--replicas", "4",
                  "--ns", "10"], ["accuracy.json"]),
    ("stability", [], ["stability.json"]),
    # The same boxes with the step cap off: what the cap prevents.
    ("stability", ["--refine", "model,stepcap=0", "--out", result_path("stability_no_step_cap")],
     ["stability_no_step_cap.json"]),
    # SIGKILL each long-running verb at random moments, resume, compare with an uninterrupted run.
    ("faults", [], ["faults.json"]),
    # Training iterations per second with 1 vs 2 DDP ranks (gloo).
    ("scaling", [], ["scaling.json"]),
    # Compiled plugin vs Python bridge, wall time per learned step.
    ("plugin_step", [], ["plugin_step.json"]),
    # The polymer ground truth (class-II chains): baselines and learned models against 100x longer MD.
    ("polymer", [], ["polymer.json"]),
    # DiG trained on class I, sampled on the unseen class-II chains (DPM-Solver, 20 steps); DiG-seeded rollouts
    # (after polymer: its model).
    ("polymer.dig", [], ["polymer_dig.json"]),
    # The same model sampled with 50 Heun steps of the same ODE (5x the evaluations).
    ("polymer.dig", ["--method", "ode", "--out", result_path("polymer_dig_heun")], ["polymer_dig_heun.json"]),
    # The same model with 12 Heun steps (speed), and seeded rollouts over the first 1 % (equilibration).
    ("polymer.dig", ["--method", "ode", "--steps", "12", "--samples", "200", "--seed-fraction", "0.01", "--out",
                     result_path("polymer_dig_fast")], ["polymer_dig_fast.json"]),
    # A DiG on a 3 nm radius graph instead of the full graph (its own model, trained here: 25 min).
    ("polymer.dig", ["--cutoff", "3", "--iterations", "5000", "--seed-fraction", "0", "--out",
                     result_path("polymer_dig_cutoff3")], ["polymer_dig_cutoff3.json"]),
    # Refinement scheme x evaluations x time step against both ground truths (after polymer: reuses its model).
    ("pareto", [], ["pareto.json"]),
    # The campaign's held-out references (never trained on; stop the campaign first: it appends to them).
    ("accuracy", ["--reference", os.path.join(DATA, "peo_litfsi_eo4_li9_450K", "reference", "cg.h5"), "--replicas",
                  "2", "--ns", "20", "--out", result_path("accuracy_eo4_li9")], ["accuracy_eo4_li9.json"]),
    ("accuracy", ["--reference", os.path.join(DATA, "peo_litfsi_eo6_li8_450K", "reference", "cg.h5"), "--replicas",
                  "2", "--ns", "20", "--out", result_path("accuracy_eo6_li8")], ["accuracy_eo6_li8.json"]),
    # Where the default model's structure error comes from: refinement alone vs one learned step from true frames.
    ("structure_repair", ["--reference", os.path.join(DATA, "peo_litfsi_eo4_li9_450K", "reference", "cg.h5"),
                          "--cluster-noise", "0.95", "--out", result_path("structure_repair_eo4")],
     ["structure_repair_eo4.json"]),
    ("structure_repair", ["--reference", os.path.join(DATA, "peo_litfsi_eo6_li8_450K", "reference", "cg.h5"),
                          "--cluster-noise", "0.95", "--out", result_path("structure_repair_eo6")],
     ["structure_repair_eo6.json"]),
    ("structure_repair", ["--reference", os.path.join(DATA, "peo_litfsi_eo6_li15_450K", "reference", "cg.h5"),
                          "--cluster-noise", "0.95", "--out", result_path("structure_repair_train_eo6_li15")],
     ["structure_repair_train_eo6_li15.json"]),
    # HMR at 4 fs against 2 fs on the held-out EO4 box (runs its own 2-ns all-atom MD first: ~1 h on one core).
    ("hmr", [], ["hmr.json"]),
    # The shipped model's own training system (in distribution; not a held-out test).
    ("accuracy", ["--reference", os.path.join(DATA, "peo_litfsi_400K.h5"), "--replicas", "4", "--ns", "10",
                  "--out", result_path("accuracy_training_system")], ["accuracy_training_system.json"]),
]


def _load(name: str):
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def _machine(result: dict) -> dict:
    """The machine description of a result: its "machine" dict, or (older files) its top-level fields."""
    described = result.get("machine")
    return described if isinstance(described, dict) else result


def _fmt(value, spec=".3g"):
    return "n/a" if value is None else format(value, spec)


def _demo_lines(demo) -> list:
    """The default ``cgml demo``'s wall time (benchmarks/demo.py)."""
    if not demo:
        return []
    host = _machine(demo)
    box = " × ".join(f"{edge:.2f}" for edge in demo["box_nm"])
    return [f"## `cgml demo` (defaults; {host.get('cpu_model')}, {host.get('threads')} thread)",
            f"- {demo['n_atoms']} atoms ({demo['allatom_box']}, {box} nm) → {demo['n_beads']} beads, "
            f"{demo['cg_ns']:g} ns of CG time: **{demo['wall_seconds']:.1f} s wall** in all (box loaded in "
            f"{demo['build_seconds']:.1f} s, learned run {demo['simulate_seconds']:.1f} s); max CG bond "
            f"(minimum image) {_fmt(demo.get('max_cg_bond_nm'))} nm", ""]


def _rollout_drift_lines(drift) -> list:
    """Rollout / data MSD at 1 ns per campaign dataset (benchmarks/rollout_drift.py)."""
    if not drift:
        return []
    species = sorted(drift["slope_vs_chain_length"])
    refine = drift.get("refine", "model")
    lines = [f"## Rollout drift: a model's own runs against the data ({drift['replicas']} rollouts × "
             f"{drift['n_steps']} steps per dataset, model `{os.path.basename(drift['model'])}`"
             + ("" if refine == "model" else f", refinement `{refine}`") + ")",
             "| dataset | model | EO/chain, LiTFSI, T | " + " | ".join(f"{sp} rollout / data MSD at "
                                                          f"{drift['lag_ps'] / 1000:g} ns" for sp in species) + " |",
             "|---|---|---|" + "---|" * len(species)]
    for row in drift["datasets"]:
        path = row["dataset"]  # a campaign system's folder name, else the file's name
        name = path.split(os.sep)[-3] if path.endswith(os.path.join("reference", "cg.h5")) else os.path.basename(path)
        lines.append(f"| {name} | "
                     f"{row['role']} | EO{row['eo_per_chain']}, {row['n_salt']}, {row['temperature_K']:g} K | "
                     + " | ".join(f"{row['msd_ratio'][sp]:.2f}" for sp in species) + " |")
    slopes = ", ".join(f"{sp} {_fmt(drift['slope_vs_chain_length'][sp], '+.2f')}" for sp in species)
    return lines + ["", f"- slope of log ratio against log EO units per chain: {slopes}", ""]


def _ion_pair_lines(pairs) -> list:
    """Close Li⁺–Li⁺ pairs in the all-atom campaign references (benchmarks/ion_pairs.py)."""
    if not pairs:
        return []
    within = pairs["within_nm"]
    lines = [f"## Li⁺–Li⁺ pairs closer than {within:g} nm in the all-atom references (every frame)",
             "| dataset | role | EO/chain, LiTFSI, T | Li⁺ | frames | closest (nm) | frames with a pair "
             "| Li⁺ per Li⁺ |",
             "|---|---|---|---|---|---|---|---|"]
    for row in pairs["datasets"]:
        lines.append(f"| {row['dataset'].split(os.sep)[-3]} | {row['role']} | EO{row['eo_per_chain']}, "
                     f"{row['n_salt']}, {row['temperature_K']:g} K | {row['n_li']} | {row['n_frames']} | "
                     f"{row['closest_nm']:.3f} | {row['frames_with_pair']} | {row['neighbours_per_li']:.1e} |")
    return lines + [""]


def summary_markdown() -> str:
    """SUMMARY.md text from whatever result files exist."""
    lines = ["# openmm-cgml benchmark summary", ""]
    aa = _load("allatom_throughput.json")
    if aa:
        host = _machine(aa)
        lines += [f"Machine: {host.get('cpu_model')} ({host.get('threads')} threads), OpenMM "
                  f"{host.get('openmm_version')}.",
                  "", "## All-atom reference",
                  f"- {aa['n_atoms']} atoms, PME, 2 fs, HBonds: **{aa['ns_per_day']:.1f} ns/day** "
                  f"(density {_fmt(aa.get('density_g_cm3'))} g/cm³)", ""]
    mix = _load("mixing_density.json")
    if mix:
        lines += ["## Mixing rule (400 K density)",
                  f"- Lorentz–Berthelot {mix['lorentz-berthelot']['density_g_cm3']:.3f} g/cm³, geometric "
                  f"{mix['geometric']['density_g_cm3']:.3f} g/cm³ (relative difference "
                  f"{100 * mix['relative_difference_geometric_vs_lb']:+.1f} %)", ""]
    sp = _load("speedup.json")
    if sp:
        lines += ["## Learned CG vs all-atom OpenMM (same box, same run)"]
        for key in ("allatom_ns_per_day", "cg_integrator_ns_per_day", "cg_engine_ns_per_day", "speedup_integrator",
                    "speedup_engine", "bridge_overhead"):
            if key in sp:
                lines.append(f"- {key}: {_fmt(sp[key])}")
        lines.append("")
    lines += _demo_lines(_load("demo.json"))
    lines += _rollout_drift_lines(_load("rollout_drift.json"))
    lines += _rollout_drift_lines(_load("rollout_drift_no_refinement.json"))
    lines += _ion_pair_lines(_load("ion_pairs.json"))
    lines += _model_step_lines(_load("model_step.json"))
    lines += _pareto_lines(_load("pareto.json"))
    lines += _refine_screen_lines()
    lines += _structure_repair_lines()
    lines += _hmr_lines(_load("hmr.json"))
    dg = _load("dig.json")
    if dg:
        md, dig = dg.get("md", {}), dg.get("dig", {})
        lines += ["## DiG sampler (100-bead chain)",
                  f"- MD: {_fmt(md.get('independent_samples_per_s'))} independent samples/s "
                  f"(Rg² integrated autocorrelation time {_fmt(md.get('rg2_tau_int_ps'))} ps)",
                  f"- DiG: {_fmt(dig.get('independent_samples_per_s'))} samples/s with {dig.get('steps')} "
                  f"{dig.get('method', 'ode')} steps ({_fmt(dg.get('speedup_independent_samples'))}x MD) after "
                  f"{dig.get('train_iterations')} training iterations; Rg² {_fmt(dig.get('rg2_mean_nm2'))} nm² vs MD {_fmt(md.get('rg2_mean_nm2'))} nm², "
                  f"JS divergence {_fmt(dig.get('rg2_js_vs_md'))}", ""]
    for name in ("stability.json", "stability_no_step_cap.json"):
        st = _load(name)
        if not st:
            continue
        cap = (st.get("refine") or {}).get("step_cap")
        lines += [f"## Stability on unseen boxes ({len(st['boxes'])} × {st['box']['n_chains']} × EO"
                  f"{st['box']['eo_per_chain']} + {st['box']['n_salt']} LiTFSI at "
                  f"{_fmt(sum(b['density_g_cm3'] for b in st['boxes']) / len(st['boxes']), '.2f')} g/cm³, "
                  f"{st['cg_ns_per_box']:g} ns each; model `{os.path.basename(os.path.normpath(st['model']))}`"
                  + ("" if cap is None else f", step cap {cap:g}" if cap else ", no step cap") + ")",
                  f"- blow-ups (a bead moving > {st['bound_nm']:.2f} nm in one step): {st['blow_ups']} of "
                  f"{len(st['boxes'])}; largest one-step move {st['largest_move_nm']:.2f} nm; mean CG bond "
                  f"{st['mean_cg_bond_nm']:.3f} nm", ""]
    campaign = [(name, "held-out campaign system") for name in sorted(os.listdir(RESULTS))
                if name.startswith("accuracy_eo") and name.endswith(".json")]
    for name, title in campaign + [("accuracy.json", "held-out system"),
                                   ("accuracy_training_system.json", "training system")]:
        acc = _load(name)
        if not acc:
            continue
        model = acc.get("model", "")
        title += f", model `{os.path.basename(os.path.normpath(model))}`" if os.sep in model else f" ({model})"
        refine = acc.get("refine")  # older files ran the model's default refinement and do not say
        if refine:
            title += f", refinement {refine['scheme'] if refine['evaluations'] else 'none'} ({refine['evaluations']} " \
                     "score evaluations per step)"
            if "step=" in acc.get("command", ""):  # a step size other than the model's own
                title += f", step size {refine['step_size']:g} nm²"
            if refine.get("denoise"):
                title += f", final denoising step at {refine['denoise']:g} nm"
            if refine.get("rdf_wall"):
                title += f", training-RDF wall × {refine['rdf_wall']:g} in the score"
            if refine.get("temperature", 1.0) != 1.0:
                title += f", refinement temperature {refine['temperature']:g}"
            if refine.get("hard_core"):
                title += f", hard core {refine['hard_core']:g} × closest approach"
            if refine.get("bond_cap"):
                title += f", bond cap {refine['bond_cap']:g} × longest bond"
            if refine.get("step_cap"):
                title += f", step cap {refine['step_cap']:g} × longest training step"
        built = (acc.get("reference_system") or {}).get("args", {})
        box = (f"{built['n_chains']} × EO{built['eo_per_chain']} + {built['n_salt']} LiTFSI, "
               f"{built['temperature_K']:g} K; " if {"n_chains", "eo_per_chain", "n_salt"} <= set(built) else "")
        lines += [f"## Accuracy vs all-atom: {title} ({box}{acc['replicas']} replicas x "
                  f"{acc['cg_ns_per_replica']:g} ns CG; reference {acc['reference_ns']:.2f} ns)",
                  "| species | all-atom D (cm²/s) | CG D (cm²/s) | log10 error | MSD exponent all-atom / CG | "
                  "MSD at 1 ns, CG / all-atom |",
                  "|---|---|---|---|---|---|"]

        def cell(row, side):  # D only from the diffusive regime (MSD exponent >= 0.9); older files lack it
            d, e = row[f"{side}_D_cm2_per_s"], row[f"{side}_err_cm2_per_s"]
            return "withheld (sub-diffusive)" if d is None else f"{d:.2e} ± {e:.1e}"

        for species, row in acc["diffusivity"].items():
            lines.append(f"| {species} | {cell(row, 'allatom')} | {cell(row, 'cg')} | "
                         f"{_fmt(row['log10_error'], '+.2f')} | {exponent_text(row, 'allatom')} / "
                         f"{exponent_text(row, 'cg')} | {_msd_ratio(row)} |")
        lines.append("")
        lines.append("| RDF pair | first peak all-atom (nm, g) | CG (nm, g) |")
        lines.append("|---|---|---|")
        for pair, row in acc["rdf_first_peak"].items():
            lines.append(f"| {pair} | {row['allatom'][0]:.3f}, {row['allatom'][1]:.2f} | {row['cg'][0]:.3f}, "
                         f"{row['cg'][1]:.2f} |")
        lines += ["", f"- chain Rg²: all-atom {acc['rg2_nm2']['allatom']:.3f} nm², CG {acc['rg2_nm2']['cg']:.3f} nm² "
                  f"({100 * acc['rg2_nm2']['relative_error']:+.1f} %); collisions per bead per frame "
                  f"{_fmt(acc['collisions_per_bead_per_frame'])}"]
        contacts = acc.get("neighbours_within_0.5nm", {}).get("LI-LI")
        if contacts:
            lines.append(f"- Li⁺ neighbours within 0.5 nm of a Li⁺: all-atom {contacts['allatom']:.3g}, CG "
                         f"{contacts['cg']:.3g}")
        lines.append("")
    fa = _load("faults.json")
    if fa:
        summary = fa["summary"]
        lines += ["## Fault injection (SIGKILL at random moments, then the same command again)",
                  f"- {summary['kills_landed']} kills landed on " + ", ".join(v["verb"] for v in fa["verbs"])
                  + f"; {summary['kills_survived']} survived, {summary['mismatches']} results differing from an "
                  "uninterrupted run", ""]
    ps = _load("plugin_step.json")
    if ps:
        lines += ["## Compiled plugin vs Python bridge (seconds per learned step, "
                  f"{_machine(ps).get('threads')} thread, {ps.get('platform')} platform; {ps.get('note', '')})",
                  "| beads | mode | compiled | Python bridge | Python / compiled |", "|---|---|---|---|---|"]
        for case in ps.get("cases", []):
            for mode in ("full", "dynamics_only"):
                row = case.get(mode, {})
                if "compiled" in row:
                    lines.append(f"| {case['n_beads']} | {mode} | {row['compiled']['seconds_per_step']:.3g} | "
                                 f"{row['python_bridge']['seconds_per_step']:.3g} | "
                                 f"{row['compiled_speedup_over_python']:.2f} |")
        lines.append("")
    sc = _load("scaling.json")
    if sc:
        lines += [f"## Scale-out on this machine ({sc['cpu_count']} CPUs, one thread per rank or worker; load average "
                  f"{sc['load_average_before'][0]:.1f} before)",
                  f"- DDP training (gloo): {sc['iterations_per_second']['1']:.2f} it/s with 1 rank, "
                  f"{sc['iterations_per_second']['2']:.2f} with 2 (efficiency {100 * sc['scaling_efficiency']:.0f} %)"]
        ens = sc.get("ensemble")
        if ens:
            lines.append(f"- Dask ensemble ({ens['replicas']} replicas × {ens['ns_per_replica']:g} ns): "
                         f"{ens['replicas_per_hour']['1']:.0f} replicas/hour with 1 worker, "
                         f"{ens['replicas_per_hour']['2']:.0f} with 2 (efficiency "
                         f"{100 * ens['scaling_efficiency']:.0f} %)")
        lines.append("")
    lines += _polymer_lines(_load("polymer.json"))
    lines += _dig_lines([_load(f"{name}.json") for name in ("polymer_dig", "polymer_dig_heun", "polymer_dig_fast",
                                                         "polymer_dig_cutoff3")],
                        _load("dig_density.json"), _load("pidp_scale.json"))
    return "\n".join(lines)


_SAMPLERS = {"dpm": "DPM-Solver++(2M)", "ode": "Heun ODE", "ancestral": "ancestral SDE"}


def _polymer_dig_lines(pd) -> list:
    d, md = pd["dig"], pd["md"]
    lines = [f"## DiG on the {pd['truth']['n_chains']} unseen class-II chains (trained on class I; "
             f"{d['samples_per_chain']} samples per chain, {_SAMPLERS.get(d['method'], d['method'])} "
             f"{d['steps'] or {'ode': 50}.get(d['method'], 'default')} steps; graph: "
             f"{pd['graph']})",
             f"- Rg² JS {_fmt(d['rg2_js_mean'])} (goal ≤ 0.02), ⟨Rg²⟩ |error| {100 * d['rg2_rel_error_mean_abs']:.1f} % "
             f"(goal ≤ 5 %); end-to-end JS {_fmt(d['end_to_end_js_mean'])}, |error| "
             f"{100 * d['end_to_end_rel_error_mean_abs']:.1f} %; CG bond-length JS {_fmt(d['bond_length_js_mean'])}",
             f"- independent samples/s: DiG {_fmt(d['independent_samples_per_s'])}, fine MD "
             f"{_fmt(md['independent_samples_per_s'])} (one per 2 τ_int, τ_int {md['tau_int_ps_mean']:.0f} ps): "
             f"{_fmt(pd['samples_per_s_vs_md'])}× (goal ≥ 100×)"]
    cov = pd.get("by_training_coverage")
    if cov:
        lo, hi = cov["training_solvophobic_fraction"]
        lines.append(f"- by composition (class I's solvophobic fraction spans {lo:.2f}–{hi:.2f}): " + "; ".join(
            f"{name} it, {cov[name]['n_chains']} chains, Rg² JS {_fmt(cov[name]['rg2_js_mean'])}, ⟨Rg²⟩ |error| "
            f"{100 * cov[name]['rg2_rel_error_mean_abs']:.1f} %" for name in ("inside", "outside")
            if cov[name]["n_chains"]))
    se = pd.get("seeding")
    if se:
        lines.append(f"- learned rollouts, first {100 * se['fraction_of_truth']:g} % of the ground-truth length "
                     f"({se['model_steps']} model steps), Rg² JS / ⟨Rg²⟩ |error| by start: " + "; ".join(
                         f"{name} {_fmt(se[name]['rg2_js_mean'])} / {100 * se[name]['rg2_rel_error_mean_abs']:.1f} %"
                         for name in ("dig", "equilibrated_truth", "first_frame") if name in se))
    return lines + [""]


def _dig_lines(polymer_runs, dd, ps) -> list:
    """DiG on unseen polymer chains, its densities against exact ones, and what PIDP pre-training saves."""
    lines = []
    for result in polymer_runs:
        if result:
            lines += _polymer_dig_lines(result)
    if dd:
        c, w = dd["gaussian_chain"], dd["double_well"]
        lines += ["## DiG densities against exact ones",
                  f"- Gaussian chain ({c['n_beads']} beads, {c['dof']} dof, trained by DSM): ODE log p error "
                  f"{c['log_prob_error_nat_per_dof']:.4f} nat per dof (goal ≤ 0.1)",
                  f"- double well: ΔF {w['delta_f_kT']:.3f} ± {w['delta_f_stderr_kT']:.3f} kT vs exact "
                  f"{w['exact_delta_f_kT']:.3f} kT (goal within 0.1 kT); bond-length JS {_fmt(w['bond_length_js'])}", ""]
    if ps:
        lines += [f"## PIDP pre-training ({ps['system']['beads']}-bead chain; PIDP alone: Rg² JS "
                  f"{_fmt(ps['pidp_only']['rg2_js'])}, ⟨Rg²⟩ error {100 * ps['pidp_only']['rg2_rel_error']:+.0f} %)",
                  "| MD frames | JS, PIDP + DSM | JS, DSM from scratch | scratch frames for equal JS |", "|---|---|---|---|"]
        for r in ps["budgets"]:
            lines.append(f"| {r['frames']} | {_fmt(r['pidp_finetuned']['rg2_js'])} | {_fmt(r['scratch']['rg2_js'])} | "
                         f"{_fmt(r['scratch_frames_for_equal_js'])} |")
        lines.append("")
    return lines


def _model_step_lines(ms) -> list:
    """One learned step (benchmarks/model_step.py): time, share of matmul peak, cost per bead."""
    if not ms:
        return []
    lines = [f"## One learned step ({_machine(ms).get('cpu_model')}, {_machine(ms).get('threads')} thread(s), "
             f"matmul peak {_fmt(ms.get('matmul_peak_gflop_per_s'))} GFLOP/s; {ms.get('note', '')})",
             "| beads | mode | evaluations | s per step | µs per bead | fraction of matmul peak |",
             "|---|---|---|---|---|---|"]
    compilers = []  # after the table: a list line inside it would end the table
    for case in ms.get("cases", []):
        for mode in ("full", "pc", "dynamics_only"):
            if mode in case:
                c = case[mode]
                lines.append(f"| {case['n_beads']} | {mode} | {c['model_evaluations']} | "
                             f"{_fmt(c['seconds_per_step'])} | {_fmt(c.get('seconds_per_bead', c['seconds_per_step'] / case['n_beads']) * 1e6)} | "
                             f"{_fmt(c['fraction_of_matmul_peak'], '.2f')} |")
        if "compilers_dynamics_only" in case:
            compilers.append(f"- {case['n_beads']} beads, dynamics only: " + ", ".join(
                f"{k} {v['seconds_per_step'] * 1e3:.0f} ms (first call {v['first_call_s']:.1f} s)"
                for k, v in case["compilers_dynamics_only"].items()))
    lines += [""] + compilers
    spread = ms.get("per_bead_cost_spread_from_1000_beads")
    if spread:
        lines.append("- cost per bead, max / min over 10³ beads and up: " +
                     ", ".join(f"{k} {v:.2f}×" for k, v in spread.items()) + " (goal ≤ 1.5×)")
    lines.append("")
    return lines


def _pareto_lines(pa) -> list:
    """Pareto front of refinement cost, time step and accuracy (benchmarks/pareto.py)."""
    if not pa:
        return []
    lines = []
    if pa.get("polymer"):
        po = pa["polymer"]
        lines += [f"## Pareto front, polymer ({po['rows'][0]['steps']} model steps of every class-II chain; fine MD "
                  f"{po['fine_md']['s_per_chain_ns']:.3g} s per chain-ns, same run)",
                  "| setting | evaluations | step (ps) | ⟨Rg²⟩ MARE | Rg² JS | abs log10 τ | collisions | bond breaks | "
                  "speed-up vs fine MD | on front |", "|---|---|---|---|---|---|---|---|---|---|"]
        for i, r in enumerate(po["rows"]):
            lines.append(f"| {r['setting']} | {r['score_evaluations_per_step']} | {r['timestep_ps']:.3g} | "
                         f"{_fmt(r['rg2_mean_abs_rel_error'])} | {_fmt(r['rg2_js_mean'])} | "
                         f"{_fmt(r['tau_mean_abs_log10_ratio'])} | {_fmt(r['collision_rate_mean'])} | "
                         f"{_fmt(r['bond_break_rate_mean'])} | {_fmt(r['speedup_vs_fine_md'])} | "
                         f"{'yes' if i in po.get('front', []) else ''} |")
        lines.append("")
    if pa.get("peo_litfsi"):
        lines += _peo_pareto_lines(pa["peo_litfsi"])
    for name in sorted(os.listdir(RESULTS)):  # fronts of other PEO/LiTFSI models (pareto.py --model --only)
        if name.startswith("pareto_peo_") and name.endswith(".json"):
            lines += _peo_pareto_lines(_load(name)["peo_litfsi"])
    return lines


def _msd_ratio(row) -> str:
    """CG / all-atom MSD at the fixed lag of a ``diffusivity_comparison`` row (mobility, also where D is withheld);
    "n/a" for files written before it was reported."""
    if row.get("cg_msd_nm2_at_lag") is None:
        return "n/a"
    return f"{row['cg_msd_nm2_at_lag'] / row['allatom_msd_nm2_at_lag']:.2f}"


def _hmr_lines(hmr) -> list:
    """Hydrogen mass repartitioning at 4 fs against 2 fs (benchmarks/hmr.py)."""
    if not hmr or "density" not in hmr or "diffusion" not in hmr:
        return []
    den, dif = hmr["density"], hmr["diffusion"]
    lines = [f"## Hydrogen mass repartitioning: 4 fs with H at {hmr['hydrogen_mass_amu']:g} amu against 2 fs "
             f"(`{hmr['system']}`; validated: {'yes' if hmr['validated'] else 'no'}, within "
             f"{hmr['agree_within_sigmas']:g} standard errors)",
             f"- NPT density at 1 bar ({den['npt_ps']:g} ps each): 2 fs {den['2fs']['density_g_cm3']:.4f} ± "
             f"{den['2fs']['err_g_cm3']:.4f}, 4 fs {den['4fs_hmr']['density_g_cm3']:.4f} ± "
             f"{den['4fs_hmr']['err_g_cm3']:.4f} g/cm³ ({100 * den['relative_difference']:+.2f} %); "
             f"{den['2fs']['ns_per_day']:.1f} against {den['4fs_hmr']['ns_per_day']:.1f} ns/day "
             f"({den['speedup']:.2f}×, {hmr['machine']['threads']} thread, same process)",
             f"- D over the first {dif['compared_ns']:.2f} ns of each run (2 fs: the campaign's reference):",
             "| species | D 2 fs (cm²/s) | D 4 fs HMR (cm²/s) | MSD exponent 2 fs / 4 fs | D agree | MSD at 1 ns, 2 fs / "
             "4 fs (nm², ± block s.e.) | MSD agree |", "|---|---|---|---|---|---|---|"]
    for species, row in dif["by_species"].items():
        cells = ["withheld (sub-diffusive)" if row[f"{side}_D_cm2_per_s"] is None else
                 f"{row[f'{side}_D_cm2_per_s']:.2e} ± {row[f'{side}_err_cm2_per_s']:.1e}" for side in ("allatom", "cg")]
        if "msd_agree" in row:
            msd = (f"{row['allatom_msd_nm2_at_lag']:.2f} ± {row['allatom_msd_nm2_at_lag_err']:.2f} / "
                   f"{row['cg_msd_nm2_at_lag']:.2f} ± {row['cg_msd_nm2_at_lag_err']:.2f} | "
                   f"{'yes' if row['msd_agree'] else 'no'}")
        else:  # written before the block errors existed
            msd = "not recorded | –"
        lines.append(f"| {species} | {cells[0]} | {cells[1]} | {exponent_text(row, 'allatom')} / "
                     f"{exponent_text(row, 'cg')} | {'yes' if row['agree'] else 'no'} | {msd} |")
    return lines + [f"- `{den.get('command', '')}`; `{dif.get('command', '')}`", ""]


def _refine_screen_lines() -> list:
    """One table per screen of refinement settings (benchmarks/results/refine_screen*/: one model on one held-out
    box, each file a ``benchmarks.accuracy`` run with its command)."""
    screens = sorted(name for name in os.listdir(RESULTS) if name.startswith("refine_screen")
                     and os.path.isdir(os.path.join(RESULTS, name)))
    return [line for screen in screens for line in _refine_screen_table(screen)]


def _refine_spec(command: str) -> str:
    """The ``--refine`` spec of a benchmark command line ("model" when it has none)."""
    return command.split("--refine ")[1].split()[0] if "--refine " in command else "model"


def _structure_repair_lines() -> list:
    """benchmarks/results/structure_repair*.json: the model's structure error on true frames, refined alone and
    after one learned step (benchmarks/structure_repair.py)."""
    runs = [_load(name) for name in sorted(os.listdir(RESULTS))
            if name.startswith("structure_repair") and name.endswith(".json")]
    if not runs:
        return []
    lines = ["## Structure repair: the refinement alone and one learned step, from true frames",
             "| reference | refinement | set | Li–PEO peak | Li–TFSI peak | Li⁺ within 0.5 nm of a Li⁺ | "
             "chain Rg² | repair MSD / true step MSD (Li, TFSI, PEO) |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        name = run["reference"].split("/")[-3]
        spec = _refine_spec(run["command"])
        shares = ", ".join(f"{run['repair_displacement'][k]['ratio']:.2f}" for k in ("LI", "TFS", "PEO"))
        for label, row in run["sets"].items():
            error = row.get("peak_error", {})
            peaks = [f"{row['first_peak_height'][pair]:.2f}" + (f" ({100 * error[pair]:+.0f} %)" if error else "")
                     for pair in ("LI-PEO", "LI-TFS")]
            rg2 = f"{row['rg2_nm2']:.4f}" + (f" ({100 * row['rg2_error']:+.1f} %)" if "rg2_error" in row else "")
            lines.append(f"| {name} | `{spec}` | {label} | {peaks[0]} | {peaks[1]} | "
                         f"{row['li_li_within_0.5nm']:.3f} | {rg2} | {shares if label == 'refined' else ''} |")
    lines += [f"- `{runs[0]['command']}` ({runs[0]['frames']} frames each; the others differ in "
              "--reference and --refine)", ""]
    moved = [run for run in runs if "step_transport" in run]
    if moved:  # newer runs: one step's transport, dynamics alone and whole, against the true step
        lines += ["## One learned step from true frames: mean-square displacement / the true step's",
                  "| reference | refinement | dynamics alone (Li, TFSI, PEO, chain centres) | whole step (same) |",
                  "|---|---|---|---|"]
        for run in moved:
            rows = [run["step_transport"][k] for k in ("LI", "TFS", "PEO", "chain_com") if k in run["step_transport"]]
            lines.append(f"| {run['reference'].split('/')[-3]} | `{_refine_spec(run['command'])}` | "
                         + " | ".join(", ".join(f"{row[key]:.2f}" for row in rows)
                                      for key in ("predicted_ratio", "one_step_ratio")) + " |")
        lines.append("")
    return lines


def _refine_screen_table(screen: str) -> list:
    """The runs of one screen directory, sorted by score evaluations per step."""
    runs = [_load(os.path.join(screen, name)) for name in sorted(os.listdir(os.path.join(RESULTS, screen)))
            if name.endswith(".json")]
    if not runs:
        return []
    first = runs[0]
    lines = [f"## Refinement screen, model `{os.path.basename(os.path.normpath(first['model']))}` "
             f"({first['reference'].split('/')[-3]}, {first['replicas']} replicas × {first['cg_ns_per_replica']:g} ns "
             f"CG; `{first['command'].split(' --refine')[0]} --refine SPEC`)",
             "| refinement | evaluations | hard core, bond cap | Li–PEO first-peak height | "
             "Li–TFSI first-peak height | Li⁺ within 0.5 nm of a Li⁺ | chain Rg² | "
             "MSD at 1 ns, CG / all-atom (PEO, TFSI, Li) |", "|---|---|---|---|---|---|---|---|"]
    for run in sorted(runs, key=lambda r: r["refine"]["evaluations"]):
        refine = run["refine"]
        peaks = [run["rdf_first_peak"][pair] for pair in ("LI-PEO", "LI-TFS")]
        ratios = ", ".join(_msd_ratio(run["diffusivity"][k]) for k in ("PEO", "TFS", "LI") if k in run["diffusivity"])
        lines.append(f"| `{_refine_spec(run['command'])}` | {refine['evaluations']} | "
                     f"{refine.get('hard_core', 0):g}, {refine.get('bond_cap', 0):g} | "
                     + "".join(f"{100 * (p['cg'][1] / p['allatom'][1] - 1):+.0f} % | " for p in peaks)
                     + f"{run['neighbours_within_0.5nm']['LI-LI']['cg']:.3f} | "
                     f"{100 * run['rg2_nm2']['relative_error']:+.1f} % | {ratios} |")
    return lines + [""]


def _peo_pareto_lines(pe) -> list:
    """One PEO/LiTFSI Pareto table (benchmarks/pareto.py) with its model, reference and blown-up settings."""
    model = os.path.basename(os.path.normpath(pe["model"]))
    lines = [f"## Pareto front, PEO/LiTFSI, model `{model}` ({pe['reference']}: {pe['n_beads']} beads, all-atom "
             f"reference {pe['reference_ns']:.2f} ns; {pe['replicas']} × {pe['cg_ns_per_replica']:g} ns CG per "
             f"setting; all-atom OpenMM {pe['allatom']['ns_per_day']:.1f} ns/day on 1 thread, same run)",
             "| setting | evaluations | step (ps) | Li–PEO peak height error | Li–Li pairs < 0.5 nm per Li | collisions "
             "per bead | broken CG bonds | MSD exponent CG (Li, TFSI, PEO) | MSD at 1 ns, CG / all-atom (Li, TFSI, "
             "PEO) | speed-up vs all-atom | on front |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(pe["rows"]):
        species = [k for k in ("LI", "TFS", "PEO") if k in r["diffusivity"]]
        alphas = ", ".join(_fmt(r["diffusivity"][k]["cg_msd_exponent"], ".2f") for k in species)
        ratios = ", ".join(_msd_ratio(r["diffusivity"][k]) for k in species)
        lines.append(f"| {r['setting']} | {r['score_evaluations_per_step']} | {r['timestep_ps']:g} | "
                     f"{100 * r['li_peo_peak_height_rel_error']:+.0f} % | "
                     f"{_fmt(r['li_li_pairs_below_0.5nm_per_li'])} | {_fmt(r['collisions_per_bead_per_frame'])} | "
                     f"{_fmt(r.get('bond_break_fraction'))} | {alphas} | {ratios} | {_fmt(r['speedup_vs_allatom'])} | "
                     f"{'yes' if i in pe.get('front', []) else ''} |")
    for r in pe.get("blown_up", []):
        lines.append(f"- `{r['setting']}` ({r['score_evaluations_per_step']} evaluations) did not run: {r['message']}")
    return lines + [""]


def _polymer_lines(po) -> list:
    """The polymer benchmark (issue #11): every method against the class-II ground truth, goals, cost."""
    if not po or "methods" not in po:
        return []
    gt = po["ground_truth"]
    lines = [f"## Polymer ground truth: {gt['n_chains']} held-out class-II chains, {gt['steps']:,} fine steps each "
             f"(first {gt['discarded_steps']:,} discarded); training: {po['training_length_steps']:,}-step class-I "
             "trajectories",
             "| method | ⟨Rg²⟩ MARE | Rg² JS | mean abs log10 τ ratio | mean abs log10 D ratio | collisions | "
             "bond breaks |", "|---|---|---|---|---|---|---|"]
    labels = {"learned": "learned, score refinement", "b_learned_without_refinement": "(b) learned, no refinement",
              "a_plain_md_training_length": "(a) plain MD, training length", "c_supervised_gnn": "(c) supervised GNN"}
    for name, method in po["methods"].items():
        a = method["aggregate"]
        lines.append(f"| {labels.get(name, name)} | {_fmt(a['rg2_mean_abs_rel_error'])} | {_fmt(a['rg2_js_mean'])} "
                     f"| {_fmt(a['tau_mean_abs_log10_ratio'])} | {_fmt(a['diffusivity_mean_abs_log10_ratio'])} | "
                     f"{_fmt(a['collision_rate_mean'])} | {_fmt(a['bond_break_rate_mean'])} |")
    lines.append("")
    for key, verdict in po.get("goals", {}).items():
        lines.append(f"- goal {key} ≤ {verdict['goal']:g}: learned {_fmt(verdict['learned'])} "
                     f"({'met' if verdict['met'] else 'missed'}; "
                     f"{'beats' if verdict['beats_all_baselines'] else 'does not beat'} every baseline)")
    noise = po.get("ground_truth_rg2_rel_stderr")
    if noise:
        lines.append(f"- the ground truth's own ⟨Rg²⟩ standard error (20 blocks): mean "
                     f"{100 * sum(noise) / len(noise):.1f} % per chain")
    cost = po.get("cost")
    if cost:
        runs = "; ".join(f"{label} {r['chains']} chains {r['s_per_chain_ns']:.3g} s ({r['speedup_vs_fine_md']:.1f}× "
                         "faster)" for variant, label in (("refined", "with refinement"), ("plain", "without"))
                         for r in cost[variant].values())
        lines.append(f"- cost per simulated chain-ns (one thread, measured in the same run): fine MD "
                     f"{cost['fine_md']['s_per_chain_ns']:.3g} s ({cost['n_chains']} chains in one System); "
                     f"learned {runs}")
    if po.get("not_run"):
        lines.append(f"- not run yet: {', '.join(po['not_run'])}")
    lines.append("")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="benchmark names to run (default: all)")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args(argv)
    os.makedirs(RESULTS, exist_ok=True)
    failed = []
    if not args.summary_only:
        for name, extra, _ in BENCHMARKS:
            if args.only and name not in args.only:
                continue
            if not (os.path.exists(os.path.join(HERE, f"{name}.py"))
                    or os.path.exists(os.path.join(HERE, name, "__main__.py"))):
                print(f"[benchmarks] {name}: no script, skipped", flush=True)
                continue
            print(f"[benchmarks] {name} ...", flush=True)
            with Stopwatch() as clock:
                rc = subprocess.call([sys.executable, "-m", f"benchmarks.{name}", *extra], cwd=ROOT)
            print(f"[benchmarks] {name}: exit {rc} after {clock.seconds:.0f} s", flush=True)
            if rc:
                failed.append(name)
    text = summary_markdown()
    write_text(text + "\n", os.path.join(RESULTS, "SUMMARY.md"))
    print(text)
    if failed:
        print(f"[benchmarks] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
