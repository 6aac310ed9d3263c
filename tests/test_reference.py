"""Reference MD -> CG dataset: round trip, exact resume, refusal to overwrite, trajectory coarse-graining."""
import json
import os

import mdtraj
import numpy as np
import pytest

from openmm_cgml.data import CGDataset, write_dataset
from openmm_cgml.mapping import BeadMap
from openmm_cgml.reference import ReferenceConfig, coarse_grain_trajectory, run_reference, unwrap_bead_trajectory

CONFIG = dict(ns=0.008, every_ps=1.0, timestep_fs=2.0, platform="Reference", checkpoint_every=3, seed=5)


def _read(path):
    with CGDataset(path) as ds:
        return ds.positions[:], ds.time.copy(), ds.box.copy()


def test_resume_after_interruption_gives_identical_frames(tiny_peo_litfsi, tmp_path):
    config = ReferenceConfig(**CONFIG)
    full = run_reference(tiny_peo_litfsi, str(tmp_path / "full"), config, progress=False)
    # "Kill" after 5 frames: the last checkpoint was at frame 3, so frames 4-5 are redone after resuming.
    part_dir = str(tmp_path / "part")
    run_reference(tiny_peo_litfsi, part_dir, config, progress=False, stop_after_frames=5)
    with CGDataset(os.path.join(part_dir, "cg.h5")) as ds:
        assert ds.n_frames == 5
    with open(os.path.join(part_dir, "checkpoint.json")) as handle:
        assert json.load(handle)["frames"] == 3
    with pytest.raises(ValueError, match="other settings.*every_ps=1.0, not 2.0"):
        run_reference(tiny_peo_litfsi, part_dir, ReferenceConfig(**dict(CONFIG, every_ps=2.0)), progress=False)
    _poison_frames(os.path.join(part_dir, "cg.h5"), 3)
    resumed = run_reference(tiny_peo_litfsi, part_dir, config, progress=False)
    pos_a, t_a, box_a = _read(full)
    pos_b, t_b, box_b = _read(resumed)
    assert pos_a.shape == (config.n_frames, pos_a.shape[1], 3) and config.n_frames == 9
    np.testing.assert_array_equal(t_a, np.arange(9) * 1.0)
    # The resumed run started at the checkpoint: frames before it are the (poisoned) ones already on disk ...
    assert np.all(pos_b[:3] == 7.0) and _resumed_at(part_dir) == [3]
    # ... and every frame after it equals the uninterrupted run's, bit for bit.
    np.testing.assert_array_equal(pos_a[3:], pos_b[3:])
    np.testing.assert_array_equal(t_a, t_b)
    np.testing.assert_array_equal(box_a, box_b)


def _poison_frames(path, n):
    """Overwrite the first ``n`` frames with 7.0: a resume that recomputes them (instead of starting from the
    checkpoint) is caught."""
    import h5py

    with h5py.File(path, "r+") as f:
        f["positions"][:n] = 7.0


def _resumed_at(run_dir):
    with open(os.path.join(run_dir, "checkpoint.json")) as handle:
        return json.load(handle)["resumed_at"]


FAST_CPU = dict(ns=0.0016, every_ps=0.2, timestep_fs=2.0, platform="CPU", threads=1, checkpoint_every=3, seed=0)


