"""Time autocorrelation functions and relaxation times (times in ps)."""
import math
from typing import NamedTuple

import numpy as np
import scipy.fft
from openmm import unit
from scipy.optimize import curve_fit

from ._arrays import as_float, as_float_array


def autocorrelation(x) -> np.ndarray:
    """Normalised autocorrelation of a time series along axis 0 (mean removed, FFT, all origins).

    Uses the standard biased estimator C(k) = sum_t dx_t dx_{t+k} / T, which keeps the long-lag tail from
    blowing up. A (T, K) input holds K series of the same observable (e.g. one per molecule): their
    autocovariances are averaged before normalising.

    Args:
        x: (T,) or (T, K) samples.

    Returns:
        (T,) autocorrelation with value 1 at lag 0.
    """
    series = as_float_array(x, unit.dimensionless, "x")
    if series.ndim == 1:
        series = series[:, None]
    if series.ndim != 2 or series.shape[0] < 2:
        raise ValueError(f"x must have shape (T,) or (T, K) with T >= 2, got {np.shape(x)}")
    n = series.shape[0]
    dx = series - series.mean(axis=0)
    n_fft = scipy.fft.next_fast_len(2 * n)
    spectrum = scipy.fft.rfft(dx, n=n_fft, axis=0)
    acov = scipy.fft.irfft(spectrum * spectrum.conj(), n=n_fft, axis=0)[:n].mean(axis=1)
    if acov[0] <= 0.0:
        raise ValueError("x is constant: its autocorrelation is undefined")
    return acov / acov[0]


def integrated_time(acf, dt, c: float = 5.0) -> float:
    """Integrated autocorrelation time tau = dt * (1/2 + sum_{k=1}^{M} acf_k), in the units of ``dt`` (ps).

    This is the area under the ACF (trapezoid rule), equal to tau for exp(-t/tau); the statistical
    inefficiency (samples per independent sample) is 2 tau / dt. The window M is Sokal's automatic choice:
    the smallest M with M >= c * (1 + 2 sum_{k<=M} acf_k). If no such M exists the series is too short for a
    reliable estimate and the sum over the whole ACF is returned.
    """
    rho = as_float_array(acf, unit.dimensionless, "acf")
    step = as_float(dt, unit.picosecond, "dt")
    if rho.ndim != 1 or rho.size < 2:
        raise ValueError("acf must be 1-D with at least 2 lags")
    if step <= 0.0:
        raise ValueError(f"dt must be positive, got {step}")
    inefficiency = 2.0 * np.cumsum(rho) - rho[0]  # g(M) = 1 + 2 sum_{k=1}^{M} rho_k, with rho_0 = 1
    window = np.flatnonzero(np.arange(rho.size) >= c * inefficiency)
    m = int(window[0]) if window.size else rho.size - 1
    return float(step * 0.5 * inefficiency[m])


class StretchedExponential(NamedTuple):
    """Fit acf(t) = exp(-(t / tau)^beta); mean_time = integral of the fit = tau / beta * Gamma(1 / beta) (ps)."""

    tau: float
    beta: float
    mean_time: float


def stretched_exponential_mean_time(tau: float, beta: float) -> float:
    """Mean relaxation time tau / beta * Gamma(1 / beta) of a stretched exponential, in the units of tau."""
    return float(tau / beta * math.gamma(1.0 / beta))


def fit_stretched_exponential(t, acf, min_value: float = 0.05) -> StretchedExponential:
    """Least-squares fit of a Kohlrausch (stretched-exponential) decay to an ACF.

    Only the first decay is fitted: lags up to where the ACF first falls below ``min_value``, since the
    noisy tail around zero carries no information about tau and beta.

    Args:
        t: (L,) lag times, ps.
        acf: (L,) normalised autocorrelation.
        min_value: ACF level that ends the fitted window.

    Returns:
        :class:`StretchedExponential` (tau ps, beta, mean relaxation time ps).
    """
    times = as_float_array(t, unit.picosecond, "t")
    rho = as_float_array(acf, unit.dimensionless, "acf")
    if times.ndim != 1 or times.shape != rho.shape:
        raise ValueError(f"t and acf must be 1-D of equal length, got {times.shape} and {rho.shape}")
    below = np.flatnonzero(rho < min_value)
    stop = int(below[0]) if below.size else rho.size
    if stop < 3:
        raise ValueError("the ACF decays below min_value within 3 lags: sample the series more often")
    ts, ys = times[:stop], rho[:stop]

    def model(tt, tau, beta):
        return np.exp(-np.power(tt / tau, beta))

    tau_guess = max(float(np.trapezoid(ys, ts)), float(ts[1]))
    (tau, beta), _ = curve_fit(model, ts, ys, p0=(tau_guess, 1.0), bounds=([1e-12, 0.05], [np.inf, 5.0]))
    return StretchedExponential(float(tau), float(beta), stretched_exponential_mean_time(tau, beta))
