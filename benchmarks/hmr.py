"""Hydrogen mass repartitioning (HMR) at 4 fs against plain 2 fs all-atom MD on one campaign system (issue #12).

Both checks run the same built box (default: the held-out EO4 + 9 LiTFSI at 450 K), side by side:

- diffusion: the campaign's 2 fs reference, cut to the length of a 4 fs run with every H at ``--hydrogen-mass``
  amu. That run is ``cgml reference SYSTEM -o SYSTEM/../reference_hmr_4fs --timestep-fs 4 --hydrogen-mass 4``
  with the reference's other settings and seed (so the same bead map); it is resumable and committed beside the
  reference. D per species from the diffusive regime only (MSD exponent >= 0.9 over the same fit window), with
  time-block errors.
- density: NPT at 1 bar from the built state, 2 fs against 4 fs + HMR, mean of the second half with the error of
  five blocks; the ns/day of both, measured in this process on the same thread count.

HMR counts as validated when the density and every species' D agree within two combined standard errors (so every
species must be diffusive on both runs). Beside it, each species' MSD at 1 ns is compared the same way, with the
standard errors of the five time blocks that D is fit on: a verdict before D exists.

    python -m benchmarks.hmr                       # both checks; the 4 fs run is continued to --ns first
    python -m benchmarks.hmr --checks density      # only the NPT comparison
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from openmm_cgml.analysis import compare_diffusivities, format_diffusivity_table
from openmm_cgml.analysis.comparison import species_positions
from openmm_cgml.analysis.transport import msd_per_particle
from openmm_cgml.data import CGDataset
from openmm_cgml.reference import ReferenceConfig, run_reference
from openmm_cgml.systems import BuiltSystem

from .allatom_throughput import npt_densities
from .common import DATA, benchmark_parser, figure_path, machine, write_json

SYSTEM = os.path.join(DATA, "peo_litfsi_eo4_li9_450K")
HMR_RUN = "reference_hmr_4fs"
#: Standard errors within which two figures count as equal.
AGREE_SIGMAS = 2.0


def _agree(a: float, ea: float, b: float, eb: float) -> bool:
    return bool(abs(a - b) <= AGREE_SIGMAS * float(np.hypot(ea, eb)))


def density_check(built: BuiltSystem, npt_ps: float, hydrogen_mass: float, threads: int) -> dict:
    """NPT density (g/cm³) and ns/day at 2 fs and at 4 fs with HMR from the same start."""
    out = {"npt_ps": npt_ps, "averaged_over": "second half, five blocks"}
    for name, step, mass in (("2fs", 2.0, None), ("4fs_hmr", 4.0, hydrogen_mass)):
        densities, ns_per_day = npt_densities(built, npt_ps, threads, timestep_fs=step, hydrogen_mass_amu=mass)
        blocks = np.array_split(densities[len(densities) // 2:], 5)
        means = np.array([b.mean() for b in blocks])
        out[name] = {"density_g_cm3": float(means.mean()), "err_g_cm3": float(means.std(ddof=1) / np.sqrt(5)),
                     "ns_per_day": ns_per_day, "timestep_fs": step, "hydrogen_mass_amu": mass}
        print(name, out[name], flush=True)
    a, b = out["2fs"], out["4fs_hmr"]
    out["relative_difference"] = (b["density_g_cm3"] - a["density_g_cm3"]) / a["density_g_cm3"]
    out["agree"] = _agree(a["density_g_cm3"], a["err_g_cm3"], b["density_g_cm3"], b["err_g_cm3"])
    out["speedup"] = b["ns_per_day"] / a["ns_per_day"]
    return out


def diffusion_check(system_dir: str, ns: float, hydrogen_mass: float, figure: str) -> dict:
    """D per species of the 2 fs reference (cut to the 4 fs run's length) and of the 4 fs HMR run; their MSD
    curves are plotted to ``figure``."""
    reference = os.path.join(system_dir, "reference", "cg.h5")
    with CGDataset(reference) as ds:
        settings = dict(ds.provenance["reference_config"])
    settings.update(ns=ns, timestep_fs=4.0, hydrogen_mass_amu=hydrogen_mass,
                    whole_residues=tuple(settings["whole_residues"]),
                    single_bead_residues=tuple(settings["single_bead_residues"]))
    built = BuiltSystem.load(os.path.join(system_dir, "system"))
    path = run_reference(built, os.path.join(system_dir, HMR_RUN), ReferenceConfig(**settings))
    (ref_x, dt, species), (hmr_x, hmr_dt, hmr_species) = species_positions(reference), species_positions(path)
    if hmr_species != species or hmr_dt != dt:
        raise SystemExit("the HMR run maps to other beads or frames than the reference; rerun it with its settings")
    ref_x = ref_x[:hmr_x.shape[0]]
    table = compare_diffusivities(ref_x, dt, hmr_x[None], dt, species)
    print(format_diffusivity_table(table).replace("all-atom", "2 fs").replace("learned CG", "4 fs HMR"))
    for name, row in table.items():
        # the MSD at 1 ns of both runs, each ± its standard error over the same 5 time blocks: a verdict before D
        row["msd_agree"] = _agree(row["allatom_msd_nm2_at_lag"], row["allatom_msd_nm2_at_lag_err"],
                                  row["cg_msd_nm2_at_lag"], row["cg_msd_nm2_at_lag_err"])
        both = row["allatom_D_cm2_per_s"] is not None and row["cg_D_cm2_per_s"] is not None
        row["agree"] = both and _agree(row["allatom_D_cm2_per_s"], row["allatom_err_cm2_per_s"],
                                       row["cg_D_cm2_per_s"], row["cg_err_cm2_per_s"])
    _plot_msd(ref_x, hmr_x, dt, species, figure)
    return {"reference": os.path.relpath(reference), "hmr_run": os.path.relpath(path),
            "compared_ns": (hmr_x.shape[0] - 1) * dt / 1000.0, "sides": {"allatom": "2 fs", "cg": "4 fs HMR"},
            "by_species": table}


def _plot_msd(ref_x, hmr_x, dt, species, path):
    """MSD per species, 2 fs against 4 fs HMR, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(species)
    curves = [(msd_per_particle(x, dt), style, side) for x, style, side in ((ref_x, "-", "2 fs"),
                                                                            (hmr_x, "--", "4 fs HMR"))]
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, colour in zip(dict.fromkeys(labels.tolist()), ("C0", "C1", "C2", "C3")):
        for (lags, per), style, side in curves:
            ax.loglog(lags[1:], per[1:, labels == name].mean(axis=1), style, color=colour, label=f"{name} {side}")
    ax.set_xlabel("lag (ps)")
    ax.set_ylabel("MSD (nm²)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__, "hmr", threads=1)
    parser.add_argument("--system", default=SYSTEM, help="campaign system directory (system/ and reference/)")
    parser.add_argument("--ns", type=float, default=2.0, help="length of the 4 fs HMR run (default 2)")
    parser.add_argument("--npt-ps", type=float, default=200.0, help="NPT length per step size (default 200)")
    parser.add_argument("--hydrogen-mass", type=float, default=4.0, help="amu (default 4)")
    parser.add_argument("--checks", nargs="+", choices=("density", "diffusion"), default=["density", "diffusion"])
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENMM_CPU_THREADS", str(args.threads))
    result = {}
    if os.path.exists(args.out):  # one check at a time keeps the other's figures
        with open(args.out) as f:
            result = json.load(f)
    result.update(machine=machine(args.threads), system=os.path.relpath(args.system),
                  hydrogen_mass_amu=args.hydrogen_mass, agree_within_sigmas=AGREE_SIGMAS)
    command = "python -m benchmarks.hmr " + " ".join(argv if argv is not None else sys.argv[1:])
    if "density" in args.checks:
        result["density"] = density_check(BuiltSystem.load(os.path.join(args.system, "system")), args.npt_ps,
                                          args.hydrogen_mass, args.threads)
        result["density"]["command"] = command
    if "diffusion" in args.checks:
        result["diffusion"] = diffusion_check(args.system, args.ns, args.hydrogen_mass, figure_path(args.out))
        result["diffusion"]["command"] = command
    # the issue's rule: every species' D (diffusive regime on both runs) and the density within errors
    checks = [result.get("density", {}).get("agree")] + [
        row["agree"] for row in result.get("diffusion", {}).get("by_species", {}).values()]
    result["validated"] = bool(checks) and all(c is True for c in checks) and len(checks) > 1
    write_json(result, args.out)
    print(f"HMR at 4 fs validated: {result['validated']}")


if __name__ == "__main__":
    main()
