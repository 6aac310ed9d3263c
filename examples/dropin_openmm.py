"""Run the shipped learned CG model from an ordinary OpenMM script.

This is the usual OpenMM recipe (system, integrator, Simulation, reporters, step). Compared with an all-atom
script only two things change, marked CHANGED: the all-atom objects are coarse-grained together with the
integrator, and the integrator is the learned one. Everything else is plain OpenMM.

    python examples/dropin_openmm.py            # ~10 ns of CG time of the default PEO/LiTFSI box
"""
from sys import stdout

from openmm import Platform, unit
from openmm.app import CheckpointReporter, DCDReporter, PDBFile, Simulation, StateDataReporter

from openmm_cgml.simulate import coarse_grain_simulation
from openmm_cgml.systems import build_peo_litfsi
from openmm_cgml.training.model import load_model
from openmm_cgml.workflows import DEFAULT_MODEL

# An all-atom system as any OpenMM user has one (here: built and equilibrated by openmm-cgml; a PDB loaded with
# ForceField.createSystem works the same way).
built = build_peo_litfsi(seed=0, equilibration_ps=20.0)
topology, system, positions = built.topology, built.system, built.positions

# CHANGED: instead of LangevinMiddleIntegrator(...) on the all-atom system, map it to beads and get the learned
# integrator (one step = the model's time step, e.g. 100 ps).
model = load_model(DEFAULT_MODEL)
cg_topology, cg_system, cg_positions, integrator = coarse_grain_simulation(
    topology, system, positions, model, box_vectors=built.box_vectors, seed=1)

simulation = Simulation(cg_topology, cg_system, integrator, Platform.getPlatformByName("CPU"))
simulation.context.setPositions(cg_positions)
PDBFile.writeFile(cg_topology, cg_positions, open("dropin_cg.pdb", "w"))
simulation.reporters.append(DCDReporter("dropin_cg.dcd", 10, enforcePeriodicBox=False))
simulation.reporters.append(StateDataReporter(stdout, 10, step=True, time=True, speed=True))
simulation.reporters.append(CheckpointReporter("dropin_cg.chk", 50))
n_steps = int(round(10 * unit.nanosecond / integrator.getStepSize()))
simulation.step(n_steps)
print(f"simulated {simulation.context.getState().getTime().in_units_of(unit.nanosecond)} of CG time")
