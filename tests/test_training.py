"""Training of the dynamics/score/embedding GNNs: analytic Ornstein-Uhlenbeck and Gaussian checks, exact resume,
model files, configs, unknown bead types."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

from openmm_cgml.data import write_dataset
from openmm_cgml.simulate.step import LearnedStep, rollout
from openmm_cgml.training import TrainConfig, load_model, train
from test_models import _pair_beadmap

S0 = 0.1  # nm, RMS of each component of a pair's separation vector at equilibrium (sqrt(kT/k))
THETA = 0.5  # 2 k dt / gamma: relaxation of the pair separation per frame


@pytest.fixture(autouse=True)
def _one_thread():
    # Two threads on two cores shared with other jobs make small matmuls ~100x slower; tests only.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _grid(n_pairs: int, spacing: float) -> np.ndarray:
    g = int(math.ceil(n_pairs ** (1 / 3)))
    return np.stack(np.meshgrid(*[np.arange(g)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_pairs] * spacing


def _ou_pairs(n_pairs: int, n_frames: int, seed: int) -> np.ndarray:
    """Exact overdamped Langevin of harmonic dimers (spring k, rest length 0, friction gamma per bead).

    The centre c diffuses: c' = c + N(0, kT dt / gamma) = c + N(0, S0² THETA / 2) per component. The separation
    r = x1 - x2 is an OU process: r' = r e^{-THETA} + N(0, S0² (1 - e^{-2 THETA})). Dimers sit 3 nm apart, far
    beyond the cutoff, so each bead only sees its partner.
    """
    rng = np.random.default_rng(seed)
    c = _grid(n_pairs, 3.0).astype(np.float64)
    r = rng.normal(0.0, S0, (n_pairs, 3))
    frames = []
    for _ in range(n_frames):
        x = np.empty((2 * n_pairs, 3))
        x[0::2], x[1::2] = c + r / 2, c - r / 2
        frames.append(x)
        c = c + rng.normal(0.0, S0 * math.sqrt(THETA / 2), c.shape)
        r = r * math.exp(-THETA) + rng.normal(0.0, S0 * math.sqrt(1 - math.exp(-2 * THETA)), r.shape)
    return np.array(frames)


@pytest.mark.parametrize("molecule_noise", [False, True])
def test_ou_dynamics_matches_analytic_gaussian(tmp_path, molecule_noise):
    """The learned acceleration distribution equals the exact one.

    Bead 1 moves by dx1 = dc + dr/2, Gaussian with mean (e^{-THETA} - 1) r/2 and per-component variance
    S0² (THETA/2 + (1 - e^{-2 THETA})/4), given the current state only (the process is Markov). The model's target
    is a = dx1 - h[-1], so its exact conditional law is N((e^{-THETA} - 1) r/2 - h[-1], that variance): the mean
    needs the partner's separation (an edge vector) and the history velocity, the std is a constant 0.064 nm.
    The two beads share the centre's step dc: their covariance is S0² (THETA/2 - (1 - e^{-2 THETA})/4), which a
    model with molecule noise learns as the shared loading (0.030 nm), leaving an own std of
    S0 sqrt((1 - e^{-2 THETA})/2) = 0.056 nm.
    """
    bm = _pair_beadmap(32, periodic=False)
    path = str(tmp_path / "ou.h5")
    write_dataset(path, bm, _ou_pairs(32, 200, seed=0), None, np.arange(200) * 10.0, {})
    config = TrainConfig(embed_dim=4, embed_hidden=8, embed_layers=1, hidden=32, n_layers=2, n_rbf=8, cutoff=0.6,
                         history_length=1, score_weight=0.0, batch_size=4, n_iterations=300, lr=3e-3, lr_final=3e-4,
                         checkpoint_every=0, validation_fraction=0.0, molecule_noise=molecule_noise)
    model = train(path, None, config, progress=False)
    assert model.timestep_ps == pytest.approx(10.0) and not model.periodic

    test = _ou_pairs(32, 2, seed=1)  # fresh states, not seen in training
    x = torch.tensor(test[1], dtype=torch.float32)
    h = torch.tensor(test[1] - test[0], dtype=torch.float32).unsqueeze(0)
    with torch.no_grad():
        step = LearnedStep.from_model(model, bm, refine=False)
        mean, std, shared = model.dynamics(x, h, step.embed, step.masses, step.bonds, None, None)
    r = np.zeros((64, 3))
    r[0::2] = test[1][0::2] - test[1][1::2]
    r[1::2] = -r[0::2]
    true_mean = (math.exp(-THETA) - 1) * r / 2 - h[0].numpy()
    true_std = S0 * math.sqrt(THETA / 2 + (1 - math.exp(-2 * THETA)) / 4)
    mean_error = float(np.sqrt(((mean.numpy() - true_mean) ** 2).mean()))
    assert mean_error < 0.06 * true_std, mean_error / true_std  # measured 0.02
    if molecule_noise:
        own = S0 * math.sqrt((1 - math.exp(-2 * THETA)) / 2)
        common = S0 * math.sqrt(THETA / 2 - (1 - math.exp(-2 * THETA)) / 4)
        assert float(std.mean()) == pytest.approx(own, rel=0.05)
        assert float(shared.mean()) == pytest.approx(common, rel=0.1)
        assert float(torch.sqrt((std ** 2 + shared ** 2).mean())) == pytest.approx(true_std, rel=0.05)
    else:
        assert float(std.mean()) == pytest.approx(true_std, rel=0.05)  # measured 1.006 x true
        assert float(std.std()) < 0.05 * true_std
        assert not shared.any()
    # A model that ignored the partner (mean = -h[-1]) would be off by 0.3 std: the check has teeth.
    assert float(np.sqrt(((-h[0].numpy() - true_mean) ** 2).mean())) > 0.2 * true_std


RHO_CENTRE, RHO_INTERNAL = 0.0, -0.6  # lag-1 correlations of a dimer's centre steps and separation steps


def _two_memory_dimers(n_pairs: int, n_frames: int, seed: int) -> np.ndarray:
    """Dimers whose centre steps and separation steps are AR(1) processes with different lag-1 correlations
    (RHO_CENTRE, RHO_INTERNAL) and the same per-bead variance, independent of the positions. Pairs sit 5 nm apart."""
    rng = np.random.default_rng(seed)
    s_centre = 0.05  # nm; the separation's innovations make var(dr / 2) = var(dc)
    s_sep = 2 * s_centre * math.sqrt((1 - RHO_INTERNAL ** 2) / (1 - RHO_CENTRE ** 2))
    c = _grid(n_pairs, 5.0).astype(np.float64)
    r = np.zeros_like(c)
    dc = rng.normal(0.0, s_centre / math.sqrt(1 - RHO_CENTRE ** 2), c.shape)
    dr = rng.normal(0.0, s_sep / math.sqrt(1 - RHO_INTERNAL ** 2), c.shape)
    frames = []
    for _ in range(n_frames):
        x = np.empty((2 * n_pairs, 3))
        x[0::2], x[1::2] = c + r / 2, c - r / 2
        frames.append(x)
        dc = RHO_CENTRE * dc + rng.normal(0.0, s_centre, c.shape)
        dr = RHO_INTERNAL * dr + rng.normal(0.0, s_sep, c.shape)
        c, r = c + dc, r + dr
    return np.array(frames)


def test_molecule_memory_learns_the_centre_and_internal_memories_apart(tmp_path):
    """Exact conditional mean of a bead's acceleration: (RHO_CENTRE - 1) v_centre + (RHO_INTERNAL - 1) v_own-part.
    With molecule memory the dynamics GNN gets the dimer centre's step right; without, one coefficient per history
    velocity must compromise between the two memories (least squares: halfway) and the centre inherits part of the
    separation's anti-correlation, the error that made the PEO chains sub-diffusive."""
    bm = _pair_beadmap(32, periodic=False)
    path = str(tmp_path / "memory.h5")
    write_dataset(path, bm, _two_memory_dimers(32, 200, seed=0), None, np.arange(200) * 10.0, {})
    test = _two_memory_dimers(32, 3, seed=1)
    x = torch.tensor(test[-2], dtype=torch.float32)
    h = torch.tensor(test[-2] - test[-3], dtype=torch.float32).unsqueeze(0)
    v_centre = (h[0, 0::2] + h[0, 1::2]) / 2
    errors = {}
    for memory in (False, True):
        config = TrainConfig(embed_dim=4, embed_hidden=8, embed_layers=1, hidden=32, n_layers=2, n_rbf=8, cutoff=0.6,
                             history_length=1, score_weight=0.0, batch_size=4, n_iterations=300, lr=3e-3,
                             lr_final=3e-4, checkpoint_every=0, validation_fraction=0.0, molecule_memory=memory)
        torch.manual_seed(0)
        model = train(path, None, config, progress=False)
        step = LearnedStep.from_model(model, bm, refine=False)
        with torch.no_grad():
            mean, _, _ = model.dynamics(x, h, step.embed, step.masses, step.bonds, None, None, None, step.molecule,
                                        step.n_molecules)
        centre = (mean[0::2] + mean[1::2]) / 2
        errors[memory] = float(torch.sqrt(((centre - (RHO_CENTRE - 1) * v_centre) ** 2).mean() /
                                          (v_centre ** 2).mean()))
    assert errors[True] < 0.05, errors  # measured 0.008
    # least squares over the components off the bond gives the centre an error of 0.3 sqrt(2/3) = 0.245 v_centre
    assert errors[False] > 0.18, errors  # measured 0.249


