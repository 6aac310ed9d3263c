"""Li-ion, TFSI and polymer diffusivity of a PEO/LiTFSI electrolyte: all-atom reference vs learned CG, end to end.

    python examples/li_diffusivity.py --work li_study            # default box, shipped model, quick settings
    python examples/li_diffusivity.py --work li_study --salt 5 --ref-ns 4 --train --dig --replicas 16 --cg-ns 100

Steps (each resumes or reuses what an earlier run of the script left in --work):
1. build and equilibrate the all-atom box (``openmm_cgml.systems.build_peo_litfsi``);
2. all-atom reference MD mapped to beads on the fly (``reference.run_reference``; resumable);
3. train a model on it (``--train``) or use the shipped default model;
4. optionally train a DiG sampler on the same data and seed every replica with an independent DiG structure;
5. run R learned CG replicas in the batched engine;
6. report D_Li, D_TFSI and D_PEO with error bars next to the all-atom values (table + JSON + MSD plot).
"""
import argparse
import json
import os

from openmm import unit

from openmm_cgml.analysis import (diffusion_coefficient, diffusivity_comparison, format_diffusivity_table, msd,
                                  plot_msd)
from openmm_cgml.data import CGDataset
from openmm_cgml.reference import ReferenceConfig, run_reference
from openmm_cgml.systems import BuiltSystem, build_peo_litfsi
from openmm_cgml.training import DEFAULT_MODEL, train
from openmm_cgml.training.dig import train_dig
from openmm_cgml.workflows import simulate_main


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="li_study", help="working directory (reused between runs)")
    parser.add_argument("--chains", type=int, default=6)
    parser.add_argument("--eo", type=int, default=8)
    parser.add_argument("--salt", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=400.0, help="K")
    parser.add_argument("--ref-ns", type=float, default=1.0, help="all-atom reference length, ns")
    parser.add_argument("--train", action="store_true", help="train a model on the reference instead of the shipped one")
    parser.add_argument("--train-config", default=None, help="TrainConfig YAML for --train")
    parser.add_argument("--dig", action="store_true", help="seed the replicas with DiG samples")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--cg-ns", type=float, default=20.0, help="CG time per replica, ns")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)

    box_dir = os.path.join(args.work, "box")
    if os.path.exists(os.path.join(box_dir, "system.xml")):
        built = BuiltSystem.load(box_dir)
    else:
        built = build_peo_litfsi(args.chains, args.eo, args.salt, temperature=args.temperature * unit.kelvin)
        built.save(box_dir)
    print(f"all-atom box: {built.n_atoms} atoms, {built.metadata['density_g_cm3']:.3f} g/cm3")

    ref_dir = os.path.join(args.work, "reference")
    config = ReferenceConfig(ns=args.ref_ns, every_ps=2.0, whole_residues=("TFS",))
    reference = run_reference(built, ref_dir, config, resume=True)

    model_dir = DEFAULT_MODEL
    if args.train:
        model_dir = os.path.join(args.work, "model")
        train([reference], model_dir, args.train_config, resume=True)  # also writes the model's contacts.json
    dig_dir = None
    if args.dig:
        dig_dir = os.path.join(args.work, "dig")
        train_dig([reference], dig_dir, resume=True)

    run_dir = os.path.join(args.work, "cg_run")
    if not os.path.exists(os.path.join(run_dir, "simulate.json")):
        simulate_main(model_dir, box_dir, args.cg_ns, run_dir, replicas=args.replicas, dig_path=dig_dir)
    runs = [os.path.join(run_dir, f"replica_{r}.h5") for r in range(args.replicas)]

    table = diffusivity_comparison(reference, runs)
    print(format_diffusivity_table(table))
    curves = {}
    for label, path in (("all-atom", reference), ("CG replica 0", runs[0])):
        with CGDataset(path) as ds:
            x, dt = ds.positions[:], ds.frame_interval_ps
            species = ds.beadmap.bead_species()
        li = [i for i, s in enumerate(species) if s == "LI"]
        lags, curve = msd(x[:, li], dt)
        curves[f"Li ({label})"] = {"lag_times_ps": lags, "msd_nm2": curve, "fit": diffusion_coefficient(lags, curve)}
    plot_msd(curves, os.path.join(args.work, "li_msd.png"))
    with open(os.path.join(args.work, "diffusivity.json"), "w") as handle:
        json.dump({"model": os.path.abspath(model_dir), "dig": dig_dir, "diffusivity": table}, handle, indent=1)
    print(f"wrote {args.work}/diffusivity.json and li_msd.png")


if __name__ == "__main__":
    main()
