"""The learned step inside OpenMM: Simulation + reporters, bit-exact checkpoints, batched engine parity, errors."""
import math

import mdtraj
import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from openmm_cgml.mapping import BeadMap
from openmm_cgml.simulate import (CGMLIntegrator, LearnedStep, ReplicaEngine, SimulationBlowUp,
                                  coarse_grain_simulation, create_cg_system)
from openmm_cgml.training.model import BeadVocabulary, CGModel, ModelConfig

MAPPING = {"atoms_per_bead": 7, "whole_residues": ["TFS"]}
TIMESTEP_PS = 100.0


def tiny_model(beadmap, periodic=True, drop_type=None, seed=0):
    """A small, untrained but real CG model whose vocabulary holds ``beadmap``'s types (minus ``drop_type``)."""
    torch.manual_seed(seed)
    keep = [i for i, name in enumerate(beadmap.type_names) if name != drop_type]
    vocab = BeadVocabulary([beadmap.type_names[i] for i in keep], [beadmap.type_graphs[i] for i in keep])
    config = ModelConfig(embed_dim=8, embed_hidden=8, embed_layers=1, hidden=16, n_layers=2, score_hidden=16,
                         score_layers=1, n_rbf=8, cutoff=0.7, history_length=2, timestep_ps=TIMESTEP_PS,
                         periodic=periodic, velocity_scale=0.05, accel_scale=0.02, refine_levels=2,
                         refine_steps_per_level=1, mapping=dict(MAPPING))
    model = CGModel(config, vocab)
    model.set_scales(0.05, 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def setup(tiny_peo_litfsi):
    built = tiny_peo_litfsi
    beadmap = BeadMap.from_openmm(built.topology, built.system, **MAPPING)
    return built, beadmap, tiny_model(beadmap)


def make_simulation(built, model, seed=7, platform="Reference"):
    cg_top, cg_system, cg_pos, integrator = coarse_grain_simulation(
        built.topology, built.system, built.positions, model, box_vectors=built.box_vectors, seed=seed)
    sim = app.Simulation(cg_top, cg_system, integrator, openmm.Platform.getPlatformByName(platform))
    sim.context.setPositions(cg_pos)
    return sim, cg_top, cg_pos


def unwrapped(sim):
    return np.asarray(sim.integrator.getPerDofVariableByName("xu"))


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_simulation_with_standard_reporters(setup, tmp_path, platform):
    built, beadmap, model = setup
    sim, cg_top, cg_pos = make_simulation(built, model, platform=platform)
    assert cg_top.getNumAtoms() == beadmap.n_beads and sim.integrator.getStepSize() == TIMESTEP_PS * unit.picosecond
    with open(tmp_path / "cg.pdb", "w") as f:
        app.PDBFile.writeFile(cg_top, cg_pos, f)
    sim.reporters.append(app.DCDReporter(str(tmp_path / "cg.dcd"), 2, enforcePeriodicBox=False))
    sim.reporters.append(app.XTCReporter(str(tmp_path / "cg.xtc"), 3, enforcePeriodicBox=False))
    sim.reporters.append(app.StateDataReporter(str(tmp_path / "log.csv"), 2, step=True, time=True))
    sim.reporters.append(app.CheckpointReporter(str(tmp_path / "cg.chk"), 3))
    start = np.asarray(cg_pos.value_in_unit(unit.nanometer))
    sim.step(6)
    state = sim.context.getState(getPositions=True)
    assert state.getTime().value_in_unit(unit.picosecond) == pytest.approx(6 * TIMESTEP_PS)
    traj = mdtraj.load(str(tmp_path / "cg.dcd"), top=str(tmp_path / "cg.pdb"))
    assert traj.n_frames == 3 and traj.n_atoms == beadmap.n_beads
    xtc = mdtraj.load(str(tmp_path / "cg.xtc"), top=str(tmp_path / "cg.pdb"))
    assert xtc.n_frames == 2 and np.allclose(xtc.xyz[-1], traj.xyz[-1], atol=2e-3)
    x = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    assert np.allclose(traj.xyz[-1], x, atol=1e-3)  # DCD stores Å in float32
    moved = np.linalg.norm(x - start, axis=1)
    assert np.all(np.isfinite(moved)) and moved.max() > 0  # the learned step moved the beads
    rows = (tmp_path / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and float(rows[-1].split(",")[1]) == pytest.approx(6 * TIMESTEP_PS)
    # history holds the last displacements: h[-1] is x_6 - x_5
    assert sim.integrator.get_history().shape == (2, beadmap.n_beads, 3)


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_checkpoint_resume_is_bit_exact(setup, tmp_path, platform):
    built, beadmap, model = setup
    sim, _, _ = make_simulation(built, model, platform=platform)
    sim.step(3)
    sim.saveCheckpoint(str(tmp_path / "mid.chk"))
    sim.step(3)
    reference, reference_history = unwrapped(sim), sim.integrator.get_history()

    # The checkpoint carries the random stream's seed: an integrator made with another seed continues the saved one.
    again, _, _ = make_simulation(built, model, seed=8, platform=platform)
    again.loadCheckpoint(str(tmp_path / "mid.chk"))
    assert again.integrator.seed == 7
    again.step(3)
    assert np.array_equal(unwrapped(again), reference)
    assert np.array_equal(again.integrator.get_history(), reference_history)
    assert again.context.getState().getTime().value_in_unit(unit.picosecond) == pytest.approx(6 * TIMESTEP_PS)


def test_engine_matches_openmm_integrator(setup, tmp_path):
    built, beadmap, model = setup
    seeds = [11, 12]
    paths = []  # every step of each integrator run, (3, N, 3)
    for seed in seeds:
        sim, _, cg_pos = make_simulation(built, model, seed=seed)
        frames = []
        for _ in range(3):
            sim.step(1)
            frames.append(unwrapped(sim))
        paths.append(np.asarray(frames))
    step = LearnedStep.from_model(model, beadmap)
    box = np.diag(built.box_vectors.value_in_unit(unit.nanometer))
    engine = ReplicaEngine(step, np.stack([cg_pos.value_in_unit(unit.nanometer)] * 2), seeds=seeds, box=box)
    stats = engine.run(3, out_dir=str(tmp_path / "reps"), beadmap=beadmap, progress=False)
    assert stats["replicas"] == 2 and stats["replica_steps_per_s"] > 0
    assert not np.allclose(paths[0], paths[1])  # different seeds, different trajectories
    from openmm_cgml.data import CGDataset

    # Same random numbers, same model: the only differences are float32 summation orders of the batched graph.
    for k in range(2):
        with CGDataset(str(tmp_path / "reps" / f"replica_{k}.h5")) as ds:
            assert ds.n_frames == 4 and ds.time[-1] == pytest.approx(3 * TIMESTEP_PS)
            np.testing.assert_allclose(ds.positions[1:], paths[k], rtol=0, atol=2e-5)
            np.testing.assert_array_equal(engine.positions[k], ds.positions[-1])


def test_blow_up_stops_within_one_step_and_keeps_last_state(setup):
    built, beadmap, model = setup
    sim, _, cg_pos = make_simulation(built, model)
    sim.step(1)
    before = unwrapped(sim).copy()
    sim.integrator.max_displacement_nm = 1e-6
    with pytest.raises(SimulationBlowUp, match="moved"):
        sim.step(1)
    assert np.array_equal(unwrapped(sim), before)
    assert sim.integrator.getGlobalVariableByName("step_index") == 1


def test_engine_blow_up_saves_last_good_state(setup, tmp_path):
    """A NaN in step 4 stops the engine; the files end with step 3 (not a report step) and its full state is saved."""
    from openmm_cgml.data import CGDataset

    built, beadmap, model = setup
    box = np.diag(built.box_vectors.value_in_unit(unit.nanometer))
    engine = ReplicaEngine(LearnedStep.from_model(model, beadmap),
                           beadmap.map_positions(built.positions, built.box_vectors), seeds=[3], box=box)
    inner, calls = engine.step_module, []

    def poisoned(x, h, box, dyn, ref):
        calls.append(1)
        x_new, h_new = inner(x, h, box, dyn, ref)
        return (x_new * float("nan"), h_new) if len(calls) == 4 else (x_new, h_new)

    engine.step_module = poisoned
    with pytest.raises(SimulationBlowUp, match="learned step 3: bead 0 position is not finite"):
        engine.run(6, out_dir=str(tmp_path / "run"), beadmap=beadmap, report_every=2, progress=False)
    state = np.load(tmp_path / "run" / "last_good_state.npz")
    assert int(state["step_index"]) == 3 and np.array_equal(state["positions"], engine.positions[0])
    assert np.isfinite(state["history"]).all() and state["history"].shape == (2, beadmap.n_beads, 3)
    with CGDataset(str(tmp_path / "run" / "replica_0.h5")) as ds:
        np.testing.assert_allclose(ds.time, [0.0, 2 * TIMESTEP_PS, 3 * TIMESTEP_PS])
        assert np.array_equal(ds.positions[-1], engine.positions[0])


def test_bad_input_gets_clear_errors(setup):
    built, beadmap, model = setup
    other = tiny_model(beadmap, drop_type=beadmap.type_names[0])
    with pytest.raises(ValueError, match="not trained on bead types"):
        coarse_grain_simulation(built.topology, built.system, built.positions, other, box_vectors=built.box_vectors)
    flat = tiny_model(beadmap, periodic=False)
    with pytest.raises(ValueError, match="periodic"):
        coarse_grain_simulation(built.topology, built.system, built.positions, flat, box_vectors=built.box_vectors)
    xyz = built.positions.value_in_unit(unit.nanometer).copy()
    xyz[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        coarse_grain_simulation(built.topology, built.system, xyz * unit.nanometer, model,
                                box_vectors=built.box_vectors)
    with pytest.raises(TypeError, match="units"):
        coarse_grain_simulation(built.topology, built.system, xyz, model, box_vectors=built.box_vectors)
    with pytest.raises(ValueError, match="length"):
        coarse_grain_simulation(built.topology, built.system, built.positions.value_in_unit(unit.nanometer)
                                * unit.picosecond, model, box_vectors=built.box_vectors)
    step = LearnedStep.from_model(model, beadmap)
    with pytest.raises(ValueError, match="box"):
        ReplicaEngine(step, np.zeros((beadmap.n_beads, 3)))
    with pytest.raises(ValueError, match="NaN"):
        ReplicaEngine(step, np.full((beadmap.n_beads, 3), np.nan), box=[3, 3, 3])
    with pytest.raises(ValueError, match="twice the model's cutoff"):  # minimum image needs box >= 2 cutoff
        ReplicaEngine(step, np.zeros((beadmap.n_beads, 3)), box=[1.2, 3, 3])


def test_engine_batches_several_systems(setup, tmp_path):
    """Replicas of two different systems (one model) in one batched graph equal their separate runs."""
    from openmm_cgml.systems import build_peo_litfsi

    built, beadmap, model = setup
    other = build_peo_litfsi(n_chains=3, eo_per_chain=3, n_salt=1, seed=2, equilibration_ps=1.0,
                             platform="Reference", progress=False)
    other_map = BeadMap.from_openmm(other.topology, other.system, **MAPPING)
    assert other_map.n_beads != beadmap.n_beads
    systems = [(built, beadmap, 21), (other, other_map, 22)]
    steps, starts, boxes, finals = [], [], [], []
    for b, m, seed in systems:
        step = LearnedStep.from_model(model, m)
        x0 = m.map_positions(b.positions, b.box_vectors)
        box = np.diag(b.box_vectors.value_in_unit(unit.nanometer))
        alone = ReplicaEngine(step, x0, seeds=[seed], box=box)
        alone.run(3, progress=False)
        steps.append(step), starts.append(x0), boxes.append(box), finals.append(alone.positions[0])
    together = ReplicaEngine(steps, starts, seeds=[21, 22], box=np.stack(boxes))
    together.run(3, out_dir=str(tmp_path / "mixed"), beadmap=[beadmap, other_map], progress=False)
    for k in range(2):
        assert np.allclose(together.positions[k], finals[k], atol=2e-5)
    with pytest.raises(ValueError, match="one model"):
        ReplicaEngine([steps[0], LearnedStep.from_model(tiny_model(beadmap, seed=5), beadmap)], [starts[0]] * 2,
                      box=boxes[0])