SIGMA_C = 0.1  # nm, per-component step of a free carrier bead's random walk
S_ION = 0.05  # nm, RMS of each component of an ion's offset from its carrier at equilibrium


def _carrier_ion_beadmap(n_pairs: int):
    """n_pairs single-bead carriers (type CAR) and n_pairs single-bead ions (type ION), carrier k at bead 2k."""
    from openmm_cgml.mapping import BeadMap

    n = 2 * n_pairs
    graphs = [{"elements": [e], "masses": [m], "atom_types": [f"{e}1:x"], "bonds": []} for e, m in (("C", 12.0),
                                                                                                   ("Li", 7.0))]
    return BeadMap.from_dict({
        "format_version": 1, "atom_to_bead": list(range(n)), "atom_masses": [12.0, 7.0] * n_pairs, "atom_bonds": [],
        "bead_types": [0, 1] * n_pairs, "type_names": ["CAR:C-000000", "ION:Li-000000"], "type_graphs": graphs,
        "bead_residue_names": ["CAR", "ION"] * n_pairs, "bead_species": ["CAR", "ION"] * n_pairs, "periodic": False,
    })


def _carried_ions(n_pairs: int, n_frames: int, seed: int) -> np.ndarray:
    """Carriers random-walk with per-component steps N(0, SIGMA_C²); each ion rides its carrier at an offset o
    that is an OU process, o' = o e^{-THETA} + N(0, S_ION² (1 - e^{-2 THETA})). Pairs sit 3 nm apart."""
    rng = np.random.default_rng(seed)
    c = _grid(n_pairs, 3.0).astype(np.float64)
    o = rng.normal(0.0, S_ION, c.shape)
    frames = []
    for _ in range(n_frames):
        x = np.empty((2 * n_pairs, 3))
        x[0::2], x[1::2] = c, c + o
        frames.append(x)
        c = c + rng.normal(0.0, SIGMA_C, c.shape)
        o = o * math.exp(-THETA) + rng.normal(0.0, S_ION * math.sqrt(1 - math.exp(-2 * THETA)), o.shape)
    return np.array(frames)


