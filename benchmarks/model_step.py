"""Cost of one learned CG step: wall time, FLOPs and fraction of the machine's fp32 matmul peak.

A random periodic bead liquid at a realistic bead density (default 15 beads/nm³: PEO/LiTFSI at ~1.1 g/cm³ is about
105 atoms/nm³, mapped at 7 atoms per bead) is advanced by the TorchScript ``LearnedStep`` of an (untrained) model
with the default architecture (``ModelConfig()``: 64-wide, 4 message-passing layers, cutoff 0.8 nm, history 4;
score GNN 64 x 4). Timed dynamics-only, with the default 5 x 2 annealed-Langevin refinement (``full``, up to
``--max-full-beads``) and with the 4-evaluation predictor-corrector ``pc:5x0`` (``pc``). The cost per bead from
10^3 to 10^5 beads shows whether anything grows faster than linearly; at ``--compile-beads`` the dynamics-only
step is also timed eager and under ``torch.compile(dynamic=True)`` (over changing positions, so recompiles show).
FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls only, so they are a lower bound); the peak is
the measured rate of a large fp32 ``torch.matmul``. Writes benchmarks/results/model_step.json.

    python -m benchmarks.model_step                       # 10^2 .. 10^5 beads, all threads
    python -m benchmarks.model_step --sizes 100 1000 --threads 1 --device cpu
"""
import math
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from openmm_cgml.nn.graph import build_edges
from openmm_cgml.simulate.step import LearnedStep, parse_refine, step_noise
from openmm_cgml.training.model import BeadVocabulary, CGModel, ModelConfig

from .common import benchmark_parser, machine, set_threads, write_json

# Four bead chemistries typical of PEO/LiTFSI at 7 atoms per bead (heavy atoms with their hydrogens).
TYPE_GRAPHS = [
    {"elements": ["C", "C", "O", "H", "H", "H", "H"], "masses": [12.011, 12.011, 15.999] + [1.008] * 4,
     "bonds": [[0, 1, 0], [1, 2, 0], [0, 3, 0], [0, 4, 0], [1, 5, 0], [1, 6, 0]]},
    {"elements": ["Li"], "masses": [6.94], "bonds": []},
    {"elements": ["S", "O", "O", "N", "C", "F", "F", "F"], "masses": [32.06, 16.0, 16.0, 14.007, 12.011, 19.0, 19.0, 19.0],
     "bonds": [[0, 1, 0], [0, 2, 0], [0, 3, 0], [0, 4, 0], [4, 5, 0], [4, 6, 0], [4, 7, 0]]},
    {"elements": ["C", "O", "H", "H", "H"], "masses": [12.011, 15.999, 1.008, 1.008, 1.008],
     "bonds": [[0, 1, 0], [0, 2, 0], [0, 3, 0], [0, 4, 0]]},
]


class RandomLiquid:
    """Bead map stand-in for ``LearnedStep.from_model``: N beads of random types, chains of 4 bonded beads."""

    def __init__(self, n_beads: int, gen: torch.Generator):
        self.n_beads = n_beads
        self.type_names = [f"T{k}" for k in range(len(TYPE_GRAPHS))]
        self.type_graphs = TYPE_GRAPHS
        self.bead_types = torch.randint(0, len(TYPE_GRAPHS), (n_beads,), generator=gen).numpy()
        self.bead_masses = [sum(TYPE_GRAPHS[t]["masses"]) for t in self.bead_types]
        self.bonds = [[i, i + 1] for i in range(n_beads - 1) if i % 4 != 3]
        self.periodic = True


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Measured fp32 matmul rate, FLOP/s (best of ``repeats``)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = math.inf
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(step, x, h, box, device, min_repeats: int, budget_s: float):
    """(median seconds per step, number of timed steps)."""
    n_refine = int(step.n_refine)
    dyn, ref = step_noise(0, 0, x.shape[0], n_refine)
    dyn, ref = dyn.to(device), ref.to(device)
    with torch.inference_mode():
        step(x, h, box, dyn, ref)  # warm-up (TorchScript profiling run)
        _sync(device)
        times = []
        start = time.perf_counter()
        while len(times) < min_repeats or (time.perf_counter() - start < budget_s and len(times) < 20):
            t0 = time.perf_counter()
            step(x, h, box, dyn, ref)
            _sync(device)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], len(times)