def test_cpu_resume_is_bit_exact_and_seed_zero_is_deterministic(tiny_peo_litfsi, tmp_path):
    """On the CPU platform (1 thread) a killed + resumed run equals the uninterrupted one bit for bit.

    Without the reload of each checkpoint in the uninterrupted run (and DeterministicForces), OpenMM's CPU
    force sums differ after a checkpoint load and the frames diverge within one frame (measured).
    Seed 0 (the default) is a fixed seed: two identical runs give identical frames.
    """
    config = ReferenceConfig(**FAST_CPU)
    full = _read(run_reference(tiny_peo_litfsi, str(tmp_path / "a"), config, progress=False))
    again = _read(run_reference(tiny_peo_litfsi, str(tmp_path / "b"), config, progress=False))
    for x, y in zip(full, again):
        np.testing.assert_array_equal(x, y)
    part = str(tmp_path / "part")
    for stop in (2, 5, 7):  # killed three times, between checkpoints
        run_reference(tiny_peo_litfsi, part, config, progress=False, stop_after_frames=stop)
    resumed = _read(run_reference(tiny_peo_litfsi, part, config, progress=False))
    assert _resumed_at(part) == [1, 3, 6]
    for x, y in zip(full, resumed):
        np.testing.assert_array_equal(x, y)
    assert full[0].shape[0] == config.n_frames == 9 and np.all(np.diff(full[0][:, 0, 0]) != 0)
    # Extending a finished run equals having asked for the longer run at once.
    longer = ReferenceConfig(**dict(FAST_CPU, ns=0.0024))
    extended = _read(run_reference(tiny_peo_litfsi, part, longer, progress=False))
    at_once = _read(run_reference(tiny_peo_litfsi, str(tmp_path / "long"), longer, progress=False))
    for x, y in zip(at_once, extended):
        np.testing.assert_array_equal(x, y)
    # A different seed gives a different run.
    other = _read(run_reference(tiny_peo_litfsi, str(tmp_path / "c"), ReferenceConfig(**dict(FAST_CPU, seed=1)),
                                progress=False))
    assert not np.array_equal(other[0][1:], full[0][1:])


def test_run_killed_before_first_checkpoint_starts_over(tiny_peo_litfsi, tmp_path):
    config = ReferenceConfig(**FAST_CPU)
    full = _read(run_reference(tiny_peo_litfsi, str(tmp_path / "full"), config, progress=False))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "cg.h5").write_bytes(b"half-written")  # what a kill during the very first write leaves
    (run_dir / "beadmap.json").write_text("{")
    again = _read(run_reference(tiny_peo_litfsi, str(run_dir), config, progress=False))
    for x, y in zip(full, again):
        np.testing.assert_array_equal(x, y)


def test_reference_refuses_another_system_and_bad_settings(tiny_peo_litfsi, tmp_path):
    from openmm import unit

    from openmm_cgml.systems import BuiltSystem

    config = ReferenceConfig(**dict(FAST_CPU, ns=0.0004))
    run_dir = str(tmp_path / "run")
    run_reference(tiny_peo_litfsi, run_dir, config, progress=False)
    b = tiny_peo_litfsi
    hotter = BuiltSystem(b.topology, b.system, b.positions, b.box_vectors, 450 * unit.kelvin, dict(b.metadata))
    with pytest.raises(ValueError, match="another system"):
        run_reference(hotter, run_dir, ReferenceConfig(**dict(FAST_CPU, ns=0.0008)), progress=False)
    for bad, match in ((dict(ns=-1), "ns must be"), (dict(ns=float("nan")), "ns must be"),
                       (dict(ns=float("inf")), "ns must be"), (dict(every_ps=0), "every_ps must be"),
                       (dict(timestep_fs=0), "timestep_fs must be"), (dict(platform="Bogus"), "available: .*Reference"),
                       (dict(seed=-2), "seed must be")):
        with pytest.raises(ValueError, match=match):
            ReferenceConfig(**dict(FAST_CPU, **bad))
    with pytest.raises(ValueError, match="no such residue.*LI"):
        run_reference(b, str(tmp_path / "x"), ReferenceConfig(**dict(FAST_CPU, whole_residues=("TFSX",))),
                      progress=False)
    assert not os.path.exists(tmp_path / "x")


