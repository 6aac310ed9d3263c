"""Make the datasets of the polymer benchmark: class-I training trajectories and class-II ground truth.

    python -m benchmarks.polymer.make_datasets                         # everything in config.yaml
    python -m benchmarks.polymer.make_datasets --only class_I
    python -m benchmarks.polymer.make_datasets --config tiny.yaml --out /tmp/polymer --max-minutes 30

Resumable: chains run in batches (many non-interacting chains in one OpenMM System, see
:func:`openmm_cgml.systems.build_sequence_chains`); every ``checkpoint_interval`` steps a batch appends its
frames, flushes them and then replaces one checkpoint file (OpenMM checkpoint + counters) atomically. A rerun
truncates the frame files to the checkpoint and continues from it, so an interrupted run ends with the same
files as an uninterrupted one (same platform and thread count).

Layout under ``<output>/<dataset>/``::

    sequences.json        class, its statistics, seeds and the sequence of every chain (checked on rerun)
    chain_NNN.h5          CG dataset of chain NNN (openmm_cgml.data format: /positions nm, /time ps, /beadmap)
    fine_BBB.h5           fine-level observables of batch BBB every observable_interval steps:
                          /rg2 (T, n) float32 nm^2 of the fine beads, /rg2_cg (T, n) of the CG beads
                          (mass-weighted, what a CG model is compared with), /com (T, n, 3) float32 nm,
                          /time (T,) ps, /chains (n,)
    batch_BBB.ckpt.npz    resume point of batch BBB (deleted content is regenerated, never edited by hand)
    summary.json          wall time, chain-steps per second, files (written when the dataset is complete)

Times start after ``equilibration_steps`` (not recorded); frame 0 is the equilibrated start.
"""
from __future__ import annotations

import argparse
import fcntl
import glob
import json
import math
import os
import sys
import time

import h5py
import numpy as np
import openmm as mm
from openmm import unit

from openmm_cgml.data import CGDatasetWriter
from openmm_cgml.mapping import BeadMap
from openmm_cgml.systems import SEQUENCE_CLASSES, build_sequence_chains, generate_sequences, sequence_statistics
from openmm_cgml.yamlio import read_yaml_mapping

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_CONFIG = os.path.join(HERE, "config.yaml")
_DATASET_KEYS = ("sequence_class", "sequence_seed", "n_chains", "chains_per_batch", "equilibration_steps", "steps",
                 "frame_interval", "observable_interval", "checkpoint_interval", "seed")


# ------------------------------------------------------------------------------------------------ config
def load_config(path: str) -> dict:
    """Read and check a dataset config (see benchmarks/polymer/config.yaml for every key)."""
    config = read_yaml_mapping(path, "polymer dataset config")
    for section in ("physics", "mapping", "platform", "datasets"):
        if not isinstance(config.get(section), dict):
            raise ValueError(f"config {path} needs a '{section}' mapping")
    for name, ds in config["datasets"].items():
        missing = [k for k in _DATASET_KEYS if k not in ds]
        if missing:
            raise ValueError(f"dataset {name!r} in {path} lacks {missing}")
        if ds["sequence_class"] not in SEQUENCE_CLASSES:
            raise ValueError(f"dataset {name!r}: sequence_class must be one of {sorted(SEQUENCE_CLASSES)}")
        for key in ("frame_interval", "observable_interval"):
            if ds[key] < 1 or ds["checkpoint_interval"] % ds[key] or ds["steps"] % ds[key]:
                raise ValueError(f"dataset {name!r}: {key} must divide checkpoint_interval and steps")
    return config


def _timestep_ps(physics: dict) -> tuple[float, float]:
    """(dt ps, friction 1/ps) from the LJ time unit tau = sigma sqrt(m / k_B T)."""
    kt = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin) * physics["temperature_K"]
    tau = physics["sigma_nm"] * math.sqrt(physics["mass_amu"] / kt)
    return physics["timestep_tau"] * tau, physics["friction_per_tau"] / tau