@pytest.fixture(scope="module")
def carried_run(tmp_path_factory):
    """A model with shell motion for the ions (and its bead map), trained on :func:`_carried_ions`."""
    bm = _carrier_ion_beadmap(32)
    path = str(tmp_path_factory.mktemp("carried") / "ions.h5")
    write_dataset(path, bm, _carried_ions(32, 200, seed=0), None, np.arange(200) * 10.0, {})
    config = TrainConfig(embed_dim=4, embed_hidden=8, embed_layers=1, hidden=32, n_layers=2, n_rbf=8, cutoff=0.6,
                         history_length=1, score_weight=0.0, batch_size=4, n_iterations=300, lr=3e-3, lr_final=3e-4,
                         checkpoint_every=0, validation_fraction=0.0, carried_species=["ION"], shell_radius=0.35)
    torch.manual_seed(0)
    return train(path, None, config, progress=False), bm


def test_shell_motion_learns_the_ion_relative_to_its_carrier(carried_run):
    """An ion moves by its carrier's step plus its offset's, o (e^{-THETA} - 1) + N(0, S_ION² (1 - e^{-2 THETA})):
    the model learns that small std (0.040 nm) for the ions, where a Gaussian of the ion alone would need
    sqrt(SIGMA_C² + 0.040²) = 0.108 nm, and SIGMA_C = 0.1 nm for the carriers (their acceleration given h)."""
    model, bm = carried_run
    test = _carried_ions(32, 2, seed=1)
    x = torch.tensor(test[1], dtype=torch.float32)
    h = torch.tensor(test[1] - test[0], dtype=torch.float32).unsqueeze(0)
    step = LearnedStep.from_model(model, bm, refine=False)
    assert step.shell_radius == pytest.approx(0.35) and step.carried.tolist() == [False, True] * 32
    with torch.no_grad():
        mean, std, _ = model.dynamics(x, h, step.embed, step.masses, step.bonds, None, None)
    relative = S_ION * math.sqrt(1 - math.exp(-2 * THETA))
    assert float(std[1::2].mean()) == pytest.approx(relative, rel=0.05)  # measured 1.002 x
    assert float(std[0::2].mean()) == pytest.approx(SIGMA_C, rel=0.05)
    true_mean = (math.exp(-THETA) - 1) * (test[1][1::2] - test[1][0::2])
    assert float(np.sqrt(((mean[1::2].numpy() - true_mean) ** 2).mean())) < 0.1 * relative  # measured 0.04


def test_shell_motion_step_adds_the_shell_acceleration(carried_run):
    """The step draws each ion's displacement relative to its carrier and adds the carrier's drawn one: the
    scripted and the batched step agree with that sum, and an ion stays by its carrier (0.04 nm, not 0.1)."""
    model, bm = carried_run
    test = _carried_ions(32, 2, seed=2)
    x = torch.tensor(test[1], dtype=torch.float32)
    h = torch.tensor(test[1] - test[0], dtype=torch.float32).unsqueeze(0)
    step = LearnedStep.from_model(model, bm, refine=False)
    scripted = torch.jit.script(step)
    dyn = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    empty = torch.zeros(0)
    with torch.no_grad():
        x1, _ = scripted(x, h, empty, dyn, torch.zeros(0, 64, 3))
        mean, std, _ = model.dynamics(x, h, step.embed, step.masses, step.bonds, None, None)
        two, _ = torch.jit.script(step.batched(2))(torch.cat([x, x]), torch.cat([h, h], 1), empty,
                                                   torch.cat([dyn, dyn]), torch.zeros(0, 128, 3))
    a = mean + std.unsqueeze(1) * dyn
    moved = h[0] + a
    moved[1::2] = a[1::2] + moved[0::2]
    torch.testing.assert_close(x1, x + moved)
    torch.testing.assert_close(two[:64], x1)
    moved_apart = (x1[1::2] - x1[0::2]) - (x[1::2] - x[0::2])
    assert float(moved_apart.std()) < 0.06


def _gaussian_pairs(n_pairs: int, n_frames: int, seed: int) -> np.ndarray:
    """Independent frames of dimers with separation r ~ N(0, S0² I) and random placement (flat in the centre)."""
    rng = np.random.default_rng(seed)
    grid = _grid(n_pairs, 4.0)
    out = []
    for _ in range(n_frames):
        c = grid + rng.normal(0.0, 0.5, grid.shape)
        r = rng.normal(0.0, S0, grid.shape)
        x = np.empty((2 * n_pairs, 3))
        x[0::2], x[1::2] = c + r / 2, c - r / 2
        out.append(x)
    return np.array(out)


