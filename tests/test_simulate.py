"""The learned step (pure function, scripted, batched, rollout) and its wrappers: the OpenMM integrator inside
Simulation + reporters (bit-exact checkpoints, setPositions, shared System, velocities/energies), the batched
engine (parity, blow-ups, checkpoint/resume), errors."""
import io

import mdtraj
import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from openmm_cgml.mapping import BeadMap
from openmm_cgml.simulate import (CGMLIntegrator, LearnedStep, ReplicaEngine, RunInterrupted, SimulationBlowUp,
                                  coarse_grain_simulation, rollout)
from openmm_cgml.training.model import BeadVocabulary, CGModel, ModelConfig

MAPPING = {"atoms_per_bead": 7, "whole_residues": ["TFS"]}
TIMESTEP_PS = 100.0


def tiny_model(beadmap, periodic=True, drop_type=None, seed=0, **options):
    """A small, untrained but real CG model whose vocabulary holds ``beadmap``'s types (minus ``drop_type``);
    ``options`` are further ModelConfig fields."""
    torch.manual_seed(seed)
    keep = [i for i, name in enumerate(beadmap.type_names) if name != drop_type]
    vocab = BeadVocabulary([beadmap.type_names[i] for i in keep], [beadmap.type_graphs[i] for i in keep])
    config = ModelConfig(embed_dim=8, embed_hidden=8, embed_layers=1, hidden=16, n_layers=2, score_hidden=16,
                         score_layers=1, n_rbf=8, cutoff=0.7, history_length=2, timestep_ps=TIMESTEP_PS,
                         periodic=periodic, velocity_scale=0.05, accel_scale=0.02, refine_levels=2,
                         refine_steps_per_level=1, mapping=dict(MAPPING), **options)
    model = CGModel(config, vocab)
    model.set_scales(0.05, 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def setup(tiny_peo_litfsi):
    built = tiny_peo_litfsi
    beadmap = BeadMap.from_openmm(built.topology, built.system, **MAPPING)
    return built, beadmap, tiny_model(beadmap)


def make_simulation(built, model, seed=7, platform="Reference", **options):
    setup = coarse_grain_simulation(built.topology, built.system, built.positions, model,
                                    box_vectors=built.box_vectors, seed=seed, **options)
    sim = app.Simulation(setup.topology, setup.system, setup.integrator, openmm.Platform.getPlatformByName(platform))
    sim.context.setPositions(setup.positions)
    return sim, setup.topology, setup.positions


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


def test_default_blow_up_bound_follows_the_models_velocity_scale(setup):
    """A mobile system must not trip a fixed 2 nm bound: the default is 20 x the training data's velocity scale."""
    from openmm_cgml.simulate.integrator import BLOW_UP_VELOCITY_SCALES, MIN_BLOW_UP_NM, displacement_bound

    built, beadmap, model = setup
    step = LearnedStep.from_model(model, beadmap)
    assert displacement_bound(step) == MIN_BLOW_UP_NM == 2.0  # 20 x 0.05 nm is below the floor
    step.dynamics.velocity_scale = 0.25  # a fast system's training data
    assert displacement_bound(step) == pytest.approx(BLOW_UP_VELOCITY_SCALES * 0.25) == 5.0
    assert displacement_bound(torch.jit.script(step)) == pytest.approx(5.0)
    assert CGMLIntegrator(step).max_displacement_nm == pytest.approx(5.0)
    assert displacement_bound(step, 1.5 * unit.angstrom) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="positive length"):
        displacement_bound(step, 0.0)


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


# ---------------------------------------------------------------- the learned step (moved from test_models.py)
def test_step_noise_deterministic():
    from openmm_cgml.simulate.step import step_noise

    a = step_noise(7, 3, 5, 4)
    b = step_noise(7, 3, 5, 4)
    c = step_noise(7, 4, 5, 4)
    d = step_noise(8, 3, 5, 4)
    assert a[0].shape == (5, 3) and a[1].shape == (4, 5, 3) and a[0].dtype == torch.float32
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])
    assert abs(float(torch.cat([a[0].flatten(), a[1].flatten()]).std()) - 1.0) < 0.4


