"""All-atom reference MD with OpenMM, mapped to beads on the fly and written as an HDF5 CG dataset.

A run directory holds::

    beadmap.json      the bead mapping used for every frame
    cg.h5             the CG dataset (see openmm_cgml.data.dataset)
    checkpoint.chk    OpenMM checkpoint (positions, velocities, RNG) after the last saved frame
    checkpoint.json   {"frames": n} — how many dataset frames that checkpoint corresponds to

Resuming loads the checkpoint, drops any frame written after it and continues, so an interrupted run ends with
exactly the frames of an uninterrupted one (on the same platform and thread count).
"""
import json
import os
import time as _time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
import openmm
from openmm import app, unit

from .. import __version__
from ..data import CGDataset, CGDatasetWriter
from ..mapping import BeadMap
from ..systems import BuiltSystem

DATASET = "cg.h5"
BEADMAP = "beadmap.json"
CHECKPOINT = "checkpoint.chk"
CHECKPOINT_META = "checkpoint.json"


@dataclass
class ReferenceConfig:
    """Settings of one reference run. Times in ps/fs as named; friction in 1/ps."""

    ns: float = 1.0
    every_ps: float = 2.0
    timestep_fs: float = 2.0
    friction_per_ps: float = 1.0
    seed: int = 0
    platform: Optional[str] = None
    threads: Optional[int] = None
    checkpoint_every: int = 25
    atoms_per_bead: int = 7
    single_bead_residues: Sequence[str] = ("LI", "NA", "K", "CL")
    whole_residues: Sequence[str] = field(default_factory=tuple)

    @property
    def steps_per_frame(self) -> int:
        steps = self.every_ps * 1000.0 / self.timestep_fs
        if steps < 1 or abs(steps - round(steps)) > 1e-6:
            raise ValueError(f"every_ps={self.every_ps} is not a whole number of {self.timestep_fs} fs steps")
        return int(round(steps))

    @property
    def n_frames(self) -> int:
        """Frames written, the t = 0 frame included."""
        return int(round(self.ns * 1000.0 / self.every_ps)) + 1


def _platform(name: Optional[str], threads: Optional[int]):
    if name is None:
        names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
        name = next(n for n in ("CUDA", "OpenCL", "CPU", "Reference") if n in names)
    platform = openmm.Platform.getPlatformByName(name)
    props = {"Threads": str(threads)} if (threads and name == "CPU") else {}
    return platform, props


def _box_lengths(state) -> np.ndarray:
    vectors = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
    return np.diag(vectors).astype(np.float32)


