"""Metrics of the polymer benchmark: a prediction for each held-out chain against its fine-MD ground truth.

A *record* of one chain's trajectory is a dict with

* ``rg2`` (T,) nm^2: squared radius of gyration of the CG beads (mass-weighted), every ``dt_ps`` ps;
* ``com`` (T, 3) nm: the chain's centre of mass at the same times;
* ``frames`` (F, n_beads, 3) nm, optional: CG frames (for collisions and bond breaks);
* ``dt_ps``: spacing of ``rg2`` and ``com``.

Metrics per chain (:func:`chain_metrics`):

* ``rg2_rel_error``: <Rg^2>_pred / <Rg^2>_true - 1;
* ``rg2_js``: Jensen-Shannon divergence (nats, at most ln 2) of the Rg^2 distributions, 20 bins at the ground
  truth's quantiles (the outer bins open), as in ``benchmarks/dig.py``;
* ``tau_log10_ratio``: log10 of the ratio of Rg^2 integrated autocorrelation times
  (:func:`openmm_cgml.analysis.integrated_time`, Sokal window);
* ``diffusivity_log10_ratio``: log10 of the chain centre-of-mass diffusivity over the exact one. With Langevin
  friction gamma on every bead and no interactions between chains, the centre of mass of an N-bead chain is a
  free Brownian particle with D = k_B T / (N m gamma), so the reference needs no fit (the ground-truth MD's own
  estimate is reported next to it as a check);
* ``collision_rate``: non-bonded CG bead pairs closer than ``COLLISION_FRACTION`` of the closest approach in the
  chain's ground truth, per bead per frame; ``bond_break_rate``: fraction of CG bond-frames longer than
  ``BOND_BREAK_FACTOR`` times that bond's longest ground-truth length.
"""
from __future__ import annotations

import math

import numpy as np

from openmm_cgml.analysis import (COLLISION_FRACTION, autocorrelation, bond_lengths, collision_rate, js_divergence,
                                  diffusion_coefficient, integrated_time, msd_per_particle)

BOND_BREAK_FACTOR = 1.2
_JS_BINS = 20


def rg2_js_divergence(pred, true, n_bins: int = _JS_BINS) -> float:
    """Jensen-Shannon divergence (nats) of two samples, on ``n_bins`` bins at the quantiles of ``true``."""
    return js_divergence(pred, true, n_bins, bins_from="reference")


def relaxation_time(rg2, dt_ps: float) -> float:
    """Integrated autocorrelation time (ps) of an Rg^2 series sampled every ``dt_ps``."""
    return integrated_time(autocorrelation(np.asarray(rg2, float)), dt_ps)


def com_diffusivity(com, dt_ps: float, max_lag_fraction: float = 0.5) -> float:
    """Centre-of-mass diffusivity (nm^2/ps) from the MSD of a (T, 3) path: fit over the last 80 % of the lags up
    to ``max_lag_fraction`` of the run (the chain COM is Brownian beyond ~1/gamma, a few ps)."""
    x = np.asarray(com, float)[:, None, :]
    max_lag = max(3, int(max_lag_fraction * (len(x) - 1)))
    lags, per_chain = msd_per_particle(x, dt_ps, max_lag)
    return diffusion_coefficient(lags, per_chain[:, 0], fit_range=0.2).D_nm2_per_ps


def exact_com_diffusivity(temperature_K: float, n_beads: int, mass_amu: float, friction_per_ps: float) -> float:
    """k_B T / (N m gamma), nm^2/ps."""
    kt = 0.00831446261815324 * temperature_K  # kJ/mol = amu nm^2/ps^2
    return kt / (n_beads * mass_amu * friction_per_ps)


def contact_yardsticks(frames, bonds) -> tuple[float, np.ndarray]:
    """Closest non-bonded approach (nm) and each CG bond's longest length (nm) over ground-truth frames."""
    from scipy.spatial.distance import pdist

    x = np.asarray(frames, float)
    n = x.shape[1]
    i, j = np.triu_indices(n, 1)
    bonded = {tuple(b) for b in np.sort(np.asarray(bonds).reshape(-1, 2), axis=1).tolist()}
    keep = np.array([(a, b) not in bonded for a, b in zip(i, j)])
    closest = min(float(pdist(f)[keep].min()) for f in x) if keep.any() else math.inf
    return closest, bond_lengths(x, bonds).max(axis=0)


def chain_metrics(pred: dict, true: dict, d_exact: float, bonds=None, yardsticks=None) -> dict:
    """The metrics of one chain (module docstring); ``yardsticks`` from :func:`contact_yardsticks`."""
    tau_pred, tau_true = relaxation_time(pred["rg2"], pred["dt_ps"]), relaxation_time(true["rg2"], true["dt_ps"])
    d_pred = com_diffusivity(pred["com"], pred["dt_ps"])
    out = {"rg2_pred_nm2": float(np.mean(pred["rg2"])), "rg2_true_nm2": float(np.mean(true["rg2"])),
           "tau_pred_ps": tau_pred, "tau_true_ps": tau_true, "D_pred_nm2_per_ps": d_pred,
           "D_exact_nm2_per_ps": d_exact}
    out["rg2_rel_error"] = out["rg2_pred_nm2"] / out["rg2_true_nm2"] - 1.0
    out["rg2_js"] = rg2_js_divergence(pred["rg2"], true["rg2"])
    out["tau_log10_ratio"] = math.log10(tau_pred / tau_true)
    out["diffusivity_log10_ratio"] = math.log10(d_pred / d_exact) if d_pred > 0 else None
    if pred.get("frames") is not None and yardsticks is not None and bonds is not None:
        closest, longest = yardsticks
        frames = np.asarray(pred["frames"], float)
        out["collision_rate"] = collision_rate(frames, None, None, COLLISION_FRACTION * closest, exclude_pairs=bonds)
        out["bond_break_rate"] = float((bond_lengths(frames, bonds) > BOND_BREAK_FACTOR * longest).mean())
    return out


def aggregate(per_chain: list[dict]) -> dict:
    """Means over chains: |rel. error| of <Rg^2>, JS, |log10 tau ratio|, |log10 D ratio|, failure rates."""
    def mean(key, absolute=True):
        values = [c[key] for c in per_chain if c.get(key) is not None]
        return float(np.mean(np.abs(values) if absolute else values)) if values else None

    return {"rg2_mean_abs_rel_error": mean("rg2_rel_error"), "rg2_js_mean": mean("rg2_js"),
            "tau_mean_abs_log10_ratio": mean("tau_log10_ratio"),
            "diffusivity_mean_abs_log10_ratio": mean("diffusivity_log10_ratio"),
            "collision_rate_mean": mean("collision_rate", False),
            "bond_break_rate_mean": mean("bond_break_rate", False),
            "n_chains": len(per_chain)}
