"""A learned CG model against its all-atom reference: diffusion coefficients per species side by side."""
import numpy as np

from .regime import reported_diffusivity
from .transport import NM2_PER_PS_IN_CM2_PER_S, diffusion_by_species, msd_per_particle


#: Lag (ps) of the fixed-lag MSD that :func:`diffusivity_comparison` reports beside D (shortened to the shorter
#: run's longest lag).
MSD_LAG_PS = 1000.0
LAGS, MSD = "lag_times_ps", "msd_nm2"


def species_positions(path: str):
    """Unwrapped bead positions (T, N, 3) nm as float64, the frame interval (ps) and the bead species of a CG
    dataset."""
    from ..data import CGDataset

    with CGDataset(path) as ds:
        return np.asarray(ds.positions[:], dtype=np.float64), ds.frame_interval_ps, ds.beadmap.bead_species()


def diffusivity_comparison(reference_path: str, cg_paths, n_blocks: int = 5, fit_range=0.2) -> dict:
    """Diffusion coefficient per species (cm²/s, with standard errors) of an all-atom reference dataset and of
    learned CG replicas of the same system, and the log10 error of each CG value.

    The reference error comes from ``n_blocks`` time blocks, the CG error from the spread over replicas (one
    replica: time blocks as for the reference). Species are the bead species (e.g. "LI", "TFS", "PEO").
    """
    ref_x, ref_dt, species = species_positions(reference_path)
    runs = [species_positions(p) for p in ([cg_paths] if isinstance(cg_paths, str) else list(cg_paths))]
    if any(s != species for _, _, s in runs):
        raise ValueError("the CG runs and the reference map to different beads; compare runs of the same system")
    n_frames = min(x.shape[0] for x, _, _ in runs)
    cg_x = np.stack([x[:n_frames] for x, _, _ in runs])
    return compare_diffusivities(ref_x, ref_dt, cg_x, runs[0][1], species, n_blocks, fit_range)


def compare_diffusivities(ref_x, ref_dt: float, cg_x, cg_dt: float, species, n_blocks: int = 5,
                          fit_range=0.2) -> dict:
    """:func:`diffusivity_comparison` of arrays: ``ref_x`` (T, N, 3) and ``cg_x`` (R, T', N, 3) unwrapped bead
    positions, nm, every ``ref_dt`` / ``cg_dt`` ps, and the species of the N beads."""
    reference = diffusion_by_species(ref_x, ref_dt, species, n_blocks=n_blocks, fit_range=fit_range)
    cg = diffusion_by_species(cg_x if len(cg_x) > 1 else cg_x[0], cg_dt, species, n_blocks=n_blocks,
                              fit_range=fit_range)
    regime = {"allatom": _regime_by_species(ref_x[None], ref_dt, species, fit_range),
              "cg": _regime_by_species(cg_x, cg_dt, species, fit_range)}
    lag = min(MSD_LAG_PS, regime["allatom"][LAGS][-1], regime["cg"][LAGS][-1])
    out = {}
    for name in reference:
        row = {}
        for side, (d, e) in (("allatom", reference[name]), ("cg", cg[name])):
            rule = regime[side][name]
            row[f"{side}_D_cm2_per_s"] = d * NM2_PER_PS_IN_CM2_PER_S if rule["diffusive"] else None
            row[f"{side}_err_cm2_per_s"] = e * NM2_PER_PS_IN_CM2_PER_S if rule["diffusive"] else None
            row[f"{side}_msd_exponent"] = rule["msd_exponent"]
            row[f"{side}_withheld"] = rule["withheld"]
        # Mobility at a fixed lag, reported whether or not either side is diffusive yet: not a diffusivity.
        for side in ("allatom", "cg"):
            row[f"{side}_msd_nm2_at_lag"] = float(np.interp(lag, regime[side][LAGS], regime[side][MSD][name]))
        row["msd_lag_ps"] = float(lag)
        both = row["allatom_D_cm2_per_s"] is not None and row["cg_D_cm2_per_s"] is not None
        row["log10_error"] = (float(np.log10(row["cg_D_cm2_per_s"] / row["allatom_D_cm2_per_s"]))
                              if both and row["cg_D_cm2_per_s"] > 0 and row["allatom_D_cm2_per_s"] > 0 else None)
        out[str(name)] = row
    return out


def _regime_by_species(x, dt, species, fit_range) -> dict:
    """:func:`reported_diffusivity` of each species' MSD averaged over its beads and the runs in (R, T, N, 3),
    and those MSD curves (under ``MSD``, with their lags under ``LAGS``)."""
    labels = np.asarray(species)
    curves = []
    for run in x:
        lag_times, per_particle = msd_per_particle(run, dt)
        curves.append(per_particle)
    mean = np.mean(curves, axis=0)
    by_species = {name: mean[:, labels == name].mean(axis=1) for name in dict.fromkeys(labels.tolist())}
    out = {name: reported_diffusivity(lag_times, curve, fit_range) for name, curve in by_species.items()}
    out[LAGS], out[MSD] = lag_times, by_species
    return out


def format_diffusivity_table(table: dict) -> str:
    """The :func:`diffusivity_comparison` result as a plain-text table."""
    lines = [f"{'species':8s} {'all-atom D (cm2/s)':>24s} {'learned CG D (cm2/s)':>24s} {'log10 err':>9s} "
             f"{'MSD exp. AA / CG':>17s}"]

    def cell(d, e):
        return f"{'withheld':>24s}" if d is None else f"{d:11.3e} ± {e:9.2e}  "

    for name, row in table.items():
        err = row["log10_error"]
        lines.append(f"{name:8s} {cell(row['allatom_D_cm2_per_s'], row['allatom_err_cm2_per_s'])}"
                     f"{cell(row['cg_D_cm2_per_s'], row['cg_err_cm2_per_s'])}"
                     f"{'n/a' if err is None else format(err, '+.2f'):>9s} "
                     f"{row['allatom_msd_exponent']:>8.2f} / {row['cg_msd_exponent']:.2f}")
    lines.append("D is withheld where the MSD exponent over the fit window is below 0.9 (not yet diffusive).")
    return "\n".join(lines)