def _atomic_write(path: str, write):
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: str, data: dict):
    def write(tmp):
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
    _atomic_write(path, write)


def dataset_sequences(config: dict, name: str) -> list[str]:
    ds = config["datasets"][name]
    return generate_sequences(ds["sequence_class"], ds["n_chains"], config["physics"]["chain_length"],
                              seed=ds["sequence_seed"])


# ------------------------------------------------------------------------------------------------ one batch
def _build(config: dict, sequences: list[str], seed: int, minimize: bool = True):
    p = config["physics"]
    return build_sequence_chains(sequences, temperature=p["temperature_K"] * unit.kelvin,
                                 sigma=p["sigma_nm"] * unit.nanometer, mass=p["mass_amu"] * unit.dalton,
                                 solvophobic_epsilon=p["solvophobic_epsilon"],
                                 solvophilic_epsilon=p["solvophilic_epsilon"], seed=seed, minimize=minimize)


class _Batch:
    """Chains ``first .. first + n - 1`` of a dataset, simulated together in one Context."""

    def __init__(self, config: dict, name: str, index: int, sequences: list[str], first: int, out: str):
        self.config, self.ds, self.out = config, config["datasets"][name], out
        self.name, self.index, self.first, self.sequences = name, index, first, sequences
        self.chain_length = config["physics"]["chain_length"]
        self.ckpt_path = os.path.join(out, f"batch_{index:03d}.ckpt.npz")
        self.fine_path = os.path.join(out, f"fine_{index:03d}.h5")
        self.chain_paths = [os.path.join(out, f"chain_{first + k:03d}.h5") for k in range(len(sequences))]
        self.dt, self.friction = _timestep_ps(config["physics"])

    # -------------------------------------------------------------- state on disk
    def saved(self) -> dict | None:
        if not os.path.exists(self.ckpt_path):
            return None
        with np.load(self.ckpt_path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def total_steps(self) -> int:
        return self.ds["equilibration_steps"] + self.ds["steps"]

    def steps_done(self) -> int:
        saved = self.saved()
        return 0 if saved is None else self.ds["equilibration_steps"] + int(saved["step"])

    def _save(self, context: mm.Context, step: int, wall_s: float):
        checkpoint = np.frombuffer(context.createCheckpoint(), dtype=np.uint8)
        # Continue from a freshly initialised context, as a resumed run does: the CPU platform's force sums
        # depend on when its neighbour list was built, so only this keeps interrupted and uninterrupted runs
        # bit-identical (reinitialize(True) round-trips the state, random-number generator included).
        context.reinitialize(preserveState=True)

        def write(tmp):
            with open(tmp, "wb") as handle:
                np.savez(handle, checkpoint=checkpoint, step=np.int64(step), wall_s=np.float64(wall_s))
        _atomic_write(self.ckpt_path, write)

    # -------------------------------------------------------------- files
    def _beadmaps(self) -> list[BeadMap]:
        m = self.config["mapping"]
        maps = []
        for sequence in self.sequences:  # one chain alone: the same METIS cut as inside the batch System
            single = _build(self.config, [sequence], seed=0, minimize=False)
            maps.append(BeadMap.from_openmm(single.topology, single.system, atoms_per_bead=m["atoms_per_bead"],
                                            seed=m["seed"]))
        return maps

    def _create_files(self, built):
        for k, (path, beadmap) in enumerate(zip(self.chain_paths, self._maps)):
            provenance = {
                "source": "benchmarks.polymer.make_datasets", "dataset": self.name, "chain": self.first + k,
                "sequence_class": self.ds["sequence_class"],
                "sequence_class_statistics": SEQUENCE_CLASSES[self.ds["sequence_class"]].to_dict(),
                "sequence": self.sequences[k], "sequence_statistics": sequence_statistics(self.sequences[k]),
                "temperature_K": self.config["physics"]["temperature_K"], "timestep_ps": self.dt,
                "friction_per_ps": self.friction, "integrator": "LangevinMiddleIntegrator",
                "fine_steps_per_frame": self.ds["frame_interval"],
                "equilibration_steps": self.ds["equilibration_steps"],
                "physics": self.config["physics"], "mapping": self.config["mapping"],
                "fine_observables": {"file": os.path.basename(self.fine_path), "column": k,
                                     "interval_steps": self.ds["observable_interval"]},
                "builder": {key: built.metadata[key] for key in ("builder", "args", "ff", "mixing", "tau_ps")},
            }
            CGDatasetWriter.create(path, beadmap, provenance, periodic=False, overwrite=True).close()
        with h5py.File(self.fine_path, "w") as f:
            n = len(self.sequences)
            f.create_dataset("rg2", (0, n), maxshape=(None, n), dtype="f4", chunks=(1024, n))
            f.create_dataset("rg2_cg", (0, n), maxshape=(None, n), dtype="f4", chunks=(1024, n))
            f.create_dataset("com", (0, n, 3), maxshape=(None, n, 3), dtype="f4", chunks=(1024, n, 3))
            f.create_dataset("time", (0,), maxshape=(None,), dtype="f8", chunks=(1024,))
            f["chains"] = np.arange(self.first, self.first + n)
            f.attrs["units"] = "rg2 and rg2_cg nm^2, com nm, time ps"
            f.attrs["interval_steps"] = self.ds["observable_interval"]

    def _truncate_files(self, step: int):
        frames = step // self.ds["frame_interval"] + 1
        for path in self.chain_paths:
            with CGDatasetWriter(path) as writer:
                writer.truncate(frames)
        rows = step // self.ds["observable_interval"] + 1
        with h5py.File(self.fine_path, "r+") as f:
            for key in ("rg2", "rg2_cg", "com", "time"):
                f[key].resize(rows, axis=0)

    # -------------------------------------------------------------- simulation
    def _context(self, built) -> tuple[mm.Context, mm.Integrator]:
        p = self.config["physics"]
        integrator = mm.LangevinMiddleIntegrator(p["temperature_K"] * unit.kelvin, self.friction / unit.picosecond,
                                                 self.dt * unit.picosecond)
        integrator.setRandomNumberSeed(int(self.ds["seed"]) * 1000 + self.index + 1)
        platform = mm.Platform.getPlatformByName(self.config["platform"]["name"])
        properties = {"Threads": str(self.config["platform"]["threads"])} if platform.getName() == "CPU" else {}
        context = mm.Context(built.system, integrator, platform, properties)
        context.setPositions(built.positions)
        return context, integrator

    def _observe(self, context, step, frames, fine):
        x = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        x = x.reshape(len(self.sequences), self.chain_length, 3)
        beads = None
        if step % self.ds["frame_interval"] == 0:
            beads = [bm.map_positions(x[k]) for k, bm in enumerate(self._maps)]
            frames.append(beads)
        if step % self.ds["observable_interval"] == 0:
            beads = beads or [bm.map_positions(x[k]) for k, bm in enumerate(self._maps)]
            com = x.mean(axis=1)  # equal fine bead masses; the CG centre of mass is the same point
            rg2 = ((x - com[:, None]) ** 2).sum(axis=-1).mean(axis=1)
            rg2_cg = [bm.bead_masses @ ((b - c) ** 2).sum(axis=-1) / bm.bead_masses.sum()
                      for bm, b, c in zip(self._maps, beads, com)]
            fine.append((rg2, rg2_cg, com))

    def _flush(self, step, frames, fine):
        if frames:
            steps = np.arange(step - (len(frames) - 1) * self.ds["frame_interval"], step + 1,
                              self.ds["frame_interval"])
            stacked = np.asarray(frames, dtype=np.float32)  # (T, n_chains, n_beads, 3)
            for k, path in enumerate(self.chain_paths):
                with CGDatasetWriter(path) as writer:
                    writer.append(stacked[:, k], None, steps * self.dt)
        if fine:
            steps = np.arange(step - (len(fine) - 1) * self.ds["observable_interval"], step + 1,
                              self.ds["observable_interval"])
            with h5py.File(self.fine_path, "r+") as f:
                t0 = f["time"].shape[0]
                for key, data in (("rg2", np.array([r for r, _, _ in fine])),
                                  ("rg2_cg", np.array([r for _, r, _ in fine])),
                                  ("com", np.array([c for _, _, c in fine])), ("time", steps * self.dt)):
                    f[key].resize(t0 + len(steps), axis=0)
                    f[key][t0:] = data
        frames.clear()
        fine.clear()

    def run(self, bar=None, stop=lambda: False) -> bool:
        """Run or continue this batch; returns True when it is complete, False if ``stop()`` ended it early."""
        built = _build(self.config, self.sequences, seed=int(self.ds["seed"]) * 1000 + self.index)
        self._maps = self._beadmaps()
        context, integrator = self._context(built)
        saved = self.saved()
        frames, fine = [], []
        if saved is None:
            started = time.perf_counter()
            self._create_files(built)
            context.setVelocitiesToTemperature(self.config["physics"]["temperature_K"] * unit.kelvin,
                                               int(self.ds["seed"]) * 1000 + self.index + 1)
            remaining = self.ds["equilibration_steps"]
            while remaining > 0:
                chunk = min(remaining, 1000)
                integrator.step(chunk)
                remaining -= chunk
                if bar is not None:
                    bar.update(chunk * len(self.sequences))
            context.setTime(0.0)
            self._observe(context, 0, frames, fine)
            self._flush(0, frames, fine)
            step, wall = 0, time.perf_counter() - started
            self._save(context, step, wall)
        else:
            context.loadCheckpoint(saved["checkpoint"].tobytes())
            step, wall = int(saved["step"]), float(saved["wall_s"])
            self._truncate_files(step)
        report = math.gcd(self.ds["frame_interval"], self.ds["observable_interval"])
        while step < self.ds["steps"]:
            if stop():
                return False
            started = time.perf_counter()
            end = min(step + self.ds["checkpoint_interval"], self.ds["steps"])
            while step < end:
                integrator.step(report)
                step += report
                self._observe(context, step, frames, fine)
                if bar is not None:
                    bar.update(report * len(self.sequences))
            self._flush(step, frames, fine)
            wall += time.perf_counter() - started
            self._save(context, step, wall)
        return True


# ------------------------------------------------------------------------------------------------ datasets
def _check_sequences(path: str, record: dict):
    if os.path.exists(path):
        with open(path) as handle:
            old = json.load(handle)
        if old != record:
            raise ValueError(f"{path} was made with other sequences or settings; use another --out or delete it")
    else:
        _write_json(path, record)


def make_dataset(config: dict, name: str, out_root: str, progress: bool = True, stop=lambda: False) -> dict:
    """Make (or continue) one dataset of ``config``; returns its summary (``complete`` False if stopped)."""
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, ".lock"), "w") as lock:
        try:  # two writers on the same files would corrupt them
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"another make_datasets process is writing {out}; wait for it or stop it") from None
        return _make_dataset(config, name, out, progress, stop)


