"""The shipped default model, the shipped default box and `cgml demo`: its default path (the shipped box, a short
run) and its build path (a smaller, briefly equilibrated box; the box must stay wider than twice the model's
0.8 nm cutoff)."""
import json
import os

import mdtraj
import numpy as np
import pytest
from openmm import unit

from openmm_cgml.cli import main as cli_main
from openmm_cgml.data import CONTACTS_FILE, CGDataset
from openmm_cgml.mapping import BeadMap
from openmm_cgml.pbc import minimum_image
from openmm_cgml.systems import default_box
from openmm_cgml.training import DEFAULT_MODEL, load_model
from openmm_cgml.workflows import run_demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING_DATA = os.path.join(REPO, "benchmarks", "data", "peo_litfsi_400K.h5")


def test_shipped_model_matches_its_training_data():
    model = load_model(DEFAULT_MODEL)
    assert model.periodic and model.timestep_ps >= 100.0 and model.history_length >= 1
    with CGDataset(TRAINING_DATA) as ds:
        assert set(ds.beadmap.type_names) <= set(model.vocab.type_names)
        assert model.timestep_ps == pytest.approx(ds.frame_interval_ps * round(model.timestep_ps / ds.frame_interval_ps))
        assert model.mapping["atoms_per_bead"] == ds.provenance["reference_config"]["atoms_per_bead"]
    assert os.path.exists(os.path.join(DEFAULT_MODEL, CONTACTS_FILE))
    size = sum(os.path.getsize(os.path.join(DEFAULT_MODEL, f)) for f in os.listdir(DEFAULT_MODEL))
    assert size < 10e6  # "a few MB"


