"""`cgml simulate` end to end on a tiny system: replicas written, throughput and collisions reported, errors."""
import json

import numpy as np
import pytest

from openmm_cgml.cli import main
from openmm_cgml.analysis import collision_thresholds, rdf
from openmm_cgml.data import CONTACTS_FILE, CGDataset, contact_distances, write_dataset
from openmm_cgml.data.contacts import rdf_onset
from openmm_cgml.mapping import BeadMap
from openmm_cgml.workflows import simulate_main

from test_simulate import MAPPING, TIMESTEP_PS, tiny_model


@pytest.fixture(scope="module")
def model_and_system(tiny_peo_litfsi, tmp_path_factory):
    built = tiny_peo_litfsi
    root = tmp_path_factory.mktemp("wf")
    built.save(str(root / "system"))
    beadmap = BeadMap.from_openmm(built.topology, built.system, **MAPPING)
    model = tiny_model(beadmap)
    model.save(str(root / "model"))
    return root, beadmap


def test_contact_distances_match_brute_force(model_and_system, tmp_path):
    root, beadmap = model_and_system
    rng = np.random.default_rng(0)
    box = np.array([2.0, 2.1, 2.2])
    x = rng.uniform(0, 1, size=(3, beadmap.n_beads, 3)) * box
    write_dataset(str(tmp_path / "d.h5"), beadmap, x, np.tile(box, (3, 1)), np.arange(3.0))
    got = contact_distances(str(tmp_path / "d.h5"))
    bonded = {tuple(p) for p in beadmap.bonds.tolist()}
    names = beadmap.type_names
    for a in range(len(names)):
        for b in range(len(names)):
            best = np.inf
            for t in range(3):
                for i in range(beadmap.n_beads):
                    for j in range(i + 1, beadmap.n_beads):
                        if (i, j) in bonded or {beadmap.bead_types[i], beadmap.bead_types[j]} != {a, b}:
                            continue
                        d = x[t, i] - x[t, j]
                        d -= box * np.round(d / box)
                        best = min(best, np.linalg.norm(d))
            value = got["min_distance_nm"][got["type_names"].index(names[a])][got["type_names"].index(names[b])]
            assert (value is None and best > 2.0) or value == pytest.approx(best, abs=1e-5)
    # the pooled RDF of a pair that no bond joins is analysis.rdf's (an independent implementation), bin for bin
    types = np.asarray(beadmap.bead_types)
    joined = {frozenset((types[i], types[j])) for i, j in beadmap.bonds.tolist()}
    free = [(a, b) for a in range(len(names)) for b in range(a, len(names)) if frozenset((a, b)) not in joined
            and (a != b or (types == a).sum() > 1)]
    assert free
    for a, b in free:
        ia, ib = got["type_names"].index(names[a]), got["type_names"].index(names[b])
        _, want = rdf(x, np.tile(box, (3, 1)), types == a, types == b, 1.0, n_bins=200)
        np.testing.assert_allclose(got["rdf_g"][ia][ib], want, atol=2e-4)
        assert got["rdf_g"][ib][ia] == got["rdf_g"][ia][ib]
    onset = rdf_onset({"type_names": ["A"], "rdf_edges_nm": [0.0, 0.1, 0.2, 0.3], "rdf_g": [[[0.0, 0.05, 0.4]]]}, 0.1)
    assert onset == {"type_names": ["A"], "onset_nm": [[0.2]]}
    assert rdf_onset({"type_names": ["A"], "rdf_edges_nm": [0.0, 0.1], "rdf_g": [[None]]}, 0.1)["onset_nm"] == [[None]]


def test_simulate_writes_replicas_and_reports(model_and_system, tmp_path):
    root, beadmap = model_and_system
    k = len(beadmap.type_names)
    contacts = {"type_names": beadmap.type_names, "min_distance_nm": [[0.3] * k for _ in range(k)]}
    (root / "model" / CONTACTS_FILE).write_text(json.dumps(contacts))
    thresholds = collision_thresholds(str(root / "model"), beadmap)
    assert thresholds.shape == (k, k) and np.allclose(thresholds, 0.24)
    stats = simulate_main(str(root / "model"), str(root / "system"), ns=0.3, out_dir=str(tmp_path / "run"),
                          replicas=2, seed=5, progress=False)
    assert stats["replicas"] == 2 and stats["steps"] == 3 and stats["ns_per_day_total"] > 0
    assert "collisions_per_frame" in stats and stats["collisions_per_frame"] >= 0
    for r in range(2):
        with CGDataset(str(tmp_path / "run" / f"replica_{r}.h5")) as ds:
            assert ds.n_frames == 4 and ds.n_beads == beadmap.n_beads
            assert ds.frame_interval_ps == pytest.approx(TIMESTEP_PS)
    assert json.loads((tmp_path / "run" / "simulate.json").read_text())["steps"] == 3
    # the same command line through the CLI; a second run into the same directory is refused in one line
    rc = main(["simulate", str(root / "model"), "--system", str(root / "system"), "--ns", "0.1", "--quiet",
               "-o", str(tmp_path / "run")])
    assert rc == 2


