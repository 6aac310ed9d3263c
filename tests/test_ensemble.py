"""`cgml simulate --scheduler`: replicas as Dask tasks on a LocalCluster, equal to single-process runs, surviving
a worker killed with SIGKILL. One 2-worker cluster (loopback only) serves the module and is stopped at its end."""
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from openmm_cgml.cli import main
from openmm_cgml.data import CGDataset
from openmm_cgml.workflows import simulate_ensemble, simulate_main

from test_workflows import model_and_system  # noqa: F401  (the tiny model and 76-atom box, saved once)

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as local:
        yield local


def _frames(path):
    with CGDataset(str(path)) as ds:
        return ds.positions[:], ds.time.copy()


def test_two_worker_ensemble_equals_single_process_runs(model_and_system, cluster, tmp_path):
    """Replica r of the ensemble is `cgml simulate --replicas 1 --seed S+r` bit for bit, and replica r of the batched
    `cgml simulate --replicas R --seed S` up to float32 round-off of the batched graph."""
    root, beadmap = model_and_system
    model, system = str(root / "model"), str(root / "system")
    rc = main(["simulate", model, "--system", system, "--ns", "1.0", "--replicas", "2", "--seed", "5", "--quiet",
               "--scheduler", cluster.scheduler_address, "-o", str(tmp_path / "ens")])
    assert rc == 0
    summary = json.loads((tmp_path / "ens" / "simulate.json").read_text())
    assert summary["replicas"] == 2 and summary["workers"] == 2 and summary["complete"]
    assert summary["steps"] == 20 and summary["replicas_per_hour"] > 0
    simulate_main(model, system, ns=1.0, out_dir=str(tmp_path / "batched"), replicas=2, seed=5, progress=False)
    for r in range(2):
        simulate_main(model, system, ns=1.0, out_dir=str(tmp_path / f"alone{r}"), replicas=1, seed=5 + r,
                      progress=False)
        x, t = _frames(tmp_path / "ens" / f"replica_{r}.h5")  # the link to replica_r/replica_0.h5
        x_alone, t_alone = _frames(tmp_path / f"alone{r}" / "replica_0.h5")
        x_batched, t_batched = _frames(tmp_path / "batched" / f"replica_{r}.h5")
        assert x.shape == (11, beadmap.n_beads, 3)
        assert np.array_equal(x, x_alone) and np.array_equal(t, t_alone)
        assert np.array_equal(t, t_batched)
        # Batched and single float32 graphs round differently (~1e-7 nm per step); this untrained model is
        # chaotic, so the gap grows: measured <= 2e-6 nm after 10 steps (0.1 nm after 100).
        np.testing.assert_allclose(x, x_batched, rtol=0, atol=5e-5)
    assert not np.allclose(_frames(tmp_path / "ens" / "replica_0.h5")[0][-1],
                           _frames(tmp_path / "ens" / "replica_1.h5")[0][-1])  # seeds 5 and 6 differ


def _wait_for_step(checkpoint, step, timeout=120.0):
    # Poll the atomically replaced checkpoint, never the HDF5 file the worker writes (h5py locks it).
    start = time.time()
    while time.time() - start < timeout:
        try:
            with np.load(checkpoint) as data:
                if int(data["step_index"]) >= step:
                    return
        except (OSError, ValueError, KeyError):
            pass  # not written yet
        time.sleep(0.05)
    raise AssertionError(f"{checkpoint} never reached step {step}")


def test_ensemble_survives_a_killed_worker(model_and_system, cluster, tmp_path):
    """SIGKILL to the worker running replica 0 past its checkpoint at step 20: the task reruns on a worker from that
    checkpoint; every frame equals the uninterrupted run, none lost or duplicated."""
    root, _ = model_and_system
    model, system = str(root / "model"), str(root / "system")
    n_steps, ns = 120, 12.0
    killed = []

    def kill_the_worker_of_replica_0():
        _wait_for_step(str(tmp_path / "ens" / "replica_0" / "checkpoint.npz"), 20)
        with distributed.Client(cluster.scheduler_address) as client:
            pids = client.run(os.getpid)
            busy = [w for w, keys in client.processing().items() if any("simulate-0-" in str(k) for k in keys)]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(pids[busy[0]])

    killer = threading.Thread(target=kill_the_worker_of_replica_0)
    killer.start()
    summary = simulate_ensemble(model, system, ns, str(tmp_path / "ens"), cluster.scheduler_address, replicas=2,
                                seed=2, progress=False, checkpoint_every=10)
    killer.join()
    assert killed, "replica 0 finished before its worker could be killed"
    assert summary["complete"] and summary["per_replica"][0]["resumed_from_step"] >= 20  # resumed, not restarted
    for r in range(2):
        simulate_main(model, system, ns, str(tmp_path / f"whole{r}"), replicas=1, seed=2 + r, progress=False,
                      checkpoint_every=10)
        x, t = _frames(tmp_path / "ens" / f"replica_{r}.h5")
        x_whole, t_whole = _frames(tmp_path / f"whole{r}" / "replica_0.h5")
        assert x.shape[0] == n_steps + 1  # steps 0 .. 120: none lost, none duplicated
        np.testing.assert_array_equal(t, t_whole)
        np.testing.assert_array_equal(np.diff(t), np.full(n_steps, t[1] - t[0]))
        np.testing.assert_array_equal(x, x_whole)


def test_replica_range_runs_replica_r_of_the_whole_run(model_and_system, tmp_path):
    """A task's slice (seed S+r) follows replica r of the whole single-process run (to float32 round-off)."""
    root, _ = model_and_system
    model, system = str(root / "model"), str(root / "system")
    simulate_main(model, system, ns=0.3, out_dir=str(tmp_path / "all"), replicas=3, seed=7, progress=False)
    simulate_main(model, system, ns=0.3, out_dir=str(tmp_path / "one"), replicas=3, seed=7, progress=False,
                  replica_range=(2, 3))
    x_all, _ = _frames(tmp_path / "all" / "replica_2.h5")
    x_one, _ = _frames(tmp_path / "one" / "replica_0.h5")
    np.testing.assert_allclose(x_one, x_all, rtol=0, atol=5e-5)
    with pytest.raises(ValueError, match="not a slice of the 3 replicas"):
        simulate_main(model, system, ns=0.3, out_dir=str(tmp_path / "bad"), replicas=3, replica_range=(2, 4))


@pytest.mark.parametrize("scheduler, message", [("local:0", "local:N with N >= 1"), ("", "scheduler must be")])
def test_bad_scheduler_is_refused_in_one_line_and_writes_nothing(model_and_system, tmp_path, capsys, scheduler,
                                                                 message):
    root, _ = model_and_system
    rc = main(["simulate", str(root / "model"), "--system", str(root / "system"), "--ns", "0.1", "--quiet",
               "--scheduler", scheduler, "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def test_ensemble_refuses_a_single_process_run_directory(model_and_system, tmp_path):
    root, _ = model_and_system
    model, system = str(root / "model"), str(root / "system")
    simulate_main(model, system, ns=0.1, out_dir=str(tmp_path / "run"), progress=False)
    with pytest.raises(ValueError, match="single-process run; resume it without --scheduler"):
        simulate_ensemble(model, system, 0.1, str(tmp_path / "run"), "local:1", progress=False)
