"""Tests of openmm_cgml.analysis against known answers, brute-force loops and mdtraj."""
import json
import math

import mdtraj
import numpy as np
import pytest
import scipy.signal
from openmm import unit

from openmm_cgml.analysis import (
    analyze_trajectory,
    autocorrelation,
    collision_count,
    collision_rate,
    coordination_number,
    diffusion_by_species,
    diffusion_coefficient,
    first_peak,
    fit_stretched_exponential,
    format_table,
    integrated_time,
    make_molecules_whole,
    msd,
    msd_per_particle,
    radius_of_gyration_squared,
    rdf,
    stretched_exponential_mean_time,
    unwrap,
)


def brownian(rng, n_frames, n_particles, diffusion, dt, start_box=None):
    """Free Brownian motion: Gaussian steps of variance 2 D dt per dimension (nm, ps)."""
    steps = rng.normal(0.0, math.sqrt(2.0 * diffusion * dt), size=(n_frames - 1, n_particles, 3))
    start = rng.uniform(0.0, 1.0 if start_box is None else start_box, size=(1, n_particles, 3))
    return np.concatenate([start, start + np.cumsum(steps, axis=0)])


def test_fft_msd_equals_direct_loop():
    rng = np.random.default_rng(1)
    x = brownian(rng, 120, 7, 0.05, 1.0) + 50.0  # far from the origin, as unwrapped positions get
    lags, per_particle = msd_per_particle(x, 1.0, max_lag=119)
    direct = np.array([((x[m:] - x[:-m]) ** 2).sum(-1).mean(0) for m in range(1, 120)])
    np.testing.assert_allclose(per_particle[1:], direct, rtol=1e-10)
    assert per_particle[0].max() == 0.0
    lags2, averaged = msd(x, 2.0 * unit.picosecond, max_lag=10)
    np.testing.assert_allclose(lags2, 2.0 * np.arange(11))
    np.testing.assert_allclose(averaged[1:], direct[:10].mean(axis=1), rtol=1e-10)


def test_diffusion_of_brownian_particles_also_after_wrapping():
    rng = np.random.default_rng(2)
    d_true, dt, box = 0.05, 1.0, np.array([4.0, 4.5, 5.0])
    x = brownian(rng, 200, 1000, d_true, dt, start_box=box)
    fit = diffusion_coefficient(*msd(x, dt))
    assert fit.D_nm2_per_ps == pytest.approx(d_true, rel=0.05)
    assert fit.D_cm2_per_s == pytest.approx(1e-2 * fit.D_nm2_per_ps)
    assert 0.0 < fit.D_err_nm2_per_ps < 0.05 * d_true
    wrapped = x - box * np.floor(x / box)
    assert np.ptp(x) > 3 * box.max()  # the particles really cross the boundaries many times
    np.testing.assert_allclose(unwrap(wrapped, box), x, atol=1e-9)
    np.testing.assert_allclose(unwrap(wrapped, np.tile(box, (200, 1))), x, atol=1e-9)
    wrapped_fit = diffusion_coefficient(*msd(unwrap(wrapped, box), dt))
    assert wrapped_fit.D_nm2_per_ps == pytest.approx(fit.D_nm2_per_ps, rel=1e-9)
    naive = diffusion_coefficient(*msd(wrapped, dt))  # without unwrapping, D is badly underestimated
    assert naive.D_nm2_per_ps < 0.5 * d_true


def test_diffusion_fit_window_and_bad_input():
    t = np.arange(11) * 2.0
    y = 6 * 0.1 * t + 0.3
    fit = diffusion_coefficient(t, y, fit_range=(4.0, 16.0))
    assert (fit.fit_start_ps, fit.fit_end_ps) == (4.0, 16.0)
    assert fit.D_nm2_per_ps == pytest.approx(0.1) and fit.intercept_nm2 == pytest.approx(0.3)
    assert diffusion_coefficient(t, y / 3, dim=1).D_nm2_per_ps == pytest.approx(0.1)
    with pytest.raises(ValueError, match="at least 3"):
        diffusion_coefficient(t, y, fit_range=(0.0, 3.0))
    with pytest.raises(ValueError, match="max_lag"):
        msd(np.zeros((5, 2, 3)), 1.0, max_lag=5)