def test_score_matches_smoothed_gaussian(tmp_path):
    """With noise sigma on every bead the separation is N(0, (S0² + 2 sigma²) I) and the centre stays flat, so the
    exact score of the smoothed density is s_1 = -r~ / (S0² + 2 sigma²) = -s_2 (r~ = x~1 - x~2)."""
    bm = _pair_beadmap(32, periodic=False)
    path = str(tmp_path / "gauss.h5")
    write_dataset(path, bm, _gaussian_pairs(32, 200, seed=0), None, np.arange(200) * 10.0, {})
    config = TrainConfig(embed_dim=4, embed_hidden=8, embed_layers=1, score_hidden=32, score_layers=2, n_rbf=8,
                         cutoff=0.8, history_length=1, sigma_max=0.2, sigma_min=0.02, n_sigmas=4, refine_levels=2,
                         dynamics_weight=0.0, batch_size=4, n_iterations=300, lr=3e-3, lr_final=3e-4,
                         checkpoint_every=0, validation_fraction=0.0)
    model = train(path, None, config, progress=False)
    x = torch.tensor(_gaussian_pairs(32, 1, seed=5)[0], dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    step = LearnedStep.from_model(model, bm, refine=False)
    errors = []
    with torch.no_grad():
        for sigma in model.config.levels():
            err, norm = 0.0, 0.0
            for _ in range(4):
                xt = x + sigma * torch.randn(x.shape, generator=gen)
                pred = model.score(xt, torch.full((64,), sigma), step.embed, step.masses, step.bonds, None, None)
                rt = xt[0::2] - xt[1::2]
                true = torch.empty_like(xt)
                true[0::2] = -rt / (S0**2 + 2 * sigma**2)
                true[1::2] = rt / (S0**2 + 2 * sigma**2)
                err += float(((pred - true) ** 2).sum())
                norm += float((true**2).sum())
            errors.append(math.sqrt(err / norm))
    # Relative RMS error per level (measured 0.14, 0.18, 0.13, 0.18); an untrained network gives ~1.
    assert max(errors) < 0.3 and float(np.mean(errors)) < 0.22, errors


# ------------------------------------------------------------------------------ runs, files, resume
def _small_dataset(path: str, seed: int, periodic: bool = True, n_frames: int = 40, element: str = "C"):
    rng = np.random.default_rng(seed)
    bm = _pair_beadmap(5, periodic=periodic, element=element, mass=12.0 if element == "C" else 28.0)
    box = np.array([1.6, 1.6, 1.6])
    x = rng.random((bm.n_beads, 3)) * box
    frames = [x]
    for _ in range(n_frames - 1):
        frames.append(frames[-1] + rng.normal(0.0, 0.03, x.shape))
    provenance = {"reference_config": {"atoms_per_bead": 3, "single_bead_residues": ["LI"], "whole_residues": []}}
    boxes = np.tile(box, (n_frames, 1)) if periodic else None
    write_dataset(path, bm, np.array(frames), boxes, np.arange(n_frames) * 2.0, provenance)
    return bm


SMALL = dict(embed_dim=4, embed_hidden=8, embed_layers=1, hidden=8, n_layers=1, n_rbf=4, cutoff=0.5, history_length=2,
             score_hidden=8, score_layers=1, n_sigmas=4, sigma_max=0.1, sigma_min=0.01, refine_levels=2,
             frames_per_step=2, batch_size=3, n_iterations=12, checkpoint_every=6, input_noise=0.003,
             validation_fraction=0.2, split="time", seed=3)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    data = str(root / "a.h5")
    bm = _small_dataset(data, 0)
    full = str(root / "full")
    model = train(data, full, TrainConfig(**SMALL), progress=False)
    return dict(root=root, data=data, bm=bm, full=full, model=model)


def test_resume_is_exact(small_run):
    root, data = small_run["root"], small_run["data"]
    killed = str(root / "killed")

    def kill(iteration, nll, dsm):
        if iteration == 8:
            raise KeyboardInterrupt  # killed two iterations after the checkpoint of iteration 6: they are redone

    with pytest.raises(KeyboardInterrupt):
        train(data, killed, TrainConfig(**SMALL), progress=False, callback=kill)
    assert os.path.exists(os.path.join(killed, "checkpoint.pt"))
    # an interrupted run leaves neither a model nor a (half-written) collision yardstick behind
    assert not os.path.exists(os.path.join(killed, "cgml_model.json"))
    assert not os.path.exists(os.path.join(killed, "contacts.json"))
    torch.manual_seed(12345)  # global RNG state must not matter: it is restored from the checkpoint
    np.random.seed(7)
    done = []
    resumed = train(data, killed, TrainConfig(**SMALL), progress=False, resume=True,
                    callback=lambda i, nll, dsm: done.append(i))
    # The resumed run starts at the checkpoint (iteration 6), not from scratch: a fresh run would give the same
    # weights (it is deterministic), so only this tells a real resume from a discarded checkpoint.
    assert done == list(range(7, 13)), done
    reference = small_run["model"].state_dict()
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, reference[name]), name
    # A different seed gives different weights (the equality above is not vacuous).
    other = train(data, None, TrainConfig(**{**SMALL, "seed": 4}), progress=False)
    assert not torch.equal(other.state_dict()["dynamics.vector_head.weight_mlp.0.weight"],
                           reference["dynamics.vector_head.weight_mlp.0.weight"])
    with pytest.raises(ValueError, match="config differs"):
        train(data, killed, TrainConfig(**{**SMALL, "lr": 0.5}), progress=False, resume=True)
    with pytest.raises(ValueError, match="already holds a training run"):
        train(data, killed, TrainConfig(**SMALL), progress=False, resume=False)


