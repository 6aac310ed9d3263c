"""Fault injection: SIGKILL the long-running verbs at random points, rerun the same command, compare.

    python -m benchmarks.faults                 # 8 kills per verb (reference, train, simulate)
    python -m benchmarks.faults --kills 20 --seed 3

For each verb an uninterrupted run is made first. Then the same command is started as a real process and
killed with SIGKILL (no chance to clean up) at a random moment after it has started work, ``--kills`` times in
a row, each time rerun with the *same* command, and finally run to the end. The result must equal the
uninterrupted run bit for bit (CG frames, or trained weights), with no frame lost or duplicated; every kill
must leave a directory the next run accepts. Reports kills survived and mismatches (goal: 0 of each) and writes
``benchmarks/results/faults.json``. ``tests/test_faults.py`` is the short version (two kills per verb).

Bit-equality needs a deterministic engine: the reference MD runs on OpenMM's CPU platform with one thread (see
``openmm_cgml.reference.runner``), training and the learned simulation with one torch thread.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in os.environ.items() if k != "OPENMM_CPU_THREADS"}
ENV.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT)  # the CPU platform threads come from --threads


@dataclass
class Scenario:
    """One verb under test: its command line, when it has started work, and how to read its result."""

    name: str
    argv: List[str]  # arguments of `cgml` (run in-process for the reference run, as a process when killed)
    result: Callable[[str], dict]  # output directory -> {name: array} to compare bit for bit
    out_dir: str
    progress_file: str  # rewritten at each checkpoint: kills land after a random number of its updates
    kills: List[dict] = field(default_factory=list)


def cli(argv: List[str]) -> int:
    """``cgml ARGV`` in this process (fast: no interpreter start-up), under the killed processes' CPU-thread
    setting: OPENMM_CPU_THREADS changes the CPU platform's PME bits, so it must be the same in every run compared."""
    from openmm_cgml.cli import main

    saved = os.environ.pop("OPENMM_CPU_THREADS", None)
    try:
        return main(argv)
    finally:
        if saved is not None:
            os.environ["OPENMM_CPU_THREADS"] = saved