def test_diffusion_by_species_blocks_and_replicas():
    rng = np.random.default_rng(3)
    fast = brownian(rng, 400, 300, 0.05, 1.0)
    slow = brownian(rng, 400, 300, 0.01, 1.0)
    x = np.concatenate([fast, slow], axis=1)
    species = ["Li"] * 300 + ["TFSI"] * 300
    result = diffusion_by_species(x, 1.0, species, n_blocks=4)
    assert set(result) == {"Li", "TFSI"}
    for name, d_true in (("Li", 0.05), ("TFSI", 0.01)):
        d, err = result[name]
        assert d == pytest.approx(d_true, rel=0.08)
        assert 0.0 < err < 0.1 * d_true
    replicas = x.reshape(1, 400, 600, 3).repeat(2, axis=0)
    replicas[1] = np.concatenate([brownian(rng, 400, 300, 0.05, 1.0), brownian(rng, 400, 300, 0.01, 1.0)], axis=1)
    by_replica = diffusion_by_species(replicas, 1.0, species)
    assert by_replica["Li"][0] == pytest.approx(0.05, rel=0.08)
    assert by_replica["TFSI"][1] > 0.0
    with pytest.raises(ValueError, match="one label per bead"):
        diffusion_by_species(x, 1.0, species[:-1])


def test_block_error_bars_have_the_right_size():
    """Over many independent systems of known D, (D - D_true) / err spreads like Student's t with n_blocks - 1
    degrees of freedom (std sqrt(9 / 7) = 1.13 for 10 blocks): error bars twice too large give 0.57, half
    as large 2.3. Each of 300 species of 8 Brownian walkers is one independent system."""
    rng = np.random.default_rng(11)
    d_true, n_systems = 0.05, 300
    x = brownian(rng, 400, 8 * n_systems, d_true, 1.0)
    result = diffusion_by_species(x, 1.0, np.repeat(np.arange(n_systems), 8), n_blocks=10)
    z = np.array([(d - d_true) / err for d, err in result.values()])
    assert len(z) == n_systems
    assert 0.85 < z.std() < 1.5 and abs(z.mean()) < 0.3


def mdtraj_rdf(x, box, sel_a, sel_b, r_max, n_bins):
    top = mdtraj.Topology()
    residue = top.add_residue("X", top.add_chain())
    for _ in range(x.shape[1]):
        top.add_atom("C", mdtraj.element.carbon, residue)
    traj = mdtraj.Trajectory(x.astype(np.float32), top, unitcell_lengths=np.tile(box, (x.shape[0], 1)),
                             unitcell_angles=np.full((x.shape[0], 3), 90.0))
    pairs = top.select_pairs(np.flatnonzero(sel_a), np.flatnonzero(sel_b))
    return mdtraj.compute_rdf(traj, pairs, r_range=(0.0, r_max), n_bins=n_bins)


def test_rdf_ideal_gas_and_mdtraj_agreement():
    rng = np.random.default_rng(4)
    box = np.array([3.0, 3.2, 3.4])
    gas = rng.uniform(0.0, 1.0, size=(10, 400, 3)) * box
    everyone = np.ones(400, dtype=bool)
    r, g = rdf(gas, box, everyone, everyone, 1.5, 30)
    assert np.all(np.abs(g[r > 0.4] - 1.0) < 0.08)
    assert abs(g[r > 0.4].mean() - 1.0) < 0.01

    # A clustered (non-ideal) configuration, unwrapped by up to a box length, against mdtraj.
    centres = rng.uniform(0.0, 1.0, size=(3, 40, 3)) * box
    x = np.concatenate([centres, centres + rng.normal(0.0, 0.15, size=centres.shape)], axis=1)
    x += box * rng.integers(-1, 2, size=x.shape)
    x = x.astype(np.float32).astype(np.float64)
    first = np.arange(80) < 40
    for sel_a, sel_b in ((first, ~first), (first, first), (everyone[:80], everyone[:80])):
        r, g = rdf(x, box, sel_a, sel_b, 1.2, 40)
        r_ref, g_ref = mdtraj_rdf(x, box, sel_a, sel_b, 1.2, 40)
        np.testing.assert_allclose(r, r_ref, rtol=1e-12)
        np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-12)
    assert first_peak(r, g)[0] < 0.5  # the cluster partners give the first peak
    with pytest.raises(ValueError, match="half the smallest box edge"):
        rdf(x, box, first, first, 1.6, 10)


