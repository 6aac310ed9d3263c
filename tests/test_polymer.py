"""Tests of the sequence-defined polymer benchmark: sequences, the multi-chain System, mapping, tau, datasets."""
import copy
import itertools
import os

import h5py
import numpy as np
import openmm as mm
import pytest
import yaml
from openmm import unit

from openmm_cgml.analysis import autocorrelation, integrated_time
from openmm_cgml.data import CGDataset
from openmm_cgml.mapping import BeadMap
from openmm_cgml.systems import SEQUENCE_CLASSES, build_sequence_chains, generate_sequences, sequence_statistics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runs(sequence):
    """Lengths of the runs of like beads, by itertools (independent of sequence_statistics)."""
    return [len(list(group)) for _, group in itertools.groupby(sequence)]


# ---------------------------------------------------------------------------------------------- sequences
@pytest.mark.parametrize("name", ["I", "II"])
def test_sequence_classes_have_their_documented_statistics(name):
    cls = SEQUENCE_CLASSES[name]
    sequences = generate_sequences(name, 400, 100, seed=7)
    assert all(len(s) == 100 and set(s) <= {"A", "B"} for s in sequences)
    fraction = np.mean([s.count("A") / 100 for s in sequences])
    like = np.mean([1 - (len(runs(s)) - 1) / 99 for s in sequences])
    assert fraction == pytest.approx(cls.solvophobic_fraction, abs=0.015)
    assert like == pytest.approx(1 - 1 / cls.mean_block_length, abs=0.015)
    # A Markov chain's A runs last 1 / P(A -> B) beads on average: 2.5 (I), 3.5 (II).
    a_runs = [n for s in sequences for (kind, group) in itertools.groupby(s) if kind == "A"
              for n in [len(list(group))]]
    assert np.mean(a_runs) == pytest.approx(1 / cls.switch_probabilities()[0], rel=0.06)
    for s in sequences[:20]:
        stats = sequence_statistics(s)
        assert stats["mean_block_length"] == pytest.approx(np.mean(runs(s)))
        assert stats["solvophobic_fraction"] == s.count("A") / 100


def test_sequence_classes_differ_and_are_reproducible():
    one, two = (generate_sequences(name, 100, 100, seed=3) for name in ("I", "II"))
    assert generate_sequences("I", 100, 100, seed=3) == one
    assert generate_sequences("I", 100, 100, seed=4) != one
    assert np.mean([s.count("A") for s in two]) < np.mean([s.count("A") for s in one]) - 10
    assert np.mean([np.mean(runs(s)) for s in two]) > np.mean([np.mean(runs(s)) for s in one]) + 1.5
    with pytest.raises(ValueError, match="sequence_class"):
        generate_sequences("III", 1)
    with pytest.raises(ValueError, match="mean_block_length"):
        type(SEQUENCE_CLASSES["I"])("bad", 0.2, 1.5)  # B runs would need < 1 bead at f = 0.2


# ---------------------------------------------------------------------------------------------- System
def energy(built, xyz):
    context = mm.Context(built.system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(xyz * unit.nanometer)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def test_chains_in_one_system_do_not_interact():
    sequences = generate_sequences("I", 3, 30, seed=1)
    built = build_sequence_chains(sequences, seed=2)
    xyz = built.positions.value_in_unit(unit.nanometer).reshape(3, 30, 3)
    xyz = xyz - xyz.mean(axis=1, keepdims=True)  # pile the chains on top of each other
    xyz[1, 0] = xyz[0, 5]  # and put two beads of different chains at the same point
    together = energy(built, xyz.reshape(-1, 3))
    alone = sum(energy(build_sequence_chains([s], minimize=False), xyz[k]) for k, s in enumerate(sequences))
    assert np.isfinite(together) and together == pytest.approx(alone, rel=1e-9, abs=1e-6)
    # The same piled-up chains with inter-chain LJ switched on would differ: the test can see interactions.
    pair = next(f for f in built.system.getForces() if isinstance(f, mm.CustomNonbondedForce))
    for i in range(pair.getNumParticles()):
        eps, _ = pair.getParticleParameters(i)
        pair.setParticleParameters(i, [eps, 0.0])
    xyz[1, 0] += 0.3
    assert energy(built, xyz.reshape(-1, 3)) != pytest.approx(
        sum(energy(build_sequence_chains([s], minimize=False), xyz[k]) for k, s in enumerate(sequences)), rel=1e-3)


def test_sequence_is_recorded_and_wells_follow_it():
    built = build_sequence_chains(["AABBA"], solvophobic_epsilon=1.0, solvophilic_epsilon=0.1, minimize=False)
    assert built.metadata["sequences"] == ["AABBA"]
    assert [a.element.symbol for a in built.topology.atoms()] == ["C", "C", "O", "O", "C"]
    assert [a.name for a in built.topology.atoms()] == ["A0", "A1", "B2", "B3", "A4"]
    pair = next(f for f in built.system.getForces() if isinstance(f, mm.CustomNonbondedForce))
    kt = built.metadata["args"]["epsilon_kj_mol"]
    assert [pair.getParticleParameters(i)[0] / kt for i in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 1])


