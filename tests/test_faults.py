"""Fault injection (short version of ``python -m benchmarks.faults``): SIGKILL, rerun the same command, compare.

Each long-running verb is killed twice at seeded random moments after it has started work, rerun with the same
command each time, and finished; the result must equal an uninterrupted run bit for bit, with no frame lost or
duplicated.
"""
import os
import random

import numpy as np
import pytest

from benchmarks.faults import reference_scenario, run_scenario, simulate_scenario, train_scenario

KILLS = 2


def _assert_survived(result):
    assert result["final_rc"] == 0
    assert result["kills_landed"] >= 1, result["kills"]  # at least one kill hit a running process
    assert not [k for k in result["kills"] if not k["killed"] and k["rc"] != 0], result["kills"]
    assert result["mismatches"] == [], result["mismatches"]


@pytest.fixture(scope="module")
def work(tiny_peo_litfsi, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return {"root": str(root), "system": tiny_peo_litfsi.save(str(root / "system"))}


@pytest.fixture(scope="module")
def reference_run(work):
    scenario = reference_scenario(work["system"], work["root"], ns=0.004)
    return scenario, run_scenario(scenario, KILLS, random.Random(1))


def test_reference_survives_sigkill(reference_run):
    scenario, result = reference_run
    _assert_survived(result)
    got = scenario.result(scenario.out_dir)
    # no frame lost or duplicated: 21 frames, 0.2 ps apart
    np.testing.assert_array_equal(got["time"], np.arange(21) * 0.2)


def test_train_survives_sigkill(work, reference_run):
    scenario, _ = reference_run
    dataset = os.path.join(scenario.out_dir + "-uninterrupted", "cg.h5")
    _assert_survived(run_scenario(train_scenario(dataset, work["root"], n_iterations=24), KILLS, random.Random(2)))


def test_simulate_survives_sigkill(work, tiny_peo_litfsi):
    from openmm_cgml.systems import BuiltSystem
    from openmm_cgml.training import model_path

    b = tiny_peo_litfsi  # its 1.46 nm box is below twice the shipped model's cutoff: give it a 1.7 nm box
    roomy = BuiltSystem(b.topology, b.system, b.positions, b.box_vectors * (1.7 / 1.461), b.temperature,
                        dict(b.metadata))
    system = roomy.save(os.path.join(work["root"], "roomy"))
    scenario = simulate_scenario(model_path(None), system, work["root"], ns=0.6)
    _assert_survived(run_scenario(scenario, KILLS, random.Random(3)))
