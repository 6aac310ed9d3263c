"""Run the benchmarks and write benchmarks/results/*.json plus a markdown summary.

    python -m benchmarks              # every benchmark with its default (report-sized) settings
    python -m benchmarks --only allatom_throughput model_step
    python -m benchmarks --summary-only   # rebuild SUMMARY.md from the JSON files already in results/

Every figure in SUMMARY.md is read from a JSON file that a benchmark run wrote; nothing is typed in.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

#: (script, extra arguments, result files it writes), in the order they run.
BENCHMARKS = [
    ("allatom_throughput", [], ["allatom_throughput.json"]),
    ("model_step", [], ["model_step.json"]),
    ("speedup", [], ["speedup.json"]),
    ("dig", [], ["dig.json"]),
    ("accuracy", [], ["accuracy.json"]),
]


def _load(name: str):
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def _fmt(value, spec=".3g"):
    return "n/a" if value is None else format(value, spec)


def summary_markdown() -> str:
    """SUMMARY.md text from whatever result files exist."""
    lines = ["# openmm-cgml benchmark summary", ""]
    aa = _load("allatom_throughput.json")
    if aa:
        lines += [f"Machine: {aa.get('cpu_model')} ({aa.get('threads')} threads), OpenMM {aa.get('openmm_version')}.",
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
    ms = _load("model_step.json")
    if ms:
        lines += ["## One learned step", "```", json.dumps(ms, indent=1)[:2000], "```", ""]
    dg = _load("dig.json")
    if dg:
        lines += ["## DiG sampler", "```", json.dumps(dg, indent=1)[:2000], "```", ""]
    acc = _load("accuracy.json")
    if acc:
        lines += ["## Accuracy vs all-atom", "```", json.dumps(acc, indent=1)[:3000], "```", ""]
    return "\n".join(lines)


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
            script = os.path.join(HERE, f"{name}.py")
            if not os.path.exists(script):
                print(f"[benchmarks] {name}: no script, skipped", flush=True)
                continue
            start = time.time()
            print(f"[benchmarks] {name} ...", flush=True)
            rc = subprocess.call([sys.executable, script, *extra])
            print(f"[benchmarks] {name}: exit {rc} after {time.time() - start:.0f} s", flush=True)
            if rc:
                failed.append(name)
    text = summary_markdown()
    with open(os.path.join(RESULTS, "SUMMARY.md"), "w") as handle:
        handle.write(text + "\n")
    print(text)
    if failed:
        print(f"[benchmarks] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
