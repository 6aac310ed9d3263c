"""Reference campaigns: manifest validation, round-robin chunks, and a killed campaign resuming exactly."""
import os

import numpy as np
import pytest
import yaml

from openmm_cgml import cli
from openmm_cgml.data import CGDataset
from openmm_cgml.reference import campaign as campaign_module
from openmm_cgml.reference import campaign_status, load_campaign, run_campaign

# Two copies of the tiny 76-atom box; Reference platform (deterministic), 4 ps each in 2-ps chunks.
SYSTEMS = [
    {"name": "a", "role": "heldout", "chains": 2, "eo": 3, "salt": 1, "temperature_K": 400, "ns": 0.004, "seed": 1},
    {"name": "b", "role": "train", "chains": 2, "eo": 3, "salt": 1, "temperature_K": 400, "ns": 0.004, "seed": 1},
]
DEFAULTS = {"every_ps": 0.5, "platform": "Reference", "checkpoint_every": 3, "chunk_ns": 0.002, "min_box_nm": 0.5}


def _manifest(tmp_path, name="campaign.yaml", systems=SYSTEMS, defaults=DEFAULTS, **extra):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"root": ".", "defaults": defaults, "systems": systems, **extra}))
    return str(path)


def _prebuilt(tmp_path, built, root):
    # The campaign builds a missing system; the tests save the session's tiny box instead of building.
    for system in SYSTEMS:
        built.save(os.path.join(root, system["name"], "system"))


def _frames(campaign):
    out = {}
    for row in campaign_status(campaign):
        with CGDataset(row["dataset"]) as ds:
            out[row["name"]] = (ds.positions[:], ds.time.copy())
    return out


