"""End-to-end workflows behind the ``cgml`` verbs ``simulate`` and ``demo``: map, run the learned model, analyse.

This is the last stage of the pipeline (like the CLI): it may import every other stage.
"""
import json
import math
import os
import time
from typing import Optional, Tuple

import numpy as np
import openmm
from openmm import app, unit

from .training import DEFAULT_MODEL  # noqa: F401  (re-exported: run_demo's default, the package's public API)


def _empty_output_dir(out_dir: str):
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"{out_dir} is not empty; remove it or choose another output directory")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir} is a file; choose an output directory")


#: Fewest learned steps of a demo: its MSD fit needs three lags in [0.2, 1] x half the run.
MIN_DEMO_STEPS = 5


def _check_ns(ns) -> float:
    try:
        value = float(ns)
    except (TypeError, ValueError):
        raise ValueError(f"ns must be a number of nanoseconds, got {ns!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"ns must be a positive, finite number of nanoseconds, got {ns!r}")
    return value


def _check_device(device: str):
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown torch device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch build has no usable CUDA device; use --device cpu")


def _write_json(path: str, data: dict):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)


#: Steps between the checkpoints of `cgml simulate` (each replica's positions, velocity history, step index, seed).
SIMULATE_CHECKPOINT_STEPS = 50


def _check_run_arguments(ns, replicas, report_every_ps, checkpoint_every, device) -> float:
    """Validate the arguments of a learned run before any work (one-line errors); returns ns as a float."""
    ns = _check_ns(ns)
    if int(replicas) != replicas or replicas < 1:
        raise ValueError(f"replicas must be a whole number >= 1, got {replicas!r}")
    if report_every_ps is not None and not (math.isfinite(report_every_ps) and report_every_ps > 0):
        raise ValueError(f"report_every_ps must be a positive number of ps, got {report_every_ps!r}")
    if int(checkpoint_every) < 0:
        raise ValueError(f"checkpoint_every must be >= 0 steps, got {checkpoint_every!r}")
    _check_device(device)
    return ns


