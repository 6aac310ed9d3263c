"""A learned CG model against its all-atom reference: diffusion coefficients per species side by side."""
import numpy as np

from .regime import msd_exponents_by_species, reported_diffusivity_of_segments
from .transport import (NM2_PER_PS_IN_CM2_PER_S, diffusion_of_segments, fit_window, independent_segments,
                        species_msd_by_segment)


#: Lag (ps) of the fixed-lag MSD that :func:`diffusivity_comparison` reports beside D (shortened to the shorter
#: side's longest lag: half a time block, or half a replica).
MSD_LAG_PS = 1000.0
LAGS, MSD = "lag_times_ps", "msd_nm2"
#: :func:`dataset_msd_exponents` reports exponents from this many frames on (5 blocks of 20: 9 lags in each window).
MIN_FRAMES_FOR_EXPONENTS = 100


def species_positions(path: str):
    """Unwrapped bead positions (T, N, 3) nm as float64, the frame interval (ps) and the bead species of a CG
    dataset."""
    from ..data import CGDataset

    with CGDataset(path) as ds:
        return np.asarray(ds.positions[:], dtype=np.float64), ds.frame_interval_ps, ds.beadmap.bead_species()


def dataset_msd_exponents(path: str, n_blocks: int = 5):
    """Each bead species' MSD exponent in a CG dataset, measured as the reference side of
    :func:`diffusivity_comparison` measures it: the run cut into ``n_blocks`` time blocks, the slope of the block-mean
    MSD over each block's D-fit lags, ± the standard error over the blocks (:func:`msd_exponents_by_species`).
    None below :data:`MIN_FRAMES_FOR_EXPONENTS` frames.

    Returns species -> dict with ``msd_exponent``, ``msd_exponent_err``, ``fit_start_ps``, ``fit_end_ps`` (ps),
    ``n_segments`` and ``diffusive``.
    """
    x, dt, species = species_positions(path)
    if x.shape[0] < MIN_FRAMES_FOR_EXPONENTS:
        return None
    return msd_exponents_by_species(x, dt, species, n_blocks=n_blocks)


def diffusivity_comparison(reference_path: str, cg_paths, n_blocks: int = 5, fit_range=0.2) -> dict:
    """Diffusion coefficient per species (cm²/s, with standard errors) of an all-atom reference dataset and of
    learned CG replicas of the same system, and the log10 error of each CG value.

    The reference error comes from ``n_blocks`` time blocks, the CG error from the spread over replicas (one
    replica: time blocks as for the reference). Species are the bead species (e.g. "LI", "TFS", "PEO").

    D is reported only where the MSD exponent is >= 0.9, and that exponent is measured on the segments D is fit
    on (the blocks or the replicas): the slope of their mean MSD over the lags of each segment's fit, reported
    with that window (``*_fit_start_ps``, ``*_fit_end_ps``) and a standard error over the segments
    (``*_msd_exponent_err``; None with one segment). The long lags of a whole run would describe another
    window, sampled by too few independent stretches of trajectory to say much. The CG side is fit over the
    reference's window where its segments reach it (:func:`common_fit_window`), so both D are slopes over the
    same time scale.
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
    segments = {"allatom": independent_segments(ref_x, n_blocks),
                "cg": independent_segments(cg_x if len(cg_x) > 1 else cg_x[0], n_blocks)}
    dt = {"allatom": ref_dt, "cg": cg_dt}
    # D and the exponent that certifies it come from the same segments' MSDs and the same fit window.
    curves = {side: species_msd_by_segment(x, dt[side], species) for side, x in segments.items()}
    # Both sides over the reference's window of lags where the CG segments reach it: a D compared is then the
    # slope over the same time scale (a sub-diffusive side's apparent D depends on the window).
    window = {"allatom": fit_range, "cg": common_fit_window(curves["allatom"][0], curves["cg"][0], fit_range)}
    estimates = {side: diffusion_of_segments(*curves[side], window[side]) for side in segments}
    regime = {side: _regime_by_species(*curves[side], window[side]) for side in segments}
    lag = min(MSD_LAG_PS, regime["allatom"][LAGS][-1], regime["cg"][LAGS][-1])
    out = {}
    for name in estimates["allatom"]:
        row = {}
        for side in ("allatom", "cg"):
            (d, e), rule = estimates[side][name], regime[side][name]
            row[f"{side}_D_cm2_per_s"] = d * NM2_PER_PS_IN_CM2_PER_S if rule["diffusive"] else None
            row[f"{side}_err_cm2_per_s"] = e * NM2_PER_PS_IN_CM2_PER_S if rule["diffusive"] else None
            row[f"{side}_msd_exponent"] = rule["msd_exponent"]
            row[f"{side}_msd_exponent_err"] = rule["msd_exponent_err"]
            row[f"{side}_fit_start_ps"] = rule["fit_start_ps"]
            row[f"{side}_fit_end_ps"] = rule["fit_end_ps"]
            row[f"{side}_n_segments"] = rule["n_segments"]
            row[f"{side}_withheld"] = rule["withheld"]
        # Mobility at a fixed lag, reported whether or not either side is diffusive yet: not a diffusivity.
        # Its error is the standard error over the same segments (None with one), so two sides can be set against
        # each other before either is diffusive.
        for side in ("allatom", "cg"):
            at_lag = np.array([np.interp(lag, regime[side][LAGS], curve) for curve in regime[side][MSD][name]])
            row[f"{side}_msd_nm2_at_lag"] = float(at_lag.mean())
            row[f"{side}_msd_nm2_at_lag_err"] = (float(at_lag.std(ddof=1) / np.sqrt(at_lag.size))
                                                 if at_lag.size > 1 else None)
        row["msd_lag_ps"] = float(lag)
        both = row["allatom_D_cm2_per_s"] is not None and row["cg_D_cm2_per_s"] is not None
        row["log10_error"] = (float(np.log10(row["cg_D_cm2_per_s"] / row["allatom_D_cm2_per_s"]))
                              if both and row["cg_D_cm2_per_s"] > 0 and row["allatom_D_cm2_per_s"] > 0 else None)
        out[str(name)] = row
    return out


def common_fit_window(reference_lags, cg_lags, fit_range=0.2):
    """The CG side's fit window in :func:`compare_diffusivities`: the reference's window, (t0, t1) ps, where the
    CG lags reach its end, else ``fit_range`` of the CG's own lags (each row states both windows)."""
    start, end = fit_window(np.asarray(reference_lags, dtype=float), fit_range)
    return (start, end) if float(cg_lags[-1]) >= end * (1.0 - 1e-9) else fit_range


