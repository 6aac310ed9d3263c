"""All-atom reference MD with OpenMM, mapped to beads on the fly and written as an HDF5 CG dataset.

A run directory holds::

    beadmap.json        the bead mapping used for every frame
    cg.h5               the CG dataset (see openmm_cgml.data.dataset)
    checkpoint-N.chk    OpenMM checkpoint (positions, velocities, box, RNG state) after dataset frame N
    checkpoint.json     {"frames": N, "checkpoint": "checkpoint-N.chk", "system_sha256": ..., ...}

Frames are kept in memory between checkpoints and written to ``cg.h5`` every ``checkpoint_every`` frames,
then the checkpoint file, then ``checkpoint.json`` (each by temporary file + rename). ``checkpoint.json`` is
the commit point: a kill anywhere leaves a run that continues from the last checkpoint it names, dropping
any frame written after it, so an interrupted run ends with exactly the frames of an uninterrupted one.
A directory without ``checkpoint.json`` holds a run that never reached its first checkpoint: it is cleared
and started again.

Why resumes are bit-exact: OpenMM's CPU platform sums forces in an order that depends on its neighbour-list
history and, unless ``DeterministicForces`` is on, on memory layout, so a freshly loaded checkpoint is not
bit-equal to the context that wrote it (measured: divergence within one frame). Every run therefore reloads
each checkpoint it writes into a reinitialised context, exactly as a resumed run does, and uses
``DeterministicForces`` where the platform has it. Then the Reference platform and the CPU platform with one
thread resume bit-exactly (tested) when run with the same ``OPENMM_CPU_THREADS`` environment variable (the CPU
PME kernel takes its thread count from it, whatever ``threads`` says; it is recorded in the provenance); a
multi-threaded CPU run is not reproducible even uninterrupted (thread
timing changes the summation), so there a resumed run is only statistically equivalent.

Seeds: OpenMM treats seed 0 as "pick a random seed". The user's ``seed`` (any integer >= 0, 0 included) is
turned into fixed non-zero OpenMM seeds by :func:`openmm_seed`, so two identical commands give identical runs.
"""
import glob
import hashlib
import json
import math
import os
import time as _time
import zlib
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
CHECKPOINT = "checkpoint.chk"  # name used by runs written before checkpoints were named by frame
CHECKPOINT_META = "checkpoint.json"


def openmm_seed(seed: int, purpose: str) -> int:
    """A fixed, non-zero OpenMM random seed in [1, 2**31 - 1) derived from the user's ``seed``.

    ``purpose`` ("integrator", "velocities") decorrelates the streams that share one user seed.
    """
    return 1 + zlib.crc32(f"openmm-cgml:{purpose}:{seed}".encode()) % (2**31 - 2)


