"""End-to-end workflows behind the ``cgml`` verbs ``simulate`` and ``demo``: map, run the learned model, analyse.

This is the last stage of the pipeline (like the CLI): it may import every other stage.
"""
import json
import math
import os
import time
from typing import Optional

import numpy as np
import openmm
from openmm import app, unit

DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", "peo_litfsi_default")
#: Written next to a model by training: closest non-bonded approach per bead-type pair in the training data.
CONTACTS_FILE = "contacts.json"
#: A learned run has a collision when two non-bonded beads come closer than this fraction of that distance.
COLLISION_FRACTION = 0.8


def _empty_output_dir(out_dir: str):
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"{out_dir} is not empty; remove it or choose another output directory")
    os.makedirs(out_dir, exist_ok=True)


def collision_thresholds(model_path: str, beadmap) -> Optional[np.ndarray]:
    """(K, K) collision distances (nm) for ``beadmap``'s types from the model's contacts file, or None."""
    path = os.path.join(model_path, CONTACTS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        contacts = json.load(handle)
    names, table = contacts["type_names"], contacts["min_distance_nm"]
    k = len(beadmap.type_names)
    out = np.full((k, k), np.inf)
    for a, name_a in enumerate(beadmap.type_names):
        for b, name_b in enumerate(beadmap.type_names):
            if name_a in names and name_b in names:
                value = table[names.index(name_a)][names.index(name_b)]
                if value is not None:
                    out[a, b] = COLLISION_FRACTION * value
    finite = out[np.isfinite(out)]
    if not finite.size:
        return None
    return np.where(np.isfinite(out), out, finite.min())  # unseen pairs: the strictest known distance


def count_collisions(positions, box, beadmap, thresholds) -> np.ndarray:
    """Collisions per frame (pairs of non-bonded beads closer than their type-pair threshold)."""
    from .analysis import collision_count

    return collision_count(positions, box, beadmap.bead_types, thresholds, exclude_pairs=beadmap.bonds)


def simulate_main(model_path: str, system_dir: str, ns: float, out_dir: str, replicas: int = 1, seed: int = 0,
                  device: str = "cpu", report_every_ps: Optional[float] = None, dig_path: Optional[str] = None,
                  progress: bool = True) -> dict:
    """``cgml simulate``: run R replicas of a built all-atom system with a learned CG model (batched engine).

    Writes ``out_dir/replica_r.h5`` (CG datasets, readable by ``cgml analyze``) and ``out_dir/simulate.json``
    (throughput in simulated ns/day and replica-steps/s, collision counts). With ``dig_path`` each replica starts
    from an independent DiG sample instead of the mapped all-atom structure.
    """
    from .mapping import BeadMap
    from .simulate import LearnedStep, ReplicaEngine
    from .systems import BuiltSystem
    from .training.model import load_model

    if replicas < 1 or ns <= 0:
        raise ValueError("replicas must be >= 1 and ns > 0")
    model = load_model(model_path, device=device)
    built = BuiltSystem.load(system_dir)
    beadmap = BeadMap.from_openmm(built.topology, built.system, **model.mapping)
    step = LearnedStep.from_model(model, beadmap)
    box_vectors = built.box_vectors
    box = np.diag(box_vectors.value_in_unit(unit.nanometer)) if box_vectors is not None else None
    start = beadmap.map_positions(built.positions, box_vectors)
    if dig_path is not None:
        from .dig import initial_states

        start = initial_states(replicas, beadmap, dig_path, box=box, seed=seed, device=device)
    _empty_output_dir(out_dir)
    engine = ReplicaEngine(step, np.broadcast_to(start, (replicas,) + start.shape[-2:]),
                           seeds=[seed + r for r in range(replicas)], box=box, device=device)
    n_steps = int(math.ceil(ns * 1000.0 / engine.timestep_ps))
    every = 1 if report_every_ps is None else max(1, int(round(report_every_ps / engine.timestep_ps)))
    stats = engine.run(n_steps, out_dir=out_dir, beadmap=beadmap, report_every=every, progress=progress,
                       provenance={"model": os.path.abspath(model_path), "system": os.path.abspath(system_dir)})
    thresholds = collision_thresholds(model_path, beadmap)
    if thresholds is not None:
        from .data import CGDataset

        counts = []
        for r in range(replicas):
            with CGDataset(os.path.join(out_dir, f"replica_{r}.h5")) as ds:
                counts.append(count_collisions(ds.positions[:], ds.box, beadmap, thresholds))
        counts = np.asarray(counts)
        stats["collisions_per_frame"] = float(counts.mean())
        stats["collisions_per_bead_per_frame"] = float(counts.mean() / beadmap.n_beads)
    stats.update(n_beads=beadmap.n_beads, timestep_ps=engine.timestep_ps, cg_ns=n_steps * engine.timestep_ps / 1e3,
                 device=device)
    with open(os.path.join(out_dir, "simulate.json"), "w") as handle:
        json.dump(stats, handle, indent=1)
    return stats


def run_demo(out_dir: str = "cgml-demo", ns: float = 10.0, seed: int = 0, model_path: str = DEFAULT_MODEL,
             build_options: Optional[dict] = None, platform: str = "CPU", progress: bool = True) -> dict:
    """Build the default PEO/LiTFSI box, run the shipped CG model for ``ns`` ns in an OpenMM Simulation, plot MSDs.

    Writes into ``out_dir``: ``allatom/`` (the built system), ``cg.pdb``, ``beadmap.json``, ``cg.dcd`` (unwrapped
    bead trajectory, a frame every ``demo.json["frame_ps"]``), ``cg_state.csv`` (StateDataReporter), ``msd.png`` and
    ``demo.json`` (timings, diffusivities per species).
    """
    from .analysis import bond_lengths, diffusion_coefficient, msd, plot_msd
    from .simulate import coarse_grain_simulation
    from .systems import build_peo_litfsi
    from .training.model import load_model

    _empty_output_dir(out_dir)
    model = load_model(model_path)
    t0 = time.time()
    built = build_peo_litfsi(seed=seed, progress=progress, platform=platform, **(build_options or {}))
    built.save(os.path.join(out_dir, "allatom"))
    t_build = time.time() - t0

    cg_top, cg_system, cg_pos, integrator = coarse_grain_simulation(
        built.topology, built.system, built.positions, model, box_vectors=built.box_vectors, seed=seed
    )
    simulation = app.Simulation(cg_top, cg_system, integrator, openmm.Platform.getPlatformByName(platform))
    simulation.context.setPositions(cg_pos)
    n_steps = int(math.ceil(ns * 1000.0 / integrator.timestep_ps))
    every = max(1, n_steps // 200)
    with open(os.path.join(out_dir, "cg.pdb"), "w") as f:
        app.PDBFile.writeFile(cg_top, cg_pos, f)
    integrator.beadmap.to_json(os.path.join(out_dir, "beadmap.json"))  # for `cgml analyze cg.dcd`
    simulation.reporters.append(app.DCDReporter(os.path.join(out_dir, "cg.dcd"), every, enforcePeriodicBox=False))
    simulation.reporters.append(
        app.StateDataReporter(os.path.join(out_dir, "cg_state.csv"), every, step=True, time=True, speed=True)
    )
    frames = [cg_pos.value_in_unit(unit.nanometer)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, unit="step", desc=f"learned CG ({integrator.timestep_ps:g} ps/step)")
    t1 = time.time()
    for done in range(0, n_steps, every):
        chunk = min(every, n_steps - done)
        simulation.step(chunk)
        frames.append(np.asarray(integrator.getPerDofVariableByName("xu")))  # unwrapped bead positions, nm
        if bar is not None:
            bar.update(chunk)
    t_sim = time.time() - t1
    if bar is not None:
        bar.close()

    positions = np.asarray(frames, dtype=np.float64)
    beadmap = integrator.beadmap
    species = np.asarray(beadmap.bead_species())
    dt_frame = every * integrator.timestep_ps
    curves, diffusivity = {}, {}
    for name in sorted(set(species.tolist())):
        lags, curve = msd(positions[:, species == name], dt_frame)
        fit = diffusion_coefficient(lags, curve)
        curves[name] = {"lag_times_ps": lags, "msd_nm2": curve, "fit": fit}
        diffusivity[name] = fit.D_cm2_per_s
    png = plot_msd(curves, os.path.join(out_dir, "msd.png"))
    thresholds = collision_thresholds(model_path, beadmap)
    box = np.diag(built.box_vectors.value_in_unit(unit.nanometer))
    # Chains that stay intact keep their CG bonds near the all-atom value (0.32 nm for the default mapping).
    bond_nm = bond_lengths(positions, beadmap.bonds, box) if len(beadmap.bonds) else None
    summary = {
        "cg_ns": n_steps * integrator.timestep_ps / 1000.0,
        "n_beads": beadmap.n_beads,
        "n_atoms": built.topology.getNumAtoms(),
        "build_seconds": t_build,
        "simulate_seconds": t_sim,
        "cg_ns_per_day": n_steps * integrator.timestep_ps / 1000.0 / t_sim * 86400.0,
        "frame_ps": dt_frame,
        "D_cm2_per_s": diffusivity,
        "mean_cg_bond_nm": float(bond_nm.mean()) if bond_nm is not None else None,
        "max_cg_bond_nm": float(bond_nm.max()) if bond_nm is not None else None,
        "collisions_per_frame": (float(count_collisions(positions, box, beadmap, thresholds).mean())
                                 if thresholds is not None else None),
        "msd_png": png,
        "model": os.path.abspath(model_path),
    }
    with open(os.path.join(out_dir, "demo.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _species_positions(path: str):
    from .data import CGDataset

    with CGDataset(path) as ds:
        return np.asarray(ds.positions[:], dtype=np.float64), ds.frame_interval_ps, ds.beadmap.bead_species()


def diffusivity_comparison(reference_path: str, cg_paths, n_blocks: int = 5, fit_range=0.2) -> dict:
    """Diffusion coefficient per species (cm²/s, with standard errors) of an all-atom reference dataset and of
    learned CG replicas of the same system, and the log10 error of each CG value.

    The reference error comes from ``n_blocks`` time blocks, the CG error from the spread over replicas (one
    replica: time blocks as for the reference). Species are the bead species (e.g. "LI", "TFS", "PEO").
    """
    from .analysis import NM2_PER_PS_IN_CM2_PER_S, diffusion_by_species

    ref_x, ref_dt, species = _species_positions(reference_path)
    reference = diffusion_by_species(ref_x, ref_dt, species, n_blocks=n_blocks, fit_range=fit_range)
    runs = [_species_positions(p) for p in ([cg_paths] if isinstance(cg_paths, str) else list(cg_paths))]
    if any(s != species for _, _, s in runs):
        raise ValueError("the CG runs and the reference map to different beads; compare runs of the same system")
    n_frames = min(x.shape[0] for x, _, _ in runs)
    cg_x = np.stack([x[:n_frames] for x, _, _ in runs])
    cg = diffusion_by_species(cg_x if len(runs) > 1 else cg_x[0], runs[0][1], species, n_blocks=n_blocks,
                              fit_range=fit_range)
    out = {}
    for name in reference:
        (d_ref, e_ref), (d_cg, e_cg) = reference[name], cg[name]
        out[str(name)] = {
            "allatom_D_cm2_per_s": d_ref * NM2_PER_PS_IN_CM2_PER_S,
            "allatom_err_cm2_per_s": e_ref * NM2_PER_PS_IN_CM2_PER_S,
            "cg_D_cm2_per_s": d_cg * NM2_PER_PS_IN_CM2_PER_S,
            "cg_err_cm2_per_s": e_cg * NM2_PER_PS_IN_CM2_PER_S,
            "log10_error": float(np.log10(d_cg / d_ref)) if d_cg > 0 and d_ref > 0 else None,
        }
    return out


def format_diffusivity_table(table: dict) -> str:
    """The :func:`diffusivity_comparison` result as a plain-text table."""
    lines = [f"{'species':8s} {'all-atom D (cm2/s)':>24s} {'learned CG D (cm2/s)':>24s} {'log10 err':>9s}"]
    for name, row in table.items():
        err = row["log10_error"]
        lines.append(f"{name:8s} {row['allatom_D_cm2_per_s']:11.3e} ± {row['allatom_err_cm2_per_s']:9.2e} "
                     f"{row['cg_D_cm2_per_s']:11.3e} ± {row['cg_err_cm2_per_s']:9.2e} "
                     f"{err if err is None else format(err, '+9.2f')}")
    return "\n".join(lines)
