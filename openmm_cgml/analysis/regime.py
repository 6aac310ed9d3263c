"""Is an MSD diffusive yet? The MSD exponent and a diffusivity that is reported only from the diffusive regime.

A diffusivity D = MSD / (2 dim t) means something only where MSD ∝ t. Polymer beads and ions in a melt are
sub-diffusive (MSD ∝ t^α, α < 1) long after the ballistic regime, so a straight-line fit over a short
trajectory yields a number that depends on the trajectory length. The rule used throughout the project:
fit the log-log slope α over the same window as the linear fit, and refuse to report D where α < 0.9.

Where D is the mean of fits to independent segments (time blocks of one run, or replicas), α is measured on
those same segments: the slope of their mean MSD over the window each segment's D is fit on, with a standard
error from the spread of the segments' own slopes. The longer lags of a whole run would certify a window that D
was not fit on, and there they average over only a few independent stretches of trajectory, so α is mostly
noise.
"""
from dataclasses import asdict, dataclass

import numpy as np
from openmm import unit

from ._arrays import as_float_array
from .transport import (FitRange, diffusion_coefficient, fit_window, independent_segments,
                        species_msd_by_segment)

#: Smallest MSD exponent accepted as diffusive.
MIN_DIFFUSIVE_EXPONENT = 0.9


class NotDiffusiveError(ValueError):
    """Raised when a diffusivity is asked for where the MSD is still sub-diffusive."""


def msd_exponent(lag_times, msd_nm2, fit_range: FitRange = 0.2) -> float:
    """Log-log slope α of MSD(t) ∝ t^α over the fit window (least squares on log t, log MSD).

    Parameters
    ----------
    lag_times : time
        (L,) lag times, ps.
    msd_nm2 : area
        (L,) mean-squared displacement, nm².
    fit_range : float or (time, time)
        The window, as in :func:`openmm_cgml.analysis.diffusion_coefficient`.
    """
    t = as_float_array(lag_times, unit.picosecond, "lag_times")
    y = as_float_array(msd_nm2, unit.nanometer ** 2, "msd_nm2")
    if t.ndim != 1 or t.shape != y.shape:
        raise ValueError(f"lag_times and msd_nm2 must be 1-D of equal length, got {t.shape} and {y.shape}")
    t0, t1 = fit_window(t, fit_range)
    sel = (t >= t0) & (t <= t1) & (t > 0) & (y > 0)
    if sel.sum() < 3:
        raise ValueError(f"fit window ({t0:g}, {t1:g}) ps holds {int(sel.sum())} positive lags; at least 3 are needed")
    slope, _ = np.polyfit(np.log(t[sel]), np.log(y[sel]), 1)
    return float(slope)


@dataclass(frozen=True)
class DiffusiveFit:
    """D from the diffusive regime, with the evidence: the MSD exponent α over the same fit window."""

    D_nm2_per_ps: float
    D_err_nm2_per_ps: float
    alpha: float
    fit_start_ps: float
    fit_end_ps: float

    @property
    def D_cm2_per_s(self) -> float:
        return self.D_nm2_per_ps * 1.0e-2

    def to_dict(self) -> dict:
        out = asdict(self)
        out["D_cm2_per_s"] = self.D_cm2_per_s
        return out


def diffusive_coefficient(lag_times, msd_nm2, fit_range: FitRange = 0.2, dim: int = 3,
                          min_exponent: float = MIN_DIFFUSIVE_EXPONENT) -> DiffusiveFit:
    """Self-diffusion coefficient, refused (:class:`NotDiffusiveError`) unless the MSD exponent is ≥ ``min_exponent``.

    Returns
    -------
    DiffusiveFit
        D (nm²/ps; least-squares error), α and the fit window (ps).
    """
    alpha = msd_exponent(lag_times, msd_nm2, fit_range)
    fit = diffusion_coefficient(lag_times, msd_nm2, fit_range, dim)
    if not alpha >= min_exponent:
        raise NotDiffusiveError(
            f"the MSD is sub-diffusive over {fit.fit_start_ps:g}-{fit.fit_end_ps:g} ps (exponent {alpha:.2f} < "
            f"{min_exponent}); no diffusivity is reported: run longer or fit later lags")
    return DiffusiveFit(fit.D_nm2_per_ps, fit.D_err_nm2_per_ps, alpha, fit.fit_start_ps, fit.fit_end_ps)


