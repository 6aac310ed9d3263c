"""PNG plots of analysis results. Each function writes one file and returns its path.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so no display is needed and the user's
pyplot backend and state are left alone. matplotlib is imported only when a plot is made.
"""
import os
from typing import Mapping

import numpy as np


def _new_axes(xlabel: str, ylabel: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig, ax


def _save(fig, ax, path) -> str:
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"plot path must end in .png, got {path!r}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png")  # temporary file + rename: never a half-written figure
    os.replace(path + ".tmp.png", path)
    return path


def _field(obj, name):
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


def plot_msd(results: Mapping, path) -> str:
    """Log-log MSD per species with its fitted line over the fit window.

    Args:
        results: species -> mapping with ``lag_times_ps``, ``msd_nm2`` and optionally ``fit`` (a
            :class:`~openmm_cgml.analysis.DiffusionFit` or its ``to_dict()``), as in ``analyze_trajectory``.
        path: output .png path.
    """
    fig, ax = _new_axes("lag time (ps)", "MSD (nm²)")
    for label, curve in results.items():
        t = np.asarray(curve["lag_times_ps"], dtype=float)
        y = np.asarray(curve["msd_nm2"], dtype=float)
        keep = t > 0
        (line,) = ax.loglog(t[keep], y[keep], label=str(label))
        fit = curve.get("fit") if isinstance(curve, Mapping) else None
        if fit is not None:
            tf = np.linspace(_field(fit, "fit_start_ps"), _field(fit, "fit_end_ps"), 50)
            tf = tf[tf > 0]
            yf = _field(fit, "slope_nm2_per_ps") * tf + _field(fit, "intercept_nm2")
            ax.loglog(tf[yf > 0], yf[yf > 0], "--", color=line.get_color(), lw=1.0)
    from matplotlib.ticker import NullFormatter

    # Minor-tick labels of short log ranges overlap; the decade labels are enough.
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    return _save(fig, ax, path)


def plot_rdf(curves: Mapping, path) -> str:
    """RDFs g(r): ``curves`` maps a label (e.g. "Li-TFSI") to an (r_nm, g) pair."""
    fig, ax = _new_axes("r (nm)", "g(r)")
    for label, (r, g) in curves.items():
        ax.plot(r, g, label=str(label))
    ax.axhline(1.0, color="grey", lw=0.5)
    return _save(fig, ax, path)


def plot_rg2_hist(rg2, path, bins: int = 50) -> str:
    """Histogram of Rg² (nm²): an array (any shape, flattened) or a mapping label -> array."""
    fig, ax = _new_axes("Rg² (nm²)", "probability density")
    groups = rg2 if isinstance(rg2, Mapping) else {"": rg2}
    for label, values in groups.items():
        ax.hist(np.ravel(values), bins=bins, density=True, histtype="step", label=str(label) or None)
    return _save(fig, ax, path)


def plot_acf(curves: Mapping, path) -> str:
    """Autocorrelation functions: ``curves`` maps a label to (t_ps, acf) or (t_ps, acf, (tau, beta)).

    With a stretched-exponential fit given, exp(-(t/tau)^beta) is drawn dashed over it.
    """
    fig, ax = _new_axes("lag time (ps)", "autocorrelation")
    for label, curve in curves.items():
        t, acf = np.asarray(curve[0], dtype=float), np.asarray(curve[1], dtype=float)
        (line,) = ax.plot(t, acf, label=str(label))
        if len(curve) > 2 and curve[2] is not None:
            tau, beta = curve[2][0], curve[2][1]
            ax.plot(t, np.exp(-np.power(t / tau, beta)), "--", color=line.get_color(), lw=1.0)
    ax.axhline(0.0, color="grey", lw=0.5)
    return _save(fig, ax, path)