def test_demo_runs_ten_ns_and_writes_its_outputs(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(str(out), ns=10.0, seed=3, progress=False,
                       build_options=dict(n_chains=4, eo_per_chain=8, n_salt=2, equilibration_ps=2.0))
    assert summary["cg_ns"] == pytest.approx(10.0, rel=0.02)
    assert set(summary["D_cm2_per_s"]) == {"LI", "TFS", "PEO"}
    # D only where the species' MSD is diffusive over the run (exponent >= 0.9), else withheld as None
    for name, d in summary["D_cm2_per_s"].items():
        assert (d is not None and np.isfinite(d)) == (summary["msd_exponent"][name] >= 0.9), name
    # Chains stay intact: CG bonds keep near the all-atom 0.32 nm (they drift past 1 nm when the model is unstable).
    assert 0.28 < summary["mean_cg_bond_nm"] < 0.38 and summary["max_cg_bond_nm"] < 0.8
    for name in ("cg.dcd", "cg.pdb", "msd.png", "demo.json", "cg_state.csv"):
        assert (out / name).stat().st_size > 0
    traj = mdtraj.load(str(out / "cg.dcd"), top=str(out / "cg.pdb"))
    assert traj.n_atoms == summary["n_beads"] and traj.n_frames >= 50
    assert np.isfinite(traj.xyz).all()
    assert json.loads((out / "demo.json").read_text())["n_atoms"] == 4 * (5 + 7 * 8 + 4) + 2 * 16
    # `cgml analyze` reads the demo's DCD with its PDB and bead map (same run minus the t = 0 frame). The DCD holds
    # unwrapped positions, and in this dilute box a TFSI can move over half a box per step: --unwrapped keeps it.
    analysis = tmp_path / "analysis"
    argv = ["analyze", str(out / "cg.dcd"), "--top", str(out / "cg.pdb"), "--beadmap", str(out / "beadmap.json"),
            "--frame-ps", str(summary["frame_ps"]), "--unwrapped", "-o", str(analysis)]
    assert cli_main(argv) == 0
    table = json.loads((analysis / "analysis.json").read_text())["diffusion"]
    for name, d in summary["D_cm2_per_s"].items():
        if d is not None and table[name]["D_cm2_per_s"] is not None:
            assert table[name]["D_cm2_per_s"] == pytest.approx(d, rel=0.3)
        assert table[name]["msd_exponent"] == pytest.approx(summary["msd_exponent"][name], abs=0.15)
    assert cli_main(argv[:2] + ["-o", str(tmp_path / "bad")]) == 2  # a DCD without --top/--beadmap/--frame-ps
    with pytest.raises(ValueError, match="not empty"):
        run_demo(str(out), ns=1.0, progress=False)


#: Atoms of CH3O(CH2CH2O)nCH3 (CH3 + O ends: 5 + 4, 7 per EO unit) and of one LiTFSI (Li + C2F6NO4S2).
def _atoms(n_chains, eo, n_salt):
    return n_chains * (5 + 7 * eo + 4) + n_salt * (1 + 15)


def test_shipped_default_box_loads_at_its_documented_size():
    built = default_box()
    args = built.metadata["args"]
    assert (args["n_chains"], args["eo_per_chain"], args["n_salt"]) == (22, 8, 11)  # Li:EO = 11:176 = 1:16
    assert built.n_atoms == _atoms(22, 8, 11) == 1606
    edges = np.diag(built.box_vectors.value_in_unit(unit.nanometer))
    assert edges.min() >= 2.5 and np.allclose(edges, edges[0])  # cubic, every edge >= 2.5 nm
    density = built.density().value_in_unit(unit.gram / unit.centimeter**3)
    assert 1.05 < density < 1.25 and density == pytest.approx(built.metadata["density_g_cm3"], rel=1e-9)
    # The System rebuilt from the force-field XML is the one that was equilibrated: OpenMM's energy of the
    # original System at build time (Reference platform) against the rebuilt one's.
    energy = built.potential_energy("Reference").value_in_unit(unit.kilojoule_per_mole)
    assert energy == pytest.approx(built.metadata["potential_energy_kJ_mol"], rel=1e-6)


def test_default_demo_starts_from_the_shipped_box_and_keeps_chains_intact(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(str(out), ns=0.5, seed=1, progress=False)  # the default path, shortened
    recorded = json.loads((out / "demo.json").read_text())
    assert recorded["wall_seconds"] >= recorded["simulate_seconds"] > 0
    assert recorded["wall_seconds"] >= recorded["simulate_seconds"] + recorded["build_seconds"]
    assert recorded["wall_seconds"] == summary["wall_seconds"]
    assert summary["n_atoms"] == _atoms(22, 8, 11) and summary["allatom_box"].startswith("shipped")
    assert summary["build_seconds"] < 30  # loaded, not built (a build of this box takes several minutes)
    # Every chain stays intact across the periodic boundaries: each CG bond's minimum-image length stays near the
    # all-atom 0.32 nm in every frame (the DCD holds unwrapped positions, so a bond across the box is long there).
    beadmap = BeadMap.from_json(str(out / "beadmap.json"))
    traj = mdtraj.load(str(out / "cg.dcd"), top=str(out / "cg.pdb"))
    assert traj.n_frames == 5 and traj.n_atoms == beadmap.n_beads == summary["n_beads"]
    bonds = np.asarray(beadmap.bonds)
    assert len(bonds) == 22 * 8  # 9 beads per chain, 8 bonds
    d = minimum_image(traj.xyz[:, bonds[:, 0]] - traj.xyz[:, bonds[:, 1]], np.asarray(summary["box_nm"]))
    lengths = np.linalg.norm(d, axis=-1)
    assert np.isfinite(lengths).all() and lengths.max() < 0.8, lengths.max()
    assert 0.28 < lengths.mean() < 0.38


def test_cgml_demo_runs_on_the_threads_it_is_given(tmp_path, monkeypatch):
    """`cgml demo` uses one torch and one OpenMM CPU thread unless told otherwise: with torch's default of two on a
    two-core machine whose other core is busy, a step took 40x longer (README, "The command line")."""
    import torch

    # conftest's autouse fixture restores the thread settings this test changes
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OPENMM_CPU_THREADS", raising=False)
    torch.set_num_threads(2)
    assert cli_main(["demo", "--ns", "0.5", "-o", str(tmp_path / "demo"), "--quiet"]) in (0, None)
    assert torch.get_num_threads() == 1 and os.environ["OPENMM_CPU_THREADS"] == "1"
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["cg_ns"] == pytest.approx(0.5)