def test_fine_tuning_starts_from_the_model_and_keeps_frozen_parts(small_run):
    """init_from copies the trained weights and data scales; freeze holds those parts bit for bit while the rest
    (the score here) moves; a model with other bead types is refused in one line."""
    start = small_run["model"]
    config = TrainConfig(**{**SMALL, "init_from": small_run["full"], "freeze": ["embedding", "dynamics"],
                            "dynamics_weight": 0.0, "n_iterations": 4, "checkpoint_every": 0})
    tuned = train(small_run["data"], None, config, progress=False)
    before, after = start.state_dict(), tuned.state_dict()
    for name, value in after.items():
        if name.startswith(("embedding.", "dynamics.")):
            assert torch.equal(value, before[name]), name
    moved = [n for n, v in after.items() if n.startswith("score.") and not torch.equal(v, before[n])]
    assert moved, "the score GNN did not train"
    assert tuned.config.velocity_scale == start.config.velocity_scale
    assert tuned.config.accel_scale == start.config.accel_scale
    # From scratch the same config gives other dynamics weights: the copy above is not vacuous.
    scratch = train(small_run["data"], None, TrainConfig(**{**SMALL, "n_iterations": 1}), progress=False)
    assert not torch.equal(scratch.state_dict()["dynamics.vector_head.weight_mlp.0.weight"],
                           before["dynamics.vector_head.weight_mlp.0.weight"])
    other = str(small_run["root"] / "other_types.h5")
    _small_dataset(other, 1, element="Si")
    with pytest.raises(ValueError, match="bead types"):
        train(other, None, config, progress=False)
    with pytest.raises(ValueError, match="freeze must list"):
        TrainConfig(**{**SMALL, "freeze": ["embedding", "dynamics", "score"]})


def test_fine_tuning_grows_molecule_memory_from_the_old_predictions(small_run):
    """A model without molecule memory fine-tunes into one: every old weight is copied, the new head starts at
    zero (the same predictions), then trains; the reverse, dropping a trained head, is refused in one line."""
    from openmm_cgml.simulate.step import LearnedStep

    start = small_run["model"]
    grown_config = {**SMALL, "init_from": small_run["full"], "molecule_memory": True, "checkpoint_every": 0}
    untrained = train(small_run["data"], None, TrainConfig(**{**grown_config, "n_iterations": 1, "lr": 1e-30,
                                                              "lr_final": 1e-30}), progress=False)
    step = LearnedStep.from_model(start, small_run["bm"], refine=False)
    x = torch.tensor(np.random.default_rng(0).normal(0.0, 1.0, (step.n_beads, 3)), dtype=torch.float32)
    h = 0.05 * torch.randn(start.history_length, step.n_beads, 3, generator=torch.Generator().manual_seed(0))
    args = (x, h, step.embed, step.masses, step.bonds, None, None, None, step.molecule, step.n_molecules)
    with torch.no_grad():
        assert torch.allclose(untrained.dynamics(*args)[0], start.dynamics(*args)[0], atol=1e-6)
    grown = train(small_run["data"], str(small_run["root"] / "grown"), TrainConfig(**{**grown_config,
                                                                                     "n_iterations": 4}),
                  progress=False)
    head = [v for n, v in grown.state_dict().items() if n.startswith("dynamics.memory_head.")]
    assert head and any(bool(v.abs().sum() > 0) for v in head), "the molecule-memory head did not train"
    back = TrainConfig(**{**SMALL, "init_from": str(small_run["root"] / "grown"), "n_iterations": 1})
    with pytest.raises(ValueError, match="another architecture.*unexpected"):
        train(small_run["data"], None, back, progress=False)


def test_score_levels_draws_only_the_lowest_noise_levels():
    """score_levels=k trains the score on the k smallest sigmas only (the levels run from sigma_max down)."""
    from openmm_cgml.training.train import BatchShare, draw_noise

    config = TrainConfig(**{**SMALL, "score_levels": 2})
    share = BatchShare(500, slice(0, 500), 10, slice(0, 10))
    _, level, _ = draw_noise(torch.Generator().manual_seed(0), config, 3, share, 4)
    assert set(level.tolist()) == {2, 3}
    _, level, _ = draw_noise(torch.Generator().manual_seed(0), TrainConfig(**SMALL), 3, share, 4)
    assert set(level.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="score_levels"):
        TrainConfig(**{**SMALL, "score_levels": 5})