def test_coordination_number_counts_periodic_neighbours_and_matches_the_ideal_gas():
    # Two beads 0.3 nm apart through the periodic boundary, a third far away: each of the pair has one neighbour.
    box = np.array([2.0, 2.0, 2.0])
    x = np.array([[[0.1, 1.0, 1.0], [1.8, 1.0, 1.0], [1.0, 0.1, 0.2]]])
    everyone = np.ones(3, dtype=bool)
    assert coordination_number(x, box, everyone, everyone, 0.35) == pytest.approx(2.0 / 3.0)
    assert coordination_number(x, box, np.array([True, False, False]), everyone, 0.25) == 0.0
    # Ideal gas: (N - 1) / V * 4/3 pi r^3 neighbours.
    rng = np.random.default_rng(0)
    gas = rng.uniform(0.0, 3.0, size=(20, 500, 3))
    want = 499 / 27.0 * 4.0 / 3.0 * np.pi * 0.5 ** 3
    got = coordination_number(gas, np.full(3, 3.0), np.ones(500, bool), np.ones(500, bool), 0.5)
    assert got == pytest.approx(want, rel=0.03)
    with pytest.raises(ValueError, match="half the smallest box edge"):
        coordination_number(gas, np.full(3, 3.0), np.ones(500, bool), np.ones(500, bool), 1.6)


def test_first_peak_ignores_noise_before_the_shell():
    r = np.linspace(0.05, 1.0, 20)
    g = np.zeros(20)
    g[4:] = 1.0
    g[5], g[6], g[7], g[8], g[9] = 1.5, 1.2, 2.4, 1.3, 0.8
    g[12] = 1.6
    assert first_peak(r, g) == (pytest.approx(r[7]), pytest.approx(2.4))
    assert first_peak(r, np.full(20, 0.5))[1] == 0.5


def test_radius_of_gyration_of_known_molecules():
    dimer = [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]  # masses 1 and 3: com at 1.5, Rg² = (2.25 + 3 * 0.25) / 4
    square = [[0.0, 0.0, 1.0], [0.4, 0.0, 1.0], [0.4, 0.4, 1.0], [0.0, 0.4, 1.0]]  # Rg² = a² / 2
    frame = np.array(dimer + square)
    x = np.stack([frame, frame + [5.0, -3.0, 2.0]])
    rg2 = radius_of_gyration_squared(x, [1.0, 3.0, 2.0, 2.0, 2.0, 2.0], [7, 7, 3, 3, 3, 3])
    assert rg2.shape == (2, 2)
    np.testing.assert_allclose(rg2, [[0.08, 0.75]] * 2, rtol=1e-12)  # molecule label 3 sorts first
    with pytest.raises(ValueError, match="masses"):
        radius_of_gyration_squared(x, [1.0, 3.0], [7, 7, 3, 3, 3, 3])


def test_make_molecules_whole_restores_split_chains():
    rng = np.random.default_rng(8)
    box = np.array([2.0, 2.0, 2.0])
    # A random-walk chain of 30 beads (extent >> L/2) and a dimer, then every bead wrapped on its own.
    chain = np.cumsum(rng.normal(0.0, 0.15, size=(30, 3)), axis=0) + 1.0
    x = np.concatenate([chain, [[1.9, 0.1, 0.1], [2.1, -0.1, 0.2]]])
    molecule = np.array([0] * 30 + [1, 1])
    assert np.ptp(chain, axis=0).max() > 1.0
    np.testing.assert_allclose(make_molecules_whole(x, box, molecule), x, atol=1e-12)
    wrapped = x - box * np.floor(x / box)
    whole = make_molecules_whole(np.stack([wrapped, wrapped]), box, molecule)
    shift = whole[0] - x
    np.testing.assert_allclose(shift, box * np.round(shift / box), atol=1e-9)  # each bead moved by box vectors
    for beads in (slice(0, 30), slice(30, 32)):
        np.testing.assert_allclose(shift[beads], shift[beads][:1].repeat(shift[beads].shape[0], 0), atol=1e-9)