def simulate_main(model_path: str, system_dir: str, ns: float, out_dir: str, replicas: int = 1, seed: int = 0,
                  device: str = "cpu", report_every_ps: Optional[float] = None, dig_path: Optional[str] = None,
                  progress: bool = True, checkpoint_every: int = SIMULATE_CHECKPOINT_STEPS,
                  stop_after: Optional[int] = None, replica_range: Optional[Tuple[int, int]] = None,
                  refine=None, allow_unseen_types: bool = False) -> dict:
    """``cgml simulate``: run R replicas of a built all-atom system with a learned CG model (batched engine).

    Writes ``out_dir/replica_r.h5`` (CG datasets, readable by ``cgml analyze``; frames flushed as written),
    ``out_dir/checkpoint.npz`` (every ``checkpoint_every`` steps) and ``out_dir/simulate.json`` (throughput in
    simulated ns/day and replica-steps/s, collision counts, ``complete``). With ``dig_path`` each replica starts
    from an independent DiG sample instead of the mapped all-atom structure.

    The same call on an ``out_dir`` that holds an unfinished run resumes it from its checkpoint (frames written
    after the checkpoint are dropped); the result equals an uninterrupted run bit for bit. A larger ``ns``
    extends a finished run; other changed settings are refused in one line. Ctrl-C (or ``stop_after`` steps)
    stops at a step boundary, saves a checkpoint, writes ``simulate.json`` with ``complete: false`` and raises
    :class:`~openmm_cgml.simulate.RunInterrupted`.

    ``replica_range=(first, stop)`` runs only replicas ``first .. stop-1`` of the ``replicas``-replica ensemble
    (seeds ``seed + first ..``, DiG starts drawn for all ``replicas`` and sliced), written as ``replica_0.h5 ..``
    in ``out_dir``: one task of :func:`simulate_ensemble`, whose replica r follows replica r of this same call
    without ``replica_range``. ``refine`` overrides the model's score refinement (``LearnedStep.from_model``;
    ``simulate.parse_refine`` reads the CLI's spec). ``allow_unseen_types`` lets the model (and DiG) embed bead
    types they were not trained on from their atom graphs instead of refusing the system.
    """
    from .analysis import collision_thresholds, count_collisions
    from .mapping import BeadMap
    from .simulate import LearnedStep, ReplicaEngine, RunInterrupted
    from .simulate.engine import CHECKPOINT
    from .systems import BuiltSystem
    from .training.model import load_model

    ns = _check_run_arguments(ns, replicas, report_every_ps, checkpoint_every, device)
    first, stop = _check_replica_range(replica_range, int(replicas))
    resume = os.path.exists(os.path.join(out_dir, CHECKPOINT))
    if not resume:
        _empty_output_dir(out_dir)
    model = load_model(model_path, device=device)
    built = BuiltSystem.load(system_dir)
    beadmap = BeadMap.from_openmm(built.topology, built.system, **model.mapping)
    step = LearnedStep.from_model(model, beadmap, refine=refine, allow_unseen_types=allow_unseen_types)
    box_vectors = built.box_vectors
    box = np.diag(box_vectors.value_in_unit(unit.nanometer)) if box_vectors is not None else None
    start = beadmap.map_positions(built.positions, box_vectors)
    timestep_ps = float(step.timestep_ps)
    every = 1 if report_every_ps is None else max(1, int(round(report_every_ps / timestep_ps)))
    # What must match for a resume (ns may grow: it extends the run).
    run_info = json.dumps({"model": os.path.abspath(model_path), "system": os.path.abspath(system_dir),
                           "replicas": int(replicas), "seed": int(seed), "report_every_steps": every,
                           "dig": os.path.abspath(dig_path) if dig_path else None,
                           # only an ensemble task records its slice (older checkpoints stay resumable)
                           **({"replica_range": [first, stop]} if replica_range is not None else {}),
                           **({"refine": refine} if refine is not None else {})},
                          sort_keys=True)
    if dig_path is not None and not resume:  # a resumed run's start comes from its checkpoint
        from .dig import initial_states

        # All R draws, then the slice: a task's replicas start where the whole ensemble's would.
        start = initial_states(replicas, beadmap, dig_path, box=box, seed=seed, device=device,
                               allow_unseen_types=allow_unseen_types)[first:stop]
    n_run = stop - first
    engine = ReplicaEngine(step, np.broadcast_to(start, (n_run,) + start.shape[-2:]),
                           seeds=[seed + r for r in range(first, stop)], box=box, device=device)
    n_total = int(math.ceil(ns * 1000.0 / engine.timestep_ps))
    done = 0
    if resume:
        saved_info = _checkpoint_run_info(os.path.join(out_dir, CHECKPOINT))
        if saved_info != run_info:
            raise ValueError(f"{out_dir} holds a run made with other settings ({_settings_diff(saved_info, run_info)})"
                             "; rerun its own command, or choose another output directory")
        engine.load_state(os.path.join(out_dir, CHECKPOINT))
        done = engine.step_index
        if done > n_total:
            raise ValueError(f"{out_dir} already holds {done} steps, more than the {n_total} of --ns {ns:g}")
    os.makedirs(out_dir, exist_ok=True)
    summary = {"n_beads": beadmap.n_beads, "timestep_ps": engine.timestep_ps, "cg_ns": n_total * engine.timestep_ps / 1e3,
               "refine_scheme": step.scheme, "score_evaluations_per_step": step.n_refine,
               "hard_core": step.hard_core, "bond_cap": step.bond_cap, "device": device, "steps_total": n_total, "resumed_from_step": done}
    try:
        stats = engine.run(n_total - done, out_dir=out_dir, beadmap=beadmap, report_every=every, progress=progress,
                           provenance={"model": os.path.abspath(model_path), "system": os.path.abspath(system_dir)},
                           checkpoint_every=int(checkpoint_every), resume=resume, run_info=run_info,
                           stop_after=stop_after)
    except RunInterrupted as interrupted:
        _write_json(os.path.join(out_dir, "simulate.json"),
                    dict(summary, replicas=n_run, complete=False, step_index=interrupted.step_index))
        raise
    thresholds = collision_thresholds(model_path, beadmap)
    if thresholds is not None:
        from .data import CGDataset

        counts = []
        for r in range(n_run):
            with CGDataset(os.path.join(out_dir, f"replica_{r}.h5")) as ds:
                counts.append(count_collisions(ds.positions[:], ds.box, beadmap, thresholds))
        counts = np.asarray(counts)
        stats["collisions_per_frame"] = float(counts.mean())
        stats["collisions_per_bead_per_frame"] = float(counts.mean() / beadmap.n_beads)
    stats.update(summary, complete=True, step_index=engine.step_index)
    _write_json(os.path.join(out_dir, "simulate.json"), stats)
    return stats


