"""One-call analysis of a CG trajectory: diffusion per species, RDFs, Rg², with JSON and PNG output."""
import json
import math
import os
from collections import Counter
from typing import Dict, List

import numpy as np
from openmm import unit

from ._arrays import as_box, as_float_array, as_labels, as_trajectory
from .correlation import autocorrelation, fit_stretched_exponential, integrated_time
from .plots import plot_acf, plot_msd, plot_rdf, plot_rg2_hist
from .regime import reported_diffusivity_of_segments
from .structure import first_peak, make_molecules_whole, radius_of_gyration_squared, rdf
from .transport import (diffusion_coefficient, diffusion_of_segments, independent_segments, msd_per_particle,
                        species_msd_by_segment, unwrap)

# Blocks shorter than this many frames give MSD fits too noisy to be worth an error bar.
_MIN_FRAMES_PER_BLOCK = 8


def _frame_spacing(times_ps, n_frames: int) -> float:
    t = as_float_array(times_ps, unit.picosecond, "times_ps")
    if t.shape != (n_frames,):
        raise ValueError(f"times_ps must hold one time per frame ({n_frames}), got shape {t.shape}")
    steps = np.diff(t)
    dt = float(np.median(steps))
    if dt <= 0.0 or not np.allclose(steps, dt, rtol=1e-4, atol=0.0):
        raise ValueError("times_ps must be increasing and evenly spaced (subsample the trajectory first)")
    return dt


def _molecule_label(species_of_beads) -> str:
    # Molecules of the same bead composition are grouped as one kind, e.g. "EO12" or "A2B3".
    return "".join(f"{name}{count}" for name, count in Counter(map(str, species_of_beads)).items())


def _block_stderr(series: np.ndarray, n_blocks: int) -> float:
    """Standard error of the mean of (T, ...) data from means of ``n_blocks`` consecutive time blocks."""
    length = series.shape[0] // n_blocks
    if n_blocks < 2 or length < 1:
        return float("nan")
    means = np.array([series[i * length:(i + 1) * length].mean() for i in range(n_blocks)])
    return float(means.std(ddof=1) / math.sqrt(n_blocks))