def _make_dataset(config: dict, name: str, out: str, progress: bool, stop) -> dict:
    ds = config["datasets"][name]
    sequences = dataset_sequences(config, name)
    _check_sequences(os.path.join(out, "sequences.json"), {
        "dataset": name, "sequence_class": SEQUENCE_CLASSES[ds["sequence_class"]].to_dict(),
        "sequence_seed": ds["sequence_seed"], "chain_length": config["physics"]["chain_length"],
        "sequences": sequences, "physics": config["physics"], "mapping": config["mapping"],
        "steps": ds["steps"], "equilibration_steps": ds["equilibration_steps"],
        "frame_interval": ds["frame_interval"], "observable_interval": ds["observable_interval"],
        "chains_per_batch": ds["chains_per_batch"], "seed": ds["seed"]})
    size = ds["chains_per_batch"]
    batches = [_Batch(config, name, b, sequences[first:first + size], first, out)
               for b, first in enumerate(range(0, len(sequences), size))]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(b.total_steps() * len(b.sequences) for b in batches),
                   initial=sum(b.steps_done() * len(b.sequences) for b in batches), unit=" chain-steps",
                   unit_scale=True, desc=name, file=sys.stderr,
                   mininterval=0.1 if sys.stderr.isatty() else 30.0)  # a log file gets a line every 30 s
    complete = True
    for batch in batches:
        if batch.steps_done() >= batch.total_steps():
            continue
        if not batch.run(bar, stop):
            complete = False
            break
    if bar is not None:
        bar.close()
    wall = sum(float(b.saved()["wall_s"]) for b in batches if b.saved() is not None)
    chain_steps = sum(b.steps_done() * len(b.sequences) for b in batches)
    summary = {"dataset": name, "complete": complete, "n_chains": len(sequences), "wall_s": wall,
               "chain_steps": chain_steps, "chain_steps_per_s": chain_steps / wall if wall > 0 else None,
               "timestep_ps": _timestep_ps(config["physics"])[0], "platform": config["platform"],
               "files": sorted(f for f in os.listdir(out) if not f.startswith("."))}
    if complete:
        _write_json(os.path.join(out, "summary.json"), summary)
    return summary