def test_contacts_written_by_train(small_run):
    """train() writes the collision yardstick itself: equal to contact_distances of the training data."""
    from openmm_cgml.data import contact_distances

    with open(os.path.join(small_run["full"], "contacts.json")) as f:
        contacts = json.load(f)
    model = load_model(small_run["full"])
    assert contacts == json.loads(json.dumps(contact_distances([small_run["data"]], timestep_ps=model.timestep_ps)))
    assert len(contacts["max_step_nm"]) == len(contacts["type_names"])  # what step_cap reads
    assert contacts["type_names"] == small_run["bm"].type_names
    assert not [f for f in os.listdir(small_run["full"]) if f.endswith(".tmp")]  # atomic writes leave no temp files


def test_training_records_data_paths_relative_to_the_working_directory(small_run, tmp_path, monkeypatch):
    """A model trained in a checkout names its data by paths that hold on any clone; data outside stays absolute."""
    checkout = tmp_path / "checkout"
    (checkout / "data").mkdir(parents=True)
    shutil.copy(small_run["data"], checkout / "data" / "a.h5")
    monkeypatch.chdir(checkout)
    train([os.path.join(str(checkout), "data", "a.h5"), small_run["data"]], "model",
          TrainConfig(**{**SMALL, "n_iterations": 1}), progress=False)
    with open(os.path.join("model", "cgml_model.json")) as f:
        trained_on = json.load(f)["extra"]["trained_on"]
    with open(os.path.join("model", "training_data.json")) as f:
        datasets = json.load(f)["datasets"]
    assert trained_on == datasets == [os.path.join("data", "a.h5"), os.path.abspath(small_run["data"])]


