"""All-atom OpenMM throughput (ns/day) of the 6 x EO8 + 3 LiTFSI box, and the mixing-rule density check.

Throughput: CPU platform with all threads, PME, 2 fs, HBonds constraints, LangevinMiddleIntegrator at 400 K;
warm-up steps, then timed steps. Writes benchmarks/results/allatom_throughput.json.

    python -m benchmarks.allatom_throughput                      # build 6 x EO8 + 3 LiTFSI (short equilibration)
    python -m benchmarks.allatom_throughput --system DIR         # a box saved with BuiltSystem.save
    python -m benchmarks.allatom_throughput --mixing-density     # LB vs geometric 400 K density (slow)

The mixing check builds the same small box (seed, schedule) with each rule, runs NPT at 1 bar and averages the
density over the second half; it writes benchmarks/results/mixing_density.json.
"""
from __future__ import annotations

import json
import os

import numpy as np
import openmm as mm
from openmm import unit

from openmm_cgml.reference import repartition_hydrogen_mass
from openmm_cgml.systems import BuiltSystem, build_peo_litfsi
from openmm_cgml.systems.built import AMU_PER_NM3_IN_G_PER_CM3

from .common import Stopwatch, benchmark_parser, machine, result_path, write_json


def throughput(built: BuiltSystem, warmup_steps: int, steps: int, threads: int) -> dict:
    """ns/day of ``built`` on the CPU platform with ``threads`` threads."""
    platform = mm.Platform.getPlatformByName("CPU")
    integrator = mm.LangevinMiddleIntegrator(built.temperature, 1 / unit.picosecond, 0.002 * unit.picosecond)
    context = mm.Context(built.system, integrator, platform, {"Threads": str(threads)})
    context.setPeriodicBoxVectors(*[mm.Vec3(*r) for r in built.box_vectors.value_in_unit(unit.nanometer)])
    context.setPositions(built.positions)
    context.setVelocitiesToTemperature(built.temperature, 0)
    integrator.step(warmup_steps)
    context.getState(getEnergy=True)  # synchronise
    with Stopwatch() as clock:
        integrator.step(steps)
        energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    ns = steps * 0.002 / 1000
    return {"ns_per_day": ns / clock.seconds * 86400, "timed_steps": steps, "timed_seconds": clock.seconds,
            "final_potential_kj_mol": energy}


def npt_densities(built: BuiltSystem, npt_ps: float, threads: int, timestep_fs: float = 2.0,
                  hydrogen_mass_amu: float | None = None, seed: int = 7) -> tuple[np.ndarray, float]:
    """Density (g/cm³) every 1 ps of NPT at 1 bar from ``built``'s state, and the ns/day it ran at.

    ``timestep_fs`` and ``hydrogen_mass_amu`` (hydrogen mass repartitioning, None: off) as in ``ReferenceConfig``.
    The density uses the true masses (repartitioning moves mass within molecules, so the total is the same).
    """
    system = mm.XmlSerializer.clone(built.system) if hydrogen_mass_amu is None else repartition_hydrogen_mass(
        built.system, built.topology, hydrogen_mass_amu)  # a copy either way: the barostat is added to it
    system.addForce(mm.MonteCarloBarostat(1 * unit.bar, built.temperature, 25))
    integrator = mm.LangevinMiddleIntegrator(built.temperature, 1 / unit.picosecond, timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(seed)
    context = mm.Context(system, integrator, mm.Platform.getPlatformByName("CPU"), {"Threads": str(threads)})
    context.setPeriodicBoxVectors(*[mm.Vec3(*r) for r in built.box_vectors.value_in_unit(unit.nanometer)])
    context.setPositions(built.positions)
    context.setVelocitiesToTemperature(built.temperature, seed)
    mass = sum(system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles()))
    steps_per_ps = int(round(1000.0 / timestep_fs))
    densities = []
    with Stopwatch() as clock:
        for _ in range(int(npt_ps)):
            integrator.step(steps_per_ps)
            box = context.getState().getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
            densities.append(mass * AMU_PER_NM3_IN_G_PER_CM3 / float(np.linalg.det(box)))
    return np.array(densities), int(npt_ps) / 1000.0 / clock.seconds * 86400


def mixing_density(npt_ps: float, build_ps: float, threads: int) -> dict:
    """400 K density of the same small PEO/LiTFSI box with each mixing rule (NPT at 1 bar)."""
    out = {"box": "6 x CH3O(CH2CH2O)8CH3 + 3 LiTFSI", "seed": 0, "build_equilibration_ps": build_ps,
           "npt_ps": npt_ps, "averaged_over": "second half of the NPT run, sampled every 1 ps"}
    for mixing in ("lorentz-berthelot", "geometric"):
        with Stopwatch() as clock:
            built = build_peo_litfsi(n_chains=6, eo_per_chain=8, n_salt=3, mixing=mixing, seed=0,
                                     equilibration_ps=build_ps, platform="CPU", progress=False)
            densities, _ = npt_densities(built, npt_ps, threads)
            n_atoms = built.n_atoms
        half = densities[len(densities) // 2:]
        out[mixing] = {"density_g_cm3": float(half.mean()), "std_g_cm3": float(half.std()),
                       "n_atoms": n_atoms, "seconds": clock.seconds}
        print(mixing, out[mixing], flush=True)
    lb, geo = out["lorentz-berthelot"]["density_g_cm3"], out["geometric"]["density_g_cm3"]
    out["relative_difference_geometric_vs_lb"] = (geo - lb) / lb
    return out


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__, None, threads=os.cpu_count())
    parser.add_argument("--system", help="directory written by BuiltSystem.save (default: build the 438-atom box "
                        "the shipped model was trained on)")
    parser.add_argument("--equilibration-ps", type=float, default=20.0, help="when building (default 20)")
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--mixing-density", action="store_true", help="run the mixing-rule density comparison")
    parser.add_argument("--npt-ps", type=float, default=60.0, help="NPT length per mixing rule (default 60)")
    args = parser.parse_args(argv)
    if args.mixing_density:
        result = mixing_density(args.npt_ps, args.equilibration_ps, args.threads)
        result["machine"] = machine(args.threads)
        write_json(result, args.out or result_path("mixing_density"))
        print(json.dumps(result, indent=2))
        return
    built = BuiltSystem.load(args.system) if args.system else build_peo_litfsi(
        n_chains=6, eo_per_chain=8, n_salt=3, equilibration_ps=args.equilibration_ps, platform="CPU")
    result = {"system": "PEO/LiTFSI " + json.dumps(built.metadata.get("args", {})), "n_atoms": built.n_atoms,
              "mixing": built.metadata.get("mixing"), "density_g_cm3": built.metadata.get("density_g_cm3"),
              "machine": machine(args.threads), "platform": "CPU", "timestep_fs": 2.0, "constraints": "HBonds",
              "nonbonded": "PME"}
    result.update(throughput(built, args.warmup_steps, args.steps, args.threads))
    write_json(result, args.out or result_path("allatom_throughput"))
    print(f"{result['n_atoms']} atoms, {args.threads} threads: {result['ns_per_day']:.1f} ns/day")


if __name__ == "__main__":
    main()
