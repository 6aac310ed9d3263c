"""Mean-squared displacement and self-diffusion coefficients.

Positions are nm, times ps. Diffusion coefficients come out in nm²/ps and cm²/s (1 nm²/ps = 1e-2 cm²/s).
"""
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple, Union

import numpy as np
import scipy.fft
from openmm import unit

from .. import pbc
from ._arrays import as_box, as_float, as_float_array, as_labels, as_trajectory

NM2_PER_PS_IN_CM2_PER_S = 1.0e-2

# Bounds the FFT work array (complex, ~2T x chunk x 3) to a few tens of MB whatever the particle count.
_FFT_ELEMENTS_PER_CHUNK = 4_000_000


def unwrap(positions, box) -> np.ndarray:
    """Undo periodic wrapping by accumulating minimum-image frame-to-frame displacements.

    Requires every particle to move less than half of each box edge between consecutive frames; faster moves
    are silently folded back (no trajectory format can tell them apart). Already-unwrapped input is returned
    unchanged under the same condition.

    Args:
        positions: (T, N, 3) positions, nm (wrapped or not).
        box: orthorhombic edge lengths, (3,) or (T, 3), nm. Frame t's displacement uses the box of frame t.

    Returns:
        (T, N, 3) float64 unwrapped positions, nm, continuous from frame 0's positions.
    """
    x = as_trajectory(positions)
    return pbc.unwrap(x, as_box(box, x.shape[0]))


