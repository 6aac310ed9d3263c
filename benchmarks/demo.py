"""Wall time of the default ``cgml demo``: the shipped default box, the shipped model, the default CG time.

    python -m benchmarks.demo [--ns NS]

Runs ``run_demo`` with its defaults (only the output goes to a temporary directory) in this process with one
torch thread and one OpenMM CPU thread, and copies from its ``demo.json`` into benchmarks/results/demo.json: the
demo's own wall time (``wall_seconds``: loading the box and the model, coarse-graining, the learned run, the
analysis), the time of the learned run, the CG time, atoms, beads and box edges. The wall time of ``time cgml
demo`` adds the interpreter's start and imports (a few seconds).
"""
import json
import os
import tempfile

from openmm_cgml.training.loop import provenance_path
from openmm_cgml.workflows import DEMO_NS, run_demo

from .common import benchmark_parser, machine, set_threads, write_json


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__, "demo", threads=1)
    parser.add_argument("--ns", type=float, default=DEMO_NS, help="CG time (default: the demo's, %(default)g ns)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    os.environ.setdefault("OPENMM_CPU_THREADS", str(args.threads))  # read when the CPU platform starts
    with tempfile.TemporaryDirectory() as tmp:
        demo = run_demo(os.path.join(tmp, "demo"), ns=args.ns, progress=False)
    result = {
        "machine": machine(args.threads),
        "wall_seconds": demo["wall_seconds"], "build_seconds": demo["build_seconds"],
        "simulate_seconds": demo["simulate_seconds"], "cg_ns": demo["cg_ns"], "cg_ns_per_day": demo["cg_ns_per_day"],
        "n_atoms": demo["n_atoms"], "n_beads": demo["n_beads"], "box_nm": demo["box_nm"],
        "allatom_box": demo["allatom_box"], "mean_cg_bond_nm": demo["mean_cg_bond_nm"],
        "max_cg_bond_nm": demo["max_cg_bond_nm"], "model": provenance_path(demo["model"]),
    }
    write_json(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
