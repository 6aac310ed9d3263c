"""Tests of baseline (c) of the polymer benchmark: the supervised property GNN (benchmarks/polymer/supervised.py)."""
import copy
import os
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from benchmarks.polymer.make_datasets import _timestep_ps, load_fine_observables, make_dataset
from benchmarks.polymer.metrics import relaxation_time
from benchmarks.polymer.supervised import (ChainGraphs, PropertyGNN, chain_labels, fit_property_gnn, score,
                                           supervised_baseline)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------- synthetic graphs
def _vocabulary(rng, n_types=12):
    """Bead types like the polymer's: paths of 4-7 'C' / 'O' atoms of 100 amu (chosen so that C fractions
    above and below 1/2 both occur)."""
    graphs = []
    for t in range(n_types):
        n = 4 + t % 4
        n_c = int(rng.integers(0, n + 1)) if t >= 2 else (0 if t == 0 else n)
        elements = ["C"] * n_c + ["O"] * (n - n_c)
        rng.shuffle(elements)
        graphs.append({"elements": elements, "masses": [100.0] * n, "bonds": [[i, i + 1, 0] for i in range(n - 1)]})
    return graphs


def _chain(rng, vocab):
    """A random chain over ``vocab`` and its two targets, known functions of its bead composition: twice the
    mean C fraction of its beads, and the fraction of its beads that are mostly C (a step, not a linear map)."""
    n_beads = int(rng.integers(5, 11))
    used = rng.integers(0, len(vocab), size=n_beads)
    kinds, bead_types = np.unique(used, return_inverse=True)  # a BeadMap lists only the types it uses
    graphs = [vocab[k] for k in kinds]
    c_fraction = np.array([vocab[k]["elements"].count("C") / len(vocab[k]["elements"]) for k in used])
    bm = SimpleNamespace(n_beads=n_beads, bead_types=bead_types, type_graphs=graphs,
                         bead_masses=np.array([100.0 * len(vocab[k]["elements"]) for k in used]),
                         bonds=np.array([[b, b + 1] for b in range(n_beads - 1)]))
    return bm, [2.0 * c_fraction.mean(), float((c_fraction > 0.5).mean())]


def test_property_gnn_learns_bead_composition_and_beats_the_mean():
    rng = np.random.default_rng(0)
    vocab = _vocabulary(rng)
    maps, targets = zip(*[_chain(rng, vocab) for _ in range(72)])
    targets = np.array(targets)
    train = ChainGraphs(maps[:48], targets[:48])
    held_out = ChainGraphs(maps[48:])
    assert len(train.type_keys) <= len(vocab)  # the same atom graph in two chains is one type
    model, loop = fit_property_gnn(train, n_iterations=200, seed=0, batch_size=16)
    assert len(loop.losses) == 200 and loop.losses[-1][0] < 0.1  # standardised MSE of the first target
    pred = model.predict(held_out)
    assert pred.shape == (24, 2) and np.isfinite(pred).all()
    mse = ((pred - targets[48:]) ** 2).mean(axis=0)
    constant = ((targets[:48].mean(axis=0) - targets[48:]) ** 2).mean(axis=0)
    assert np.all(mse < 0.2 * constant), (mse, constant)
    # Without its bead types the model cannot tell chains apart: give every bead one type and it cannot learn.
    blind = [SimpleNamespace(**{**vars(bm), "bead_types": np.zeros(bm.n_beads, int),
                                "type_graphs": [vocab[0]]}) for bm in maps]
    blind_model, _ = fit_property_gnn(ChainGraphs(blind[:48], targets[:48]), n_iterations=100, seed=0)
    blind_mse = ((blind_model.predict(ChainGraphs(blind[48:])) - targets[48:]) ** 2).mean(axis=0)
    assert blind_mse[0] > 5 * mse[0]