# ---------------------------------------------------------------------------------------------- mapping
def test_chain_maps_through_metis_with_mass_and_bonds_conserved():
    sequence = generate_sequences("II", 1, 100, seed=5)[0]
    built = build_sequence_chains([sequence], seed=1)
    bm = BeadMap.from_openmm(built.topology, built.system, atoms_per_bead=7)
    assert bm.n_beads == 14 and all(5 <= len(atoms) <= 10 for atoms in bm.bead_atoms)
    assert bm.bead_masses.sum() == pytest.approx(100 * 100.0)
    # Every fine bond lies inside a bead or joins consecutive beads; CG bonds are exactly the chain.
    for i, j in bm.atom_bonds:
        assert abs(bm.atom_to_bead[i] - bm.atom_to_bead[j]) <= 1
    assert bm.bonds.tolist() == [[b, b + 1] for b in range(bm.n_beads - 1)]
    assert all(np.array_equal(atoms, np.arange(atoms[0], atoms[-1] + 1)) for atoms in bm.bead_atoms)
    # Bead types see the composition: a bead's elements are its fine beads' types.
    for b, atoms in enumerate(bm.bead_atoms):
        elements = sorted(bm.type_graphs[bm.bead_types[b]]["elements"])
        assert elements == sorted("C" if sequence[a] == "A" else "O" for a in atoms)
    xyz = built.positions.value_in_unit(unit.nanometer)
    centres = bm.map_positions(xyz)
    np.testing.assert_allclose(bm.bead_masses @ centres / bm.bead_masses.sum(), xyz.mean(axis=0), atol=1e-10)


# ---------------------------------------------------------------------------------------------- tau
def test_relaxation_time_estimator_recovers_ornstein_uhlenbeck_tau():
    tau, dt, n = 20.0, 1.0, 200_000
    a = np.exp(-dt / tau)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=n) * np.sqrt(1 - a * a)
    x = np.empty(n)
    x[0] = rng.normal()
    for t in range(1, n):
        x[t] = a * x[t - 1] + noise[t]
    estimate = integrated_time(autocorrelation(x), dt)
    assert estimate == pytest.approx(dt * (1 + a) / (2 * (1 - a)), rel=0.1)  # = 19.99: tau of the sampled OU


# ---------------------------------------------------------------------------------------------- datasets
@pytest.fixture
def tiny_config():
    with open(os.path.join(REPO, "benchmarks", "polymer", "config.yaml")) as handle:
        config = yaml.safe_load(handle)
    config["physics"]["chain_length"] = 40
    config["datasets"] = {"tiny": dict(sequence_class="II", sequence_seed=5, n_chains=3, chains_per_batch=2,
                                       equilibration_steps=100, steps=300, frame_interval=50, observable_interval=100,
                                       checkpoint_interval=100, seed=3)}
    return config


