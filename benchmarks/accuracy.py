"""Accuracy of a learned CG model against an all-atom reference dataset of the same system.

    python -m benchmarks.accuracy --reference REF.h5 [--model MODEL_DIR] [--replicas 8] [--ns 20]

Replica r starts from reference frame r * (T / R) with the velocity history taken from the reference frames
before it, then runs ``--ns`` of learned CG time in the batched engine. Reported (benchmarks/results/accuracy.json):
log10 errors of D per species (error bars from replicas / time blocks), RDF first-peak position and height errors
for every species pair, the mean chain Rg² error, and the collision rate. Whether the reference's composition or
temperature was part of the model's training data is read from the model's provenance and stated in the output.
"""
import json
import os
import sys
import tempfile

import numpy as np

from openmm_cgml.analysis import (collision_thresholds, compare_diffusivities, coordination_number, count_collisions,
                                  first_peak, format_diffusivity_table, radius_of_gyration_squared, rdf,
                                  species_positions)
from openmm_cgml.data import CGDataset
from openmm_cgml.simulate import LearnedStep, ReplicaEngine, parse_refine
from openmm_cgml.simulate.calibrate import true_history
from openmm_cgml.simulate.step import refine_settings
from openmm_cgml.training.loop import provenance_path
from openmm_cgml.training.model import DEFAULT_MODEL, load_model, model_path

from .common import benchmark_parser, machine, set_threads, write_json


#: Contact distance of the close-contact check, nm (issue #12: no Li–Li weight below 0.5 nm).
CONTACT_NM = 0.5