def _check_max_lag(max_lag: Optional[int], n_frames: int) -> int:
    if n_frames < 2:
        raise ValueError("an MSD needs at least 2 frames")
    if max_lag is None:
        return max(1, n_frames // 2)
    max_lag = int(max_lag)
    if not 1 <= max_lag <= n_frames - 1:
        raise ValueError(f"max_lag must be between 1 and T - 1 = {n_frames - 1}, got {max_lag}")
    return max_lag


def _msd_fft(x: np.ndarray, max_lag: int) -> np.ndarray:
    """All-origins MSD (max_lag + 1, N) of x (T, N, 3) by the FFT algorithm.

    MSD(m) = S1(m) - 2 S2(m), with S2 the position autocorrelation (FFT, zero-padded against wrap-around)
    and S1(m) = mean over origins k of |x_k|² + |x_{k+m}|² (prefix sums).
    """
    n_frames = x.shape[0]
    x = x - x.mean(axis=0)  # translation-invariant; keeps |x|² small so S1 - 2 S2 cancels accurately
    n_fft = scipy.fft.next_fast_len(2 * n_frames)
    lags = np.arange(max_lag + 1)
    n_origins = (n_frames - lags)[:, None].astype(np.float64)
    out = np.empty((max_lag + 1, x.shape[1]))
    chunk = max(1, _FFT_ELEMENTS_PER_CHUNK // (3 * n_fft))
    for start in range(0, x.shape[1], chunk):
        xc = x[:, start:start + chunk]
        spectrum = scipy.fft.rfft(xc, n=n_fft, axis=0)
        s2 = scipy.fft.irfft(spectrum * spectrum.conj(), n=n_fft, axis=0)[:max_lag + 1].sum(axis=-1)
        sq = (xc * xc).sum(axis=-1)
        prefix = np.concatenate([np.zeros((1, sq.shape[1])), np.cumsum(sq, axis=0)])
        s1 = prefix[n_frames - lags] + (prefix[n_frames] - prefix[lags])
        out[:, start:start + chunk] = (s1 - 2.0 * s2) / n_origins
    out[0] = 0.0
    return out


def msd_per_particle(positions, dt_ps, max_lag: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Mean-squared displacement of each particle, averaged over all time origins (FFT, O(T log T)).

    Args:
        positions: (T, N, 3) *unwrapped* positions, nm, at equal spacing ``dt_ps``.
        dt_ps: time between frames, ps (float or Quantity).
        max_lag: largest lag in frames; default T // 2 (longer lags average over fewer than half the origins).

    Returns:
        lag_times_ps (L + 1,) and msd_nm2 (L + 1, N).
    """
    x = as_trajectory(positions)
    dt = as_float(dt_ps, unit.picosecond, "dt_ps")
    if dt <= 0.0:
        raise ValueError(f"dt_ps must be positive, got {dt}")
    lag = _check_max_lag(max_lag, x.shape[0])
    return np.arange(lag + 1) * dt, _msd_fft(x, lag)


def msd(positions, dt_ps, max_lag: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Particle-averaged mean-squared displacement over all time origins; see :func:`msd_per_particle`.

    Returns:
        lag_times_ps (L + 1,) and msd_nm2 (L + 1,).
    """
    lag_times, per_particle = msd_per_particle(positions, dt_ps, max_lag)
    return lag_times, per_particle.mean(axis=1)


@dataclass(frozen=True)
class DiffusionFit:
    """A linear fit MSD(t) = slope * t + intercept over [fit_start_ps, fit_end_ps]; D = slope / (2 dim).

    ``D_err_nm2_per_ps`` is the least-squares standard error of the slope / (2 dim). MSD points at different
    lags are correlated, so this underestimates the true uncertainty; use block or replica averaging
    (:func:`diffusion_by_species`) for error bars.
    """

    D_nm2_per_ps: float
    D_err_nm2_per_ps: float
    slope_nm2_per_ps: float
    intercept_nm2: float
    fit_start_ps: float
    fit_end_ps: float
    dim: int

    @property
    def D_cm2_per_s(self) -> float:
        return self.D_nm2_per_ps * NM2_PER_PS_IN_CM2_PER_S

    @property
    def D_err_cm2_per_s(self) -> float:
        return self.D_err_nm2_per_ps * NM2_PER_PS_IN_CM2_PER_S

    def to_dict(self) -> dict:
        """Plain-float dictionary including the cm²/s values (for JSON)."""
        out = asdict(self)
        out["D_cm2_per_s"] = self.D_cm2_per_s
        out["D_err_cm2_per_s"] = self.D_err_cm2_per_s
        return out


FitRange = Union[float, Tuple[float, float]]


def fit_window(lag_times: np.ndarray, fit_range) -> Tuple[float, float]:
    """(t0, t1) ps of a fit over ``lag_times``: ``fit_range`` as a (t0, t1) pair, or a fraction f for
    (f x longest lag, longest lag)."""
    t_max = float(lag_times[-1])
    if isinstance(fit_range, (tuple, list)):
        if len(fit_range) != 2:
            raise ValueError("fit_range must be a fraction or a (t0, t1) pair in ps")
        t0 = as_float(fit_range[0], unit.picosecond, "fit_range[0]")
        t1 = as_float(fit_range[1], unit.picosecond, "fit_range[1]")
        if not t0 < t1:
            raise ValueError(f"fit_range must have t0 < t1, got ({t0}, {t1})")
        return t0, t1
    fraction = float(fit_range)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"a fractional fit_range must lie in [0, 1), got {fraction}")
    return fraction * t_max, t_max


def diffusion_coefficient(lag_times, msd_nm2, fit_range: FitRange = 0.2, dim: int = 3) -> DiffusionFit:
    """Self-diffusion coefficient from the slope of the MSD (Einstein relation, D = slope / (2 dim)).

    Args:
        lag_times: (L,) lag times, ps.
        msd_nm2: (L,) mean-squared displacement, nm².
        fit_range: (t0, t1) window in ps, or a fraction f: fit lags in [f * t_max, t_max] (skips the
            short-time ballistic/caged part).
        dim: number of dimensions the MSD sums over.

    Returns:
        A :class:`DiffusionFit` (D in nm²/ps and cm²/s with a least-squares error).
    """
    t = as_float_array(lag_times, unit.picosecond, "lag_times")
    y = as_float_array(msd_nm2, unit.nanometer ** 2, "msd_nm2")
    if t.ndim != 1 or t.shape != y.shape:
        raise ValueError(f"lag_times and msd_nm2 must be 1-D of equal length, got {t.shape} and {y.shape}")
    if dim not in (1, 2, 3):
        raise ValueError(f"dim must be 1, 2 or 3, got {dim}")
    t0, t1 = fit_window(t, fit_range)
    sel = (t >= t0) & (t <= t1)
    if sel.sum() < 3:
        raise ValueError(f"fit_range ({t0:g}, {t1:g}) ps holds {int(sel.sum())} lags; at least 3 are needed")
    ts, ys = t[sel], y[sel]
    (slope, intercept), cov = np.polyfit(ts, ys, 1, cov="unscaled")
    residuals = ys - (slope * ts + intercept)
    sigma2 = residuals @ residuals / max(1, ts.size - 2)
    slope_err = float(np.sqrt(cov[0, 0] * sigma2))
    return DiffusionFit(
        D_nm2_per_ps=float(slope) / (2 * dim),
        D_err_nm2_per_ps=slope_err / (2 * dim),
        slope_nm2_per_ps=float(slope),
        intercept_nm2=float(intercept),
        fit_start_ps=float(ts[0]),
        fit_end_ps=float(ts[-1]),
        dim=dim,
    )


def _mean_and_stderr(values: np.ndarray) -> Tuple[float, float]:
    if values.size < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))