def platform_names() -> list:
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def _positive(name: str, value, integer: bool = False, allow_zero: bool = False):
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind} {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass
class ReferenceConfig:
    """Settings of one reference run. Times in ps/fs as named; friction in 1/ps.

    ``seed`` seeds the integrator, the starting velocities (through :func:`openmm_seed`) and the METIS mapping;
    0 is a seed like any other. Every field is checked when the config is made, before any work.
    """

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
    #: hydrogen mass repartitioning: each H gets this mass (amu), taken from the heavy atom it is bonded to, so
    #: that a 4 fs step is stable; None: the force field's masses. The beads keep the true masses' centres.
    hydrogen_mass_amu: Optional[float] = None

    def __post_init__(self):
        _positive("ns", self.ns)
        _positive("every_ps", self.every_ps)
        _positive("timestep_fs", self.timestep_fs)
        _positive("friction_per_ps", self.friction_per_ps, allow_zero=True)
        _positive("seed", self.seed, integer=True, allow_zero=True)
        _positive("checkpoint_every", self.checkpoint_every, integer=True)
        _positive("atoms_per_bead", self.atoms_per_bead, integer=True)
        if self.threads is not None:
            _positive("threads", self.threads, integer=True)
        if self.hydrogen_mass_amu is not None:
            _positive("hydrogen_mass_amu", self.hydrogen_mass_amu)
        if self.platform is not None and self.platform not in platform_names():
            raise ValueError(f"unknown OpenMM platform {self.platform!r}; available: {', '.join(platform_names())}")
        self.steps_per_frame  # a whole number of steps per frame

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


def repartition_hydrogen_mass(system: openmm.System, topology: app.Topology, mass_amu: float) -> openmm.System:
    """A copy of ``system`` in which every hydrogen has mass ``mass_amu`` (amu), the difference taken from the heavy
    atom it is bonded to (hydrogen mass repartitioning). Each molecule keeps its mass, so its centre-of-mass
    motion is unchanged; the fastest (X-H) vibrations slow down, which lets the step grow from 2 to 4 fs."""
    hmr = openmm.XmlSerializer.clone(system)
    for a, b in topology.bonds():
        h_a, h_b = (atom.element is not None and atom.element.symbol == "H" for atom in (a, b))
        if h_a == h_b:
            continue
        hydrogen, heavy = (a, b) if h_a else (b, a)
        shift = mass_amu - hmr.getParticleMass(hydrogen.index).value_in_unit(unit.dalton)
        left = hmr.getParticleMass(heavy.index).value_in_unit(unit.dalton) - shift
        if left <= 0:
            raise ValueError(f"hydrogen_mass_amu={mass_amu} leaves atom {heavy.name} of residue {heavy.residue.name} "
                             "without mass; choose a smaller hydrogen mass")
        hmr.setParticleMass(hydrogen.index, mass_amu * unit.dalton)
        hmr.setParticleMass(heavy.index, left * unit.dalton)
    return hmr


def _platform(name: Optional[str], threads: Optional[int]):
    names = platform_names()
    if name is None:
        name = next(n for n in ("CUDA", "OpenCL", "CPU", "Reference") if n in names)
    platform = openmm.Platform.getPlatformByName(name)
    props = {"Threads": str(threads)} if (threads and name == "CPU") else {}
    if "DeterministicForces" in platform.getPropertyNames():
        props["DeterministicForces"] = "true"  # reproducible force sums: needed for exact resumes
    return platform, props


def _box_lengths(state) -> np.ndarray:
    vectors = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
    return np.diag(vectors).astype(np.float32)


def _replace_bytes(path: str, data: bytes):
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json_atomic(path: str, obj):
    _replace_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def _settings(config: ReferenceConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}


def _check_same_run(out_dir: str, saved: dict, config: ReferenceConfig):
    """Refuse, in one line, to continue a run with settings that would change its frames (length aside)."""
    current = _settings(config)
    differ = sorted(k for k in current if k != "ns" and k in saved and saved[k] != current[k])
    if differ:
        raise ValueError(f"the run in {out_dir} was made with other settings ("
                         + ", ".join(f"{k}={saved[k]!r}, not {current[k]!r}" for k in differ)
                         + "); use the same settings or another output directory")


def _check_whole_residues(built: BuiltSystem, names: Sequence[str]):
    known = sorted({r.name for r in built.topology.residues()})
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--whole-residues {' '.join(unknown)}: no such residue in the system; its residues are "
                         + " ".join(known))


def _clear_unstarted(out_dir: str):
    """Remove what a run killed before its first checkpoint left behind (it is started again)."""
    for name in os.listdir(out_dir):
        ours = name in (DATASET, BEADMAP, CHECKPOINT) or name.startswith((DATASET + ".tmp", BEADMAP + ".tmp",
                                                                          "checkpoint"))
        if ours and os.path.isfile(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))


