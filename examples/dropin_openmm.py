"""Run the shipped learned CG model from an ordinary OpenMM script.

This is the usual OpenMM recipe (PDBFile, ForceField.createSystem, integrator, Simulation, reporters, step).
Compared with an all-atom script only the lines marked CHANGED differ: the all-atom objects are coarse-grained
together with the integrator, and the integrator is the learned one. Everything else is plain OpenMM.

    python examples/dropin_openmm.py                     # writes the shipped box to peo_litfsi.pdb, ~10 ns of CG
    python examples/dropin_openmm.py --pdb my_box.pdb    # any PEO/LiTFSI PDB with a CRYST1 box
"""
import argparse
import os
from sys import stdout

from openmm import Platform, unit
from openmm.app import (PME, CheckpointReporter, DCDReporter, ForceField, HBonds, PDBFile, Simulation,
                        StateDataReporter)

from openmm_cgml.simulate import coarse_grain_simulation
from openmm_cgml.systems import PEO_LITFSI_XML, default_box, scale_ion_charges
from openmm_cgml.training.model import DEFAULT_MODEL, load_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--pdb", default="peo_litfsi.pdb", help="all-atom PDB (the shipped default box if missing)")
parser.add_argument("--ns", type=float, default=10.0, help="CG time to simulate")
args = parser.parse_args()

if not os.path.exists(args.pdb):  # the shipped, pre-equilibrated default box, written once as an ordinary PDB
    built = default_box()
    with open(args.pdb, "w") as handle:
        PDBFile.writeFile(built.topology, built.positions, handle)

pdb = PDBFile(args.pdb)
forcefield = ForceField(PEO_LITFSI_XML)  # the project's CL&P/OPLS-AA PEO/LiTFSI force field
system = forcefield.createSystem(pdb.topology, nonbondedMethod=PME, nonbondedCutoff=0.7 * unit.nanometer,
                                 constraints=HBonds)
scale_ion_charges(system, pdb.topology, 0.8)  # as in the model's training data (bead types include the charges)

# CHANGED: instead of LangevinMiddleIntegrator(...) on the all-atom system, map it to beads and get the learned
# integrator (one step = the model's time step, e.g. 100 ps).
# The box comes from the System (set from the PDB's CRYST1 record); pass box_vectors= to override it.
model = load_model(DEFAULT_MODEL)
cg = coarse_grain_simulation(pdb.topology, system, pdb.positions, model, seed=1)
integrator = cg.integrator

simulation = Simulation(cg.topology, cg.system, integrator, Platform.getPlatformByName("CPU"))
simulation.context.setPositions(cg.positions)
# No setVelocitiesToTemperature / minimizeEnergy: the learned model has no velocities and no energy (README).
with open("dropin_cg.pdb", "w") as handle:
    PDBFile.writeFile(cg.topology, cg.positions, handle)
cg.beadmap.to_json("dropin_beadmap.json")  # bead species, masses, molecules: for `cgml analyze dropin_cg.dcd`
simulation.reporters.append(DCDReporter("dropin_cg.dcd", 10, enforcePeriodicBox=False))
simulation.reporters.append(StateDataReporter(stdout, 10, step=True, time=True, speed=True))
simulation.reporters.append(CheckpointReporter("dropin_cg.chk", 50))
simulation.step(int(round(args.ns * unit.nanosecond / integrator.getStepSize())))
print(f"simulated {simulation.context.getState().getTime().in_units_of(unit.nanosecond)} of CG time")