def reported_diffusivity(lag_times, msd_nm2, fit_range: FitRange = 0.2, dim: int = 3,
                         min_exponent: float = MIN_DIFFUSIVE_EXPONENT) -> dict:
    """The project's rule as a record for tables and JSON: D (cm²/s) only where the MSD exponent over the fit
    window is ≥ ``min_exponent``, else None with the reason.

    Returns a dict with ``D_cm2_per_s`` (float or None), ``msd_exponent``, ``diffusive``, ``fit_start_ps``,
    ``fit_end_ps`` and ``withheld`` (None, or why D is not reported).
    """
    alpha = msd_exponent(lag_times, msd_nm2, fit_range)
    fit = diffusion_coefficient(lag_times, msd_nm2, fit_range, dim)
    diffusive = bool(alpha >= min_exponent)
    return {"D_cm2_per_s": fit.D_cm2_per_s if diffusive else None, "msd_exponent": alpha, "diffusive": diffusive,
            "fit_start_ps": fit.fit_start_ps, "fit_end_ps": fit.fit_end_ps,
            "withheld": None if diffusive else (f"sub-diffusive: MSD exponent {alpha:.2f} < {min_exponent} over "
                                                f"{fit.fit_start_ps:g}-{fit.fit_end_ps:g} ps")}


def msd_exponent_stderr(lag_times, segment_msds, fit_range: FitRange = 0.2) -> float:
    """Standard error of the MSD exponent of S independent segments' mean MSD.

    Each segment's own exponent is fit over the same window; the error is their std (ddof=1) / sqrt(S), NaN
    with a single segment.

    Parameters
    ----------
    lag_times : time
        (L,) lag times, ps.
    segment_msds : area
        (S, L) MSD of each segment, nm².
    fit_range : float or (time, time)
        The window, as in :func:`msd_exponent`.
    """
    curves = as_float_array(segment_msds, unit.nanometer ** 2, "segment_msds")
    if curves.ndim != 2:
        raise ValueError(f"segment_msds must be (S, L), got shape {curves.shape}")
    if curves.shape[0] < 2:
        return float("nan")
    alphas = np.array([msd_exponent(lag_times, curve, fit_range) for curve in curves])
    return float(alphas.std(ddof=1) / np.sqrt(alphas.size))


def reported_diffusivity_of_segments(lag_times, segment_msds, fit_range: FitRange = 0.2, dim: int = 3,
                                     min_exponent: float = MIN_DIFFUSIVE_EXPONENT) -> dict:
    """:func:`reported_diffusivity` of the mean MSD of S independent segments (nm², (S, L)), with
    ``msd_exponent_err`` (:func:`msd_exponent_stderr`; None with one segment) and ``n_segments`` added.

    The rule is applied to the segment-mean MSD, over the window that each segment's D is fit on.
    """
    curves = as_float_array(segment_msds, unit.nanometer ** 2, "segment_msds")
    out = reported_diffusivity(lag_times, curves.mean(axis=0), fit_range, dim, min_exponent)
    err = msd_exponent_stderr(lag_times, curves, fit_range)
    out["msd_exponent_err"] = None if np.isnan(err) else err
    out["n_segments"] = int(curves.shape[0])
    return out


def msd_exponents_by_species(positions, dt_ps, species, n_blocks: int = 5, fit_range: FitRange = 0.2,
                             max_lag=None) -> dict:
    """Each species' MSD exponent measured as its diffusivity is: on the segments of
    :func:`~openmm_cgml.analysis.transport.independent_segments` ((T, N, 3) positions cut into ``n_blocks``
    time blocks; (R, T, N, 3) replicas as they are), over the window each segment's D is fit on (by default
    lags from 20 % to 100 % of half a segment).

    Parameters
    ----------
    positions : length
        (T, N, 3) or (R, T, N, 3) unwrapped positions, nm.
    dt_ps : time
        Time between frames, ps.
    species : (N,) labels
    n_blocks : int
        Time blocks of a single run; ``n_blocks=1`` measures the whole run.

    Returns
    -------
    dict
        species -> :func:`reported_diffusivity_of_segments` record (``msd_exponent``, ``msd_exponent_err``,
        ``fit_start_ps``, ``fit_end_ps`` in ps, ``diffusive``, ...).
    """
    segments = independent_segments(positions, n_blocks)
    lag_times, curves = species_msd_by_segment(segments, dt_ps, species, max_lag)
    return {kind: reported_diffusivity_of_segments(lag_times, by_segment, fit_range)
            for kind, by_segment in curves.items()}