def _flush_frames(out_dir: str, pending: list, beadmap: BeadMap, provenance: Optional[dict], periodic: bool,
                  keep: int):
    """Append the buffered frames to the dataset (created on the first flush), after its first ``keep`` frames."""
    path = os.path.join(out_dir, DATASET)
    if provenance is not None and not os.path.exists(path):
        tmp = f"{path}.tmp{os.getpid()}"
        CGDatasetWriter.create(tmp, beadmap, provenance, periodic, overwrite=True).close()
        os.replace(tmp, path)
    with CGDatasetWriter(path) as writer:
        writer.truncate(keep)
        if pending:
            beads = np.stack([p[0] for p in pending])
            box = np.stack([p[1] for p in pending]) if periodic else None
            writer.append(beads, box, [p[2] for p in pending])
        writer.flush()
    pending.clear()


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
            A run of another system (fingerprint of system, topology, start positions) or other settings is
            refused; a longer ``ns`` extends a run, bit-equal to having asked for the longer run at once.
        config: run length, frame interval, integrator and mapping settings.
        stop_after_frames: stop (as if killed just before a checkpoint) once this many frames exist; the frames
            after the last checkpoint are written, the checkpoint is not. Used to test resuming.
    """
    if not isinstance(config, ReferenceConfig):
        raise TypeError("config must be a ReferenceConfig")
    steps_per_frame = config.steps_per_frame  # validates before anything is written
    _check_whole_residues(built, config.whole_residues)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir} exists and is not a directory; choose a run directory")
    dataset_path = os.path.join(out_dir, DATASET)
    meta_path = os.path.join(out_dir, CHECKPOINT_META)
    fingerprint = built.fingerprint()
    meta = None
    if os.path.isfile(meta_path):
        if not resume:
            raise ValueError(f"{out_dir} already holds a reference run; pass resume=True or choose another directory")
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("system_sha256", fingerprint) != fingerprint:
            raise ValueError(f"the run in {out_dir} was made from another system (system.xml, topology or start "
                             "positions differ); use another output directory")
        with CGDataset(dataset_path) as ds:
            saved_settings = ds.provenance.get("reference_config", {})
            saved_env = ds.provenance.get("OPENMM_CPU_THREADS", os.environ.get("OPENMM_CPU_THREADS"))
            n_written = ds.n_frames
        _check_same_run(out_dir, saved_settings, config)
        if saved_env != os.environ.get("OPENMM_CPU_THREADS"):
            import warnings

            warnings.warn(f"{out_dir} was started with OPENMM_CPU_THREADS={saved_env}, now it is "
                          f"{os.environ.get('OPENMM_CPU_THREADS')}: the continued frames will not be bit-equal to an "
                          "uninterrupted run", stacklevel=2)
        if n_written >= config.n_frames and meta.get("frames_written") == n_written:
            return dataset_path  # already complete
    elif os.path.isdir(out_dir):
        _clear_unstarted(out_dir)

    temperature = built.temperature
    integrator = openmm.LangevinMiddleIntegrator(
        temperature, config.friction_per_ps / unit.picosecond, config.timestep_fs * unit.femtosecond
    )
    integrator.setRandomNumberSeed(openmm_seed(config.seed, "integrator"))
    platform, props = _platform(config.platform, config.threads)
    system = built.system
    if config.hydrogen_mass_amu is not None:
        system = repartition_hydrogen_mass(system, built.topology, config.hydrogen_mass_amu)
    simulation = app.Simulation(built.topology, system, integrator, platform, props)
    context = simulation.context
    periodic = built.system.usesPeriodicBoundaryConditions()
    resumed_at = [] if meta is None else list(meta.get("resumed_at", []))
    provenance = None

    if meta is not None:
        beadmap = BeadMap.from_json(os.path.join(out_dir, BEADMAP))
        done = int(meta["frames"])
        chk_path = os.path.join(out_dir, meta.get("checkpoint", CHECKPOINT))
        with open(chk_path, "rb") as f:
            checkpoint = f.read()
        if "checkpoint_sha256" in meta and hashlib.sha256(checkpoint).hexdigest() != meta["checkpoint_sha256"]:
            raise ValueError(f"{chk_path} does not match {meta_path}; the run directory was altered")
        context.loadCheckpoint(checkpoint)
        _flush_frames(out_dir, [], beadmap, None, periodic, keep=done)  # drop frames after the checkpoint
        resumed_at.append(done)
    else:
        beadmap = BeadMap.from_openmm(  # the true masses: bead centres do not depend on the repartitioning
            built.topology,
            built.system,
            atoms_per_bead=config.atoms_per_bead,
            single_bead_residues=tuple(config.single_bead_residues),
            whole_residues=tuple(config.whole_residues),
            seed=config.seed,
        )
        os.makedirs(out_dir, exist_ok=True)
        if built.box_vectors is not None:
            context.setPeriodicBoxVectors(*built.box_vectors)
        context.setPositions(built.positions)
        context.setVelocitiesToTemperature(temperature, openmm_seed(config.seed, "velocities"))
        provenance = {
            "package": "openmm-cgml",
            "version": __version__,
            "openmm_version": openmm.__version__,
            "platform": platform.getName(),
            "platform_properties": {k: platform.getPropertyValue(context, k) for k in platform.getPropertyNames()},
            # The CPU platform's PME uses this many threads whatever "Threads" says: part of what makes the bits.
            "OPENMM_CPU_THREADS": os.environ.get("OPENMM_CPU_THREADS"),
            "temperature_K": temperature.value_in_unit(unit.kelvin),
            "timestep_fs": config.timestep_fs,
            "every_ps": config.every_ps,
            "friction_per_ps": config.friction_per_ps,
            "seed": config.seed,
            "openmm_seeds": {p: openmm_seed(config.seed, p) for p in ("integrator", "velocities")},
            "system_sha256": fingerprint,
            "reference_config": _settings(config),
            "system": built.metadata,
            "created": _time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        beadmap.to_json(os.path.join(out_dir, BEADMAP))
        done = 0

    last = dict(meta or {})

    def commit():
        """Write checkpoint-<done>.chk, then checkpoint.json (the commit point), then drop older checkpoints."""
        data = context.createCheckpoint()
        name = f"checkpoint-{done}.chk"
        _replace_bytes(os.path.join(out_dir, name), data)
        last.clear()
        last.update({"frames": done, "checkpoint": name, "checkpoint_sha256": hashlib.sha256(data).hexdigest(),
                     "system_sha256": fingerprint, "resumed_at": resumed_at})
        _write_json_atomic(meta_path, last)
        for old in glob.glob(os.path.join(out_dir, "checkpoint*.chk")):
            if os.path.basename(old) != name:
                os.remove(old)
        # Continue from the checkpoint just written, exactly as a resumed run will (see the module docstring).
        context.reinitialize()
        context.loadCheckpoint(data)

    if meta is not None:
        last.update({"system_sha256": fingerprint, "resumed_at": resumed_at})
        last.pop("frames_written", None)
        _write_json_atomic(meta_path, last)
    target = config.n_frames if stop_after_frames is None else min(config.n_frames, stop_after_frames)
    committed = done
    pending: list = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.n_frames, initial=done, unit="frame", desc="reference MD")
    try:
        while done < target:
            if done > 0:
                simulation.step(steps_per_frame)
            state = context.getState(getPositions=True)
            box = _box_lengths(state) if periodic else None
            box_vectors = state.getPeriodicBoxVectors() if periodic else None
            beads = beadmap.map_positions(state.getPositions(asNumpy=True), box_vectors)
            pending.append((np.asarray(beads, np.float32), box, done * config.every_ps))
            done += 1
            # Frame 1 (the start) is a commit point too, so every started run can be resumed or extended.
            if done == 1 or done % config.checkpoint_every == 0:
                _flush_frames(out_dir, pending, beadmap, provenance, periodic, keep=committed)
                commit()
                committed = done
            if bar is not None:
                bar.update(1)
        if pending:
            # The frames after the last checkpoint. A simulated kill stops here, before checkpoint.json says so.
            _flush_frames(out_dir, pending, beadmap, provenance, periodic, keep=committed)
        if stop_after_frames is None or done >= config.n_frames:
            # Complete. The checkpoint stays at the last commit point, so extending the run later redoes the
            # frames after it and matches one longer run bit for bit.
            _write_json_atomic(meta_path, dict(last, frames_written=done))
    finally:
        if bar is not None:
            bar.close()
    return dataset_path


def reference_status(out_dir: str) -> dict:
    """Frames and simulated time in a run directory (for progress reports and resuming decisions)."""
    with CGDataset(os.path.join(out_dir, DATASET)) as ds:
        return {"frames": ds.n_frames, "time_ps": float(ds.time[-1]) if ds.n_frames else 0.0, "beads": ds.n_beads}
