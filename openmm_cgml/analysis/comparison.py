"""A learned CG model against its all-atom reference: diffusion coefficients per species side by side."""
import numpy as np

from .transport import NM2_PER_PS_IN_CM2_PER_S, diffusion_by_species


def _species_positions(path: str):
    from ..data import CGDataset

    with CGDataset(path) as ds:
        return np.asarray(ds.positions[:], dtype=np.float64), ds.frame_interval_ps, ds.beadmap.bead_species()


def diffusivity_comparison(reference_path: str, cg_paths, n_blocks: int = 5, fit_range=0.2) -> dict:
    """Diffusion coefficient per species (cm²/s, with standard errors) of an all-atom reference dataset and of
    learned CG replicas of the same system, and the log10 error of each CG value.

    The reference error comes from ``n_blocks`` time blocks, the CG error from the spread over replicas (one
    replica: time blocks as for the reference). Species are the bead species (e.g. "LI", "TFS", "PEO").
    """
    ref_x, ref_dt, species = _species_positions(reference_path)
    reference = diffusion_by_species(ref_x, ref_dt, species, n_blocks=n_blocks, fit_range=fit_range)
    runs = [_species_positions(p) for p in ([cg_paths] if isinstance(cg_paths, str) else list(cg_paths))]
    if any(s != species for _, _, s in runs):
        raise ValueError("the CG runs and the reference map to different beads; compare runs of the same system")
    n_frames = min(x.shape[0] for x, _, _ in runs)
    cg_x = np.stack([x[:n_frames] for x, _, _ in runs])
    cg = diffusion_by_species(cg_x if len(runs) > 1 else cg_x[0], runs[0][1], species, n_blocks=n_blocks,
                              fit_range=fit_range)
    out = {}
    for name in reference:
        (d_ref, e_ref), (d_cg, e_cg) = reference[name], cg[name]
        out[str(name)] = {
            "allatom_D_cm2_per_s": d_ref * NM2_PER_PS_IN_CM2_PER_S,
            "allatom_err_cm2_per_s": e_ref * NM2_PER_PS_IN_CM2_PER_S,
            "cg_D_cm2_per_s": d_cg * NM2_PER_PS_IN_CM2_PER_S,
            "cg_err_cm2_per_s": e_cg * NM2_PER_PS_IN_CM2_PER_S,
            "log10_error": float(np.log10(d_cg / d_ref)) if d_cg > 0 and d_ref > 0 else None,
        }
    return out


def format_diffusivity_table(table: dict) -> str:
    """The :func:`diffusivity_comparison` result as a plain-text table."""
    lines = [f"{'species':8s} {'all-atom D (cm2/s)':>24s} {'learned CG D (cm2/s)':>24s} {'log10 err':>9s}"]
    for name, row in table.items():
        err = row["log10_error"]
        lines.append(f"{name:8s} {row['allatom_D_cm2_per_s']:11.3e} ± {row['allatom_err_cm2_per_s']:9.2e} "
                     f"{row['cg_D_cm2_per_s']:11.3e} ± {row['cg_err_cm2_per_s']:9.2e} "
                     f"{err if err is None else format(err, '+9.2f')}")
    return "\n".join(lines)