def compare_compilers(model, system, x, h, box, steps: int = 5) -> dict:
    """Median seconds of the dynamics-only step eager, TorchScript and ``torch.compile(dynamic=True)``, each over
    the same ``steps`` slightly different positions (a compiler that specialises on edge counts recompiles)."""
    step = LearnedStep.from_model(model, system, refine=False)
    dyn, ref = step_noise(0, 0, x.shape[0], 0)
    gen = torch.Generator().manual_seed(1)
    inputs = [x + 0.05 * torch.randn(x.shape, generator=gen) for _ in range(steps)]
    out = {}
    for name in ("eager", "torchscript", "torch_compile"):
        t0 = time.perf_counter()
        f = step if name == "eager" else torch.jit.script(step) if name == "torchscript" else \
            torch.compile(step, dynamic=True)
        times = []
        with torch.inference_mode():
            f(x, h, box, dyn, ref)
            setup = time.perf_counter() - t0
            for xi in inputs:
                t1 = time.perf_counter()
                f(xi, h, box, dyn, ref)
                times.append(time.perf_counter() - t1)
        out[name] = {"seconds_per_step": sorted(times)[len(times) // 2], "first_call_s": setup}
    return out


def count_flops(step, x, h, box, device) -> int:
    dyn, ref = step_noise(0, 0, x.shape[0], int(step.n_refine))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        step(x, h, box, dyn.to(device), ref.to(device))
    return int(counter.get_total_flops())


def main(argv=None):
    parser = benchmark_parser(__doc__, "model_step", threads=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000, 100000])
    parser.add_argument("--max-full-beads", type=int, default=10000,
                        help="skip the 11-evaluation default refinement above this many beads")
    parser.add_argument("--flop-beads", type=int, default=10000, help="count FLOPs up to this many beads")
    parser.add_argument("--compile-beads", type=int, default=1000, help="compare compilers at this size (0: skip)")
    parser.add_argument("--density", type=float, default=15.0, help="beads per nm³")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of timing per case (at least 1 step)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)

    config = ModelConfig(timestep_ps=100.0, periodic=True, velocity_scale=0.3, accel_scale=0.3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CGModel(config, BeadVocabulary([f"T{k}" for k in range(len(TYPE_GRAPHS))], TYPE_GRAPHS)).eval()
    model.to(device)
    peak = matmul_peak(device)
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s on {device} ({torch.get_num_threads()} threads)")
    cases = []
    for n in args.sizes:
        system = RandomLiquid(n, gen)
        edge = (n / args.density) ** (1.0 / 3.0)
        if edge < 2.0 * config.cutoff:
            print(f"skipping {n} beads: box {edge:.2f} nm is shorter than twice the cutoff")
            continue
        box = torch.full((3,), edge, device=device)
        x = (torch.rand(n, 3, generator=gen) * edge).to(device)
        h = (0.1 * torch.randn(config.history_length, n, 3, generator=gen)).to(device)
        n_edges = int(build_edges(x, config.cutoff, torch.tensor(system.bonds, device=device), box)[0].shape[1])
        row = {"n_beads": n, "box_nm": edge, "edges": n_edges, "edges_per_bead": n_edges / n}
        for label, refine in (("full", None), ("pc", parse_refine("pc:5x0")), ("dynamics_only", False)):
            if label == "full" and n > args.max_full_beads:
                continue
            step = torch.jit.script(LearnedStep.from_model(model, system, refine=refine))
            seconds, repeats = time_step(step, x, h, box, device, 1 if n >= 10000 else 3, args.budget)
            flops = count_flops(LearnedStep.from_model(model, system, refine=refine), x, h, box, device) \
                if n <= args.flop_beads else None
            row[label] = {
                "seconds_per_step": seconds,
                "seconds_per_bead": seconds / n,
                "timed_steps": repeats,
                "model_evaluations": 1 + int(step.n_refine),
                "gflop_per_step": flops / 1e9 if flops else None,
                "achieved_gflop_per_s": flops / seconds / 1e9 if flops else None,
                "fraction_of_matmul_peak": flops / seconds / peak if flops else None,
                "cg_ns_per_day": config.timestep_ps * 1e-3 / seconds * 86400.0,
            }
            share = f"{flops / 1e9:8.2f} GFLOP, {flops / seconds / peak:6.1%} of peak" if flops else "FLOPs not counted"
            print(f"{n:>6} beads {label:>13}: {seconds * 1e3:9.1f} ms/step ({seconds / n * 1e6:.1f} us/bead), {share}, "
                  f"{row[label]['cg_ns_per_day']:.3g} CG ns/day (100 ps steps, {n_edges / n:.1f} edges/bead)")
        if n == args.compile_beads and device.type == "cpu":
            row["compilers_dynamics_only"] = compare_compilers(model, system, x, h, box)
            print(f"{n:>6} beads compilers (dynamics only): " + ", ".join(
                f"{k} {v['seconds_per_step'] * 1e3:.0f} ms" for k, v in row["compilers_dynamics_only"].items()))
        cases.append(row)
    per_bead = {label: {c["n_beads"]: c[label]["seconds_per_bead"] for c in cases if label in c}
                for label in ("pc", "dynamics_only")}
    scaling = {label: max(v.values()) / min(v.values()) for label, v in
               ((k, {n: s for n, s in d.items() if n >= 1000}) for k, d in per_bead.items()) if len(v) > 1}
    result = {
        "machine": machine(device=str(device)),
        "matmul_peak_gflop_per_s": peak / 1e9,
        "bead_density_per_nm3": args.density,
        "model_config": config.to_dict(),
        "note": "untrained default architecture; FLOPs count matmuls only (lower bound); shared machine",
        "cases": cases,
        # max / min seconds per bead over the sizes >= 1000 beads (goal: within 1.5x from 10^3 to 10^5)
        "per_bead_cost_spread_from_1000_beads": scaling,
    }
    print("cost per bead, max/min over >= 1000 beads: " + ", ".join(f"{k} {v:.2f}x" for k, v in scaling.items()))
    print(f"wrote {write_json(result, args.out)}")


if __name__ == "__main__":
    main()
