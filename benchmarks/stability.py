"""Stability of a learned CG model on boxes it was not trained on.

    python -m benchmarks.stability [--model MODEL_DIR] [--boxes 8] [--ns 10] [--refine model,stepcap=0]

Builds ``--boxes`` small PEO/LiTFSI boxes (4 × EO8 + 2 LiTFSI, seeds 0, 1, ...) with only 2 ps of equilibration,
so they are still far below melt density (about 0.1 g/cm³; the demo test's box), maps them, and runs the model from
rest in the batched engine for ``--ns`` of CG time each (random stream = box seed). A run *blows up* at the first
step where a bead moves more than ``--bound`` nm (default: the integrator's own bound for the model,
``simulate.integrator.displacement_bound``) or becomes non-finite.
Reported per box and in total (benchmarks/results/stability.json): blow-ups and the step they happened at, the
largest one-step bead move, the mean CG bond length (all-atom mapping: 0.32 nm) and collisions per bead per frame.
"""

import numpy as np
from openmm import unit

from openmm_cgml.analysis import bond_lengths, collision_thresholds, count_collisions
from openmm_cgml.mapping import BeadMap
from openmm_cgml.simulate import LearnedStep, ReplicaEngine, SimulationBlowUp, parse_refine
from openmm_cgml.simulate.integrator import displacement_bound
from openmm_cgml.simulate.step import refine_settings
from openmm_cgml.systems import build_peo_litfsi
from openmm_cgml.training.loop import provenance_path
from openmm_cgml.training.model import DEFAULT_MODEL, load_model

from .common import Stopwatch, benchmark_parser, machine, set_threads, write_json

BOX = dict(n_chains=4, eo_per_chain=8, n_salt=2, equilibration_ps=2.0)


def run_box(model, model_path: str, seed: int, n_steps: int, bound_nm: float, refine=None) -> dict:
    built = build_peo_litfsi(seed=seed, progress=False, platform="CPU", **BOX)
    beadmap = BeadMap.from_openmm(built.topology, built.system, **model.mapping)
    box = np.diag(built.box_vectors.value_in_unit(unit.nanometer)).astype(np.float32)
    # The engine's step, random stream (seed, step index) and blow-up check are those of `cgml simulate`.
    engine = ReplicaEngine(LearnedStep.from_model(model, beadmap, refine),
                           beadmap.map_positions(built.positions, built.box_vectors), seeds=[seed], box=box,
                           max_displacement=bound_nm)
    frames, largest, blew_up_at = [engine.positions[0]], 0.0, None
    for k in range(n_steps):
        try:
            engine.advance()
        except SimulationBlowUp:  # the engine keeps the last good state
            blew_up_at = k
            break
        frames.append(engine.positions[0])
        largest = max(largest, float(np.linalg.norm(frames[-1] - frames[-2], axis=1).max()))
    frames = np.asarray(frames, dtype=np.float64)
    thresholds = collision_thresholds(model_path, beadmap)
    collisions = (float(count_collisions(frames, box, beadmap, thresholds).mean() / beadmap.n_beads)
                  if thresholds is not None else None)
    return {"seed": seed, "n_beads": beadmap.n_beads, "box_nm": float(box[0]),
            "density_g_cm3": built.density().value_in_unit(unit.gram / unit.centimeter**3),
            "blew_up_at_step": blew_up_at, "largest_move_nm": largest, "collisions_per_bead_per_frame": collisions,
            "mean_cg_bond_nm": float(bond_lengths(frames, beadmap.bonds, box).mean())}


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__, "stability", threads=None)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--boxes", type=int, default=8)
    parser.add_argument("--ns", type=float, default=10.0, help="CG time per box")
    parser.add_argument("--bound", type=float, default=None,
                        help="largest allowed one-step bead move, nm (default: the integrator's bound for the model)")
    parser.add_argument("--refine", default="model",
                        help="refinement and repairs as in benchmarks/accuracy.py (e.g. model,stepcap=0: no step cap)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    refine = parse_refine(args.refine)

    model = load_model(args.model)
    if args.bound is None:  # the bound `cgml simulate` and the OpenMM integrator use for this model
        args.bound = displacement_bound(model)
    n_steps = int(np.ceil(args.ns * 1000.0 / model.timestep_ps))
    boxes = []
    with Stopwatch() as clock:
        for seed in range(args.boxes):
            boxes.append(run_box(model, args.model, seed, n_steps, args.bound, refine))
            row = boxes[-1]
            fate = "stable" if row["blew_up_at_step"] is None else f"blew up at step {row['blew_up_at_step']}"
            print(f"box {seed}: {fate}, largest move {row['largest_move_nm']:.2f} nm, "
                  f"mean CG bond {row['mean_cg_bond_nm']:.3f} nm", flush=True)
    result = {
        "machine": machine(),
        "model": provenance_path(args.model), "box": BOX, "cg_ns_per_box": n_steps * model.timestep_ps / 1000.0,
        "refine": refine_settings(model.config, refine), "bound_nm": args.bound, "boxes": boxes, "seconds": clock.seconds,
        "blow_ups": sum(b["blew_up_at_step"] is not None for b in boxes),
        "largest_move_nm": max(b["largest_move_nm"] for b in boxes),
        "mean_cg_bond_nm": float(np.mean([b["mean_cg_bond_nm"] for b in boxes])),
    }
    write_json(result, args.out)
    print(f"{result['blow_ups']} of {len(boxes)} boxes blew up; largest move {result['largest_move_nm']:.2f} nm")


if __name__ == "__main__":
    main()