@pytest.mark.parametrize("change, message", [
    ({"systems": [dict(SYSTEMS[0], colour="red")]}, r"systems\[0\]: unknown field\(s\) colour"),
    ({"systems": [dict(SYSTEMS[0], salt=0)]}, r"salt must be an integer >= 1"),
    ({"systems": [dict(SYSTEMS[0], ns=float("nan"))]}, r"ns must be a finite number > 0"),
    ({"systems": [dict(SYSTEMS[0], role="test")]}, r"role must be one of"),
    ({"defaults": dict(DEFAULTS, min_box_nm=2.5)}, r"would be a 0\.99 nm box .* smaller than min_box_nm=2.5"),
    ({"defaults": dict(DEFAULTS, every_ps=0.003)}, r"every_ps=0.003 is not a whole number"),
    ({"defaults": dict(DEFAULTS, speed="fast")}, r"defaults: unknown field\(s\) speed"),
    ({"systems": [SYSTEMS[0], SYSTEMS[0]]}, r"names must be unique"),
    ({"systems": [dict(SYSTEMS[0], reference={"ns": 2})]}, r"system a: reference: unknown field\(s\) ns"),
    ({"systems": [dict(SYSTEMS[0], reference={"timestep_fs": 3.0})]}, r"every_ps=0.5 is not a whole number of 3.0"),
])
def test_bad_manifest_is_refused_in_one_line(tmp_path, capsys, change, message):
    args = {"systems": SYSTEMS, "defaults": DEFAULTS, **change}
    path = _manifest(tmp_path, **args)
    with pytest.raises(ValueError, match=message):
        load_campaign(path)
    assert cli.main(["campaign", "status", path]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not any(os.path.exists(tmp_path / s["name"]) for s in SYSTEMS)  # nothing built or written


def test_default_manifest_meets_the_campaign_rules():
    here = os.path.dirname(os.path.abspath(__file__))
    campaign = load_campaign(os.path.join(here, "..", "benchmarks", "data", "campaign.yaml"))
    assert len(campaign.systems) >= 10
    ratios = [s.eo_per_li for s in campaign.systems]
    assert min(ratios) <= 8.5 and max(ratios) >= 30
    assert {4, 24} <= {s.eo for s in campaign.systems}
    temps = [s.temperature_K for s in campaign.systems]
    assert min(temps) == 350 and max(temps) == 450
    assert sum(s.role == "heldout" for s in campaign.systems) >= 2
    assert all(s.estimated_box_nm() >= 2.5 for s in campaign.systems)


def test_a_system_s_own_run_settings_override_the_defaults(tmp_path):
    systems = [dict(SYSTEMS[0], reference={"timestep_fs": 0.5, "hydrogen_mass_amu": 3.0}), SYSTEMS[1]]
    campaign = load_campaign(_manifest(tmp_path, systems=systems))
    own, plain = (campaign.config(s, 1.0) for s in campaign.systems)
    assert (own.timestep_fs, own.hydrogen_mass_amu, own.every_ps) == (0.5, 3.0, 0.5)
    assert (plain.timestep_fs, plain.hydrogen_mass_amu, plain.platform) == (2.0, None, "Reference")


def test_status_gives_msd_exponents_on_the_blocks_a_diffusivity_is_fit_on(tmp_path, capsys):
    """Once a run has 100 frames the status gives each species' MSD exponent as the reference side of a
    diffusivity comparison measures it: 5 time blocks, over each block's fit lags, ± the standard error over
    the blocks; the table names the window."""
    from openmm_cgml.analysis import dataset_msd_exponents
    from openmm_cgml.analysis.comparison import MIN_FRAMES_FOR_EXPONENTS
    from openmm_cgml.data import write_dataset
    from openmm_cgml.mapping import BeadMap
    from openmm_cgml.systems import peo_litfsi_system, peo_litfsi_topology
    from test_simulate import MAPPING

    top = peo_litfsi_topology(4, 3, 4)
    beadmap = BeadMap.from_openmm(top, peo_litfsi_system(top), **MAPPING)
    rng = np.random.default_rng(2)
    dt, n_frames, d = 2.0, 500, 1e-3  # ps, frames, nm²/ps: blocks of 100 frames, lags up to 100 ps
    brownian = np.cumsum(rng.normal(scale=np.sqrt(2 * d * dt), size=(n_frames, beadmap.n_beads, 3)), axis=0)
    os.makedirs(tmp_path / "a" / "reference")
    write_dataset(str(tmp_path / "a" / "reference" / "cg.h5"), beadmap, brownian, None, np.arange(n_frames) * dt)
    path = _manifest(tmp_path)
    ran, idle = campaign_status(load_campaign(path))
    assert idle["ns_done"] == 0 and not os.path.exists(idle["dataset"]) and ran["ns_done"] == pytest.approx(0.998)
    exponents = dataset_msd_exponents(ran["dataset"])
    assert set(exponents) == set(beadmap.bead_species())
    short = str(tmp_path / "short.h5")  # too few frames for exponents: none, rather than a fit over 2 lags
    write_dataset(short, beadmap, brownian[:MIN_FRAMES_FOR_EXPONENTS - 1], None,
                  np.arange(MIN_FRAMES_FOR_EXPONENTS - 1) * dt)
    assert dataset_msd_exponents(short) is None
    for row in exponents.values():
        assert (row["n_segments"], row["fit_start_ps"], row["fit_end_ps"]) == (5, 20.0, 100.0)
        assert 0.0 < row["msd_exponent_err"] < 0.2
        assert abs(row["msd_exponent"] - 1.0) < 4 * row["msd_exponent_err"] + 0.05
    assert cli.main(["campaign", "status", path]) == 0
    table = capsys.readouterr().out
    peo = exponents["PEO"]
    assert "0.02-0.1" in table and f"PEO={peo['msd_exponent']:.2f}±{peo['msd_exponent_err']:.2f}" in table
    assert "5 time blocks" in table


def test_killed_campaign_resumes_every_system_exactly(tiny_peo_litfsi, tmp_path):
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    for d in (full_dir, killed_dir):
        d.mkdir()
        _prebuilt(tmp_path, tiny_peo_litfsi, str(d))
    full = load_campaign(_manifest(full_dir))
    chunks = []
    run_campaign(full, progress=False, on_chunk=lambda s, ns: chunks.append((s.name, round(ns, 4))))
    # Round-robin: every system gets its first chunk before any gets a second.
    assert chunks == [("a", 0.002), ("b", 0.002), ("a", 0.004), ("b", 0.004)]

    killed = load_campaign(_manifest(killed_dir))
    real_run = campaign_module.run_reference
    calls = []

    def dies_in_third_chunk(built, out_dir, config, **kw):
        calls.append(out_dir)
        if len(calls) == 3:  # system a's second chunk: killed after 6 of its 9 frames, between checkpoints
            real_run(built, out_dir, config, stop_after_frames=7, **kw)
            raise KeyboardInterrupt
        return real_run(built, out_dir, config, **kw)

    campaign_module.run_reference = dies_in_third_chunk
    try:
        with pytest.raises(KeyboardInterrupt):
            run_campaign(killed, progress=False)
    finally:
        campaign_module.run_reference = real_run
    assert [row["ns_done"] for row in campaign_status(killed)] == [pytest.approx(0.003), pytest.approx(0.002)]
    run_campaign(killed, progress=False)
    a, b = _frames(full), _frames(killed)
    for name in ("a", "b"):
        assert a[name][0].shape[0] == 9  # 0, 0.5, ..., 4 ps: no frame lost or duplicated
        np.testing.assert_array_equal(a[name][1], b[name][1])
        np.testing.assert_array_equal(a[name][0], b[name][0])


def _wait_for_checkpoint(run_dir, n, timeout=120.0):
    import json
    import time

    start = time.time()
    while time.time() - start < timeout:
        try:
            with open(os.path.join(run_dir, "checkpoint.json")) as f:
                if json.load(f)["frames"] >= n:
                    return
        except (OSError, ValueError, KeyError):
            pass  # not written yet, or being replaced
        time.sleep(0.1)
    raise AssertionError(f"{run_dir} never checkpointed {n} frames")


def test_campaign_on_a_two_worker_local_cluster_survives_a_killed_worker(tiny_peo_litfsi, tmp_path):
    import signal
    import threading

    import distributed

    long = [dict(s, ns=0.008) for s in SYSTEMS]
    defaults = dict(DEFAULTS, checkpoint_every=3)
    serial_dir, dask_dir = tmp_path / "serial", tmp_path / "dask"
    for d in (serial_dir, dask_dir):
        d.mkdir()
        _prebuilt(tmp_path, tiny_peo_litfsi, str(d))
    serial = load_campaign(_manifest(serial_dir, systems=long, defaults=defaults))
    run_campaign(serial, progress=False)

    campaign = load_campaign(_manifest(dask_dir, systems=long, defaults=defaults))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        killed = []

        def kill_a_worker():
            # Kill whichever worker is writing system a, once it is past its first checkpoint.
            _wait_for_checkpoint(str(dask_dir / "a" / "reference"), 6)
            with CGDataset(str(dask_dir / "a" / "reference" / "cg.h5")) as ds:  # reading never blocks the writer
                assert ds.n_frames >= 6
            with distributed.Client(address) as client:
                pids = client.run(os.getpid)
                busy = [w for w, tasks in client.processing().items() if any("campaign-0" in str(t) for t in tasks)]
                victim = pids[busy[0]] if busy else next(iter(pids.values()))
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

        killer = threading.Thread(target=kill_a_worker)
        killer.start()
        run_campaign(campaign, progress=False, scheduler=address)
        killer.join()
    assert killed, "no worker was killed"
    a, b = _frames(serial), _frames(campaign)
    for name in ("a", "b"):
        assert b[name][0].shape[0] == 17  # 0 ... 8 ps every 0.5 ps: none lost, none duplicated
        np.testing.assert_array_equal(a[name][1], b[name][1])
        np.testing.assert_array_equal(a[name][0], b[name][0])


def test_a_system_that_cannot_continue_does_not_stop_the_others(tiny_peo_litfsi, tmp_path, capsys):
    import json

    _prebuilt(tmp_path, tiny_peo_litfsi, str(tmp_path))
    campaign = load_campaign(_manifest(tmp_path))

    def stop_after_first_round(system, ns):
        if system.name == "b":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_campaign(campaign, progress=False, on_chunk=stop_after_first_round)
    # b's run now claims to be of another box: it is refused, a still runs to its target
    meta_path = os.path.join(campaign.run_dir(campaign.system("b")), "checkpoint.json")
    with open(meta_path) as handle:
        meta = json.load(handle)
    meta["system_sha256"] = "0" * 64
    with open(meta_path, "w") as handle:
        json.dump(meta, handle)
    with pytest.raises(ValueError, match=r"1 system\(s\) stopped.*b: .*another system"):
        run_campaign(campaign, progress=False)
    assert [row["ns_done"] for row in campaign_status(campaign)] == [pytest.approx(0.004), pytest.approx(0.002)]
    assert "cgml campaign: b stopped" in capsys.readouterr().err