#: The settings of a ``cgml simulate --scheduler`` ensemble, in its output directory (a rerun must match them).
ENSEMBLE_FILE = "ensemble.json"


def simulate_ensemble(model_path: str, system_dir: str, ns: float, out_dir: str, scheduler: str, replicas: int = 1,
                      seed: int = 0, device: str = "cpu", report_every_ps: Optional[float] = None,
                      dig_path: Optional[str] = None, progress: bool = True,
                      checkpoint_every: int = SIMULATE_CHECKPOINT_STEPS, refine=None,
                      allow_unseen_types: bool = False) -> dict:
    """``cgml simulate --scheduler``: the R replicas of :func:`simulate_main` as R Dask tasks (one progress bar).

    Replica r is one task: ``simulate_main(..., replica_range=(r, r + 1))`` into ``out_dir/replica_r/`` (its
    ``replica_0.h5``, ``checkpoint.npz`` and ``simulate.json``), so it uses seed ``seed + r`` and the start of
    replica r of the single-process run; ``out_dir/replica_r.h5`` links to its trajectory once it is done, and
    ``out_dir/simulate.json`` sums up the ensemble (wall-clock ``seconds``, ``workers``, ``replicas_per_hour``).
    Workers must see the same file system (paths are passed as absolute paths).

    A task whose worker dies is rerun by Dask on another worker and resumes from that replica's last checkpoint
    (frames after it are dropped, then written again), so no frame is lost or duplicated. The same call on an
    unfinished ``out_dir`` resumes every replica; a larger ``ns`` extends a finished ensemble.

    Each replica runs alone rather than batched, so per replica it equals ``simulate_main`` without
    ``replica_range`` up to float32 round-off of the batched graph, and (without DiG starts) equals
    ``simulate_main(..., replicas=1, seed=seed + r)`` bit for bit.
    """
    from .cluster import connect, run_tasks
    from .simulate.engine import CHECKPOINT

    ns = _check_run_arguments(ns, replicas, report_every_ps, checkpoint_every, device)
    if not os.path.isdir(system_dir):
        raise FileNotFoundError(f"system directory {system_dir} does not exist (write it with `cgml build`)")
    # Workers may run in other directories: give them absolute paths (a model name from the registry stays).
    model_path = os.path.abspath(model_path) if os.path.exists(model_path) else model_path
    system_dir, out_dir = os.path.abspath(system_dir), os.path.abspath(out_dir)
    dig_path = os.path.abspath(dig_path) if dig_path else None
    settings = {"model": model_path, "system": system_dir, "replicas": int(replicas), "seed": int(seed),
                "report_every_ps": report_every_ps, "dig": dig_path, "device": device,
                **({"refine": refine} if refine is not None else {})}
    fresh = _check_ensemble_dir(out_dir, settings, os.path.join(out_dir, CHECKPOINT))
    options = dict(device=device, report_every_ps=report_every_ps, dig_path=dig_path,
                   checkpoint_every=int(checkpoint_every), refine=refine, allow_unseen_types=allow_unseen_types)
    tasks = [(model_path, system_dir, ns, os.path.join(out_dir, f"replica_{r}"), int(replicas), int(seed), r, options)
             for r in range(int(replicas))]
    with connect(scheduler) as client:  # a bad or unreachable scheduler fails here, before anything is written
        if fresh:
            os.makedirs(out_dir, exist_ok=True)
            _write_json(os.path.join(out_dir, ENSEMBLE_FILE), settings)
        workers = len(client.scheduler_info().get("workers", {}))
        start = time.perf_counter()
        results = run_tasks(client, _simulate_replica, tasks, desc="simulate", progress=progress)
        seconds = max(time.perf_counter() - start, 1e-12)
    for r in range(int(replicas)):
        _link(os.path.join(f"replica_{r}", "replica_0.h5"), os.path.join(out_dir, f"replica_{r}.h5"))
    return _ensemble_summary(results, seconds, workers, scheduler, out_dir)