def _write_json_atomic(path: str, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def _check_same_run(dataset_path: str, config: ReferenceConfig):
    """Refuse, in one line, to continue a run with settings that would change its frames (length aside)."""
    with CGDataset(dataset_path) as ds:
        saved = ds.provenance.get("reference_config", {})
    current = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
    differ = sorted(k for k in current if k not in ("ns", "checkpoint_every") and k in saved and saved[k] != current[k])
    if differ:
        raise ValueError(f"the run in {os.path.dirname(dataset_path)} was made with other settings ("
                         + ", ".join(f"{k}={saved[k]!r}, not {current[k]!r}" for k in differ)
                         + "); use the same settings or another output directory")


def run_reference(
    built: BuiltSystem,
    out_dir: str,
    config: ReferenceConfig,
    resume: bool = True,
    progress: bool = True,
    stop_after_frames: Optional[int] = None,
) -> str:
    """Run all-atom MD of ``built`` and write its CG dataset into ``out_dir``; returns the dataset path.

    Args:
        built: the all-atom system (topology, system, equilibrated positions, box, temperature).
        out_dir: run directory; an existing run there is continued when ``resume`` is true, refused otherwise.
        config: run length, frame interval, integrator and mapping settings.
        stop_after_frames: stop (as if killed) once this many frames exist; used to test resuming.
    """
    dataset_path = os.path.join(out_dir, DATASET)
    meta_path = os.path.join(out_dir, CHECKPOINT_META)
    existing = os.path.exists(dataset_path)
    if existing and not resume:
        raise ValueError(f"{out_dir} already holds a reference run; pass resume=True or choose another directory")
    steps_per_frame = config.steps_per_frame  # validates before anything is written
    temperature = built.temperature
    integrator = openmm.LangevinMiddleIntegrator(
        temperature, config.friction_per_ps / unit.picosecond, config.timestep_fs * unit.femtosecond
    )
    integrator.setRandomNumberSeed(config.seed)
    platform, props = _platform(config.platform, config.threads)
    simulation = app.Simulation(built.topology, built.system, integrator, platform, props)
    periodic = built.system.usesPeriodicBoundaryConditions()

    if existing:
        _check_same_run(dataset_path, config)
        beadmap = BeadMap.from_json(os.path.join(out_dir, BEADMAP))
        with open(meta_path) as f:
            done = int(json.load(f)["frames"])
        simulation.loadCheckpoint(os.path.join(out_dir, CHECKPOINT))
        writer = CGDatasetWriter(dataset_path)
        writer.truncate(done)
    else:
        beadmap = BeadMap.from_openmm(
            built.topology,
            built.system,
            atoms_per_bead=config.atoms_per_bead,
            single_bead_residues=tuple(config.single_bead_residues),
            whole_residues=tuple(config.whole_residues),
            seed=config.seed,
        )
        os.makedirs(out_dir, exist_ok=True)
        if built.box_vectors is not None:
            simulation.context.setPeriodicBoxVectors(*built.box_vectors)
        simulation.context.setPositions(built.positions)
        simulation.context.setVelocitiesToTemperature(temperature, config.seed)
        provenance = {
            "package": "openmm-cgml",
            "version": __version__,
            "openmm_version": openmm.__version__,
            "platform": platform.getName(),
            "temperature_K": temperature.value_in_unit(unit.kelvin),
            "timestep_fs": config.timestep_fs,
            "every_ps": config.every_ps,
            "friction_per_ps": config.friction_per_ps,
            "seed": config.seed,
            "reference_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            "system": built.metadata,
            "created": _time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        beadmap.to_json(os.path.join(out_dir, BEADMAP))
        writer = CGDatasetWriter.create(dataset_path, beadmap, provenance, periodic)
        done = 0

    target = config.n_frames if stop_after_frames is None else min(config.n_frames, stop_after_frames)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.n_frames, initial=done, unit="frame", desc="reference MD")
    try:
        with writer:
            while done < target:
                if done > 0:
                    simulation.step(steps_per_frame)
                state = simulation.context.getState(getPositions=True)
                box = _box_lengths(state) if periodic else None
                box_vectors = state.getPeriodicBoxVectors() if periodic else None
                beads = beadmap.map_positions(state.getPositions(asNumpy=True), box_vectors)
                writer.append(beads[None], None if box is None else box[None], [done * config.every_ps])
                done += 1
                # A stop_after_frames "kill" writes no checkpoint of its own, like a real kill.
                if done % config.checkpoint_every == 0 or done == config.n_frames:
                    writer.flush()
                    simulation.saveCheckpoint(os.path.join(out_dir, CHECKPOINT + ".tmp"))
                    os.replace(os.path.join(out_dir, CHECKPOINT + ".tmp"), os.path.join(out_dir, CHECKPOINT))
                    _write_json_atomic(meta_path, {"frames": done})
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return dataset_path


def reference_status(out_dir: str) -> dict:
    """Frames and simulated time in a run directory (for progress reports and resuming decisions)."""
    with CGDataset(os.path.join(out_dir, DATASET)) as ds:
        return {"frames": ds.n_frames, "time_ps": float(ds.time[-1]) if ds.n_frames else 0.0, "beads": ds.n_beads}