def test_dataset_command_resumes_to_the_uninterrupted_result(tiny_config, tmp_path):
    from benchmarks.polymer.make_datasets import load_fine_observables, make_dataset

    whole = make_dataset(copy.deepcopy(tiny_config), "tiny", str(tmp_path / "whole"), progress=False)
    assert whole["complete"] and whole["chain_steps"] == 3 * 400
    calls = iter(range(100))
    stopped = make_dataset(copy.deepcopy(tiny_config), "tiny", str(tmp_path / "cut"), progress=False,
                           stop=lambda: next(calls) >= 2)  # two segments of the first batch, then "killed"
    assert not stopped["complete"] and 0 < stopped["chain_steps"] < 3 * 400
    resumed = make_dataset(copy.deepcopy(tiny_config), "tiny", str(tmp_path / "cut"), progress=False)
    assert resumed["complete"] and resumed["chain_steps"] == 3 * 400
    for name in ("chain_000.h5", "chain_001.h5", "chain_002.h5", "fine_000.h5", "fine_001.h5"):
        with h5py.File(tmp_path / "whole" / "tiny" / name) as a, h5py.File(tmp_path / "cut" / "tiny" / name) as b:
            for key in ("positions", "time", "rg2", "rg2_cg", "com"):
                if key in a:
                    assert np.array_equal(a[key][:], b[key][:]), (name, key)
    with CGDataset(str(tmp_path / "cut" / "tiny" / "chain_002.h5")) as ds:
        assert ds.n_frames == 300 // 50 + 1 and not ds.periodic and ds.beadmap.n_beads == round(40 / 7)
        assert ds.frame_interval_ps == pytest.approx(50 * ds.provenance["timestep_ps"])
        assert ds.provenance["sequence"] == generate_sequences("II", 3, 40, seed=5)[2]
    import fcntl

    with open(tmp_path / "cut" / "tiny" / ".lock", "w") as lock:  # a second writer is refused
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(ValueError, match="another make_datasets"):
            make_dataset(copy.deepcopy(tiny_config), "tiny", str(tmp_path / "cut"), progress=False)
    fine = load_fine_observables(str(tmp_path / "cut" / "tiny"))
    assert fine["rg2"].shape == (4, 3) and fine["com"].shape == (4, 3, 3)
    assert np.all((fine["rg2"] > 0.1) & (fine["rg2"] < 40 * 0.5**2))
    assert np.all(fine["rg2_cg"] < fine["rg2"])  # bead centres average out the segments' own extent
    with CGDataset(str(tmp_path / "cut" / "tiny" / "chain_000.h5")) as ds:  # frames every 50, observables every 100
        x = ds.positions[::2].astype(float)
        m = ds.beadmap.bead_masses
        com = m @ x / m.sum()
        np.testing.assert_allclose(com, fine["com"][:, 0], atol=1e-5)
        np.testing.assert_allclose((((x - com[:, None]) ** 2).sum(-1) @ m) / m.sum(), fine["rg2_cg"][:, 0], rtol=1e-4)


TINY_MODEL = dict(embed_dim=8, embed_hidden=8, embed_layers=1, hidden=16, n_layers=2, n_rbf=8, cutoff=2.0,
                  history_length=2, score_hidden=16, score_layers=2, sigma_max=0.3, sigma_min=0.03, n_sigmas=4,
                  refine_levels=2, refine_steps_per_level=1, refine_step_size=1e-4, frames_per_step=2,
                  validation_fraction=0.0, batch_size=4, n_iterations=6, checkpoint_every=0, input_noise=0.02)


