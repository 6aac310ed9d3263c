"""Data-parallel training (DDP, gloo over loopback): 2 ranks follow 1 rank on the same global batch, a 2-rank run
stopped between checkpoints resumes to the weights of the uninterrupted run, sharding arithmetic."""
import os
import subprocess
import sys

import pytest
import torch

from openmm_cgml.training import TrainConfig, train
from openmm_cgml.training.distributed import share_bounds, spawn
from test_training import SMALL, _small_dataset

# The ranks are forked (CPU only): fresh interpreters would spend most of each test importing torch.
START = "fork"
# 26 training windows; batch 5 ends each epoch with a batch of 1 window, so rank 1 gets an empty share
# there; weight decay and EMA make an Adam step on a parameter no rank used (or a wrongly reduced one) show
DDP = {**SMALL, "batch_size": 5, "n_iterations": 8, "checkpoint_every": 3, "weight_decay": 0.01, "ema_decay": 0.5}


class StopAt:
    """A training callback that stops the run (on every rank) after ``iteration``."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def __call__(self, iteration, nll, dsm):
        if iteration == self.iteration:
            raise KeyboardInterrupt


def _run_stopped(data, out, config, stop, device="cpu"):
    """Train on this rank until ``stop`` raises (the spawned processes must exit cleanly, so swallow it)."""
    try:
        train(data, out, config, device=device, progress=False, callback=stop)
    except KeyboardInterrupt:
        pass


def _train_expecting_error(data, out, config, marks, device="cpu"):
    """Train on this rank; record the ValueError message in ``marks``/RANK (no error: the test fails)."""
    from openmm_cgml.training.distributed import rank

    try:
        train(data, out, config, device=device, progress=False, resume=True)
        message = "no error"
    except ValueError as err:
        message = str(err)
    with open(os.path.join(marks, str(rank())), "w") as f:
        f.write(message)


def _checkpoint(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the spawned ranks: one thread each
    root = tmp_path_factory.mktemp("ddp")
    data = str(root / "a.h5")
    _small_dataset(data, 0)
    single = str(root / "single")
    train(data, single, TrainConfig(**DDP), progress=False)
    double = str(root / "double")
    spawn(2, train, data, double, DDP, device="cpu", progress=False, start_method=START)
    return dict(root=root, data=data, single=single, double=double)


def test_share_bounds_partition_the_batch():
    for n in range(0, 9):
        for world in (1, 2, 3, 4):
            parts = [share_bounds(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1


def test_two_ranks_follow_one_rank(runs):
    """2 ranks x batch 2.5 (shares 3+2, and 1+0 at each epoch end) == 1 rank x batch 5, to float rounding."""
    one, two = _checkpoint(runs["single"]), _checkpoint(runs["double"])
    assert int(two["iteration"]) == int(one["iteration"]) == DDP["n_iterations"]
    # the reported losses are the all-reduced batch means, not rank 0's share
    torch.testing.assert_close(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    for name, value in one["ema"].items():
        torch.testing.assert_close(two["ema"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    # Adam stepped the same parameters (those no rank used keep grad None, as in one process)
    assert sorted(two["optimizer"]["state"]) == sorted(one["optimizer"]["state"])
    torch.testing.assert_close(two["generator"], one["generator"], rtol=0, atol=0)  # same draws
    assert torch.equal(two["objective"]["order"], one["objective"]["order"])
    # the model files are written (by rank 0) and load
    assert os.path.exists(os.path.join(runs["double"], "cgml_model.json"))
    # not vacuous: one rank with half the batch trains to other weights
    half = train(runs["data"], None, TrainConfig(**{**DDP, "batch_size": 3}), progress=False)
    name = "dynamics.vector_head.weight_mlp.0.weight"
    assert (half.state_dict()[name] - one["model"][name]).abs().max() > 1e-3


def test_two_rank_run_stopped_and_resumed_is_exact(runs):
    """Stopped after iteration 5 (checkpoint at 3), resumed on 2 ranks: the weights of the uninterrupted run."""
    out = str(runs["root"] / "stopped")
    spawn(2, _run_stopped, runs["data"], out, DDP, StopAt(5), device="cpu", start_method=START)
    assert int(_checkpoint(out)["iteration"]) == 3
    assert not os.path.exists(os.path.join(out, "cgml_model.json"))
    spawn(2, train, runs["data"], out, DDP, device="cpu", progress=False, start_method=START)
    resumed, reference = _checkpoint(out), _checkpoint(runs["double"])
    for name, value in reference["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    assert torch.equal(resumed["losses"], reference["losses"])


def test_cgml_train_nproc_launches_torchrun(monkeypatch, tmp_path):
    """`cgml train --nproc 2` hands the same arguments to `python -m openmm_cgml.training` under torchrun on
    loopback; a failed run is one line and exit status 2."""
    from openmm_cgml import cli

    calls = []

    class Done:
        returncode = 1

    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or Done())
    rc = cli.main(["train", "a.h5", "b.h5", "-o", str(tmp_path / "m"), "--config", "c.yaml", "--seed", "4",
                   "--nproc", "2"])
    assert rc == 2
    (cmd,) = calls
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nproc-per-node") + 1] == "2" and cmd[cmd.index("--master-addr") + 1] == "127.0.0.1"
    tail = cmd[cmd.index("openmm_cgml.training") + 1:]
    assert tail == ["a.h5", "b.h5", "-o", str(tmp_path / "m"), "--device", "cpu", "--config", "c.yaml",
                    "--seed", "4"]
    assert cli.main(["train", "a.h5", "-o", str(tmp_path / "m"), "--nproc", "0"]) == 2


# A real torchrun: 3 interpreters importing torch take 15-60 s on a loaded 2-core machine, so on request only.
@pytest.mark.skipif(os.environ.get("CGML_TEST_TORCHRUN") != "1", reason="set CGML_TEST_TORCHRUN=1 to run torchrun")
def test_cgml_train_nproc_runs_torchrun(runs, tmp_path):
    """`cgml train --nproc 2` (torchrun, 2 ranks on loopback) trains the weights of the 1-rank run."""
    config = tmp_path / "cfg.yaml"
    TrainConfig(**DDP).to_yaml(str(config))
    out = str(tmp_path / "cli")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "openmm_cgml.cli", "train", runs["data"], "-o", out, "--config", str(config),
           "--nproc", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = _checkpoint(runs["single"]), _checkpoint(out)
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert os.path.exists(os.path.join(out, "cgml_model.json"))
    assert "written to" in done.stdout and done.stdout.count("written to") == 1  # rank 0 reports, once


def test_error_on_rank_0_stops_every_rank(runs, tmp_path):
    """Resuming with another config is refused by rank 0 (which checks the run directory); the other rank gets the
    same one-line error instead of waiting for rank 0 forever."""
    marks = str(tmp_path)
    spawn(2, _train_expecting_error, runs["data"], runs["double"], {**DDP, "lr": 0.5}, marks, device="cpu",
          start_method=START)
    for r in ("0", "1"):
        with open(os.path.join(marks, r)) as f:
            assert f.read().startswith("config differs"), r
