"""examples/dropin_openmm.py: an ordinary OpenMM script (PDBFile, ForceField.createSystem, Simulation, reporters)
runs the shipped model after changing only its integrator and system lines."""
import os
import subprocess
import sys

import mdtraj
import numpy as np
from openmm.app import PDBFile

from openmm_cgml.systems import build_peo_litfsi

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def test_dropin_example_runs_from_a_pdb(tmp_path):
    built = build_peo_litfsi(n_chains=4, eo_per_chain=8, n_salt=2, equilibration_ps=2.0, seed=3, progress=False)
    with open(tmp_path / "box.pdb", "w") as handle:
        PDBFile.writeFile(built.topology, built.positions, handle)
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, "dropin_openmm.py"), "--pdb", "box.pdb", "--ns", "2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "simulated 2.0 ns of CG time" in run.stdout
    traj = mdtraj.load(str(tmp_path / "dropin_cg.dcd"), top=str(tmp_path / "dropin_cg.pdb"))
    assert traj.n_frames == 2 and traj.n_atoms == 4 * 9 + 2 * 2 and np.isfinite(traj.xyz).all()
    from openmm_cgml.mapping import BeadMap

    assert BeadMap.from_json(str(tmp_path / "dropin_beadmap.json")).n_beads == traj.n_atoms  # returned, not patched on