def test_dataset_round_trip_and_metadata(tiny_peo_litfsi, tmp_path):
    config = ReferenceConfig(**dict(CONFIG, ns=0.002))
    path = run_reference(tiny_peo_litfsi, str(tmp_path / "run"), config, progress=False)
    with CGDataset(path) as ds:
        bm = ds.beadmap
        assert ds.periodic and ds.frame_interval_ps == pytest.approx(1.0)
        assert ds.provenance["temperature_K"] == pytest.approx(400.0)
        assert ds.provenance["timestep_fs"] == 2.0 and ds.provenance["seed"] == 5
        assert len(bm.type_graphs) == len(bm.type_names) == int(bm.bead_types.max()) + 1
        first = ds.positions[0]
    # The first frame is the mapping of the starting structure.
    expected = bm.map_positions(tiny_peo_litfsi.positions, tiny_peo_litfsi.box_vectors)
    np.testing.assert_allclose(first, expected, atol=1e-6)
    # Write -> read of a synthetic dataset is exact.
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(4, bm.n_beads, 3)).astype(np.float32)
    box = np.full((4, 3), 3.0, np.float32)
    out = write_dataset(str(tmp_path / "copy.h5"), bm, pos, box, np.arange(4) * 2.0, {"note": "synthetic"})
    pos2, t2, box2 = _read(out)
    np.testing.assert_array_equal(pos, pos2)
    np.testing.assert_array_equal(box, box2)
    with CGDataset(out) as ds:
        assert ds.beadmap.to_dict() == bm.to_dict() and ds.provenance == {"note": "synthetic"}


def test_bad_input_writes_nothing(tiny_peo_litfsi, tmp_path):
    config = ReferenceConfig(**dict(CONFIG, ns=0.002))
    run_dir = str(tmp_path / "run")
    run_reference(tiny_peo_litfsi, run_dir, config, progress=False)
    with pytest.raises(ValueError, match="already holds"):
        run_reference(tiny_peo_litfsi, run_dir, config, resume=False, progress=False)
    with pytest.raises(ValueError, match="whole number"):
        run_reference(tiny_peo_litfsi, str(tmp_path / "bad"), ReferenceConfig(**dict(CONFIG, every_ps=0.003)))
    assert not os.path.exists(tmp_path / "bad")
    with CGDataset(os.path.join(run_dir, "cg.h5")) as ds:
        bm = ds.beadmap
    nan = np.full((2, bm.n_beads, 3), np.nan)
    with pytest.raises(ValueError, match="NaN"):
        write_dataset(str(tmp_path / "nan.h5"), bm, nan, None, [0.0, 1.0])
    assert not os.path.exists(tmp_path / "nan.h5")
    with pytest.raises(ValueError, match="already exists"):
        write_dataset(os.path.join(run_dir, "cg.h5"), bm, np.zeros((1, bm.n_beads, 3)), None, [0.0])
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        CGDataset(str(corrupt))