def test_resume_on_other_data_or_config_is_refused(small_run, tmp_path, capsys):
    """#9.3: `cgml train NEW.h5 -o FINISHED_RUN` is refused in one line and changes nothing in the run."""
    from openmm_cgml.cli import main as cli_main

    run = str(tmp_path / "run")
    shutil.copytree(small_run["full"], run)
    cfg = str(tmp_path / "cfg.yaml")
    TrainConfig(**SMALL).to_yaml(cfg)
    before = {f: open(os.path.join(run, f), "rb").read() for f in os.listdir(run)}
    new = str(tmp_path / "new.h5")
    _small_dataset(new, 9)  # same shape and types, other frames
    assert cli_main(["train", new, "-o", run, "--config", cfg, "--seed", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "other data" in err and "\n" not in err and "Traceback" not in err, err
    # a copy of the same data under another name is other data too (the paths are part of the fingerprint)
    same = str(tmp_path / "same.h5")
    shutil.copy(small_run["data"], same)
    with pytest.raises(ValueError, match="other data"):
        train(same, run, TrainConfig(**SMALL), progress=False, resume=True)
    with pytest.raises(ValueError, match="config differs"):
        train(small_run["data"], run, TrainConfig(**{**SMALL, "seed": 4}), progress=False, resume=True)
    after = {f: open(os.path.join(run, f), "rb").read() for f in os.listdir(run)}
    assert after == before  # weights, scales, trained_on, contacts.json all untouched
    # the same data and config resume the finished run without a single iteration
    done = []
    model = train(small_run["data"], run, TrainConfig(**SMALL), progress=False, resume=True,
                  callback=lambda i, nll, dsm: done.append(i))
    assert done == []
    for name, value in model.state_dict().items():
        assert torch.equal(value, small_run["model"].state_dict()[name]), name


def test_load_model_by_name():
    """openmm-ml style: load_model() is the default shipped model, load_model("peo-litfsi-calibrated") the same
    by name; the earlier defaults keep their names."""
    from openmm_cgml.training import DEFAULT_MODEL, PRETRAINED_MODELS

    assert "peo-litfsi" in PRETRAINED_MODELS and os.path.isdir(PRETRAINED_MODELS["peo-litfsi"])
    assert PRETRAINED_MODELS["peo-litfsi-calibrated"] == DEFAULT_MODEL != PRETRAINED_MODELS["peo-litfsi-molecule-memory"]
    by_default, by_name, by_path = load_model(), load_model("peo-litfsi-calibrated"), load_model(DEFAULT_MODEL)
    # its hard core, bond cap and step cap come from the training data's statistics, shipped next to the weights
    assert (by_default.config.hard_core, by_default.config.bond_cap, by_default.config.step_cap) == (0.9, 1.5, 1.5)
    assert {"min_distance_nm", "max_bond_nm", "max_step_nm"} <= set(by_default.contacts)
    with open(os.path.join(DEFAULT_MODEL, "cgml_model.json")) as f:
        shipped = json.load(f)
    for model in (by_default, by_name, by_path):
        assert model.config.timestep_ps == shipped["config"]["timestep_ps"]
        assert model.vocab.type_names == shipped["extra"]["vocab"]["type_names"]
        for name, value in model.state_dict().items():
            assert torch.equal(value, by_path.state_dict()[name]), name
    # the molecule-memory models fine-tuned only their predecessors' dynamics GNN (and grew molecule memory there):
    # embedding and score are peo-litfsi-molecule's, bit for bit
    before = load_model("peo-litfsi-molecule").state_dict()
    for model in (load_model("peo-litfsi-molecule-memory"), by_default):
        after = model.state_dict()
        changed = {name.split(".")[0] for name, value in after.items()
                   if name not in before or not torch.equal(value, before[name])}
        assert changed == {"dynamics"} and model.config.molecule_memory
        assert set(after) - set(before) == {name for name in after if name.startswith("dynamics.memory_head.")}
    # the default is rollout-calibrated: one factor per residue, fitted on committed training sets only
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert set(by_default.config.noise_scale) == {"LI", "PEO", "TFS"}
    assert not load_model("peo-litfsi-molecule-memory").config.noise_scale
    calibration = shipped["extra"]["calibration"]
    assert calibration["noise_scale"] == by_default.config.noise_scale
    assert all(os.path.isfile(os.path.join(root, p)) and "eo4_li9" not in p and "eo6_li8" not in p
               for p in calibration["datasets"])
    with pytest.raises(ValueError, match=r"unknown model 'peo-litfsi-xl'.*'peo-litfsi'.*'peo-litfsi-multi'") as err:
        load_model("peo-litfsi-xl")
    assert "\n" not in str(err.value)


def test_every_shipped_model_loads_and_names_committed_training_data():
    """Each registered model loads without unpickling, and its provenance points at datasets in this repository."""
    from openmm_cgml.training import PRETRAINED_MODELS

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name, path in PRETRAINED_MODELS.items():
        model = load_model(name)
        assert model.config.timestep_ps > 0 and os.path.isfile(os.path.join(path, "PROVENANCE.md")), name
        with open(os.path.join(path, "cgml_model.json")) as f:
            trained_on = json.load(f)["extra"]["trained_on"]
        assert trained_on and all(os.path.isfile(os.path.join(root, p)) for p in trained_on), (name, trained_on)


def test_saved_model_round_trip(small_run):
    model = load_model(small_run["full"])
    trained = small_run["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, trained.state_dict()[name]), name
    c = model.config
    assert c.timestep_ps == pytest.approx(4.0)  # 2 frames of 2 ps
    assert c.periodic and c.history_length == 2 and c.cutoff == 0.5
    assert c.velocity_scale > 0 and c.accel_scale > 0
    assert model.mapping == {"atoms_per_bead": 3, "single_bead_residues": ["LI"], "whole_residues": []}
    assert model.vocab.type_names == small_run["bm"].type_names
    # 26 training windows in batches of 3: one epoch (9 iterations) ended, so one validation was recorded.
    with open(os.path.join(small_run["full"], "cgml_model.json")) as f:
        extra = json.load(f)["extra"]
    assert extra["n_train_windows"] == 26 and extra["n_validation_windows"] == 2
    assert len(extra["validation"]) == 1 and extra["validation"][0]["iteration"] == 9
    assert math.isfinite(extra["validation"][0]["nll"]) and math.isfinite(extra["validation"][0]["dsm"])
    # The loaded model drives a scripted step; it is stochastic and the noise makes beads move.
    step = torch.jit.script(LearnedStep.from_model(model, small_run["bm"]))
    x = torch.rand(10, 3) * 1.6
    traj, h = rollout(step, x, torch.zeros(2, 10, 3), torch.tensor([1.6, 1.6, 1.6]), seed=0, n_steps=3)
    assert traj.shape == (3, 10, 3) and torch.isfinite(traj).all() and h.shape == (2, 10, 3)
    # The newest history row is the last step's displacement, up to whole box vectors where the random (split)
    # start was made whole.
    relabel = (h[-1] - (traj[-1] - traj[-2])) / 1.6
    torch.testing.assert_close(relabel, torch.round(relabel), rtol=0, atol=1e-5)


def test_corrupt_model_files_give_one_line_errors(small_run, tmp_path):
    bad_weights = str(tmp_path / "bad_weights")
    shutil.copytree(small_run["full"], bad_weights)
    weights = os.path.join(bad_weights, "weights.safetensors")
    with open(weights, "rb") as f:
        blob = f.read()
    with open(weights, "wb") as f:
        f.write(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="corrupt") as err:
        load_model(bad_weights)
    assert "\n" not in str(err.value)
    bad_json = str(tmp_path / "bad_json")
    shutil.copytree(small_run["full"], bad_json)
    with open(os.path.join(bad_json, "cgml_model.json"), "w") as f:
        f.write('{"format_version": 1, "kind": "cgml-dyn')
    with pytest.raises(ValueError, match="corrupt") as err:
        load_model(bad_json)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing"))
    from safetensors.torch import load_file, save_file

    nan_weights = str(tmp_path / "nan_weights")
    shutil.copytree(small_run["full"], nan_weights)
    tensors = load_file(os.path.join(nan_weights, "weights.safetensors"))
    name = sorted(k for k in tensors if tensors[k].is_floating_point())[0]
    tensors[name] = tensors[name].clone().fill_(float("nan"))
    save_file(tensors, os.path.join(nan_weights, "weights.safetensors"))
    with pytest.raises(ValueError, match="non-finite") as err:
        load_model(nan_weights)
    assert "\n" not in str(err.value)
    for config in ('"not a dict"', '{"timestep_ps": 0.0}', '{"hidden": 64, "n_heads": 2}'):
        bad_config = str(tmp_path / f"bad_config{len(config)}")
        shutil.copytree(small_run["full"], bad_config)
        with open(os.path.join(bad_config, "cgml_model.json")) as f:
            manifest = json.load(f)
        manifest["config"] = json.loads(config) if config.startswith("{") else "not a dict"
        if config.startswith("{"):
            with open(os.path.join(small_run["full"], "cgml_model.json")) as f:
                manifest["config"] = {**json.load(f)["config"], **json.loads(config)}
        with open(os.path.join(bad_config, "cgml_model.json"), "w") as f:
            json.dump(manifest, f)
        with pytest.raises(ValueError) as err:
            load_model(bad_config)
        assert "\n" not in str(err.value) and ("mapping" in str(err.value) or "consistent" in str(err.value)), err
    bad_ckpt = str(tmp_path / "bad_ckpt")
    shutil.copytree(small_run["full"], bad_ckpt)
    with open(os.path.join(bad_ckpt, "checkpoint.pt"), "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot resume") as err:
        train(small_run["data"], bad_ckpt, TrainConfig(**SMALL), progress=False, resume=True)
    assert "\n" not in str(err.value)


def test_unknown_bead_types_and_periodicity(small_run, tmp_path):
    model = small_run["model"]
    other = _small_dataset(str(tmp_path / "si.h5"), 1, element="Si")
    with pytest.raises(ValueError, match=r"not trained on bead types \['PAIR:Si-000000'\]"):
        LearnedStep.from_model(model, other)
    step = LearnedStep.from_model(model, other, allow_unseen_types=True)
    assert torch.isfinite(step.embed).all()
    nonperiodic = _small_dataset(str(tmp_path / "np.h5"), 2, periodic=False)
    with pytest.raises(ValueError, match="periodic"):
        LearnedStep.from_model(model, nonperiodic)
    with pytest.raises(ValueError, match="periodicity"):
        train([small_run["data"], str(tmp_path / "np.h5")], None, TrainConfig(**SMALL), progress=False)


def test_config_yaml_and_validation(tmp_path):
    config = TrainConfig(**SMALL)
    path = str(tmp_path / "cfg.yaml")
    config.to_yaml(path)
    assert TrainConfig.from_yaml(path) == config
    with open(path, "a") as f:
        f.write("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown training config keys \\['learning_rate'\\]") as err:
        TrainConfig.from_yaml(path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="validation_fraction"):
        TrainConfig(validation_fraction=1.5).validate()
    with pytest.raises(ValueError, match="no training windows"):
        data = str(tmp_path / "short.h5")
        _small_dataset(data, 0, n_frames=5)
        train(data, None, TrainConfig(**SMALL), progress=False)


def test_every_config_refuses_bad_keys_types_and_yaml_in_one_line(tmp_path):
    from openmm_cgml.training import ModelConfig, OptimConfig
    from openmm_cgml.training.dig import DiGConfig
    from openmm_cgml.training.pidp import PIDPConfig

    for cls in (TrainConfig, ModelConfig, OptimConfig, DiGConfig, PIDPConfig):
        with pytest.raises(ValueError, match=r"unknown .*config keys \['lr_max'\]") as err:
            cls.from_dict({"lr_max": 1.0})
        assert "\n" not in str(err.value)
    bad = [(TrainConfig, {"lr": "fast"}, "lr must be a finite number"), (TrainConfig, {"batch_size": 2.5}, "integer"),
           (TrainConfig, {"lr": float("nan")}, "finite"), (TrainConfig, {"n_layers": 0}, "n_layers must be >= 1"),
           (TrainConfig, {"split": 3}, "string"), (ModelConfig, {"timestep_ps": 0.0}, "timestep_ps must be > 0"),
           (ModelConfig, {"mapping": [1]}, "mapping"), (DiGConfig, {"schedule": "cosine"}, "schedule"),
           (DiGConfig, {"hidden": 30, "heads": 4}, "divisible"), (DiGConfig, {"ema_decay": 1.0}, "ema_decay"),
           (DiGConfig, {"gaussian_skip": "yes"}, "true or false"), (PIDPConfig, {"kT": -1.0}, "kT"),
           (PIDPConfig, {"fpe_weighting": "sigma"}, "fpe_weighting")]
    for cls, values, message in bad:
        with pytest.raises(ValueError, match=message) as err:
            cls.from_dict(values)
        assert "\n" not in str(err.value), values
    assert TrainConfig.from_dict({"lr": "1e-3"}).lr == 1e-3  # YAML 1.1 reads 1e-3 (no dot) as a string
    assert DiGConfig.from_dict({"n_iterations": np.int64(3)}).n_iterations == 3
    broken = str(tmp_path / "broken.yaml")
    with open(broken, "w") as f:
        f.write("lr: [0.1\nbatch_size: 3\n")
    for cls in (TrainConfig, DiGConfig):
        with pytest.raises(ValueError, match="not valid YAML") as err:
            cls.from_yaml(broken)
        assert "\n" not in str(err.value)
    listing = str(tmp_path / "list.yaml")
    with open(listing, "w") as f:
        f.write("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        TrainConfig.from_yaml(listing)


def test_train_main_reads_yaml_and_seed(small_run, tmp_path, capsys):
    from openmm_cgml.training import train_main

    cfg = str(tmp_path / "cfg.yaml")
    TrainConfig(**{**SMALL, "n_iterations": 2}).to_yaml(cfg)
    out = str(tmp_path / "model")
    assert train_main([small_run["data"]], out, config_path=cfg, seed=5) == out
    assert "written to" in capsys.readouterr().out
    with open(os.path.join(out, "cgml_model.json")) as f:
        extra = json.load(f)["extra"]
    assert extra["training"]["seed"] == 5 and extra["iterations"] == 2
    assert TrainConfig.from_yaml(os.path.join(out, "config.yaml")).seed == 5
    assert load_model(out).config.history_length == 2