def test_simulate_rejects_bad_input(model_and_system, tmp_path, capsys):
    root, beadmap = model_and_system
    rc = main(["simulate", str(tmp_path / "missing"), "--system", str(root / "system"), "--ns", "1",
               "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cgml simulate: error" in err[0]
    assert not (tmp_path / "o").exists()


def test_diffusivity_comparison_recovers_known_ratio(tmp_path):
    """Brownian beads with D_ref and 2 D_ref: the comparison reports log10 error log10(2) with error bars."""
    from openmm_cgml.systems import peo_litfsi_system, peo_litfsi_topology
    from openmm_cgml.analysis import diffusivity_comparison, format_diffusivity_table

    top = peo_litfsi_topology(8, 3, 8)  # 32 PEO, 8 TFSI and 8 Li beads
    beadmap = BeadMap.from_openmm(top, peo_litfsi_system(top), **MAPPING)
    rng = np.random.default_rng(4)
    dt, n_frames, d_ref = 5.0, 2000, 1e-3  # ps, frames, nm²/ps: 5 reference blocks of 2 ns reach the 1-ns lag

    def brownian(d, path):
        steps = rng.normal(scale=np.sqrt(2 * d * dt), size=(n_frames, beadmap.n_beads, 3))
        write_dataset(str(path), beadmap, np.cumsum(steps, axis=0), None, np.arange(n_frames) * dt)
        return str(path)

    ref = brownian(d_ref, tmp_path / "ref.h5")
    runs = [brownian(2 * d_ref, tmp_path / f"cg{r}.h5") for r in range(4)]
    table = diffusivity_comparison(ref, runs)
    peo = table["PEO"]
    assert set(table) == set(beadmap.bead_species())
    for row in table.values():  # single-bead species (Li, TFSI) are noisy: judge them by their error bars
        assert row["cg_err_cm2_per_s"] > 0 and row["allatom_err_cm2_per_s"] > 0
        z_ref = (row["allatom_D_cm2_per_s"] - d_ref * 1e-2) / row["allatom_err_cm2_per_s"]
        z_cg = (row["cg_D_cm2_per_s"] - 2 * d_ref * 1e-2) / row["cg_err_cm2_per_s"]
        # Standard errors over 5 blocks / 4 replicas: z spreads like Student's t with 4 / 3 degrees of freedom
        assert abs(z_ref) < 4 and abs(z_cg) < 6
    assert table["PEO"]["log10_error"] == pytest.approx(np.log10(2.0), abs=0.1)  # 32 beads: precise
    # Brownian beads: MSD exponent 1, within a few of its standard errors over the segments D is fit on
    assert table["PEO"]["allatom_msd_exponent"] == pytest.approx(1.0, abs=0.1)
    for row in table.values():
        for side in ("allatom", "cg"):
            assert 0 < row[f"{side}_msd_exponent_err"] < 0.15
            assert abs(row[f"{side}_msd_exponent"] - 1.0) < 4 * row[f"{side}_msd_exponent_err"] + 0.05
    # ... measured on the reference's 5 time blocks (400 frames: lags 200-1000 ps) and on the 4 CG replicas, over
    # the same window of lags (the replicas' own would be 1-5 ns).
    assert (peo["allatom_n_segments"], peo["allatom_fit_start_ps"], peo["allatom_fit_end_ps"]) == (5, 200.0, 1000.0)
    assert (peo["cg_n_segments"], peo["cg_fit_start_ps"], peo["cg_fit_end_ps"]) == (4, 200.0, 1000.0)
    text = format_diffusivity_table(table)
    assert "log10 err" in text and "all-atom lags 0.2-1 ns, 5 segments" in text
    assert f"{peo['allatom_msd_exponent']:.2f}±{peo['allatom_msd_exponent_err']:.2f}" in text
    # One CG run is cut into time blocks as the reference is.
    single = diffusivity_comparison(ref, runs[0])["PEO"]
    assert (single["cg_n_segments"], single["cg_fit_start_ps"], single["cg_fit_end_ps"]) == (5, 200.0, 1000.0)
    assert single["cg_D_cm2_per_s"] == pytest.approx(2 * d_ref * 1e-2, rel=0.2)
    # The fixed-lag MSD (reported even where D is withheld) is 6 D t at the 1-ns lag: 6 and 12 nm² here.
    assert peo["msd_lag_ps"] == 1000.0
    assert peo["allatom_msd_nm2_at_lag"] == pytest.approx(6.0, rel=0.25)
    assert peo["cg_msd_nm2_at_lag"] == pytest.approx(12.0, rel=0.2)
    # Its error is the standard error over the same segments: the true value lies within a few of them.
    assert abs(peo["allatom_msd_nm2_at_lag"] - 6.0) < 4 * peo["allatom_msd_nm2_at_lag_err"]
    assert abs(peo["cg_msd_nm2_at_lag"] - 12.0) < 4 * peo["cg_msd_nm2_at_lag_err"]
    assert 0.01 < peo["allatom_msd_nm2_at_lag_err"] / peo["allatom_msd_nm2_at_lag"] < 0.2
    # A caged reference (beads bound to fixed sites: the MSD plateaus) is not diffusive: no D, no error.
    caged = rng.normal(scale=0.05, size=(n_frames, beadmap.n_beads, 3)) + rng.normal(size=(1, beadmap.n_beads, 3))
    write_dataset(str(tmp_path / "caged.h5"), beadmap, caged, None, np.arange(n_frames) * dt)
    table = diffusivity_comparison(str(tmp_path / "caged.h5"), runs)
    for row in table.values():
        assert row["allatom_msd_exponent"] < 0.5 and row["allatom_D_cm2_per_s"] is None
        assert row["allatom_err_cm2_per_s"] is None and row["log10_error"] is None
        assert "sub-diffusive" in row["allatom_withheld"]
    assert table["PEO"]["cg_D_cm2_per_s"] == pytest.approx(2 * d_ref * 1e-2, rel=0.2)
    assert "withheld" in format_diffusivity_table(table)


def test_simulate_starts_replicas_from_dig_samples(model_and_system, tiny_peo_litfsi, tmp_path):
    """`cgml simulate --dig`: each replica's first frame is its own DiG sample, not the mapped all-atom structure."""
    from openmm import unit

    from openmm_cgml.dig import initial_states
    from openmm_cgml.training.dig import DiGConfig, train_dig
    from test_dig import TINY

    root, beadmap = model_and_system
    built = tiny_peo_litfsi
    box = np.diag(built.box_vectors.value_in_unit(unit.nanometer))
    mapped = beadmap.map_positions(built.positions, built.box_vectors)
    rng = np.random.default_rng(0)
    frames = mapped[None] + rng.normal(scale=0.05, size=(16,) + mapped.shape)
    data = str(tmp_path / "frames.h5")
    write_dataset(data, beadmap, frames, np.tile(box, (16, 1)), np.arange(16.0),
                  {"reference_config": dict(MAPPING, atoms_per_bead=7, single_bead_residues=["LI"])})
    dig = train_dig(data, str(tmp_path / "dig"), DiGConfig(n_iterations=4, checkpoint_every=0, cutoff=0.6, **TINY),
                    progress=False)
    rc = main(["simulate", str(root / "model"), "--system", str(root / "system"), "--ns", "0.1", "--replicas", "2",
               "--seed", "4", "--dig", dig, "--quiet", "-o", str(tmp_path / "run")])
    assert rc == 0
    expected = initial_states(2, beadmap, dig, box=box, seed=4)
    firsts = []
    for r in range(2):
        with CGDataset(str(tmp_path / "run" / f"replica_{r}.h5")) as ds:
            firsts.append(ds.positions[0])
    np.testing.assert_allclose(firsts, expected, atol=1e-6)
    assert not np.allclose(firsts[0], firsts[1]) and not np.allclose(firsts[0], mapped, atol=0.1)


_KILL_AT_STEP = """
import os, signal, sys
from openmm_cgml.simulate import engine as E
advance = E.ReplicaEngine.advance
def dying(self):
    if self.step_index == {step}:
        os.kill(os.getpid(), signal.SIGKILL)  # like kill -9: no cleanup, no last checkpoint
    advance(self)
E.ReplicaEngine.advance = dying
from openmm_cgml.workflows import simulate_main
simulate_main(sys.argv[1], sys.argv[2], ns=float(sys.argv[3]), out_dir=sys.argv[4], replicas=2, seed=3, progress=False,
              checkpoint_every=3)
"""


def _frames(run_dir, r):
    with CGDataset(str(run_dir / f"replica_{r}.h5")) as ds:
        return ds.positions[:], ds.time


def test_simulate_killed_and_resumed_equals_uninterrupted(model_and_system, tmp_path):
    """kill -9 at step 7 of 10 (checkpoints every 3 steps): the flushed frames survive, the same command resumes
    from step 6 (not from scratch), and every frame equals the uninterrupted run bit for bit."""
    import subprocess
    import sys

    root, beadmap = model_and_system
    args = [str(root / "model"), str(root / "system"), "1.0"]
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_STEP.format(step=7), args[0], args[1], args[2],
                             str(tmp_path / "cut")], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _frames(tmp_path / "cut", 0)[0].shape[0] == 8  # steps 0..7 were flushed before the kill
    stats = simulate_main(args[0], args[1], ns=1.0, out_dir=str(tmp_path / "cut"), replicas=2, seed=3,
                          progress=False, checkpoint_every=3)
    assert stats["resumed_from_step"] == 6 and stats["steps"] == 4 and stats["complete"]
    whole = simulate_main(args[0], args[1], ns=1.0, out_dir=str(tmp_path / "whole"), replicas=2, seed=3,
                          progress=False, checkpoint_every=3)
    assert whole["resumed_from_step"] == 0 and whole["steps"] == 10
    for r in range(2):
        (xa, ta), (xb, tb) = _frames(tmp_path / "whole", r), _frames(tmp_path / "cut", r)
        assert xa.shape[0] == 11 and np.array_equal(xa, xb) and np.array_equal(ta, tb)
    # the same directory with other settings is refused in one line
    with pytest.raises(ValueError, match="other settings .*seed 3 != 4"):
        simulate_main(args[0], args[1], ns=1.0, out_dir=str(tmp_path / "cut"), replicas=2, seed=4, progress=False)


def test_simulate_ctrl_c_stops_cleanly_and_resumes(model_and_system, tmp_path, capsys, monkeypatch):
    import os
    import signal

    from openmm_cgml.simulate import engine as E

    root, beadmap = model_and_system
    advance = E.ReplicaEngine.advance

    def interrupted(self):
        advance(self)
        if self.step_index == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the run

    monkeypatch.setattr(E.ReplicaEngine, "advance", interrupted)
    argv = ["simulate", str(root / "model"), "--system", str(root / "system"), "--ns", "0.6", "--quiet",
            "-o", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 130 and len(err) == 1 and "interrupted at learned step 3" in err[0]
    info = json.loads((tmp_path / "run" / "simulate.json").read_text())
    assert info["complete"] is False and info["step_index"] == 3
    monkeypatch.setattr(E.ReplicaEngine, "advance", advance)
    assert main(argv) == 0
    info = json.loads((tmp_path / "run" / "simulate.json").read_text())
    assert info["complete"] is True and info["resumed_from_step"] == 3 and info["step_index"] == 6
    assert _frames(tmp_path / "run", 0)[0].shape[0] == 7


@pytest.mark.parametrize("bad", [["--ns", "-1"], ["--ns", "nan"], ["--ns", "inf"], ["--replicas", "0"],
                                 ["--device", "cuda"], ["--report-every-ps", "0"]])
def test_simulate_refuses_bad_arguments_before_any_work(model_and_system, tmp_path, capsys, bad):
    import torch

    if "cuda" in bad and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    root, _ = model_and_system
    argv = ["simulate", str(root / "model"), "--system", str(root / "system"), "--ns", "1", "--quiet",
            "-o", str(tmp_path / "o")]
    rc = main(argv + bad)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cgml simulate: error" in err[0]
    assert not (tmp_path / "o").exists()


def test_demo_refuses_bad_ns_at_once_and_leaves_nothing(tmp_path, capsys):
    import time

    start = time.perf_counter()
    rc = main(["demo", "--ns", "-1", "--quiet", "-o", str(tmp_path / "demo")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "ns must be a" in err[0]
    from openmm_cgml.workflows import run_demo

    for ns in (-1.0, float("nan"), float("inf")):  # the function checks too, before loading or building anything
        with pytest.raises(ValueError, match="ns must be a positive"):
            run_demo(str(tmp_path / "demo"), ns=ns, progress=False)
    assert time.perf_counter() - start < 5 and list(tmp_path.iterdir()) == []
    # a demo that fails after it started writing leaves no half-written output directory behind
    with pytest.raises(TypeError):
        run_demo(str(tmp_path / "demo"), ns=1.0, build_options={"no_such_option": 1}, progress=False)
    assert list(tmp_path.iterdir()) == []