def test_benchmark_writes_every_metric_and_the_plot(tiny_config, tmp_path):
    """The whole chain on tiny data: datasets, training, both rollouts, every method's metrics, plot, speed."""
    import json

    from benchmarks.polymer.__main__ import run
    from benchmarks.polymer.learn import main as learn_main
    from benchmarks.polymer.make_datasets import make_dataset

    tiny_config["datasets"] = {
        "train": dict(tiny_config["datasets"]["tiny"], steps=600),  # 13 frames: windows of 2 x 2 + 2 frames
        "truth": dict(tiny_config["datasets"]["tiny"], n_chains=2, steps=1000, observable_interval=10)}
    data = str(tmp_path / "data")
    for name in ("train", "truth"):
        assert make_dataset(tiny_config, name, data, progress=False)["complete"]
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text(yaml.safe_dump(TINY_MODEL))
    from benchmarks.polymer import learn

    model, _ = learn.train_model(data, train="train", train_config=str(train_yaml), progress=False)
    assert model.timestep_ps == pytest.approx(100 * tiny_config_timestep(tiny_config))  # 2 frames of 50 steps
    for variant in ("refined", "plain"):
        record = learn.run_rollout(tiny_config, data, model, os.path.join(data, "model"), variant, truth="truth",
                                   discard_steps=100, progress=False)
        assert record["complete"] and record["steps_done"] == record["n_steps"] == 9  # (1000 - 100) / 100
    # the command finds the model and both finished rollouts: nothing is redone
    assert learn_main(["--config", str(config), "--data", data, "--discard-steps", "100", "--truth", "truth",
                       "--train", "train", "--train-config", str(train_yaml)]) == 0
    out = tmp_path / "polymer.json"
    result = run(tiny_config, data, str(out), truth="truth", train="train", discard_steps=100,
                 supervised=dict(n_iterations=5), speed=dict(fine_steps=200, model_steps=2, copies=3))
    assert os.path.getsize(tmp_path / "polymer.png") > 1000
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["ground_truth"]["complete"] and saved["ground_truth"]["steps"] == 1000
    assert saved["ground_truth"]["discarded_steps"] == 100 and not saved["not_run"]
    methods = saved["methods"]
    assert set(methods) == {"learned", "b_learned_without_refinement", "a_plain_md_training_length",
                            "c_supervised_gnn"}
    for name in ("learned", "b_learned_without_refinement", "a_plain_md_training_length"):
        assert len(methods[name]["per_chain"]) == 2
        for key in ("rg2_rel_error", "rg2_js", "tau_log10_ratio", "diffusivity_log10_ratio", "collision_rate",
                    "bond_break_rate"):
            assert all(np.isfinite(c[key]) for c in methods[name]["per_chain"]), (name, key)
        assert 0 <= methods[name]["aggregate"]["rg2_js_mean"] <= np.log(2)
    for c in methods["c_supervised_gnn"]["per_chain"]:
        assert c["rg2_pred_nm2"] > 0 and c["tau_pred_ps"] > 0 and np.isfinite(c["tau_log10_ratio"])
    plain_md = methods["a_plain_md_training_length"]["aggregate"]
    assert plain_md["collision_rate_mean"] == 0.0 and plain_md["bond_break_rate_mean"] == 0.0  # its own truth
    assert saved["plain_md_all_windows"]["n_windows_per_chain"] == (1000 - 100) // 600  # training-length windows
    # The learned rollout's Rg^2 is the mass-weighted Rg^2 of its own frames.
    from openmm_cgml.data import CGDataset

    with CGDataset(os.path.join(data, "rollouts", "refined", "replica_1.h5")) as ds:
        x, m = ds.positions[:].astype(float), ds.beadmap.bead_masses
    com = (m @ x.transpose(1, 0, 2).reshape(len(m), -1)).reshape(-1, 3) / m.sum()
    rg2 = (((x - com[:, None]) ** 2).sum(-1) @ m) / m.sum()
    assert methods["learned"]["per_chain"][1]["rg2_pred_nm2"] == pytest.approx(rg2.mean(), rel=1e-6)
    for key, verdict in saved["goals"].items():
        assert verdict["learned"] == methods["learned"]["aggregate"][key]
        assert verdict["met"] == (verdict["learned"] <= verdict["goal"])
    cost = saved["cost"]
    assert cost["fine_md"]["steps"] == 200 and cost["plain"]["x1"]["steps"] == 2
    for variant in ("refined", "plain"):
        assert [r["chains"] for r in cost[variant].values()] == [2, 6]  # once, and 3 copies in one batch
        for r in cost[variant].values():
            assert r["speedup_vs_fine_md"] == pytest.approx(cost["fine_md"]["s_per_chain_ns"] / r["s_per_chain_ns"])
            assert r["s_per_chain_ns"] == pytest.approx(r["wall_s"] / (r["chains"] * 2 * model.timestep_ps / 1000))
    # The exact COM diffusivity: k_B T / (N m gamma) with gamma = 1/tau.
    kt = 0.0083144626 * 300.0
    tau = 0.5 * np.sqrt(100.0 / kt)
    assert saved["D_exact_nm2_per_ps"] == pytest.approx(kt * tau / (40 * 100.0), rel=1e-6)
    assert saved["wall_s"] > 0


def tiny_config_timestep(config):
    from benchmarks.polymer.make_datasets import _timestep_ps

    return _timestep_ps(config["physics"])[0]
