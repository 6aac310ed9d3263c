"""Data-parallel training: iterations per second with 1 vs 2 DDP ranks (gloo on CPU) on this machine.

    python -m benchmarks.scaling                      # the PEO/LiTFSI CG dataset, a tiny-ish model
    python -m benchmarks.scaling --iterations 40 --batch-size 16

Figures (written to benchmarks/results/scaling.json), for the same global batch (strong scaling: each of the 2
ranks takes half of every batch, so both runs train the same model):
- training iterations per second and windows per second with 1 and with 2 ranks (one CPU thread per rank,
  after ``--warmup`` iterations; the best of ``--repeats`` alternating runs, the least disturbed by other jobs);
- the speed-up (2-rank / 1-rank iterations per second) and the scaling efficiency (speed-up / 2);
- ensembles on Dask: replicas per hour of ``cgml simulate --scheduler local:N`` with N = 1 and 2 workers (one
  thread each; the shipped model on the shipped default box, ``--replicas`` replicas of ``--ensemble-ns`` each),
  and the same speed-up and efficiency.
The machine's load average is recorded with them: on a shared machine the 2-rank figure competes with other jobs.
"""
import json
import os
import tempfile
import time

from openmm_cgml.training import TrainConfig, train
from openmm_cgml.training.distributed import is_main, spawn

from .common import DATA, benchmark_parser, machine, write_json

DATASET = os.path.join(DATA, "peo_litfsi_400K.h5")
#: A small model on the 60-bead PEO/LiTFSI box (1.67 nm edge, so cutoffs below 0.83 nm).
CONFIG = dict(embed_dim=16, embed_hidden=16, embed_layers=1, hidden=32, n_layers=2, n_rbf=8, cutoff=0.6,
              history_length=2, score_hidden=32, score_layers=2, n_sigmas=8, max_frames=300,
              validation_fraction=0.0, checkpoint_every=0, seed=0)


class IterationClock:
    """A training callback that records the wall-clock time of every iteration (rank 0 writes them to ``path``
    when the last one is done)."""

    def __init__(self, path: str, n_iterations: int):
        self.path, self.n_iterations, self.times = path, int(n_iterations), []

    def __call__(self, iteration, nll, dsm):
        self.times.append(time.perf_counter())
        if iteration == self.n_iterations and is_main():
            with open(self.path, "w") as f:
                json.dump(self.times, f)


def _rank(data: str, out: str, config: dict, clock: IterationClock, device: str = "cpu"):
    import torch

    torch.set_num_threads(1)
    train(data, out, config, device=device, progress=False, callback=clock)


def iterations_per_second(data: str, config: dict, nproc: int, warmup: int, root: str) -> float:
    """Training iterations per second on ``nproc`` ranks, timed after ``warmup`` iterations."""
    out, times = os.path.join(root, f"run{nproc}"), os.path.join(root, f"times{nproc}.json")
    clock = IterationClock(times, config["n_iterations"])
    if nproc == 1:
        _rank(data, out, config, clock)
    else:
        spawn(nproc, _rank, data, out, config, clock, device="cpu", start_method="fork")
    with open(times) as f:
        stamps = json.load(f)
    timed = stamps[warmup - 1:]
    return (len(timed) - 1) / (timed[-1] - timed[0])


def replicas_per_hour(n_workers: int, root: str, replicas: int, ns: float) -> float:
    """Replicas per hour of a ``local:n_workers`` Dask ensemble (the ensemble's own ``simulate.json``)."""
    from openmm_cgml.systems import default_box
    from openmm_cgml.training.model import DEFAULT_MODEL
    from openmm_cgml.workflows import simulate_ensemble

    system = os.path.join(root, "system")
    if not os.path.isdir(system):
        default_box().save(system)
    summary = simulate_ensemble(DEFAULT_MODEL, system, ns, os.path.join(root, f"ensemble{n_workers}"),
                                f"local:{n_workers}", replicas=replicas, progress=False)
    return float(summary["replicas_per_hour"])


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__, "scaling", threads=1)
    parser.add_argument("--data", default=DATASET, help="CG dataset (.h5) to train on")
    parser.add_argument("--iterations", type=int, default=30, help="training iterations per run")
    parser.add_argument("--warmup", type=int, default=5, help="iterations left out of the timing")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (windows per iteration)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating 1-rank / 2-rank runs (best is kept)")
    parser.add_argument("--replicas", type=int, default=4, help="replicas of the Dask ensemble")
    parser.add_argument("--ensemble-ns", type=float, default=2.0, help="ns of CG time per ensemble replica")
    args = parser.parse_args(argv)
    if args.iterations <= args.warmup + 1:
        parser.error("--iterations must exceed --warmup + 1")
    os.environ["OMP_NUM_THREADS"] = "1"
    config = TrainConfig(**CONFIG, batch_size=args.batch_size, n_iterations=args.iterations).to_dict()
    load = os.getloadavg()
    runs = {1: [], 2: []}
    for repeat in range(max(int(args.repeats), 1)):
        for nproc in (1, 2):
            with tempfile.TemporaryDirectory() as root:
                runs[nproc].append(iterations_per_second(args.data, config, nproc, args.warmup, root))
    one, two = max(runs[1]), max(runs[2])
    speedup = two / one
    with tempfile.TemporaryDirectory() as root:
        per_hour = {n: replicas_per_hour(n, root, args.replicas, args.ensemble_ns) for n in (1, 2)}
    result = {
        "dataset": os.path.relpath(args.data), "config": config, "backend": "gloo", "threads_per_rank": 1,
        "iterations": args.iterations, "warmup": args.warmup, "global_batch": args.batch_size,
        "iterations_per_second": {"1": one, "2": two},
        "iterations_per_second_all_runs": {"1": runs[1], "2": runs[2]},
        "windows_per_second": {"1": one * args.batch_size, "2": two * args.batch_size},
        "speedup": speedup, "scaling_efficiency": speedup / 2.0,
        "ensemble": {"replicas": args.replicas, "ns_per_replica": args.ensemble_ns,
                     "replicas_per_hour": {"1": per_hour[1], "2": per_hour[2]},
                     "speedup": per_hour[2] / per_hour[1], "scaling_efficiency": per_hour[2] / per_hour[1] / 2.0},
        "cpu_count": os.cpu_count(), "load_average_before": list(load), "load_average_after": list(os.getloadavg()),
        "machine": machine(1, "cpu"),
    }
    print(f"1 rank: {one:.2f} it/s; 2 ranks: {two:.2f} it/s; speed-up {speedup:.2f}x, "
          f"efficiency {speedup / 2:.0%} (load average {load[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"Dask ensemble: {per_hour[1]:.0f} replicas/hour with 1 worker, {per_hour[2]:.0f} with 2 "
          f"(efficiency {per_hour[2] / per_hour[1] / 2:.0%})")
    print(f"wrote {write_json(result, args.out)}")


if __name__ == "__main__":
    main()