def start(argv: List[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "openmm_cgml.cli", *argv], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _mtime(path: str):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def kill_once(scenario: Scenario, after_checkpoints: int, delay_s: float, timeout_s: float = 600.0) -> dict:
    """Start the scenario's command and SIGKILL it ``delay_s`` after its ``after_checkpoints``-th checkpoint
    (counted from its start: kills land mid-run however slow the machine is); returns what happened."""
    proc = start(scenario.argv)
    t0 = time.monotonic()
    seen, last = 0, _mtime(scenario.progress_file)
    while proc.poll() is None and seen < after_checkpoints and time.monotonic() - t0 < timeout_s:
        time.sleep(0.005)
        now = _mtime(scenario.progress_file)
        if now is not None and now != last:
            seen, last = seen + 1, now
    time.sleep(delay_s)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    err = proc.stderr.read()
    record = {"after_checkpoints": after_checkpoints, "delay_s": round(delay_s, 3), "killed": killed,
              "rc": proc.returncode}
    if not killed and proc.returncode != 0:
        record["error"] = err.strip().splitlines()[-1] if err.strip() else "?"
    return record


def run_scenario(scenario: Scenario, n_kills: int, rng: random.Random, finish_in_process: bool = True,
                 max_checkpoints: int = 2, max_delay_s: float = 0.3) -> dict:
    """Uninterrupted run, ``n_kills`` killed reruns of the same command, a final rerun; compare the results."""
    reference_dir = scenario.out_dir + "-uninterrupted"
    argv_ref = _with_output(scenario.argv, reference_dir)
    t0 = time.monotonic()
    assert cli(argv_ref) == 0, f"uninterrupted `cgml {' '.join(argv_ref)}` failed"
    work_s = time.monotonic() - t0
    expected = scenario.result(reference_dir)
    for _ in range(n_kills):
        scenario.kills.append(kill_once(scenario, rng.randint(1, max_checkpoints), rng.uniform(0.0, max_delay_s)))
    rc = cli(scenario.argv) if finish_in_process else start(scenario.argv).wait()
    got = scenario.result(scenario.out_dir) if rc == 0 else {}
    mismatches = sorted(k for k in expected if k not in got or not _equal(expected[k], got[k]))
    return {"verb": scenario.name, "argv": scenario.argv, "uninterrupted_s": round(work_s, 2),
            "kills": scenario.kills, "kills_landed": sum(k["killed"] for k in scenario.kills),
            "kills_survived": sum(k["killed"] for k in scenario.kills) if rc == 0 else 0,
            "final_rc": rc, "mismatches": mismatches}


def _equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


def _with_output(argv: List[str], out: str) -> List[str]:
    argv = list(argv)
    argv[argv.index("-o") + 1] = out
    return argv


# ---------------------------------------------------------------------------------------------- readers
def dataset_arrays(path: str) -> dict:
    from openmm_cgml.data import CGDataset

    with CGDataset(path) as ds:
        out = {"positions": ds.positions[:], "time": ds.time.copy()}
        if ds.box is not None:
            out["box"] = ds.box.copy()
    return out


def reference_result(run_dir: str) -> dict:
    return dataset_arrays(os.path.join(run_dir, "cg.h5"))


def train_result(model_dir: str) -> dict:
    from safetensors.numpy import load_file

    out = {f"weights/{k}": v for k, v in load_file(os.path.join(model_dir, "weights.safetensors")).items()}
    with open(os.path.join(model_dir, "contacts.json")) as handle:
        out["contacts"] = np.frombuffer(json.dumps(json.load(handle), sort_keys=True).encode(), np.uint8)
    return out


def simulate_result(out_dir: str) -> dict:
    out = {}
    for name in sorted(os.listdir(out_dir)):
        if name.startswith("replica_") and name.endswith(".h5"):
            out.update({f"{name}/{k}": v for k, v in dataset_arrays(os.path.join(out_dir, name)).items()})
    return out


# ---------------------------------------------------------------------------------------------- scenarios
#: Tiny training settings (seconds per run on one core).
TRAIN_CONFIG = dict(embed_dim=4, embed_hidden=8, embed_layers=1, hidden=8, n_layers=1, n_rbf=4, cutoff=0.5,
                    history_length=2, score_hidden=8, score_layers=1, n_sigmas=4, sigma_max=0.1, sigma_min=0.01,
                    refine_levels=2, frames_per_step=2, batch_size=3, n_iterations=40, checkpoint_every=4,
                    input_noise=0.003, validation_fraction=0.2, split="time", seed=3)


def reference_scenario(system_dir: str, work: str, ns: float = 0.008) -> Scenario:
    out = os.path.join(work, "reference")
    argv = ["reference", system_dir, "-o", out, "--ns", str(ns), "--every-ps", "0.2", "--platform", "CPU",
            "--threads", "1", "--checkpoint-every", "4", "--quiet"]
    return Scenario("reference", argv, reference_result, out, os.path.join(out, "checkpoint.json"))


def train_scenario(dataset: str, work: str, n_iterations: int = 40) -> Scenario:
    import yaml

    out = os.path.join(work, "train")
    config = os.path.join(work, "train.yaml")
    with open(config, "w") as handle:
        yaml.safe_dump(dict(TRAIN_CONFIG, n_iterations=n_iterations), handle)
    argv = ["train", dataset, "-o", out, "--config", config]
    return Scenario("train", argv, train_result, out, os.path.join(out, "checkpoint.pt"))


def simulate_scenario(model: str, system_dir: str, work: str, ns: float) -> Scenario:
    out = os.path.join(work, "simulate")
    argv = ["simulate", model, "--system", system_dir, "--ns", str(ns), "--replicas", "2", "--seed", "4",
            "--checkpoint-every", "3", "-o", out, "--quiet"]
    return Scenario("simulate", argv, simulate_result, out, os.path.join(out, "checkpoint.npz"))


def main(argv: Optional[List[str]] = None) -> dict:
    from openmm import unit

    from openmm_cgml.systems import BuiltSystem, build_peo_litfsi
    from openmm_cgml.training import model_path

    from .common import benchmark_parser, machine, set_threads, write_json

    parser = benchmark_parser(__doc__, "faults", threads=1)
    parser.add_argument("--kills", type=int, default=8, help="kills per verb")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--work", default=None, help="scratch directory (default: a new temporary one)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    import tempfile

    work = args.work or tempfile.mkdtemp(prefix="cgml-faults-")
    rng = random.Random(args.seed)
    built = build_peo_litfsi(n_chains=2, eo_per_chain=3, n_salt=1, temperature=400 * unit.kelvin, seed=1,
                             equilibration_ps=2.0, platform="Reference", progress=False)
    system_dir = built.save(os.path.join(work, "system"), overwrite=True)
    results = []
    ref = reference_scenario(system_dir, work, ns=0.02)
    results.append(run_scenario(ref, args.kills, rng, finish_in_process=False, max_checkpoints=6, max_delay_s=1.0))
    dataset = os.path.join(ref.out_dir + "-uninterrupted", "cg.h5")
    results.append(run_scenario(train_scenario(dataset, work, n_iterations=240), args.kills, rng,
                                finish_in_process=False, max_checkpoints=6, max_delay_s=0.5))
    roomy = BuiltSystem(built.topology, built.system, built.positions, built.box_vectors * (1.7 / 1.461),
                        built.temperature, dict(built.metadata))  # the shipped model needs a box >= 1.6 nm
    roomy_dir = roomy.save(os.path.join(work, "roomy"), overwrite=True)
    results.append(run_scenario(simulate_scenario(model_path(None), roomy_dir, work, ns=5.0), args.kills, rng,
                                finish_in_process=False, max_checkpoints=4, max_delay_s=0.5))
    for r in results:
        print(f"{r['verb']:10s} kills landed {r['kills_landed']:3d}, survived {r['kills_survived']:3d}, "
              f"mismatches {len(r['mismatches'])} {r['mismatches'][:3]}")
    summary = {"kills_landed": sum(r["kills_landed"] for r in results),
               "kills_survived": sum(r["kills_survived"] for r in results),
               "mismatches": sum(len(r["mismatches"]) for r in results)}
    out = args.out
    write_json({"benchmark": "faults", "summary": summary, "verbs": results, "seed": args.seed,
                "machine": machine()}, out)
    print(f"wrote {out}")
    return summary


if __name__ == "__main__":
    main()