def test_coarse_grain_existing_trajectory(tiny_peo_litfsi, tmp_path):
    """A wrapped all-atom DCD maps to the same beads (modulo the box) as direct mapping, unwrapped in time."""
    from openmm import app, unit
    import openmm

    built = tiny_peo_litfsi
    bm = BeadMap.from_openmm(built.topology, built.system, atoms_per_bead=7)
    integrator = openmm.LangevinMiddleIntegrator(400 * unit.kelvin, 1 / unit.picosecond, 0.002 * unit.picoseconds)
    integrator.setRandomNumberSeed(3)
    sim = app.Simulation(built.topology, built.system, integrator, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPeriodicBoxVectors(*built.box_vectors)
    sim.context.setPositions(built.positions)
    sim.reporters.append(app.DCDReporter(str(tmp_path / "aa.dcd"), 50, enforcePeriodicBox=True))
    direct = []
    for _ in range(6):
        sim.step(50)
        state = sim.context.getState(getPositions=True)
        direct.append(bm.map_positions(state.getPositions(asNumpy=True), state.getPeriodicBoxVectors()))
    pdb = str(tmp_path / "top.pdb")
    with open(pdb, "w") as f:
        app.PDBFile.writeFile(built.topology, built.positions, f)
    out = coarse_grain_trajectory(str(tmp_path / "aa.dcd"), pdb, bm, str(tmp_path / "cg.h5"), chunk=4)
    pos, _, box = _read(out)
    direct = np.asarray(direct)
    diff = pos - direct
    diff -= box[:, None, :] * np.round(diff / box[:, None, :])
    assert np.abs(diff).max() < 2e-3  # DCD stores single precision in Angstrom
    steps = np.abs(np.diff(pos, axis=0))
    assert steps.max() < 0.5 * box.min()  # continuous in time: no jumps by a box edge
    with pytest.raises(ValueError, match="already exists"):
        coarse_grain_trajectory(str(tmp_path / "aa.dcd"), pdb, bm, out)


def test_unwrap_bead_trajectory_restores_continuous_path():
    rng = np.random.default_rng(1)
    steps = rng.normal(scale=0.1, size=(50, 4, 3))
    path = np.cumsum(steps, axis=0)
    box = np.full((50, 3), 1.5)
    wrapped = path - box[:, None, :] * np.floor(path / box[:, None, :])
    unwrapped = unwrap_bead_trajectory(wrapped, box)
    np.testing.assert_allclose(unwrapped - unwrapped[0], path - path[0], atol=1e-5)


def test_hydrogen_mass_repartitioning_keeps_molecule_masses_and_bead_map(tiny_peo_litfsi, tmp_path):
    """HMR moves mass from heavy atoms to their hydrogens only: every molecule keeps its mass, the beads keep the
    true masses' centres, and a 4 fs run with it stays finite; a mass that would empty a heavy atom is refused."""
    from openmm import unit

    from openmm_cgml.reference import repartition_hydrogen_mass

    built = tiny_peo_litfsi
    hmr = repartition_hydrogen_mass(built.system, built.topology, 4.0)
    mass = lambda system, i: system.getParticleMass(i).value_in_unit(unit.dalton)  # noqa: E731
    atoms = list(built.topology.atoms())
    hydrogens = [a.index for a in atoms if a.element.symbol == "H"]
    assert hydrogens and all(mass(hmr, i) == pytest.approx(4.0) for i in hydrogens)
    assert mass(built.system, hydrogens[0]) == pytest.approx(1.008, abs=0.01)  # the original is left alone
    for residue in built.topology.residues():
        idx = [a.index for a in residue.atoms()]
        assert sum(mass(hmr, i) for i in idx) == pytest.approx(sum(mass(built.system, i) for i in idx))
    lithium = next(a.index for a in atoms if a.element.symbol == "Li")
    assert mass(hmr, lithium) == mass(built.system, lithium)
    with pytest.raises(ValueError, match="without mass; choose a smaller hydrogen mass"):
        repartition_hydrogen_mass(built.system, built.topology, 20.0)
    with pytest.raises(ValueError, match="hydrogen_mass_amu must be a finite number > 0"):
        ReferenceConfig(hydrogen_mass_amu=-1.0)

    plain = run_reference(built, str(tmp_path / "plain"), ReferenceConfig(**CONFIG), progress=False)
    fast = ReferenceConfig(**dict(CONFIG, timestep_fs=4.0, every_ps=2.0, ns=0.016, hydrogen_mass_amu=4.0))
    path = run_reference(built, str(tmp_path / "hmr"), fast, progress=False)
    with CGDataset(plain) as a, CGDataset(path) as b:
        assert a.beadmap.to_dict() == b.beadmap.to_dict()
        assert b.n_frames == 9 and np.isfinite(b.positions[:]).all()
        assert b.provenance["reference_config"]["hydrogen_mass_amu"] == 4.0
    with pytest.raises(ValueError, match="other settings.*hydrogen_mass_amu"):
        run_reference(built, str(tmp_path / "hmr"), ReferenceConfig(**dict(CONFIG, timestep_fs=4.0, every_ps=2.0,
                                                                           ns=0.016)), progress=False)