def test_autocorrelation_time_of_ar1_process():
    rng = np.random.default_rng(5)
    tau, dt, n = 10.0, 1.0, 400_000
    phi = math.exp(-dt / tau)
    # x_i = phi x_{i-1} + sqrt(1 - phi²) e_i: unit variance, acf phi^k = exp(-k dt / tau).
    x = scipy.signal.lfilter([math.sqrt(1.0 - phi ** 2)], [1.0, -phi], rng.normal(size=n))
    acf = autocorrelation(x)
    assert acf[0] == 1.0
    np.testing.assert_allclose(acf[1:4], phi ** np.arange(1, 4), atol=0.01)
    assert integrated_time(acf, dt) == pytest.approx(tau, rel=0.1)
    fit = fit_stretched_exponential(np.arange(200) * dt, acf[:200])
    assert fit.beta == pytest.approx(1.0, abs=0.1)
    assert fit.tau == pytest.approx(tau, rel=0.1)
    assert fit.mean_time == pytest.approx(tau, rel=0.1)
    assert stretched_exponential_mean_time(2.0, 0.5) == pytest.approx(2.0 / 0.5 * math.gamma(2.0))
    t = np.linspace(0.0, 40.0, 400)
    kww = fit_stretched_exponential(t, np.exp(-np.power(t / 5.0, 0.6)))
    assert (kww.tau, kww.beta) == (pytest.approx(5.0, rel=1e-4), pytest.approx(0.6, rel=1e-4))
    # Several series of the same process average to the same ACF.
    multi = autocorrelation(np.stack([x[:200_000], x[200_000:]], axis=1))
    np.testing.assert_allclose(multi[:30], acf[:30], atol=0.02)


def test_collision_count_matches_brute_force():
    rng = np.random.default_rng(6)
    box = np.array([2.5, 2.5, 3.0])
    x = rng.uniform(0.0, 1.0, size=(3, 200, 3)) * box + box * rng.integers(-1, 2, size=(3, 200, 3))
    types = rng.integers(0, 2, size=200)
    thresholds = np.array([[0.2, 0.25], [0.25, 0.3]])
    bonds = np.array([[0, 1], [5, 3], [10, 11]])
    expected, expected_excl = [], []
    i, j = np.triu_indices(200, k=1)
    for frame in x:
        d = frame[j] - frame[i]
        d -= box * np.round(d / box)
        close = np.linalg.norm(d, axis=1) < thresholds[types[i], types[j]]
        expected.append(int(close.sum()))
        bonded = np.isin(i * 200 + j, [1, 3 * 200 + 5, 10 * 200 + 11])
        expected_excl.append(int((close & ~bonded).sum()))
    assert sum(expected) > 10
    np.testing.assert_array_equal(collision_count(x, box, types, thresholds), expected)
    np.testing.assert_array_equal(collision_count(x, box, types, thresholds, exclude_pairs=bonds), expected_excl)
    scalar = collision_count(x, box, None, 0.25 * unit.nanometer)
    d = x[:, j] - x[:, i]
    d -= box * np.round(d / box)
    np.testing.assert_array_equal(scalar, (np.linalg.norm(d, axis=-1) < 0.25).sum(axis=1))
    assert collision_rate(x, box, types, thresholds) == pytest.approx(np.mean(expected) / 200)
    free = collision_count(x[0], None, types, thresholds)
    dist = np.linalg.norm(x[0][j] - x[0][i], axis=1)
    assert free[0] == int((dist < thresholds[types[i], types[j]]).sum())
    with pytest.raises(ValueError, match="symmetric"):
        collision_count(x, box, types, np.array([[0.2, 0.1], [0.3, 0.2]]))


