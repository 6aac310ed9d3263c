"""Train the learned CG model on the class-I short trajectories, then roll out every class-II chain (issue #11).

    python -m benchmarks.polymer.learn                       # train (or reuse) the model, then both rollouts
    python -m benchmarks.polymer.learn --variants refined    # only the rollout with score refinement
    python -m benchmarks.polymer.learn --retrain             # train again even if <data>/model holds a model

The model (dynamics + score GNN, ``benchmarks/polymer/train.yaml``) is trained by :func:`openmm_cgml.training.train`
on every ``class_I/chain_*.h5`` into ``<data>/model`` (resumable from its checkpoint). Each class-II chain then
starts from its ground-truth CG frame at the end of the benchmark's equilibration cut (``--discard-steps``, as
``python -m benchmarks.polymer`` discards from the ground truth) with zero velocity history, and is advanced for
the rest of the ground-truth length: all chains together in one :class:`~openmm_cgml.simulate.ReplicaEngine`
(one batched graph, no edges between chains), one frame per model step, checkpointed, so an interrupted rollout
resumes exactly. Two variants: ``refined`` (the model's score refinement after every step) and ``plain``
(dynamics only: the published baseline (b)). Rollouts go to ``<data>/rollouts/<variant>/replica_K.h5`` (chain K)
with ``rollout.json``; they are not committed (``python -m benchmarks.polymer`` reads them if present).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import numpy as np

from .make_datasets import DEFAULT_CONFIG, REPO, _timestep_ps, _write_json, dataset_chains, load_config

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_CONFIG = os.path.join(HERE, "train.yaml")
VARIANTS = {"refined": None, "plain": False}  # LearnedStep.from_model(refine=...)
DISCARD_STEPS = 250_000
ROLLOUT_INFO = "rollout.json"
MAX_DISPLACEMENT_NM = 6.0


def model_dir_for(data_root: str, frames_per_step: int | None = None) -> str:
    """``<data_root>/model`` (the config's time step), or ``<data_root>/model_fpsK`` for K frames per step."""
    return os.path.join(data_root, "model" if frames_per_step is None else f"model_fps{int(frames_per_step)}")


def train_model(data_root: str, train: str = "class_I", train_config: str = TRAIN_CONFIG, retrain: bool = False,
                device: str = "cpu", progress: bool = True, frames_per_step: int | None = None):
    """The learned model of :func:`model_dir_for`: trained on ``train``'s chains unless it is already there;
    ``frames_per_step`` overrides the config's (a longer or shorter model step, same architecture)."""
    from openmm_cgml.training import load_model
    from openmm_cgml.training import train as train_cg
    from openmm_cgml.yamlio import read_yaml_mapping

    model_dir = model_dir_for(data_root, frames_per_step)
    if not retrain and os.path.exists(os.path.join(model_dir, "cgml_model.json")):
        return load_model(model_dir), model_dir
    config = train_config if frames_per_step is None else dict(read_yaml_mapping(train_config),
                                                               frames_per_step=int(frames_per_step))
    train_cg(dataset_chains(data_root, train), model_dir, config, device, resume=not retrain, progress=progress)
    return load_model(model_dir), model_dir


def start_frames(config: dict, data_root: str, truth: str, discard_steps: int):
    """Each ground-truth chain's BeadMap and its CG frame (nm) at ``discard_steps``."""
    from openmm_cgml.data import CGDataset

    interval = config["datasets"][truth]["frame_interval"]
    if discard_steps % interval:
        raise ValueError(f"discard_steps must be a multiple of {truth}'s frame_interval ({interval})")
    maps, frames = [], []
    for path in dataset_chains(data_root, truth):
        with CGDataset(path) as ds:
            k = discard_steps // interval
            if k >= ds.n_frames:
                raise ValueError(f"{path} has only {ds.n_frames} frames; cannot start at step {discard_steps}")
            maps.append(ds.beadmap)
            frames.append(np.asarray(ds.positions[k], dtype=np.float32))
    return maps, frames


def rollout_engine(model, beadmaps, positions, refine, seed: int = 0, device: str = "cpu"):
    """One :class:`ReplicaEngine` advancing every chain with ``model`` (``refine`` as in ``LearnedStep``);
    chain k draws from seed ``seed + k``. Class-II bead types the model never saw are embedded from their
    fine-bead graphs (the transfer the benchmark tests)."""
    from openmm_cgml.simulate import LearnedStep, ReplicaEngine

    steps = [LearnedStep.from_model(model, bm, refine=refine, allow_unseen_types=True) for bm in beadmaps]
    # A 5-tau step moves a bead ~0.35 nm (RMS); 9,500 steps x 280 beads draw Gaussian tails past the engine's
    # default 2 nm bound, so only a jump larger than a whole chain (Rg ~2-3 nm) counts as a blow-up.
    return ReplicaEngine(steps, positions, seeds=[seed + k for k in range(len(steps))], device=device,
                         max_displacement=MAX_DISPLACEMENT_NM)


def rollout_steps(config: dict, model, truth: str, discard_steps: int) -> int:
    """Model steps that cover the ground truth after ``discard_steps``."""
    fine_steps = config["datasets"][truth]["steps"] - discard_steps
    per_step = model.timestep_ps / _timestep_ps(config["physics"])[0]
    if abs(per_step - round(per_step)) > 1e-6:
        raise ValueError(f"the model step ({model.timestep_ps} ps) is not a whole number of fine steps")
    return int(fine_steps // round(per_step))


_OF_VARIANT = object()


def run_rollout(config: dict, data_root: str, model, model_dir: str, variant: str, truth: str = "class_II",
                discard_steps: int = DISCARD_STEPS, n_steps: int | None = None, seed: int = 0,
                device: str = "cpu", progress: bool = True, refine=_OF_VARIANT) -> dict:
    """Roll out (or resume) every ``truth`` chain with one variant into ``<data_root>/rollouts/<variant>``;
    returns and writes ``rollout.json``. ``refine`` (as in ``LearnedStep.from_model``) names any other
    refinement setting, e.g. for ``benchmarks.pareto``; by default it is the variant's own."""
    from openmm_cgml.simulate import SimulationBlowUp
    from openmm_cgml.simulate.step import refine_settings

    named = refine is _OF_VARIANT
    if named and variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    out = os.path.join(data_root, "rollouts", variant)
    maps, frames = start_frames(config, data_root, truth, discard_steps)
    engine = rollout_engine(model, maps, frames, VARIANTS[variant] if named else refine, seed, device)
    n_steps = rollout_steps(config, model, truth, discard_steps) if n_steps is None else int(n_steps)
    # the weights' hash, not the path: a retrained model must not continue another model's rollout
    with open(os.path.join(model_dir, "weights.safetensors"), "rb") as handle:
        model_id = hashlib.sha256(handle.read()).hexdigest()
    run_info = json.dumps({"variant": variant, "truth": truth, "discard_steps": discard_steps, "seed": seed,
                           "n_steps": n_steps, "model": model_id,
                           **({} if named else {"refine": refine_settings(model.config, refine)})},
                          sort_keys=True)
    info_path = os.path.join(out, ROLLOUT_INFO)
    resume = os.path.exists(os.path.join(out, "checkpoint.npz"))
    previous = {}
    if os.path.exists(info_path):
        with open(info_path) as handle:
            previous = json.load(handle)
        if previous.get("complete") and previous.get("run_info") == run_info:
            return previous
    remaining = n_steps
    if resume:
        with np.load(os.path.join(out, "checkpoint.npz"), allow_pickle=False) as saved:
            remaining = n_steps - int(saved["step_index"])
    record = {"variant": variant, "truth": truth, "n_chains": len(maps), "n_steps": n_steps,
              "model_timestep_ps": model.timestep_ps, "start_step": discard_steps, "seed": seed,
              "run_info": run_info, "n_refine_evaluations_per_step": engine.n_refine,
              "wall_s": float(previous.get("wall_s", 0.0)), "blow_up": None}
    started = time.perf_counter()
    try:
        engine.run(remaining, out, beadmap=maps, report_every=1, progress=progress,
                   provenance={"source": "benchmarks.polymer.learn", "variant": variant},
                   checkpoint_every=250, resume=resume, run_info=run_info)
    except SimulationBlowUp as err:  # the files end at the last good frame; the benchmark scores what exists
        record["blow_up"] = {"step": int(engine.step_index), "message": str(err).splitlines()[0]}
    record["wall_s"] += time.perf_counter() - started
    record["complete"] = True
    record["steps_done"] = int(engine.step_index)
    os.makedirs(out, exist_ok=True)
    _write_json(info_path, record)
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="dataset config (default: %(default)s)")
    parser.add_argument("--train-config", default=TRAIN_CONFIG, help="training config (default: %(default)s)")
    parser.add_argument("--data", default=None, help="dataset root (default: the config's 'output')")
    parser.add_argument("--train", default="class_I", help="training dataset (default: %(default)s)")
    parser.add_argument("--truth", default="class_II", help="held-out dataset (default: %(default)s)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--discard-steps", type=int, default=DISCARD_STEPS,
                        help="ground-truth step the rollouts start from (default: %(default)s)")
    parser.add_argument("--n-steps", type=int, default=None, help="model steps (default: the ground-truth length)")
    parser.add_argument("--retrain", action="store_true", help="train again even if the model exists")
    parser.add_argument("--frames-per-step", type=int, default=None,
                        help="model step in dataset frames (default: the training config's); model_fpsK/")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    data_root = args.data or os.path.join(REPO, config.get("output", "benchmarks/data/polymer"))
    model, model_dir = train_model(data_root, train=args.train, train_config=args.train_config,
                                   retrain=args.retrain, device=args.device, frames_per_step=args.frames_per_step)
    print(f"model: {model_dir} ({model.timestep_ps:g} ps per step)")
    for variant in args.variants:
        # another time step's rollouts go to rollouts/fpsK/<variant>, beside the default model's
        out = variant if args.frames_per_step is None else f"fps{args.frames_per_step}/{variant}"
        extra = {} if args.frames_per_step is None else {"refine": VARIANTS[variant]}
        record = run_rollout(config, data_root, model, model_dir, out, truth=args.truth,
                             discard_steps=args.discard_steps, n_steps=args.n_steps, device=args.device, **extra)
        note = f", blew up at step {record['blow_up']['step']}" if record["blow_up"] else ""
        print(f"{variant}: {record['n_chains']} chains x {record['steps_done']} steps in {record['wall_s']:.0f} s"
              f"{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