def test_chain_graphs_pack_both_bond_directions_and_refuse_bad_input():
    bm = SimpleNamespace(n_beads=3, bead_types=np.array([0, 1, 0]), bead_masses=np.array([700.0, 800.0, 700.0]),
                         type_graphs=[{"elements": ["C"], "masses": [700.0]}, {"elements": ["O"], "masses": [800.0]}],
                         bonds=np.array([[0, 1], [1, 2]]))
    batch = ChainGraphs([bm, bm]).batch([1, 0])
    assert batch.n_graphs == 2 and batch.batch.tolist() == [0, 0, 0, 1, 1, 1]
    pairs = {tuple(e) for e in batch.edge_index.t().tolist()}
    assert pairs == {(0, 1), (1, 0), (1, 2), (2, 1), (3, 4), (4, 3), (4, 5), (5, 4)}
    assert batch.edge_attr[:, 0].tolist() == [1.0] * 8 and batch.edge_attr[:, 1].tolist() == [0.5] * 8
    out = PropertyGNN()(ChainGraphs([bm]).type_graphs, ChainGraphs([bm]).batch([0]))
    assert out.shape == (1, 2)
    with pytest.raises(ValueError, match="at least one chain"):
        ChainGraphs([])
    with pytest.raises(ValueError, match="finite"):
        ChainGraphs([bm], [[np.nan, 1.0]])


# ---------------------------------------------------------------------------------------------- tiny datasets
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny config with a class-I 'train' and a class-II 'truth' dataset, made once for this module."""
    with open(os.path.join(REPO, "benchmarks", "polymer", "config.yaml")) as handle:
        config = yaml.safe_load(handle)
    config["physics"]["chain_length"] = 40
    common = dict(equilibration_steps=100, steps=300, frame_interval=50, observable_interval=50,
                  checkpoint_interval=100)
    config["datasets"] = {
        "train": dict(common, sequence_class="I", sequence_seed=5, n_chains=4, chains_per_batch=4, seed=3),
        "truth": dict(common, sequence_class="II", sequence_seed=6, n_chains=2, chains_per_batch=2, seed=4)}
    root = str(tmp_path_factory.mktemp("polymer"))
    for name in config["datasets"]:
        assert make_dataset(copy.deepcopy(config), name, root, progress=False)["complete"]
    return config, root


def test_chain_labels_are_the_fine_observables_after_the_cut(tiny):
    config, root = tiny
    rg2 = load_fine_observables(os.path.join(root, "train"))["rg2_cg"]
    dt = _timestep_ps(config["physics"])[0] * 50
    labels = chain_labels(config, root, "train", discard_steps=100)
    assert len(labels) == 4
    for k, label in enumerate(labels):
        assert label["rg2_nm2"] == pytest.approx(rg2[2:, k].mean())
        assert label["tau_ps"] == pytest.approx(relaxation_time(rg2[2:, k], dt))
    assert chain_labels(config, root, "train")[0]["rg2_nm2"] == pytest.approx(rg2[:, 0].mean())
    with pytest.raises(ValueError, match="multiple"):
        chain_labels(config, root, "train", discard_steps=75)
    with pytest.raises(ValueError, match="at least 2"):
        chain_labels(config, root, "train", discard_steps=300)


def test_supervised_baseline_predicts_every_truth_chain_reproducibly(tiny, tmp_path):
    config, root = tiny
    result = supervised_baseline(config, root, train="train", truth="truth", n_iterations=40, seed=1)
    assert result["n_train_chains"] == 4 and len(result["per_chain"]) == 2
    for chain in result["per_chain"]:
        assert np.isfinite(chain["rg2_pred_nm2"]) and chain["rg2_pred_nm2"] > 0
        assert np.isfinite(chain["tau_pred_ps"]) and chain["tau_pred_ps"] > 0
    assert result["train_labels"]["rg2_nm2"]["min"] <= result["train_labels"]["rg2_nm2"]["max"]
    assert np.isfinite(result["train_rg2_mean_abs_rel_error"])
    again = supervised_baseline(config, root, train="train", truth="truth", n_iterations=40, seed=1)
    assert again["per_chain"] == result["per_chain"]
    other = supervised_baseline(config, root, train="train", truth="truth", n_iterations=40, seed=2)
    assert other["per_chain"] != result["per_chain"]  # the seed is used
    truth = chain_labels(config, root, "truth")
    scored = score(result["per_chain"], truth)
    assert scored["n_chains"] == 2 and np.isfinite(scored["tau_mean_abs_log10_ratio"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no chain_"):
        supervised_baseline(config, str(tmp_path), train="empty", truth="truth")