def species_diffusion(positions, dt_ps, species, n_blocks: int = 5, fit_range=0.2):
    """Each species' diffusivity by the project's rule, measured on independent time blocks.

    The run is cut into ``n_blocks`` blocks (fewer when a block would hold under 8 frames; one block for short
    runs). D is fit to the blocks' mean MSD over ``fit_range`` of a block's lags and reported only where the MSD
    exponent over that same window is >= 0.9 (:func:`reported_diffusivity_of_segments`); the error bars are the
    standard errors of D and of the exponent over the blocks. The whole run's MSD (lags up to T/2) is returned for
    plotting, with the block-window fit as its line.

    Args:
        positions: (T, N, 3) unwrapped positions, nm.
        dt_ps: time between frames, ps.
        species: (N,) label of each bead.

    Returns:
        (curves, table): species -> {"lag_times_ps", "msd_nm2", "fit"} and species -> record with
        ``D_cm2_per_s`` (None where withheld), ``D_err_cm2_per_s``, ``msd_exponent``, ``msd_exponent_err``,
        ``fit_start_ps``, ``fit_end_ps``, ``n_blocks``, ``diffusive``, ``withheld``, ``n_beads``.
    """
    x = as_trajectory(positions)
    labels = as_labels(species, x.shape[1])
    lag_times, per_particle = msd_per_particle(x, dt_ps)
    n_segments = max(1, min(int(n_blocks), x.shape[0] // _MIN_FRAMES_PER_BLOCK))
    segment_lags, by_segment = species_msd_by_segment(independent_segments(x, n_segments), dt_ps, labels)
    spread = diffusion_of_segments(segment_lags, by_segment, fit_range)
    curves, table = {}, {}
    for kind, segment_msds in by_segment.items():
        rule = reported_diffusivity_of_segments(segment_lags, segment_msds, fit_range)
        fit = diffusion_coefficient(segment_lags, segment_msds.mean(axis=0), fit_range)
        curves[str(kind)] = {"lag_times_ps": lag_times.tolist(),
                             "msd_nm2": per_particle[:, labels == kind].mean(axis=1).tolist(), "fit": fit.to_dict()}
        shown = rule["diffusive"]  # a sub-diffusive species gets None and the reason
        table[str(kind)] = {
            "n_beads": int((labels == kind).sum()),
            "D_cm2_per_s": rule["D_cm2_per_s"],
            "D_err_cm2_per_s": spread[kind][1] * 1e-2 if shown else None,
            "D_block_mean_cm2_per_s": spread[kind][0] * 1e-2 if shown else None,
            "n_blocks": n_segments,
            "fit_start_ps": rule["fit_start_ps"],
            "fit_end_ps": rule["fit_end_ps"],
            "msd_exponent": rule["msd_exponent"],
            "msd_exponent_err": rule["msd_exponent_err"],
            "diffusive": shown,
            "withheld": rule["withheld"],
        }
    return curves, table


def _rdfs(x, box, labels, kinds, r_max, n_bins, max_frames):
    frames = np.unique(np.linspace(0, x.shape[0] - 1, min(max_frames, x.shape[0])).astype(int))
    b = as_box(box, x.shape[0])[frames]
    if r_max is None:
        r_max = min(0.5 * float(b.min()), 2.0)
    out = {}
    for i, a in enumerate(kinds):
        for kind_b in kinds[i:]:
            mask_a, mask_b = labels == a, labels == kind_b
            if a == kind_b and mask_a.sum() < 2:
                continue
            r, g = rdf(x[frames], b, mask_a, mask_b, r_max, n_bins)
            peak_r, peak_g = first_peak(r, g)
            out[f"{a}-{kind_b}"] = {"r_nm": r.tolist(), "g": g.tolist(), "first_peak_nm": peak_r,
                                    "first_peak_height": peak_g, "n_frames": int(frames.size)}
    return out


def _rg2(x, dt, labels, masses, molecule_index, n_blocks):
    values = radius_of_gyration_squared(x, masses, molecule_index)
    ids, molecule = np.unique(np.asarray(molecule_index), return_inverse=True)
    groups: Dict[str, List[int]] = {}
    for m in range(ids.size):
        beads = np.flatnonzero(molecule == m)
        if beads.size > 1:
            groups.setdefault(_molecule_label(labels[beads]), []).append(m)
    out, samples = {}, {}
    for label, members in groups.items():
        series = values[:, members]
        entry = {"n_molecules": len(members), "mean_nm2": float(series.mean()), "std_nm2": float(series.std()),
                 "stderr_nm2": _block_stderr(series, min(n_blocks, series.shape[0] // _MIN_FRAMES_PER_BLOCK)),
                 "acf_time_ps": None, "relaxation": None}
        if series.shape[0] >= 4 and np.ptp(series) > 0.0:
            acf = autocorrelation(series)
            lags = np.arange(acf.size) * dt
            half = max(3, acf.size // 2)
            entry["acf_time_ps"] = integrated_time(acf[:half], dt)
            entry["acf_lag_times_ps"] = lags[:half].tolist()
            entry["acf"] = acf[:half].tolist()
            try:
                fit = fit_stretched_exponential(lags[:half], acf[:half])
                entry["relaxation"] = {"tau_ps": fit.tau, "beta": fit.beta, "mean_time_ps": fit.mean_time}
            except (ValueError, RuntimeError):
                pass  # the ACF decays within a few frames or the fit did not converge: no relaxation time
        out[label] = entry
        samples[label] = series
    return out, samples


def analyze_trajectory(
    positions,
    box,
    times_ps,
    species,
    masses=None,
    molecule_index=None,
    out_dir=None,
    *,
    n_blocks: int = 5,
    fit_range=0.2,
    rdf_r_max=None,
    rdf_bins: int = 100,
    rdf_max_frames: int = 200,
    unwrapped: bool = False,
) -> dict:
    """Diffusion coefficients, RDFs and Rg² of a CG trajectory; writes analysis.json and PNGs to ``out_dir``.

    - Diffusion (:func:`species_diffusion`): D in cm²/s fit on ``n_blocks`` time blocks over ``fit_range`` of a
      block's lags, reported only where the MSD exponent over that window is >= 0.9, both with block standard
      errors; the MSD plot shows the whole run's MSD (lags up to T/2).
    - RDF between every pair of species (needs ``box``), with first-peak position and height; at most
      ``rdf_max_frames`` evenly spaced frames, r up to ``rdf_r_max`` nm (default min(L/2, 2 nm)).
    - Rg² of multi-bead molecules (needs ``masses`` and ``molecule_index``), grouped by bead composition:
      mean, std, block standard error, ACF, integrated time and stretched-exponential relaxation time.

    Args:
        positions: (T, N, 3) positions, nm; wrapped or unwrapped. With a box they are unwrapped (frame-to-frame
            moves must be below L/2), starting from frame 0 with its molecules made whole, unless ``unwrapped``.
        box: orthorhombic edge lengths (3,) or (T, 3) nm, or None for a non-periodic trajectory.
        times_ps: (T,) evenly spaced frame times, ps.
        species: (N,) species label per bead.
        masses: (N,) bead masses, amu, or None.
        molecule_index: (N,) molecule label per bead, or None.
        out_dir: directory for analysis.json, msd.png, rdf.png, rg2_hist.png, rg2_acf.png; None writes nothing.
        unwrapped: the positions are already unwrapped with whole molecules (CG datasets, the DCD of a learned
            run): used as they are, so moves longer than L/2 per frame are kept instead of folded back.

    Returns:
        JSON-serialisable dict with keys "n_frames", "n_beads", "dt_ps", "diffusion", "msd", "rdf", "rg2",
        "files".
    """
    x = as_trajectory(positions)
    n_frames, n_beads, _ = x.shape
    if n_frames < 4:
        raise ValueError(f"analyze_trajectory needs at least 4 frames, got {n_frames}")
    dt = _frame_spacing(times_ps, n_frames)
    labels = as_labels(species, n_beads)
    kinds = list(dict.fromkeys(labels.tolist()))
    if (masses is None) != (molecule_index is None):
        raise ValueError("give both masses and molecule_index (for Rg²) or neither")
    if box is not None and not unwrapped:
        if molecule_index is not None:
            # Unwrapping continues frame 0, so molecules whole in frame 0 stay whole in every frame.
            first = make_molecules_whole(x[0], as_box(box, n_frames)[0], molecule_index)
            x = np.concatenate([first[None], x[1:]])
        x_unwrapped = unwrap(x, box)
    else:
        x_unwrapped = x

    curves, diffusion = species_diffusion(x_unwrapped, dt, labels, n_blocks, fit_range)
    rdfs = _rdfs(x, box, labels, kinds, rdf_r_max, rdf_bins, rdf_max_frames) if box is not None else {}
    rg2, rg2_samples = ({}, {})
    if masses is not None:
        rg2, rg2_samples = _rg2(x_unwrapped, dt, labels, masses, molecule_index, n_blocks)

    result = _nan_to_none({"n_frames": n_frames, "n_beads": n_beads, "dt_ps": dt, "diffusion": diffusion,
                           "msd": curves, "rdf": rdfs, "rg2": rg2, "files": []})
    if out_dir is None:
        return result
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    files = [plot_msd(curves, os.path.join(out_dir, "msd.png"))]
    if rdfs:
        files.append(plot_rdf({k: (v["r_nm"], v["g"]) for k, v in rdfs.items()}, os.path.join(out_dir, "rdf.png")))
    if rg2:
        files.append(plot_rg2_hist(rg2_samples, os.path.join(out_dir, "rg2_hist.png")))
        acfs = {k: (v["acf_lag_times_ps"], v["acf"],
                    (v["relaxation"]["tau_ps"], v["relaxation"]["beta"]) if v["relaxation"] else None)
                for k, v in rg2.items() if "acf" in v}
        if acfs:
            files.append(plot_acf(acfs, os.path.join(out_dir, "rg2_acf.png")))
    json_path = os.path.join(out_dir, "analysis.json")
    result["files"] = files + [json_path]
    text = json.dumps(result, indent=1, allow_nan=False)  # fails before anything is written
    with open(json_path + ".tmp", "w") as handle:  # temporary file + rename: never a half-written analysis.json
        handle.write(text)
    os.replace(json_path + ".tmp", json_path)
    return result


def _nan_to_none(value):
    """Replace NaN (undefined error bars) by None so the result is strict JSON."""
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _fmt(value, spec: str) -> str:
    """``value`` formatted by ``spec`` (which starts with the field width), or a right-aligned "n/a"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a".rjust(int(spec.split(".")[0]))
    return format(value, spec)


def format_table(result: dict) -> str:
    """Plain-text summary of an :func:`analyze_trajectory` result, for printing."""
    lines = [f"{result['n_frames']} frames x {result['n_beads']} beads, dt = {result['dt_ps']:g} ps", "",
             f"{'species':<12}{'beads':>7}{'D (cm^2/s)':>14}{'+/-':>12}{'fit window (ps)':>22}{'MSD exp.':>15}"
             f"{'blocks':>8}"]
    for kind, d in result["diffusion"].items():
        window = f"{d['fit_start_ps']:g}-{d['fit_end_ps']:g}"
        alpha = f"{d['msd_exponent']:.2f}" + (f" ± {d['msd_exponent_err']:.2f}" if d.get("msd_exponent_err") else "")
        flag = "" if d["diffusive"] else "  D withheld: sub-diffusive (MSD exponent < 0.9)"
        lines.append(f"{kind:<12}{d['n_beads']:>7}{_fmt(d['D_cm2_per_s'], '14.3e')}"
                     f"{_fmt(d['D_err_cm2_per_s'], '12.2e')}{window:>22}{alpha:>15}{d['n_blocks']:>8}{flag}")
    if result["rdf"]:
        lines += ["", f"{'pair':<20}{'first peak (nm)':>17}{'g(peak)':>10}"]
        for pair, v in result["rdf"].items():
            lines.append(f"{pair:<20}{v['first_peak_nm']:>17.3f}{v['first_peak_height']:>10.2f}")
    if result["rg2"]:
        lines += ["", f"{'molecule':<16}{'count':>6}{'<Rg^2> (nm^2)':>15}{'+/-':>10}{'tau_int (ps)':>14}"
                      f"{'<tau> KWW (ps)':>16}"]
        for label, v in result["rg2"].items():
            relax = v["relaxation"]["mean_time_ps"] if v["relaxation"] else None
            lines.append(f"{label:<16}{v['n_molecules']:>6}{v['mean_nm2']:>15.4f}{_fmt(v['stderr_nm2'], '10.4f')}"
                         f"{_fmt(v['acf_time_ps'], '14.3g')}{_fmt(relax, '16.3g')}")
    return "\n".join(lines)