def test_step_returns_molecules_whole_at_their_predicted_image(small_model):
    """A bead pulled to its partner's next periodic image (or a whole molecule) is put back; whole input is
    returned bit for bit."""
    from openmm_cgml.simulate.step import LearnedStep

    model, bm = small_model
    step = LearnedStep.from_model(model, bm)
    box = torch.tensor([1.5, 1.5, 1.5])
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(bm.n_beads, 3, generator=gen) * box
    for p, c in zip(step.tree_parent.tolist(), step.tree_child.tolist()):  # a whole state: bonds of 0.3 nm
        x[c] = x[p] + 0.3 * torch.nn.functional.normalize(torch.randn(3, generator=gen), dim=0)
    assert torch.equal(step._whole(x, x, box), x)
    root, child = int(step.tree_parent[0]), int(step.tree_child[0])
    for moved in (child, root):  # a split bond, whichever end crossed
        split = x.clone()
        split[moved] += torch.tensor([1.5, 0.0, -1.5])
        torch.testing.assert_close(step._whole(split, x, box), x, rtol=0, atol=1e-6)
    whole_shift = x + box * (step.molecule == step.molecule[root]).unsqueeze(1)
    torch.testing.assert_close(step._whole(whole_shift, x, box), x, rtol=0, atol=1e-6)
    scripted = torch.jit.script(step)
    torch.testing.assert_close(scripted._whole(split, x, box), x, rtol=0, atol=1e-6)


def test_step_scripted_equals_eager_and_batched(small_model):
    from openmm_cgml.nn.dynamics import sample_acceleration
    from openmm_cgml.simulate.step import LearnedStep, rollout, step_noise

    model, bm = small_model
    step = LearnedStep.from_model(model, bm)
    assert step.n_refine == 4 and step.history_length == 2 and step.periodic and step.timestep_ps == 100.0
    scripted = torch.jit.script(step)
    gen = torch.Generator().manual_seed(0)
    box = torch.tensor([1.2, 1.2, 1.2])
    x = torch.rand(bm.n_beads, 3, generator=gen) * box
    h = 0.02 * torch.randn(2, bm.n_beads, 3, generator=gen)
    dyn, ref = step_noise(11, 0, bm.n_beads, step.n_refine)
    with torch.no_grad():
        x1, h1 = step(x, h, box, dyn, ref)
        x2, h2 = scripted(x, h, box, dyn, ref)
    assert torch.equal(x1, x2) and torch.equal(h1, h2)
    buffer = io.BytesIO()  # a saved TorchScript step (for C++/plugin use) keeps outputs and attributes
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    reloaded = torch.jit.load(buffer)
    with torch.no_grad():
        assert torch.equal(reloaded(x, h, box, dyn, ref)[0], x1)
    assert reloaded.n_refine == 4 and reloaded.timestep_ps == 100.0 and reloaded.periodic
    # The newest history row is the step's displacement, up to whole box vectors where the random (split) start
    # was made whole.
    relabel = (h1[-1] - (x1 - x)) / box
    torch.testing.assert_close(relabel, torch.round(relabel), rtol=0, atol=1e-5)
    torch.testing.assert_close(h1[0], h[1])
    # Refinement changes the frame; without it the step is the bare dynamics prediction.
    bare = LearnedStep.from_model(model, bm, refine=False)
    with torch.no_grad():
        x3, _ = bare(x, h, box, dyn, ref[:0])
        mean, std, shared = model.dynamics(x, h, bare.embed, bare.masses, bare.bonds, box, None)
    assert bare.n_refine == 0 and (x3 - x1).abs().max() > 1e-6
    assert bool((shared > 0).all()) == model.config.molecule_noise
    a = sample_acceleration(mean, std, shared, bare.molecule, bare.n_molecules, dyn)
    # The random start splits molecules across the box; the step returns them whole, so only whole box vectors
    # separate it from the bare prediction.
    shift = (x3 - (x + h[-1] + a)) / box
    torch.testing.assert_close(shift, torch.round(shift), rtol=0, atol=1e-5)
    # Two replicas in one batch (second one translated) give the single-replica results.
    two = torch.jit.script(step.batched(2))
    shift = torch.tensor([0.3, -0.2, 0.5])
    dyn2 = torch.cat([dyn, dyn])
    ref2 = torch.cat([ref, ref], dim=1)
    with torch.no_grad():
        xb, hb = two(torch.cat([x, x + shift]), torch.cat([h, h], dim=1), torch.stack([box, box]), dyn2, ref2)
    torch.testing.assert_close(xb[: bm.n_beads], x1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xb[bm.n_beads:] - shift, x1, atol=1e-5, rtol=1e-5)
    # rollout() reproduces successive steps with step_noise(seed, k).
    traj, _ = rollout(scripted, x, h, box, seed=11, n_steps=2)
    torch.testing.assert_close(traj[0], x1)