def test_analyze_trajectory_writes_json_and_plots(tmp_path):
    rng = np.random.default_rng(7)
    box = np.array([3.0, 3.0, 3.0])
    n_frames, n_chains, chain_len, n_ions = 80, 6, 4, 20
    # Rigid 4-bead chains (Rg² known, 0.0125 nm²) diffusing as a whole, plus free ions.
    offsets = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.2, 0.0, 0.0], [0.3, 0.0, 0.0]])
    centres = brownian(rng, n_frames, n_chains, 0.01, 2.0, start_box=box)
    chains = (centres[:, :, None, :] + offsets).reshape(n_frames, n_chains * chain_len, 3)
    chains += rng.normal(0.0, 0.01, size=chains.shape)  # makes Rg² fluctuate
    ions = brownian(rng, n_frames, n_ions, 0.05, 2.0, start_box=box)
    x = np.concatenate([chains, ions], axis=1)
    wrapped = x - box * np.floor(x / box)
    species = ["EO"] * (n_chains * chain_len) + ["Li"] * n_ions
    molecule = np.concatenate([np.repeat(np.arange(n_chains), chain_len), 100 + np.arange(n_ions)])
    masses = np.full(x.shape[1], 44.0)
    result = analyze_trajectory(wrapped, box, np.arange(n_frames) * 2.0, species, masses, molecule, tmp_path)

    assert result["diffusion"]["Li"]["D_cm2_per_s"] == pytest.approx(0.05e-2, rel=0.35)
    assert result["diffusion"]["EO"]["D_cm2_per_s"] == pytest.approx(0.01e-2, rel=0.5)
    assert result["diffusion"]["Li"]["D_err_cm2_per_s"] > 0.0
    assert set(result["rdf"]) == {"EO-EO", "EO-Li", "Li-Li"}
    assert result["rdf"]["EO-EO"]["first_peak_nm"] == pytest.approx(0.1, abs=0.03)  # chain neighbours
    assert list(result["rg2"]) == ["EO4"]
    assert result["rg2"]["EO4"]["mean_nm2"] == pytest.approx(0.0125, rel=0.1)
    assert result["rg2"]["EO4"]["n_molecules"] == n_chains
    with open(tmp_path / "analysis.json") as handle:
        assert json.load(handle)["diffusion"]["Li"]["n_beads"] == n_ions
    for name in ("msd.png", "rdf.png", "rg2_hist.png", "analysis.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "msd.png").read_bytes()[:4] == b"\x89PNG"
    # Free ions are diffusive: the report gives the MSD exponent of the fit window with D.
    assert result["diffusion"]["Li"]["msd_exponent"] == pytest.approx(1.0, abs=0.1)
    assert result["diffusion"]["Li"]["diffusive"] is True
    table = format_table(result)
    assert "Li" in table and "EO4" in table and "first peak" in table and "MSD exp." in table
    with pytest.raises(ValueError, match="evenly spaced"):
        analyze_trajectory(wrapped, box, np.arange(n_frames) ** 2.0, species)


def test_analyze_trajectory_rg2_relaxation_of_known_time():
    """Dimers whose bond length follows an Ornstein–Uhlenbeck process (tau = 20 ps): the Rg² ACF time is tau."""
    rng = np.random.default_rng(11)
    tau, dt, n_frames, n_dimers = 20.0, 2.0, 3000, 20
    phi = math.exp(-dt / tau)
    u = scipy.signal.lfilter([math.sqrt(1.0 - phi ** 2)], [1.0, -phi], rng.normal(size=(n_frames + 500, n_dimers)),
                             axis=0)[500:]  # stationary unit-variance AR(1) per dimer
    bond = 0.3 + 0.02 * u  # nm; Rg² = bond² / 4, linear in u to 0.2 %
    centres = rng.uniform(0.5, 2.5, size=(n_dimers, 3))
    x = np.zeros((n_frames, 2 * n_dimers, 3))
    x[:, 0::2] = centres
    x[:, 1::2] = centres
    x[:, 1::2, 0] += bond
    result = analyze_trajectory(x, np.array([3.0, 3.0, 3.0]), np.arange(n_frames) * dt, ["A"] * (2 * n_dimers),
                                np.full(2 * n_dimers, 10.0), np.repeat(np.arange(n_dimers), 2))
    (entry,) = result["rg2"].values()
    assert entry["mean_nm2"] == pytest.approx(0.3 ** 2 / 4, rel=0.01)
    assert entry["acf_time_ps"] == pytest.approx(tau, rel=0.2)
    assert entry["relaxation"]["tau_ps"] == pytest.approx(tau, rel=0.2)
    assert entry["relaxation"]["beta"] == pytest.approx(1.0, abs=0.15)


def test_bond_lengths_use_the_minimum_image():
    from openmm_cgml.analysis import bond_lengths

    x = np.array([[[0.1, 0.0, 0.0], [2.8, 0.0, 0.0], [0.1, 0.4, 0.0]]])  # bead 1 is 0.3 nm from bead 0 via an image
    np.testing.assert_allclose(bond_lengths(x, [[0, 1], [0, 2]], [3.0, 3.0, 3.0]), [[0.3, 0.4]])
    np.testing.assert_allclose(bond_lengths(x[0], [[0, 1]]), [[2.7]])  # no box: plain distance


def test_diffusive_regime_detector_refuses_subdiffusion_and_recovers_known_d():
    from openmm_cgml.analysis import NotDiffusiveError, diffusive_coefficient, msd, msd_exponent

    rng = np.random.default_rng(7)
    dt, n_frames, n_walkers = 2.0, 400, 300
    # Diffusive: Brownian walkers, D = 0.01 nm^2/ps exactly (per-axis step variance 2 D dt).
    d_true = 0.01
    walk = np.cumsum(rng.normal(scale=np.sqrt(2 * d_true * dt), size=(n_frames, n_walkers, 3)), axis=0)
    lag, curve = msd(walk, dt)
    fit = diffusive_coefficient(lag, curve)
    assert fit.alpha == pytest.approx(1.0, abs=0.05)
    assert fit.D_nm2_per_ps == pytest.approx(d_true, rel=0.08)
    assert fit.fit_start_ps == pytest.approx(0.2 * lag[-1], abs=dt) and fit.fit_end_ps == lag[-1]
    # Sub-diffusive: fractional Brownian motion with Hurst exponent 0.3, MSD ∝ t^0.6 (exact covariance,
    # Cholesky), so any straight-line "D" would depend on the trajectory length.
    t = np.arange(1, n_frames + 1) * dt
    hurst = 0.3
    cov = 0.5 * (t[:, None] ** (2 * hurst) + t[None, :] ** (2 * hurst) - np.abs(t[:, None] - t[None, :]) ** (2 * hurst))
    chol = np.linalg.cholesky(cov + 1e-12 * np.eye(n_frames))
    fbm = np.einsum("ts,snk->tnk", chol, rng.normal(size=(n_frames, n_walkers, 3))) * 0.05
    lag, curve = msd(fbm, dt)
    assert msd_exponent(lag, curve) == pytest.approx(2 * hurst, abs=0.08)
    with pytest.raises(NotDiffusiveError, match=r"sub-diffusive over .* \(exponent 0\.\d\d < 0.9\)"):
        diffusive_coefficient(lag, curve)


def caged_walkers(rng, n_frames, n_particles, diffusion, tau, dt):
    """Ornstein-Uhlenbeck walkers started in equilibrium (nm, ps): per axis MSD(t) = 2 D tau (1 - exp(-t / tau)),
    diffusive (2 D t) at lags << tau and caged at lags >~ tau."""
    variance, decay = diffusion * tau, math.exp(-dt / tau)
    kicks = rng.normal(scale=math.sqrt(variance * (1.0 - decay ** 2)), size=(n_frames, n_particles, 3))
    x = np.empty_like(kicks)
    x[0] = rng.normal(scale=math.sqrt(variance), size=(n_particles, 3))
    for t in range(1, n_frames):
        x[t] = decay * x[t - 1] + kicks[t]
    return x


def test_msd_exponent_is_measured_on_the_blocks_that_d_is_fit_on():
    """Walkers caged on a 1-ns time scale are close to diffusive over the lags a 400-ps block's D is fit on
    (40-200 ps; exponent 0.95 in theory) but not over the whole 2-ns run's long lags (200-1000 ps; 0.77). The
    comparison fits D on 5 blocks, so it certifies D with the blocks' exponent and window, ± their spread."""
    from openmm_cgml.analysis import compare_diffusivities, msd_exponent

    rng = np.random.default_rng(5)
    d, dt = 1e-3, 1.0  # nm²/ps, ps
    x = caged_walkers(rng, 2000, 100, d, 1000.0, dt)
    lag, curve = msd(x, dt)
    assert msd_exponent(lag, curve) == pytest.approx(0.77, abs=0.06)  # the window that used to certify D
    row = compare_diffusivities(x, dt, x[None], dt, ["A"] * 100)["A"]
    for side in ("allatom", "cg"):  # a single CG run is cut into blocks as the reference is
        assert row[f"{side}_n_segments"] == 5
        assert (row[f"{side}_fit_start_ps"], row[f"{side}_fit_end_ps"]) == (40.0, 200.0)
        assert row[f"{side}_msd_exponent"] == pytest.approx(0.95, abs=0.04)
        assert 0.0 < row[f"{side}_msd_exponent_err"] < 0.04
        assert row[f"{side}_withheld"] is None
        # the block slope of 6 D tau (1 - exp(-t / tau)) over 40-200 ps is 0.94 x 6 D
        assert row[f"{side}_D_cm2_per_s"] == pytest.approx(0.94 * d * 1e-2, rel=0.1)
    assert row["msd_lag_ps"] == 200.0  # the fixed-lag MSD is cut to a block's longest lag
    # `cgml analyze` and the demo (analyze_trajectory, species_diffusion) apply the same rule to one run
    table = analyze_trajectory(x, None, np.arange(2000) * dt, ["A"] * 100)["diffusion"]["A"]
    assert table["n_blocks"] == 5 and (table["fit_start_ps"], table["fit_end_ps"]) == (40.0, 200.0)
    for key in ("msd_exponent", "msd_exponent_err", "D_cm2_per_s", "withheld"):
        assert table[key] == pytest.approx(row[f"allatom_{key}"]) if row[f"allatom_{key}"] else table[key] is None
    assert table["D_err_cm2_per_s"] == pytest.approx(row["allatom_err_cm2_per_s"])


def test_comparison_fits_both_sides_over_the_reference_window():
    """Long CG replicas are fit over the reference blocks' lags (the walkers are caged at the replicas' own long
    lags: alpha 0.77 there, 0.95 over the reference window); replicas too short for that window use their own."""
    from openmm_cgml.analysis import compare_diffusivities

    rng = np.random.default_rng(6)
    d, dt = 1e-3, 1.0
    reference = caged_walkers(rng, 2000, 60, d, 1000.0, dt)  # 5 blocks of 400 ps: window 40-200 ps
    long_runs = np.stack([caged_walkers(rng, 2000, 60, d, 1000.0, dt) for _ in range(4)])
    row = compare_diffusivities(reference, dt, long_runs, dt, ["A"] * 60)["A"]
    assert (row["cg_fit_start_ps"], row["cg_fit_end_ps"]) == (40.0, 200.0)
    assert row["cg_msd_exponent"] == pytest.approx(0.95, abs=0.04) and row["cg_withheld"] is None
    assert abs(row["log10_error"]) < 0.05
    short_runs = long_runs[:, :300]  # lags up to 150 ps: their own window, 30-150 ps
    row = compare_diffusivities(reference, dt, short_runs, dt, ["A"] * 60)["A"]
    assert (row["cg_fit_start_ps"], row["cg_fit_end_ps"]) == (30.0, 150.0)


def test_msd_exponent_error_bars_have_the_right_size():
    """Over many independent Brownian systems the MSD exponent of the block-mean MSD scatters about 1 by its
    standard error over blocks: (alpha - 1) / err spreads like Student's t with 9 degrees of freedom (std 1.13)."""
    from openmm_cgml.analysis import msd_exponents_by_species

    rng = np.random.default_rng(11)
    n_systems = 300
    x = brownian(rng, 400, 8 * n_systems, 0.05, 1.0)
    result = msd_exponents_by_species(x, 1.0, np.repeat(np.arange(n_systems), 8), n_blocks=10)
    alpha = np.array([r["msd_exponent"] for r in result.values()])
    err = np.array([r["msd_exponent_err"] for r in result.values()])
    assert alpha.std() == pytest.approx(err.mean(), rel=0.2)
    z = (alpha - 1.0) / err
    assert 0.85 < z.std() < 1.5 and abs(z.mean()) < 0.3
    assert {r["fit_end_ps"] for r in result.values()} == {20.0}  # half of a 40-frame block
    whole = msd_exponents_by_species(x, 1.0, np.repeat(np.arange(n_systems), 8), n_blocks=1)
    assert whole[0]["msd_exponent_err"] is None and whole[0]["fit_end_ps"] == 200.0


def test_js_divergence_limits_and_symmetry_of_bins():
    from openmm_cgml.analysis import js_divergence

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=20000), rng.normal(size=20000)
    assert js_divergence(a, b) < 2e-3                                   # same distribution
    # Disjoint supports: ln 2 on pooled bins. On the reference's 20 bins the whole sample falls in the open top
    # bin, which also holds 1/20 of the reference: 0.5 ln(1/0.525) + 0.5 (0.95 ln 2 + 0.05 ln(0.05/0.525)).
    assert js_divergence(a + 100.0, a, bins_from="pooled") == pytest.approx(np.log(2), rel=1e-6)
    expected = 0.5 * np.log(1 / 0.525) + 0.5 * (0.95 * np.log(2) + 0.05 * np.log(0.05 / 0.525))
    assert js_divergence(a + 100.0, a) == pytest.approx(expected, rel=1e-6)
    # Two unit Gaussians one sigma apart: the exact JS divergence is 0.1114 nats (quadrature).
    assert js_divergence(a + 1.0, b, n_bins=40, bins_from="pooled") == pytest.approx(0.1114, abs=0.01)
    with pytest.raises(ValueError, match="bins_from"):
        js_divergence(a, b, bins_from="left")