def independent_segments(positions, n_blocks: int = 5, box=None) -> np.ndarray:
    """The independent runs that a diffusivity and its error bar are estimated from, as (S, T', N, 3).

    (R, T, N, 3) replicas are the segments as they are (``n_blocks`` is ignored); a single (T, N, 3) run is cut
    into ``n_blocks`` consecutive time blocks of T // n_blocks frames (the last T mod n_blocks frames are left out).
    This is the one place where runs are cut into blocks, so a D and the MSD exponent that certifies it are
    measured on the same segments.

    Args:
        positions: (T, N, 3) or (R, T, N, 3) positions, nm; unwrapped unless ``box`` is given.
        n_blocks: number of time blocks when no replica axis is given.
        box: optional orthorhombic box (3,) or (T, 3) nm; when given, each run is unwrapped before it is cut.

    Returns:
        (S, T', N, 3) float64 unwrapped positions, nm.
    """
    x = as_float_array(positions, unit.nanometer, "positions")
    if x.ndim == 4 and x.shape[-1] == 3:
        return np.stack([unwrap(r, box) for r in x]) if box is not None else x
    if x.ndim != 3:
        raise ValueError(f"positions must have shape (T, N, 3) or (R, T, N, 3) in nm, got {x.shape}")
    n_blocks = int(n_blocks)
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
    block_len = x.shape[0] // n_blocks
    if block_len < 4:
        raise ValueError(f"{x.shape[0]} frames are too few for {n_blocks} blocks (need >= 4 frames each)")
    if box is not None:
        x = unwrap(x, box)
    return x[:n_blocks * block_len].reshape(n_blocks, block_len, *x.shape[1:])


def species_msd_by_segment(segments, dt_ps, species,
                           max_lag: Optional[int] = None) -> Tuple[np.ndarray, Dict[object, np.ndarray]]:
    """Each species' bead-averaged all-origins MSD in each segment.

    Args:
        segments: (S, T, N, 3) unwrapped positions, nm (see :func:`independent_segments`).
        dt_ps: time between frames, ps.
        species: (N,) label of each bead.
        max_lag: largest lag in frames; default T // 2.

    Returns:
        lag_times_ps (L + 1,) and a dict species -> (S, L + 1) MSD, nm², in order of first appearance.
    """
    labels = as_labels(species, np.shape(segments)[-2])
    kinds = list(dict.fromkeys(labels.tolist()))
    curves = {kind: [] for kind in kinds}
    for segment in segments:
        lag_times, per_particle = msd_per_particle(segment, dt_ps, max_lag)
        for kind in kinds:
            curves[kind].append(per_particle[:, labels == kind].mean(axis=1))
    return lag_times, {kind: np.asarray(values) for kind, values in curves.items()}


def diffusion_by_species(
    positions,
    dt_ps,
    species,
    n_blocks: int = 5,
    fit_range: FitRange = 0.2,
    max_lag: Optional[int] = None,
    dim: int = 3,
    box=None,
) -> Dict[object, Tuple[float, float]]:
    """Diffusion coefficient of each species with a standard error from independent estimates.

    With (T, N, 3) positions the trajectory is cut into ``n_blocks`` consecutive time blocks; with
    (R, T, N, 3) positions each replica is one estimate (``n_blocks`` is ignored); see
    :func:`independent_segments`. D is the mean of the estimates and the error their standard error (NaN with a
    single estimate).

    Args:
        positions: (T, N, 3) or (R, T, N, 3) positions, nm; unwrapped unless ``box`` is given.
        dt_ps: time between frames, ps.
        species: (N,) label of each bead.
        n_blocks: number of time blocks when no replica axis is given.
        fit_range: see :func:`diffusion_coefficient`, applied to each block's MSD.
        max_lag: largest lag in frames within one block; default half the block length.
        dim: dimensions of the MSD.
        box: optional orthorhombic box (3,) or (T, 3) nm; when given, positions are unwrapped first.

    Returns:
        dict species -> (D, stderr), both nm²/ps.
    """
    segments = independent_segments(positions, n_blocks, box)
    lag_times, curves = species_msd_by_segment(segments, dt_ps, species, max_lag)
    return diffusion_of_segments(lag_times, curves, fit_range, dim)


def diffusion_of_segments(lag_times, curves: Dict[object, np.ndarray], fit_range: FitRange = 0.2,
                          dim: int = 3) -> Dict[object, Tuple[float, float]]:
    """species -> (D, standard error), nm²/ps, from each species' (S, L) MSD in S independent segments
    (:func:`species_msd_by_segment`): the mean and standard error of the segments' fits over ``fit_range``."""
    return {kind: _mean_and_stderr(np.array([diffusion_coefficient(lag_times, curve, fit_range, dim).D_nm2_per_ps
                                             for curve in by_segment]))
            for kind, by_segment in curves.items()}