def _regime_by_species(lag_times, curves, fit_range) -> dict:
    """:func:`reported_diffusivity_of_segments` of each species' (S, L + 1) segment MSDs ``curves`` (nm²), and
    those curves (under ``MSD``, with their lags under ``LAGS``)."""
    out = {name: reported_diffusivity_of_segments(lag_times, by_segment, fit_range)
           for name, by_segment in curves.items()}
    out[LAGS], out[MSD] = lag_times, curves
    return out


def format_diffusivity_table(table: dict) -> str:
    """The :func:`diffusivity_comparison` result as a plain-text table."""
    lines = [f"{'species':8s} {'all-atom D (cm2/s)':>24s} {'learned CG D (cm2/s)':>24s} {'log10 err':>9s} "
             f"{'MSD exp. AA / CG':>23s}"]

    def cell(d, e):
        return f"{'withheld':>24s}" if d is None else f"{d:11.3e} ± {e:9.2e}  "

    for name, row in table.items():
        err = row["log10_error"]
        exponents = f"{exponent_text(row, 'allatom')} / {exponent_text(row, 'cg')}"
        lines.append(f"{name:8s} {cell(row['allatom_D_cm2_per_s'], row['allatom_err_cm2_per_s'])}"
                     f"{cell(row['cg_D_cm2_per_s'], row['cg_err_cm2_per_s'])}"
                     f"{'n/a' if err is None else format(err, '+.2f'):>9s} {exponents:>23s}")
    lines.append("D is withheld where the MSD exponent is below 0.9 (not yet diffusive).")
    row = next(iter(table.values()), None)
    if row is not None:  # every species of a side shares its segments and window
        lines.append("MSD exponent ± standard error over the segments D is fit on, over its fit window: "
                     + "; ".join(f"{label} {_window(row, side)}" for label, side in (("all-atom", "allatom"),
                                                                                    ("learned CG", "cg"))) + ".")
    return "\n".join(lines)


def exponent_text(row: dict, side: str) -> str:
    """A comparison row's MSD exponent of ``side`` ("allatom" or "cg") as ``1.01±0.05``: no ± with a single segment
    or in rows written before the error existed, "n/a" in rows written before the exponent existed."""
    alpha, err = row.get(f"{side}_msd_exponent"), row.get(f"{side}_msd_exponent_err")
    if alpha is None:
        return "n/a"
    return f"{alpha:.2f}" + ("" if err is None else f"±{err:.2f}")


def _window(row: dict, side: str) -> str:
    if f"{side}_fit_start_ps" not in row:
        return "n/a"
    return (f"lags {row[f'{side}_fit_start_ps'] / 1000:.3g}-{row[f'{side}_fit_end_ps'] / 1000:.3g} ns, "
            f"{row[f'{side}_n_segments']} segments")