def test_analyze_keeps_unwrapped_moves_longer_than_half_a_box():
    """A bead that really moves 0.7 L per frame: with ``unwrapped=True`` its MSD is (0.7 L)² at one lag; unwrapping
    again would fold each move back to -0.3 L."""
    from openmm_cgml.analysis import analyze_trajectory

    box = np.array([2.0, 2.0, 2.0])
    n_frames = 60
    x = np.zeros((n_frames, 2, 3))
    x[:, 0, 0] = 1.4 * np.arange(n_frames)  # 0.7 L per frame along x
    x[:, 1] = 0.5 + 0.01 * np.cumsum(np.random.default_rng(0).normal(size=(n_frames, 3)), axis=0)
    kept = analyze_trajectory(x, box, np.arange(n_frames) * 10.0, ["A", "B"], unwrapped=True)
    folded = analyze_trajectory(x, box, np.arange(n_frames) * 10.0, ["A", "B"])
    assert kept["msd"]["A"]["msd_nm2"][1] == pytest.approx(1.4 ** 2)
    assert folded["msd"]["A"]["msd_nm2"][1] == pytest.approx(0.6 ** 2)


def test_closest_pairs_counts_pairs_through_the_periodic_boundary():
    from benchmarks.ion_pairs import closest_pairs

    # Frame 0: beads 0 and 1 are 0.3 nm apart through the boundary; frame 1 (a larger box): nothing within 0.5 nm.
    x = np.array([[[0.1, 1.0, 1.0], [1.8, 1.0, 1.0], [1.0, 0.1, 0.2]],
                  [[0.1, 1.0, 1.0], [1.8, 1.0, 1.0], [1.0, 0.1, 0.2]]])
    box = np.array([[2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    got = closest_pairs(x, box, 0.5)
    assert got["closest_nm"] == pytest.approx(0.3)
    assert got["frames_with_pair"] == 1 and got["pair_frames"] == 1
    # the neighbours per bead benchmarks.ion_pairs derives from the pair count are coordination_number's
    everyone = np.ones(3, dtype=bool)
    assert 2.0 * got["pair_frames"] / (3 * 2) == pytest.approx(coordination_number(x, box, everyone, everyone, 0.5))