def structure(positions, box, beadmap, r_max: float):
    """First RDF peak (position nm, height) and neighbours within ``CONTACT_NM`` per species pair, and mean Rg²
    (nm²) of multi-bead molecules."""
    species = np.asarray(beadmap.bead_species())
    names = sorted(set(species.tolist()))
    peaks, contacts = {}, {}
    for i, a in enumerate(names):
        for b in names[i:]:
            r, g = rdf(positions, box, species == a, species == b, r_max, n_bins=60)
            peaks[f"{a}-{b}"] = first_peak(r, g)
            contacts[f"{a}-{b}"] = coordination_number(positions, box, species == a, species == b, CONTACT_NM)
    counts = np.bincount(beadmap.bead_molecule)
    chains = counts[beadmap.bead_molecule] > 2
    rg2 = radius_of_gyration_squared(positions[:, chains], beadmap.bead_masses[chains], beadmap.bead_molecule[chains])
    return peaks, contacts, float(rg2.mean())


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__, "accuracy", threads=None)
    parser.add_argument("--reference", required=True, help="all-atom CG dataset (.h5) of the test system")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--ns", type=float, default=20.0, help="CG time per replica")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refine", default="model",
                        help="refinement: model (its default), none, or SCHEME:LxK such as pc:5x0 or langevin:8x5, "
                             "optionally with a hard core ,core=F, a bond cap ,cap=G, a step size ,step=S nm², "
                             "a final denoising step ,denoise=S nm, an RDF-onset core ,rdf=G, training-RDF walls "
                             ",wall=W, a refinement temperature ,temp=T, ion-cluster noise ,cluster=F "
                             "and a step cap ,stepcap=F (e.g. model,core=0.9,cap=1.2)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    args.model = model_path(args.model)  # a shipped model's name, like load_model takes, or a directory

    model = load_model(args.model)
    with CGDataset(args.reference) as ds:
        ref_x = np.asarray(ds.positions[:], dtype=np.float32)
        ref_box = ds.box
        beadmap, interval = ds.beadmap, ds.frame_interval_ps
        provenance = ds.provenance
    stride = int(round(model.timestep_ps / interval))
    if stride < 1 or abs(stride * interval - model.timestep_ps) > 1e-6:
        raise SystemExit(f"model step {model.timestep_ps} ps is not a multiple of the reference interval {interval} ps")
    h = model.history_length
    first = h * stride
    starts = np.linspace(first, ref_x.shape[0] - 1, args.replicas).astype(int)
    x0 = ref_x[starts]
    history = true_history(ref_x, starts, stride, h)
    box = ref_box[0] if ref_box is not None else None
    refine = parse_refine(args.refine)
    step = LearnedStep.from_model(model, beadmap, refine)
    engine = ReplicaEngine(step, x0, seeds=[args.seed + r for r in range(args.replicas)], box=box, history=history)
    n_steps = int(np.ceil(args.ns * 1000.0 / model.timestep_ps))
    with tempfile.TemporaryDirectory() as tmp:
        stats = engine.run(n_steps, out_dir=tmp, beadmap=beadmap, progress=True)
        paths = [os.path.join(tmp, f"replica_{r}.h5") for r in range(args.replicas)]
        runs = [species_positions(p) for p in paths]  # (T, N, 3) nm, frame interval ps, bead species
    cg_runs = np.stack([x for x, _, _ in runs])
    table = compare_diffusivities(ref_x.astype(np.float64), interval, cg_runs, runs[0][1], beadmap.bead_species())
    cg_x = cg_runs.reshape(-1, *cg_runs.shape[2:])
    r_max = 0.45 * float(np.min(box)) if box is not None else 1.5
    ref_peaks, ref_contacts, ref_rg2 = structure(ref_x[::max(1, stride // 2)], ref_box[::max(1, stride // 2)], beadmap, r_max)
    cg_peaks, cg_contacts, cg_rg2 = structure(cg_x, np.tile(box, (cg_x.shape[0], 1)), beadmap, r_max)
    thresholds = collision_thresholds(args.model, beadmap)
    result = {
        "machine": machine(),
        "reference": provenance_path(args.reference), "reference_ns": float(ref_x.shape[0] * interval / 1000.0),
        "reference_system": provenance.get("system", provenance.get("builder_args")),
        "model": provenance_path(args.model), "model_trained_on": load_model_extra(args.model),
        # the summary's titles read the refinement spec from it (e.g. a ,step=S override)
        "command": "python -m benchmarks.accuracy " + " ".join(argv if argv is not None else sys.argv[1:]),
        "refine": refine_settings(model.config, refine),
        "replicas": args.replicas, "cg_ns_per_replica": n_steps * model.timestep_ps / 1000.0,
        "engine": stats,
        "diffusivity": table,
        "rdf_first_peak": {k: {"allatom": ref_peaks[k], "cg": cg_peaks[k],
                               "position_error_nm": cg_peaks[k][0] - ref_peaks[k][0],
                               "height_error": cg_peaks[k][1] - ref_peaks[k][1]} for k in ref_peaks},
        # mean number of B beads within CONTACT_NM of an A bead ("A-B"), e.g. LI-LI: rare in all-atom PEO/LiTFSI
        # (benchmarks/ion_pairs.py counts it on every frame)
        f"neighbours_within_{CONTACT_NM}nm": {k: {"allatom": ref_contacts[k], "cg": cg_contacts[k]}
                                              for k in ref_contacts},
        "rg2_nm2": {"allatom": ref_rg2, "cg": cg_rg2, "relative_error": (cg_rg2 - ref_rg2) / ref_rg2},
        "collisions_per_bead_per_frame": (float(count_collisions(cg_x, box, beadmap, thresholds).mean()
                                                / beadmap.n_beads) if thresholds is not None else None),
    }
    write_json(result, args.out)
    print(format_diffusivity_table(table))
    print(json.dumps({k: result[k] for k in ("rdf_first_peak", f"neighbours_within_{CONTACT_NM}nm", "rg2_nm2",
                                                    "collisions_per_bead_per_frame")}, indent=1))


def load_model_extra(path: str):
    with open(os.path.join(path, "cgml_model.json")) as handle:
        return json.load(handle).get("extra", {}).get("trained_on")


if __name__ == "__main__":
    main()