def dataset_chains(data_root: str, name: str) -> list[str]:
    """The chain files of dataset ``name`` under ``data_root``, in chain order; a one-line error if none."""
    paths = sorted(glob.glob(os.path.join(data_root, name, "chain_*.h5")))
    if not paths:
        raise ValueError(f"{os.path.join(data_root, name)} holds no chain_*.h5; run "
                         "python -m benchmarks.polymer.make_datasets first")
    return paths


def load_fine_observables(dataset_dir: str) -> dict:
    """Fine-level series of a dataset: ``time`` (T,) ps, ``rg2`` and ``rg2_cg`` (T, n_chains) nm^2 (fine and CG
    beads), ``com`` (T, n_chains, 3) nm.

    Batches that stopped at different points are cut to the shortest one."""
    names = sorted(f for f in os.listdir(dataset_dir) if f.startswith("fine_") and f.endswith(".h5"))
    if not names:
        raise ValueError(f"{dataset_dir} holds no fine_*.h5 files; run python -m benchmarks.polymer.make_datasets")
    parts = []
    for name in names:
        with h5py.File(os.path.join(dataset_dir, name), "r") as f:
            parts.append({k: f[k][:] for k in ("time", "rg2", "rg2_cg", "com", "chains")})
    rows = min(len(p["time"]) for p in parts)
    order = np.argsort(np.concatenate([p["chains"] for p in parts]))
    out = {key: np.concatenate([p[key][:rows] for p in parts], axis=1)[:, order] for key in ("rg2", "rg2_cg", "com")}
    out["time"] = parts[0]["time"][:rows]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (default: %(default)s)")
    parser.add_argument("--out", default=None, help="output directory (default: the config's 'output')")
    parser.add_argument("--only", nargs="+", default=None, help="dataset names to make (default: all)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop cleanly at the first checkpoint after this wall time; rerun to continue")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        names = args.only or list(config["datasets"])
        unknown = sorted(set(names) - set(config["datasets"]))
        if unknown:
            raise ValueError(f"unknown datasets {unknown}; the config has {sorted(config['datasets'])}")
        out = args.out or os.path.join(REPO, config.get("output", "benchmarks/data/polymer"))
        deadline = None if args.max_minutes is None else time.monotonic() + 60.0 * args.max_minutes
        stop = (lambda: False) if deadline is None else (lambda: time.monotonic() > deadline)
        for name in names:
            summary = make_dataset(config, name, out, progress=not args.no_progress, stop=stop)
            rate = summary["chain_steps_per_s"]
            print(f"{name}: {'complete' if summary['complete'] else 'stopped (rerun to continue)'}, "
                  f"{summary['chain_steps']} chain-steps in {summary['wall_s']:.0f} s"
                  + (f" ({rate:.0f} chain-steps/s)" if rate else ""))
            if not summary["complete"]:
                return 3
    except ValueError as err:
        print(f"make_datasets: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