def _check_ensemble_dir(out_dir: str, settings: dict, single_run_checkpoint: str) -> bool:
    """True if ``out_dir`` can start a new ensemble, False if it holds one with the same ``settings`` (resume);
    else a one-line ValueError."""
    marker = os.path.join(out_dir, ENSEMBLE_FILE)
    if os.path.exists(marker):
        try:
            with open(marker) as handle:
                saved = json.load(handle)
        except (OSError, ValueError) as err:
            raise ValueError(f"{marker} is not readable ({err}); remove {out_dir}") from None
        if saved != settings:
            diff = _settings_diff(json.dumps(saved), json.dumps(settings))
            raise ValueError(f"{out_dir} holds an ensemble made with other settings ({diff}); rerun its own command, "
                             "or choose another output directory")
        return False
    if os.path.exists(single_run_checkpoint):
        raise ValueError(f"{out_dir} holds a single-process run; resume it without --scheduler, or choose another "
                         "output directory")
    _empty_output_dir(out_dir)
    return True


def _simulate_replica(model_path: str, system_dir: str, ns: float, run_dir: str, replicas: int, seed: int, r: int,
                      options: dict) -> dict:
    """One Dask task of :func:`simulate_ensemble`: run (or resume, or confirm) replica ``r`` in ``run_dir``."""
    import shutil

    from .simulate.engine import CHECKPOINT

    if os.path.isdir(run_dir) and not os.path.exists(os.path.join(run_dir, CHECKPOINT)):
        # A worker died before the first checkpoint: nothing here is resumable, start the replica afresh.
        shutil.rmtree(run_dir)
    stats = simulate_main(model_path, system_dir, ns, run_dir, replicas=replicas, seed=seed, progress=False,
                          replica_range=(r, r + 1), **options)
    return dict(stats, replica=r, seed=seed + r)


