"""Learned CG vs all-atom OpenMM on the same box, measured side by side in one run.

    python -m benchmarks.speedup                       # build the model's training box (6 x EO8 + 3 LiTFSI)
    python -m benchmarks.speedup --system BOX_DIR --model MODEL_DIR --replicas 16

Figures (written to benchmarks/results/speedup.json):
- simulated ns per wall-clock day of all-atom OpenMM (CPU platform, PME, 2 fs) on the box;
- the same for the learned CG model inside ``openmm.app.Simulation`` (CGMLIntegrator) and in the batched engine
  with 1 and R replicas; their ratios to all-atom are the headline speed-ups;
- the OpenMM-bridge overhead: time per step in the integrator / time per step in the engine (1 replica).
"""
import json
import os

import numpy as np
import openmm
from openmm import app, unit

from openmm_cgml.mapping import BeadMap
from openmm_cgml.simulate import LearnedStep, ReplicaEngine, coarse_grain_simulation
from openmm_cgml.systems import BuiltSystem, build_peo_litfsi
from openmm_cgml.training.loop import provenance_path
from openmm_cgml.training.model import DEFAULT_MODEL, load_model

from .allatom_throughput import throughput
from .common import Stopwatch, benchmark_parser, machine, set_threads, write_json


def time_integrator(built, model, steps: int, threads: int) -> float:
    """Seconds per learned step inside an OpenMM Simulation (CPU platform)."""
    cg = coarse_grain_simulation(built.topology, built.system, built.positions, model,
                                 box_vectors=built.box_vectors, seed=0)
    sim = app.Simulation(cg.topology, cg.system, cg.integrator, openmm.Platform.getPlatformByName("CPU"),
                         {"Threads": str(threads)})
    sim.context.setPositions(cg.positions)
    sim.step(2)  # warm-up
    with Stopwatch() as clock:
        sim.step(steps)
    return clock.seconds / steps


def time_engine(step, start, box, replicas: int, steps: int) -> float:
    """Seconds per batched step of ``replicas`` replicas."""
    engine = ReplicaEngine(step, np.broadcast_to(start, (replicas,) + start.shape), box=box)
    engine.run(2, progress=False)
    stats = engine.run(steps, progress=False)
    return stats["seconds"] / steps


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__, "speedup", threads=os.cpu_count())
    parser.add_argument("--system", help="BuiltSystem directory (default: build 6 x EO8 + 3 LiTFSI, the box the "
                        "shipped model was trained on)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--aa-steps", type=int, default=2000)
    parser.add_argument("--cg-steps", type=int, default=40)
    parser.add_argument("--replicas", type=int, default=16)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    built = BuiltSystem.load(args.system) if args.system else build_peo_litfsi(
        n_chains=6, eo_per_chain=8, n_salt=3, platform="CPU", progress=False)
    model = load_model(args.model)
    aa = throughput(built, 200, args.aa_steps, args.threads)

    beadmap = BeadMap.from_openmm(built.topology, built.system, **model.mapping)
    step = LearnedStep.from_model(model, beadmap)
    box = np.diag(built.box_vectors.value_in_unit(unit.nanometer))
    start = beadmap.map_positions(built.positions, built.box_vectors).astype(np.float32)
    dt_ns = model.timestep_ps / 1000.0
    per_step_integrator = time_integrator(built, model, args.cg_steps, args.threads)
    per_step_engine = time_engine(step, start, box, 1, args.cg_steps)
    per_step_batch = time_engine(step, start, box, args.replicas, max(4, args.cg_steps // 4))
    day = 86400.0
    result = {
        "machine": machine(args.threads),
        "system": built.metadata.get("args"), "n_atoms": built.n_atoms, "n_beads": beadmap.n_beads,
        "model": provenance_path(args.model), "model_timestep_ps": model.timestep_ps,
        "allatom_ns_per_day": aa["ns_per_day"],
        "cg_integrator_ns_per_day": dt_ns / per_step_integrator * day,
        "cg_engine_ns_per_day": dt_ns / per_step_engine * day,
        "cg_engine_replicas": args.replicas,
        "cg_engine_batched_ns_per_day_total": args.replicas * dt_ns / per_step_batch * day,
        "seconds_per_step_integrator": per_step_integrator,
        "seconds_per_step_engine": per_step_engine,
        "seconds_per_step_engine_batched": per_step_batch,
    }
    result["speedup_integrator"] = result["cg_integrator_ns_per_day"] / aa["ns_per_day"]
    result["speedup_engine"] = result["cg_engine_ns_per_day"] / aa["ns_per_day"]
    result["speedup_engine_batched_total"] = result["cg_engine_batched_ns_per_day_total"] / aa["ns_per_day"]
    result["bridge_overhead"] = per_step_integrator / per_step_engine
    write_json(result, args.out)
    print(json.dumps(result, indent=2))
    print(f"learned CG / all-atom: {result['speedup_integrator']:.0f}x in an OpenMM Simulation, "
          f"{result['speedup_engine_batched_total']:.0f}x summed over {args.replicas} batched replicas")


if __name__ == "__main__":
    main()