def test_ion_cluster_noise_in_the_step(setup):
    """``,cluster=F``: the step draws the dynamics from the ion-cluster loadings (each Li+ in its partner's group),
    scripted and batched alike; it is off by default and refused where the model cannot run it."""
    from openmm_cgml.nn.dynamics import cluster_loadings, ion_partners, sample_acceleration
    from openmm_cgml.simulate import parse_refine
    from openmm_cgml.simulate.step import step_noise

    built, beadmap, plain = setup
    model = tiny_model(beadmap, molecule_noise=True, cluster_ions=["LI"], cluster_radius_nm={"PEO": 0.5, "TFS": 0.7})
    step = LearnedStep.from_model(model, beadmap, parse_refine("none,cluster=0.9"))
    assert step.cluster_noise == 0.9 and LearnedStep.from_model(model, beadmap, False).cluster_noise == 0.0
    box = torch.tensor(np.diag(built.box_vectors.value_in_unit(unit.nanometer)), dtype=torch.float32)
    x = torch.tensor(beadmap.map_positions(built.positions.value_in_unit(unit.nanometer)), dtype=torch.float32)
    h = 0.02 * torch.randn(2, beadmap.n_beads, 3, generator=torch.Generator().manual_seed(2))
    dyn, ref = step_noise(5, 0, beadmap.n_beads, 0)
    with torch.no_grad():
        x1, _ = step(x, h, box, dyn, ref)
        ions, partners = ion_partners(x, step.cluster_ion, step.cluster_reach, box, step.batch)
        mean, std, shared = step.dynamics(x, h, step.embed, step.masses, step.bonds, box, step.batch)
        std, shared, group = cluster_loadings(std, shared, step.molecule, ions, partners, step.lone, 0.9)
        want = x + (h[-1] + sample_acceleration(mean, std, shared, group, step.n_molecules, dyn))
        assert ions.numel() > 0 and torch.equal(x1, step._whole(want, want, box))
        assert torch.equal(torch.jit.script(step)(x, h, box, dyn, ref)[0], x1)
        two = step.batched(2)(torch.cat([x, x]), torch.cat([h, h], dim=1), torch.stack([box, box]),
                              torch.cat([dyn, dyn]), ref)[0]
        torch.testing.assert_close(two, torch.cat([x1, x1]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="cluster_noise needs a molecule-noise model"):
        LearnedStep.from_model(plain, beadmap, parse_refine("model,cluster=0.9"))
    with pytest.raises(ValueError, match=",cluster=F with F in"):
        parse_refine("model,cluster=1")


def test_rollout_equals_manual_steps_with_their_own_noise(small_model):
    """Every frame of rollout() equals the step applied by hand with step_noise(seed, k), from start_step on."""
    from openmm_cgml.simulate.step import LearnedStep, rollout, step_noise

    model, bm = small_model
    step = LearnedStep.from_model(model, bm)
    gen = torch.Generator().manual_seed(2)
    box = torch.tensor([1.2, 1.2, 1.2])
    x = torch.rand(bm.n_beads, 3, generator=gen) * box
    h = 0.02 * torch.randn(2, bm.n_beads, 3, generator=gen)
    traj, h_end = rollout(step, x, h, box, seed=5, n_steps=4, start_step=3)
    assert traj.shape == (4, bm.n_beads, 3)
    xk, hk = x, h
    with torch.no_grad():
        for k in range(4):
            dyn, ref = step_noise(5, 3 + k, bm.n_beads, step.n_refine)
            xk, hk = step(xk, hk, box, dyn, ref)
            assert torch.equal(traj[k], xk), f"rollout frame {k} differs from the manual step"
    assert torch.equal(h_end, hk)
    assert not torch.allclose(traj[1] - traj[0], traj[2] - traj[1])  # the steps are not all alike


def test_step_refuses_unknown_types_and_wrong_periodicity(small_model):
    from test_models import _pair_beadmap

    from openmm_cgml.simulate.step import LearnedStep

    model, _ = small_model
    other = _pair_beadmap(3, periodic=True, element="Si", mass=28.0)
    with pytest.raises(ValueError, match=r"not trained on bead types \['PAIR:Si-000000'\]"):
        LearnedStep.from_model(model, other)
    step = LearnedStep.from_model(model, other, allow_unseen_types=True)  # extrapolates from the atom graph
    assert step.embed.shape == (6, 8) and torch.isfinite(step.embed).all()
    with pytest.raises(ValueError, match="periodic"):
        LearnedStep.from_model(model, _pair_beadmap(3, periodic=False))
    with pytest.raises(ValueError, match="refinement settings"):
        LearnedStep.from_model(model, _pair_beadmap(3, periodic=True), refine={"sigma": 1.0})


# ---------------------------------------------------------------- the OpenMM bridge
def _start(built, beadmap):
    box = np.diag(built.box_vectors.value_in_unit(unit.nanometer))
    return beadmap.map_positions(built.positions, built.box_vectors).astype(np.float32), box


def test_checkpoint_reporter_file_restores_the_run(setup, tmp_path):
    """A CheckpointReporter's file, read back with loadCheckpoint, continues exactly like the uninterrupted run."""
    built, beadmap, model = setup
    sim, _, _ = make_simulation(built, model)
    sim.reporters.append(app.CheckpointReporter(str(tmp_path / "run.chk"), 3))
    sim.step(5)  # the file holds step 3 (the reporter's next report would be step 6)
    reference = unwrapped(sim)
    again, _, _ = make_simulation(built, model, seed=99)
    again.loadCheckpoint(str(tmp_path / "run.chk"))
    assert again.context.getState().getTime().value_in_unit(unit.picosecond) == pytest.approx(3 * TIMESTEP_PS)
    again.step(2)
    assert np.array_equal(unwrapped(again), reference)


def test_set_positions_mid_run_restarts_from_them_with_zero_history(setup):
    """Documented rule: positions set after the first step are the new start and the velocity history is reset
    to zero; the step index (and so the noise) continues. Reference: rollout() from those positions."""
    built, beadmap, model = setup
    x0, box = _start(built, beadmap)
    sim, _, _ = make_simulation(built, model)
    sim.step(2)
    same, _, _ = make_simulation(built, model)
    same.step(2)
    # Setting the positions the integrator wrote (a round trip through getState) changes nothing.
    same.context.setPositions(same.context.getState(getPositions=True).getPositions())
    plain, _, _ = make_simulation(built, model)
    plain.step(4)
    same.step(2)
    assert np.array_equal(unwrapped(same), unwrapped(plain))
    shifted = (unwrapped(sim) + np.random.default_rng(0).normal(scale=0.05, size=x0.shape)).astype(np.float32)
    sim.context.setPositions(shifted.astype(np.float64) * unit.nanometer)
    sim.step(2)
    step = sim.integrator.step_module
    expected, h_end = rollout(step, torch.from_numpy(shifted), torch.zeros(2, beadmap.n_beads, 3),
                              torch.from_numpy(box.astype(np.float32)), seed=7, n_steps=2, start_step=2)
    np.testing.assert_allclose(unwrapped(sim), expected[-1].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(sim.integrator.get_history(), h_end.numpy(), rtol=0, atol=1e-6)
    assert not np.allclose(unwrapped(sim), unwrapped(plain), atol=1e-3)


def test_two_simulations_share_one_system(setup):
    """The CG System is not bound to an integrator: two Simulations on one System, stepped in turn, each follow
    their own solo trajectory; the System serialises."""
    built, beadmap, model = setup
    cg = coarse_grain_simulation(built.topology, built.system, built.positions, model, seed=7)
    other = CGMLIntegrator(cg.integrator.step_module, seed=8)
    sims = [app.Simulation(cg.topology, cg.system, integ, openmm.Platform.getPlatformByName("Reference"))
            for integ in (cg.integrator, other)]
    for sim in sims:
        sim.context.setPositions(cg.positions)
    for _ in range(3):
        for sim in sims:
            sim.step(1)
    for sim, seed in zip(sims, (7, 8)):
        solo, _, _ = make_simulation(built, model, seed=seed)
        solo.step(3)
        assert np.array_equal(unwrapped(sim), unwrapped(solo))
    assert "PythonForce" in openmm.XmlSerializer.serialize(cg.system)
    assert cg.beadmap.n_beads == beadmap.n_beads and not hasattr(cg.integrator, "beadmap")


def test_force_groups_are_a_checked_parameter(setup):
    built, beadmap, model = setup
    default, _, _ = make_simulation(built, model)
    moved, _, _ = make_simulation(built, model, force_groups=(2, 5))
    default.step(2)
    moved.step(2)
    assert np.array_equal(unwrapped(default), unwrapped(moved))
    assert {f.getForceGroup() for f in moved.system.getForces()} == {2, 5}
    for bad in [(30, 30), (0, 32), (-1, 3), (1,)]:
        with pytest.raises(ValueError, match="force groups in 0..31|two integers"):
            make_simulation(built, model, force_groups=bad)
    cg = coarse_grain_simulation(built.topology, built.system, built.positions, model, force_groups=(2, 5))
    stray = CGMLIntegrator(cg.integrator.step_module)  # default groups 30/31, which this System lacks
    sim = app.Simulation(cg.topology, cg.system, stray, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(cg.positions)
    with pytest.raises(ValueError, match="did not run"):
        sim.step(1)


def test_box_defaults_to_the_system_and_accepts_plain_numbers(setup):
    built, beadmap, model = setup
    box = built.box_vectors.value_in_unit(unit.nanometer)
    results = []
    for box_vectors in (None, np.asarray(box), built.system.getDefaultPeriodicBoxVectors(), built.box_vectors):
        cg = coarse_grain_simulation(built.topology, built.system, built.positions, model, box_vectors=box_vectors)
        got = np.asarray([v.value_in_unit(unit.nanometer) for v in cg.system.getDefaultPeriodicBoxVectors()])
        results.append(got)
        assert np.allclose(np.asarray(cg.topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer)), got)
    default = np.asarray([v.value_in_unit(unit.nanometer) for v in built.system.getDefaultPeriodicBoxVectors()])
    assert np.allclose(results[0], default)
    for got in results[1:]:
        assert np.allclose(got, np.asarray(box))
    tilted = np.asarray(box).copy()
    tilted[1, 0] = 0.5
    with pytest.raises(ValueError, match="orthorhombic"):
        coarse_grain_simulation(built.topology, built.system, built.positions, model, box_vectors=tilted)


def test_openmm_habits_have_documented_meanings(setup, tmp_path):
    """Velocities set by the user are refused in one line; temperature and potential energy report 0 (not
    available); minimizeEnergy leaves the positions as they are."""
    built, beadmap, model = setup
    sim, _, cg_pos = make_simulation(built, model)
    sim.reporters.append(app.StateDataReporter(str(tmp_path / "log.csv"), 1, potentialEnergy=True, temperature=True))
    sim.step(2)
    rows = [line.split(",") for line in (tmp_path / "log.csv").read_text().strip().splitlines()[1:]]
    assert len(rows) == 2 and all(float(pe) == 0.0 and float(t) == 0.0 for pe, t in rows)
    before = sim.context.getState(getPositions=True).getPositions(asNumpy=True)
    sim.minimizeEnergy()
    after = sim.context.getState(getPositions=True).getPositions(asNumpy=True)
    assert np.array_equal(np.asarray(before), np.asarray(after))
    sim.context.setVelocitiesToTemperature(420 * unit.kelvin)
    with pytest.raises(ValueError, match="velocities were set"):
        sim.step(1)


def _poison_dynamics(step):
    for p in step.dynamics.parameters():
        p.data.fill_(float("nan"))


def test_nan_inside_a_step_is_a_blow_up_with_the_last_good_state(setup, tmp_path):
    """A model that produces NaN inside its step (here: NaN weights) stops with SimulationBlowUp, not an error
    from graph building; the integrator's Context and err.state keep the last good state, the engine writes it."""
    built, beadmap, model = setup
    sim, _, _ = make_simulation(built, model)
    sim.step(1)
    good, good_history = unwrapped(sim).copy(), sim.integrator.get_history()
    _poison_dynamics(sim.integrator.step_module)
    with pytest.raises(SimulationBlowUp, match="learned step 1: bead 0 position is not finite") as info:
        sim.step(1)
    assert np.array_equal(unwrapped(sim), good)
    state = info.value.state
    assert state["step_index"] == 1 and np.array_equal(state["positions"], good.astype(np.float32))
    assert np.array_equal(state["history"], good_history)
    x0, box = _start(built, beadmap)
    step = LearnedStep.from_model(model, beadmap)
    _poison_dynamics(step)
    engine = ReplicaEngine(step, x0, seeds=[3], box=box)
    with pytest.raises(SimulationBlowUp, match="learned step 0: bead 0 position is not finite"):
        engine.run(2, out_dir=str(tmp_path / "run"), beadmap=beadmap, progress=False)
    saved = np.load(tmp_path / "run" / "last_good_state.npz")
    assert int(saved["step_index"]) == 0 and np.array_equal(saved["positions"], x0)


# ---------------------------------------------------------------- batched engine: checkpoint and resume
class _Crash(Exception):
    pass


def test_engine_killed_between_checkpoints_resumes_exactly(setup, tmp_path):
    """Crash at step 6 with checkpoints every 4 steps: the resumed run restarts at step 4 (not 0), drops the
    frames written after that checkpoint, and its files equal the uninterrupted run bit for bit."""
    from openmm_cgml.data import CGDataset

    built, beadmap, model = setup
    x0, box = _start(built, beadmap)
    step = LearnedStep.from_model(model, beadmap)
    whole = ReplicaEngine(step, np.stack([x0, x0]), seeds=[1, 2], box=box)
    whole.run(9, out_dir=str(tmp_path / "whole"), beadmap=beadmap, report_every=2, progress=False)

    def crash(engine):
        if engine.step_index == 6:
            raise _Crash()

    first = ReplicaEngine(step, np.stack([x0, x0]), seeds=[1, 2], box=box)
    with pytest.raises(_Crash):
        first.run(9, out_dir=str(tmp_path / "cut"), beadmap=beadmap, report_every=2, checkpoint_every=4,
                  progress=False, on_step=crash)
    with CGDataset(str(tmp_path / "cut" / "replica_0.h5")) as ds:
        assert ds.n_frames == 4  # steps 0, 2, 4, 6 on disk; the checkpoint at step 4 knows of 3
    with pytest.raises(ValueError, match="exists"):  # no silent overwrite without resume
        ReplicaEngine(step, np.stack([x0, x0]), seeds=[1, 2], box=box).run(
            9, out_dir=str(tmp_path / "cut"), beadmap=beadmap, report_every=2, progress=False)
    resumed, visited = ReplicaEngine(step, np.stack([x0, x0]), seeds=[1, 2], box=box), []
    resumed.run(5, out_dir=str(tmp_path / "cut"), beadmap=beadmap, report_every=2, checkpoint_every=4,
                resume=True, progress=False, on_step=lambda e: visited.append(e.step_index))
    assert visited == [5, 6, 7, 8, 9]
    for k in range(2):
        with CGDataset(str(tmp_path / "whole" / f"replica_{k}.h5")) as a, \
                CGDataset(str(tmp_path / "cut" / f"replica_{k}.h5")) as b:
            assert b.n_frames == a.n_frames == 5
            assert np.array_equal(a.positions[:], b.positions[:]) and np.array_equal(a.time, b.time)
    with pytest.raises(ValueError, match="other replicas"):
        ReplicaEngine(step, np.stack([x0, x0]), seeds=[1, 3], box=box).run(
            1, out_dir=str(tmp_path / "cut"), beadmap=beadmap, resume=True, progress=False)


def test_engine_stop_request_saves_a_checkpoint(setup, tmp_path):
    built, beadmap, model = setup
    x0, box = _start(built, beadmap)
    step = LearnedStep.from_model(model, beadmap)
    engine = ReplicaEngine(step, x0, seeds=[4], box=box)
    with pytest.raises(RunInterrupted) as info:
        engine.run(5, out_dir=str(tmp_path / "run"), beadmap=beadmap, progress=False, stop_after=2)
    assert info.value.step_index == 2
    saved = np.load(tmp_path / "run" / "checkpoint.npz")
    assert int(saved["step_index"]) == 2 and list(saved["frames"]) == [3]
    assert np.array_equal(saved["positions"], engine.positions[0])


def _brownian_model(std_nm: float):
    """A 6-dimer periodic model whose step is exactly Brownian: mean acceleration -h[-1] (the last velocity is
    forgotten), no vector term, spread ``std_nm`` per component, no refinement."""
    import math

    from test_models import _pair_beadmap

    from openmm_cgml.training.model import BeadVocabulary, CGModel, ModelConfig

    torch.manual_seed(2)
    bm = _pair_beadmap(6, periodic=True)
    scale = 0.05
    config = ModelConfig(embed_dim=8, embed_hidden=8, embed_layers=1, hidden=16, n_layers=1, n_rbf=8, cutoff=0.5,
                         history_length=2, score_hidden=16, score_layers=1, n_sigmas=4, refine_levels=0,
                         timestep_ps=100.0, periodic=True, velocity_scale=scale, accel_scale=scale,
                         molecule_noise=False)
    model = CGModel(config, BeadVocabulary(bm.type_names, bm.type_graphs)).eval()
    last, vec = model.dynamics.node_head[-1], model.dynamics.vector_head.weight_mlp[-1]
    with torch.no_grad():
        for layer in (last, vec):
            layer.weight.zero_()
            layer.bias.zero_()
        last.bias[1] = -1.0  # coefficient of the most recent history velocity: accel_scale * coef * v = -h[-1]
        target = std_nm / scale - config.min_std  # softplus(b) = target
        last.bias[2] = target + math.log(-math.expm1(-target))
    return model, bm


def test_calibration_recovers_the_spread_of_a_brownian_model(tmp_path):
    """A Brownian model of spread 0.02 nm against Brownian data (dimers) of 0.03 nm per step: the calibrated factor
    is the analytic 1.5, the copy on disk carries it, and its step applies it (scripted too)."""
    from openmm_cgml.data import write_dataset
    from openmm_cgml.simulate.calibrate import calibrate_noise, write_calibrated
    from openmm_cgml.simulate.step import LearnedStep, step_noise
    from openmm_cgml.training.model import load_model

    model, bm = _brownian_model(0.02)
    path = model.save(str(tmp_path / "brownian"))
    rng = np.random.default_rng(0)
    pairs = np.cumsum(rng.normal(0.0, 0.03, (300, bm.n_beads // 2, 3)), axis=0) + rng.random((bm.n_beads // 2, 3)) * 3
    walk = np.repeat(pairs, 2, axis=1) + np.tile([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]], (bm.n_beads // 2, 1))
    data = write_dataset(str(tmp_path / "walk.h5"), bm, walk, np.tile([3.0, 3.0, 3.0], (300, 1)),
                         np.arange(300) * 100.0)
    result = calibrate_noise(path, [data], n_steps=16, replicas=6, lag_ps=200.0, iterations=1, burn_in=1,
                             progress=False)
    first = result["history"][0]["msd_ratio"]["PAIR"][data]
    assert abs(first / (2.0 / 3.0) ** 2 - 1) < 0.2, first  # uncalibrated: (0.02 / 0.03)² of the data's MSD
    assert abs(result["noise_scale"]["PAIR"] / 1.5 - 1) < 0.1, result["history"]
    out = write_calibrated(path, str(tmp_path / "calibrated"), result)
    calibrated = load_model(out)
    assert calibrated.config.noise_scale == result["noise_scale"]
    with pytest.raises(FileExistsError, match="exists"):
        write_calibrated(path, out, result)
    with pytest.raises(ValueError, match="must exceed the lag"):
        calibrate_noise(path, [data], n_steps=3, lag_ps=200.0, burn_in=2, progress=False)
    # the step draws exactly factor x the uncalibrated displacement, eager and scripted
    x = torch.as_tensor(walk[10], dtype=torch.float32)
    h = torch.as_tensor(walk[9:11] - walk[8:10], dtype=torch.float32)
    box = torch.tensor([3.0, 3.0, 3.0])
    dyn, ref = step_noise(3, 0, bm.n_beads, 0)
    plain = LearnedStep.from_model(model, bm)
    scaled = torch.jit.script(LearnedStep.from_model(calibrated, bm))
    with torch.no_grad():
        moved, moved_scaled = plain(x, h, box, dyn, ref)[0] - x, scaled(x, h, box, dyn, ref)[0] - x
    assert torch.allclose(moved_scaled, result["noise_scale"]["PAIR"] * moved, atol=1e-6)
    assert torch.allclose(moved, 0.02 * dyn, atol=1e-5)


def test_size_calibration_recovers_a_power_law_in_chain_length(tmp_path):
    """Rigid dimers and tetramers of one bead type whose data spread per step grows as size^0.5 (0.03 and
    0.03 x sqrt(2) nm) against a Brownian model of 0.02 nm: ``fit_size`` recovers the exponent 0.5 and the factor
    1.5 / 2^0.5 at size 1, and the step of each molecule then draws its size's factor."""
    from openmm_cgml.data import write_dataset
    from openmm_cgml.mapping import BeadMap
    from openmm_cgml.simulate.calibrate import calibrate_noise, molecule_sizes, write_calibrated
    from openmm_cgml.simulate.step import LearnedStep
    from openmm_cgml.training.model import load_model

    model, dimers = _brownian_model(0.02)
    path = model.save(str(tmp_path / "brownian"))
    tetramers = dimers.to_dict()
    tetramers["atom_bonds"] = [[k, k + 1] for k in range(dimers.n_beads - 1) if k % 4 != 3]
    tetramers = BeadMap.from_dict(tetramers)
    assert molecule_sizes(tetramers) == {"PAIR": 4.0} and molecule_sizes(dimers) == {"PAIR": 2.0}
    rng = np.random.default_rng(1)
    data = []
    for bm, size in ((dimers, 2), (tetramers, 4)):
        n_mol = bm.n_beads // size
        walk = np.cumsum(rng.normal(0.0, 0.03 * (size / 2) ** 0.5, (300, n_mol, 3)), axis=0)
        walk = np.repeat(walk + rng.random((n_mol, 3)) * 3, size, axis=1)
        data.append(write_dataset(str(tmp_path / f"walk{size}.h5"), bm, walk, np.tile([3.0, 3.0, 3.0], (300, 1)),
                                  np.arange(300) * 100.0))
    result = calibrate_noise(path, data, n_steps=16, replicas=6, lag_ps=200.0, iterations=2, burn_in=1,
                             fit_size=True, progress=False)
    assert abs(result["noise_size_exponent"]["PAIR"] - 0.5) < 0.1, result["history"]
    assert abs(result["noise_scale"]["PAIR"] * 2 ** 0.5 / 1.5 - 1) < 0.1, result["history"]
    for ratio in result["history"][-1]["msd_ratio"]["PAIR"].values():
        assert abs(ratio - 1) < 0.2, result["history"]
    calibrated = load_model(write_calibrated(path, str(tmp_path / "sized"), result))
    assert calibrated.config.noise_size_exponent == result["noise_size_exponent"]
    factor = result["noise_scale"]["PAIR"] * 4 ** result["noise_size_exponent"]["PAIR"]
    assert np.allclose(calibrated.bead_noise_scales(tetramers), factor)
    assert torch.allclose(LearnedStep.from_model(calibrated, tetramers).noise_scale, torch.tensor(factor))
    # without fit_size the same sets keep one factor per residue
    plain = calibrate_noise(path, data, n_steps=16, replicas=2, lag_ps=200.0, iterations=1, burn_in=1,
                            progress=False)
    assert plain["noise_size_exponent"] == {}


def test_noise_scale_must_be_positive_factors():
    from openmm_cgml.training.model import ModelConfig

    for bad in ({"LI": 0.0}, {"LI": "x"}, {"": 1.0}):
        with pytest.raises(ValueError, match="noise_scale") as err:
            ModelConfig(noise_scale=bad).validate()
        assert "\n" not in str(err.value)
    for bad in ({"PEO": float("nan")}, {"PEO": "x"}, {"": 0.3}):
        with pytest.raises(ValueError, match="noise_size_exponent") as err:
            ModelConfig(noise_size_exponent=bad).validate()
        assert "\n" not in str(err.value)
    for bad in ({"PEO": -1.0}, {"PEO": float("inf")}, {"PEO": "x"}, {"": 1.0}):
        with pytest.raises(ValueError, match="refine_residue_temperature") as err:
            ModelConfig(refine_residue_temperature=bad).validate()
        assert "\n" not in str(err.value)


def test_step_cap_stops_a_runaway_at_the_longest_training_step(tmp_path):
    """An anti-damped model (mean acceleration +h[-1]: the velocity doubles every step) runs away; with step_cap
    every bead's step stays within the cap times its type's longest step in the data (contact_distances, checked by
    brute force) and keeps its direction, in eager, scripted and batched steps."""
    from openmm_cgml.data import contact_distances, write_dataset
    from openmm_cgml.simulate.step import LearnedStep, rollout

    model, bm = _brownian_model(0.001)
    with torch.no_grad():
        model.dynamics.node_head[-1].bias[1] = 1.0  # a = +h[-1]
    rng = np.random.default_rng(1)
    pairs = np.cumsum(rng.normal(0.0, 0.03, (40, bm.n_beads // 2, 3)), axis=0) + rng.random((bm.n_beads // 2, 3)) * 3
    walk = np.repeat(pairs, 2, axis=1) + np.tile([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]], (bm.n_beads // 2, 1))
    data = write_dataset(str(tmp_path / "walk.h5"), bm, walk, np.tile([3.0, 3.0, 3.0], (40, 1)), np.arange(40) * 50.0)
    contacts = contact_distances([data], timestep_ps=100.0)
    longest = np.linalg.norm(walk[2:] - walk[:-2], axis=2).max()  # 100 ps = 2 frames
    assert contacts["max_step_nm"] == [pytest.approx(longest)]
    with pytest.raises(ValueError, match="not a multiple"):
        contact_distances([data], timestep_ps=75.0)
    model.contacts = contacts
    x = torch.as_tensor(walk[10], dtype=torch.float32)
    h = torch.full((2, bm.n_beads, 3), 0.05)
    box = torch.tensor([3.0, 3.0, 3.0])
    free = LearnedStep.from_model(model, bm)
    with torch.no_grad():
        x_free, _ = rollout(free, x, h, box, seed=0, n_steps=8)
    assert float((x_free - x).norm(dim=1).max()) > 8 * 1.5 * longest  # the runaway outgrows any cap
    model.config.step_cap = 1.5
    capped = LearnedStep.from_model(model, bm)
    assert LearnedStep.from_model(model, bm, refine={"step_cap": 0}).step_cap == 0.0
    with torch.no_grad():
        x_cap, h_cap = rollout(capped, x, h, box, seed=0, n_steps=8)
        x_script, _ = rollout(torch.jit.script(capped), x, h, box, seed=0, n_steps=8)
        _, h_two = rollout(capped.batched(2), x.repeat(2, 1), h.repeat(1, 2, 1), box.repeat(2, 1), seed=0, n_steps=8)
    steps = h_cap.norm(dim=2)
    assert float(steps.max()) <= 1.5 * longest * (1 + 1e-5) and float(steps.min()) > 1.4 * longest  # capped, not cut
    assert torch.allclose(torch.nn.functional.cosine_similarity(h_cap[-1], h_cap[-2], dim=1), torch.ones(1), atol=1e-3)
    assert torch.allclose(x_script, x_cap, atol=1e-5)
    assert float(h_two.norm(dim=2).max()) <= 1.5 * longest * (1 + 1e-5)  # replicas keep their caps
    model.contacts = {k: v for k, v in contacts.items() if k != "max_step_nm"}
    with pytest.raises(ValueError, match="step_cap needs"):
        LearnedStep.from_model(model, bm)
    with pytest.raises(ValueError, match="step_cap"):
        type(model.config)(step_cap=0.5).validate()