def _link(target: str, path: str):
    """Point the symbolic link ``path`` at ``target`` (relative to its directory), replacing it atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _ensemble_summary(results, seconds: float, workers: int, scheduler: str, out_dir: str) -> dict:
    """``out_dir/simulate.json`` of an ensemble: per-replica results plus wall-clock throughput of this call."""
    first = results[0]
    steps = sum(int(s["steps"]) for s in results)
    steps_per_s = steps / seconds
    ns_per_day_total = steps_per_s * first["timestep_ps"] / 1000.0 * 86400.0
    summary = {
        "replicas": len(results), "workers": workers, "scheduler": scheduler, "seconds": seconds,
        "n_beads": first["n_beads"], "timestep_ps": first["timestep_ps"], "cg_ns": first["cg_ns"],
        "device": first["device"], "steps_total": first["steps_total"], "steps": steps,
        "resumed_from_step": min(int(s["resumed_from_step"]) for s in results),
        "replica_steps_per_s": steps_per_s,
        # Whole replicas of this length finished per hour of wall-clock time, at this call's pace.
        "replicas_per_hour": steps_per_s * 3600.0 / max(int(first["steps_total"]), 1),
        "ns_per_day_total": ns_per_day_total, "ns_per_day_per_replica": ns_per_day_total / len(results),
        "complete": all(s.get("complete") for s in results),
        "step_index": min(int(s["step_index"]) for s in results),
        "per_replica": results,
    }
    if all("collisions_per_frame" in s for s in results):
        summary["collisions_per_frame"] = float(np.mean([s["collisions_per_frame"] for s in results]))
        summary["collisions_per_bead_per_frame"] = float(np.mean([s["collisions_per_bead_per_frame"] for s in results]))
    _write_json(os.path.join(out_dir, "simulate.json"), summary)
    return summary


def _check_replica_range(replica_range, replicas: int) -> Tuple[int, int]:
    if replica_range is None:
        return 0, replicas
    try:
        first, stop = (int(v) for v in replica_range)
    except (TypeError, ValueError):
        raise ValueError(f"replica_range must be (first, stop), got {replica_range!r}") from None
    if not 0 <= first < stop <= replicas:
        raise ValueError(f"replica_range {replica_range!r} is not a slice of the {replicas} replicas")
    return first, stop


def _checkpoint_run_info(path: str) -> str:
    try:
        with np.load(path, allow_pickle=False) as data:
            return str(data["run_info"]) if "run_info" in data.files else ""
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable checkpoint ({err}); remove the output directory") from None


def _settings_diff(saved_info: str, run_info: str) -> str:
    try:
        old, new = json.loads(saved_info), json.loads(run_info)
    except ValueError:
        return "no recorded settings"
    return ", ".join(f"{k} {old.get(k)!r} != {new.get(k)!r}" for k in sorted(set(old) | set(new))
                     if old.get(k) != new.get(k))


#: CG time of the default ``cgml demo`` (ns; 10 learned steps of the shipped model on the shipped 220-bead box): it
#: finishes within a minute on one CPU core shared with two other busy processes (benchmarks/results/demo.json).
DEMO_NS = 1.0


def run_demo(out_dir: str = "cgml-demo", ns: float = DEMO_NS, seed: int = 0, model_path: str = DEFAULT_MODEL,
             build_options: Optional[dict] = None, platform: str = "CPU", progress: bool = True) -> dict:
    """Run the shipped CG model for ``ns`` ns on a PEO/LiTFSI box in an OpenMM Simulation, plot MSDs.

    The all-atom start is the shipped, pre-equilibrated default box (:func:`~openmm_cgml.systems.default_box`,
    nothing is built); with ``build_options`` (a dict, ``{}`` for the default composition) it is built instead by
    ``build_peo_litfsi(seed=seed, platform=platform, **build_options)``.

    Writes into ``out_dir``: ``allatom/`` (the all-atom system), ``cg.pdb``, ``beadmap.json``, ``cg.dcd`` (unwrapped
    bead trajectory, a frame every ``demo.json["frame_ps"]``), ``cg_state.csv`` (StateDataReporter), ``msd.png`` and
    ``demo.json`` (timings, diffusivities per species). ``demo.json["wall_seconds"]`` is the wall time of this call
    up to writing it (loading or building the box, coarse-graining, the run and the analysis);
    ``build_seconds`` is the part spent loading or building the all-atom box, ``simulate_seconds`` the learned run.

    Arguments are checked before any work. Everything is written into a temporary sibling directory that is
    renamed to ``out_dir`` at the end, so a failed or interrupted demo leaves nothing behind that blocks a rerun.
    """
    import shutil
    import tempfile

    t_start = time.time()
    ns = _check_ns(ns)
    if platform not in [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]:
        raise ValueError(f"unknown OpenMM platform {platform!r}")
    _empty_output_dir(out_dir)
    if not os.path.isdir(model_path):
        raise FileNotFoundError(f"model directory {model_path} does not exist")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.partial-", dir=parent)
    try:
        summary = _demo_in(work, out_dir, ns, seed, model_path, build_options, platform, progress, t_start)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary


def _run_simulation(setup, platform: str, n_steps: int, every: int, out_dir: str, progress: bool):
    """Run ``n_steps`` learned steps in an ``app.Simulation`` with DCD and StateData reporters every ``every``
    steps; returns the unwrapped bead positions (frames, N, 3) nm of the start and every report, and seconds."""
    simulation = app.Simulation(setup.topology, setup.system, setup.integrator,
                                openmm.Platform.getPlatformByName(platform))
    simulation.context.setPositions(setup.positions)
    simulation.reporters.append(app.DCDReporter(os.path.join(out_dir, "cg.dcd"), every, enforcePeriodicBox=False))
    simulation.reporters.append(
        app.StateDataReporter(os.path.join(out_dir, "cg_state.csv"), every, step=True, time=True, speed=True)
    )
    frames = [setup.positions.value_in_unit(unit.nanometer)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, unit="step", desc=f"learned CG ({setup.integrator.timestep_ps:g} ps/step)")
    t1 = time.time()
    for done in range(0, n_steps, every):
        chunk = min(every, n_steps - done)
        simulation.step(chunk)
        frames.append(np.asarray(setup.integrator.getPerDofVariableByName("xu")))  # unwrapped bead positions, nm
        if bar is not None:
            bar.update(chunk)
    seconds = time.time() - t1
    if bar is not None:
        bar.close()
    return np.asarray(frames, dtype=np.float64), seconds


def _demo_in(out_dir: str, final_dir: str, ns: float, seed: int, model_path: str, build_options: Optional[dict],
             platform: str, progress: bool, t_start: float) -> dict:
    from .analysis import bond_lengths, collision_thresholds, count_collisions, plot_msd, species_diffusion
    from .simulate import coarse_grain_simulation
    from .systems import build_peo_litfsi, default_box
    from .training.model import load_model

    model = load_model(model_path)
    t0 = time.time()
    if build_options is None:
        built, source = default_box(), "shipped default box (openmm_cgml.systems.default_box)"
    else:
        built, source = build_peo_litfsi(seed=seed, progress=progress, platform=platform, **build_options), "built"
    t_build = time.time() - t0
    built.save(os.path.join(out_dir, "allatom"))

    setup = coarse_grain_simulation(built.topology, built.system, built.positions, model,
                                    box_vectors=built.box_vectors, seed=seed)
    beadmap, timestep_ps = setup.beadmap, setup.integrator.timestep_ps
    n_steps = int(math.ceil(ns * 1000.0 / timestep_ps))
    if n_steps < MIN_DEMO_STEPS:  # the MSD fit needs 3 lags in the last 80 % of half the run
        raise ValueError(f"ns={ns:g} is {n_steps} learned step(s) of {timestep_ps:g} ps; the demo's MSD analysis needs "
                         f"at least {MIN_DEMO_STEPS}: use ns >= {MIN_DEMO_STEPS * timestep_ps / 1000.0:g}")
    every = max(1, n_steps // 200)
    with open(os.path.join(out_dir, "cg.pdb"), "w") as f:
        app.PDBFile.writeFile(setup.topology, setup.positions, f)
    beadmap.to_json(os.path.join(out_dir, "beadmap.json"))  # for `cgml analyze cg.dcd`
    positions, t_sim = _run_simulation(setup, platform, n_steps, every, out_dir, progress)

    dt_frame = every * timestep_ps
    # D only where each species' MSD exponent over the time blocks' fit window is >= 0.9, else None
    curves, diffusion = species_diffusion(positions, dt_frame, beadmap.bead_species())
    by_species = sorted(diffusion.items())
    png = plot_msd(curves, os.path.join(out_dir, "msd.png"))
    thresholds = collision_thresholds(model_path, beadmap)
    box = np.diag(built.box_vectors.value_in_unit(unit.nanometer))
    # Chains that stay intact keep their CG bonds near the all-atom value (0.32 nm for the default mapping).
    bond_nm = bond_lengths(positions, beadmap.bonds, box) if len(beadmap.bonds) else None
    summary = {
        "cg_ns": n_steps * timestep_ps / 1000.0,
        "n_beads": beadmap.n_beads,
        "n_atoms": built.topology.getNumAtoms(),
        "allatom_box": source,
        "box_nm": box.tolist(),
        "build_seconds": t_build,
        "simulate_seconds": t_sim,
        "cg_ns_per_day": n_steps * timestep_ps / 1000.0 / t_sim * 86400.0,
        "frame_ps": dt_frame,
        "D_cm2_per_s": {name: d["D_cm2_per_s"] for name, d in by_species},
        "msd_exponent": {name: d["msd_exponent"] for name, d in by_species},
        "msd_exponent_err": {name: d["msd_exponent_err"] for name, d in by_species},
        "msd_fit_window_ps": {name: [d["fit_start_ps"], d["fit_end_ps"]] for name, d in by_species},
        "mean_cg_bond_nm": float(bond_nm.mean()) if bond_nm is not None else None,
        "max_cg_bond_nm": float(bond_nm.max()) if bond_nm is not None else None,
        "collisions_per_frame": (float(count_collisions(positions, box, beadmap, thresholds).mean())
                                 if thresholds is not None else None),
        "msd_png": os.path.join(final_dir, os.path.basename(png)) if png else None,  # where it will be
        "model": os.path.abspath(model_path),
    }
    summary["wall_seconds"] = time.time() - t_start  # the whole demo up to here: load/build, map, run, analysis
    _write_json(os.path.join(out_dir, "demo.json"), summary)
    return summary
