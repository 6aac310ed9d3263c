"""DiG densities you can check exactly (issue #14): a trained DiG's log-density against an exact Gaussian chain,
and its free-energy difference between the two wells of a double well against the exact value.

    python -m benchmarks.dig_density [--iterations 3000] [--threads 1]

1. Ideal Gaussian chain (N beads, Gaussian bonds): exact samples train a DiG by denoising score matching; the
   probability-flow ODE log-density (exact divergence) of held-out exact samples is compared with the analytic
   density on the centroid-free subspace. Goal: mean |error| <= 0.1 nat per degree of freedom.
2. Double well: a dimer whose bond length r has the density w_A N(r; r_A, s) + w_B N(r; r_B, s) (wells A and B,
   split at their midpoint), in a uniformly random direction. DiG is trained on exact samples;
   dF = -kT ln(P_B / P_A) from DiG samples is compared with the exact value from the normal CDF. Goal: within
   0.1 kT. The bond-length JS divergence (20 bins at the exact sample's quantiles) is reported too.
Writes benchmarks/results/dig_density.json and dig_density.png.
"""
import math

import numpy as np
import torch

from openmm_cgml.analysis import js_divergence
from openmm_cgml.dig import DiGSampler
from openmm_cgml.nn.dig_model import Descriptor
from openmm_cgml.training.dig import DiGConfig, FrameSet, fit_dig

from .common import Stopwatch, benchmark_parser, figure_path, machine, set_threads, write_json

GOALS = {"log_prob_error_nat_per_dof": 0.1, "delta_f_error_kT": 0.1}
MODEL = dict(hidden=64, n_layers=3, heads=4, n_rbf=32, n_time=16, embed_dim=8, gaussian_skip=True, batch_size=64,
             lr=2e-3, lr_final=1e-4, ema_decay=0.999, n_steps=500, checkpoint_every=0)


# ---------------------------------------------------------------------------------------------- exact targets
def gaussian_chain(n_samples: int, n: int, bond_var: float, seed: int) -> np.ndarray:
    """Exact centred ideal-chain structures (n_samples, n, 3) nm; bonds ~ N(0, bond_var) per component."""
    rng = np.random.default_rng(seed)
    bonds = rng.normal(0.0, math.sqrt(bond_var), (n_samples, n - 1, 3))
    x = np.concatenate([np.zeros((n_samples, 1, 3)), np.cumsum(bonds, axis=1)], axis=1)
    return (x - x.mean(axis=1, keepdims=True)).astype(np.float32)


def gaussian_chain_log_prob(x: np.ndarray, bond_var: float) -> np.ndarray:
    """Exact log-density (ln nm^-d, d = 3(n - 1)) of centred chain structures on the centroid-free subspace."""
    n = x.shape[1]
    m = np.zeros((n, n - 1))
    for k in range(n - 1):
        m[k + 1:, k] = 1.0
    m -= m.mean(axis=0, keepdims=True)
    w, v = np.linalg.eigh(bond_var * m @ m.T)
    w, v = w[1:], v[:, 1:]  # drop the centroid direction (eigenvalue 0)
    z = np.einsum("nk,bnc->bkc", v, x.astype(float)) / np.sqrt(w)[None, :, None]
    d = 3 * (n - 1)
    return -0.5 * (z**2).sum(axis=(1, 2)) - 0.5 * d * math.log(2 * math.pi) - 1.5 * np.log(w).sum()


class DoubleWell:
    """Bond-length density w_A N(r_A, s) + w_B N(r_B, s) of a dimer (nm); exact samples and dF_BA in kT."""

    def __init__(self, r_a=0.3, r_b=0.6, s=0.04, w_a=0.3):
        self.r_a, self.r_b, self.s, self.w_a = r_a, r_b, s, w_a
        self.split = 0.5 * (r_a + r_b)

    def samples(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        r = np.where(rng.random(n) < self.w_a, self.r_a, self.r_b) + rng.normal(0, self.s, n)
        u = rng.normal(size=(n, 3))
        bond = np.abs(r)[:, None] * u / np.linalg.norm(u, axis=1, keepdims=True)
        return np.stack([-bond / 2, bond / 2], 1).astype(np.float32)

    def exact_delta_f(self) -> float:
        """-ln(P(r > split) / P(r < split)) in kT, r > 0 (the mass below 0 folds onto |r|: negligible here)."""
        def cdf(x, mu):
            return 0.5 * (1 + math.erf((x - mu) / (self.s * math.sqrt(2))))

        p_a = self.w_a * cdf(self.split, self.r_a) + (1 - self.w_a) * cdf(self.split, self.r_b)
        return -math.log((1 - p_a) / p_a)


def bond_length(x) -> np.ndarray:
    x = np.asarray(x, float)
    return np.linalg.norm(x[:, 1] - x[:, 0], axis=1)


# ---------------------------------------------------------------------------------------------- checks
def chain_check(args) -> dict:
    n, bond_var = args.chain_beads, 0.01
    desc = Descriptor(np.zeros(n, dtype=np.int64), [[i, i + 1] for i in range(n - 1)])
    train = gaussian_chain(20000, n, bond_var, seed=0)
    config = DiGConfig(n_iterations=args.iterations, **MODEL)
    with Stopwatch() as clock:
        model, sde = fit_dig([FrameSet(train, desc)], config, progress=not args.quiet)
    test = gaussian_chain(args.density_samples, n, bond_var, seed=1)
    sampler = DiGSampler(model, sde)
    logp = sampler.log_prob(test, desc, exact=True, steps=args.ode_steps).numpy()
    exact = gaussian_chain_log_prob(test, bond_var)
    d = 3 * (n - 1)
    err = logp - exact
    return {"n_beads": n, "bond_var_nm2": bond_var, "dof": d, "train_wall_s": clock.seconds,
            "iterations": args.iterations, "ode_steps": args.ode_steps, "n_structures": len(test),
            "log_prob_mean_abs_error_nat": float(np.abs(err).mean()),
            "log_prob_error_nat_per_dof": float(np.abs(err).mean() / d),
            "log_prob_mean_error_nat": float(err.mean()), "log_prob_error_std_nat": float(err.std()),
            "dig_log_prob": logp.tolist(), "exact_log_prob": exact.tolist()}


def double_well_check(args) -> dict:
    well = DoubleWell()
    desc = Descriptor([0, 0], [[0, 1]])
    config = DiGConfig(n_iterations=args.iterations, **MODEL)
    with Stopwatch() as clock:
        model, sde = fit_dig([FrameSet(well.samples(20000, seed=0), desc)], config, progress=not args.quiet)
    sampler = DiGSampler(model, sde)
    x = sampler.sample(args.well_samples, desc, method="ode", steps=args.ode_steps, seed=1, batch_size=2000)
    r = bond_length(x.numpy())
    in_a = lambda s: torch.as_tensor(bond_length(s.numpy()) < well.split)  # noqa: E731
    in_b = lambda s: torch.as_tensor(bond_length(s.numpy()) >= well.split)  # noqa: E731
    df = sampler.free_energy_difference(in_a, in_b, desc, n=args.well_samples, seed=1, method="ode",
                                        steps=args.ode_steps, batch_size=2000)
    exact = well.exact_delta_f()
    ref = bond_length(well.samples(200000, seed=2))
    bins = np.linspace(0.0, 0.9, 46)
    return {"well": vars(well), "train_wall_s": clock.seconds, "iterations": args.iterations,
            "n_samples": args.well_samples, "delta_f_kT": df["delta_f"], "delta_f_stderr_kT": df["stderr"],
            "exact_delta_f_kT": exact, "delta_f_error_kT": df["delta_f"] - exact,
            "bond_length_js": js_divergence(r, ref, 20, bins_from="reference"), "bond_length_hist_bins": bins.tolist(),
            "dig_bond_hist": np.histogram(r, bins, density=True)[0].tolist(),
            "exact_bond_hist": np.histogram(ref, bins, density=True)[0].tolist()}


def plot(result: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    c = result["gaussian_chain"]
    a.plot(c["exact_log_prob"], c["dig_log_prob"], ".", ms=3)
    lo, hi = min(c["exact_log_prob"]), max(c["exact_log_prob"])
    a.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    a.set(xlabel="exact log p (nat)", ylabel="DiG ODE log p (nat)",
          title=f"Gaussian chain: {c['log_prob_error_nat_per_dof']:.3f} nat/dof")
    w = result["double_well"]
    centres = 0.5 * (np.array(w["bond_length_hist_bins"][1:]) + np.array(w["bond_length_hist_bins"][:-1]))
    b.plot(centres, w["exact_bond_hist"], "k-", label="exact")
    b.plot(centres, w["dig_bond_hist"], "o", ms=3, label="DiG")
    b.set(xlabel="bond length r (nm)", ylabel="density",
          title=f"double well: dF {w['delta_f_kT']:.3f} vs exact {w['exact_delta_f_kT']:.3f} kT")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    parser = benchmark_parser(__doc__, "dig_density", threads=1)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--chain-beads", type=int, default=6)
    parser.add_argument("--density-samples", type=int, default=200)
    parser.add_argument("--well-samples", type=int, default=8000)
    parser.add_argument("--ode-steps", type=int, default=50)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    torch.manual_seed(0)
    result = {"benchmark": "dig_density", "machine": machine(threads), "goals": GOALS,
              "gaussian_chain": chain_check(args), "double_well": double_well_check(args)}
    c, w = result["gaussian_chain"], result["double_well"]
    result["goals_met"] = {
        "log_prob_error_nat_per_dof": c["log_prob_error_nat_per_dof"] <= GOALS["log_prob_error_nat_per_dof"],
        "delta_f_error_kT": abs(w["delta_f_error_kT"]) <= GOALS["delta_f_error_kT"]}
    write_json(result, args.out)
    plot(result, figure_path(args.out))
    print(f"Gaussian chain ({c['n_beads']} beads, {c['dof']} dof): ODE log p error {c['log_prob_mean_abs_error_nat']:.3f}"
          f" nat = {c['log_prob_error_nat_per_dof']:.4f} nat/dof (goal <= 0.1); mean bias {c['log_prob_mean_error_nat']:+.3f}")
    print(f"double well: dF {w['delta_f_kT']:.3f} +- {w['delta_f_stderr_kT']:.3f} kT vs exact "
          f"{w['exact_delta_f_kT']:.3f} kT (error {w['delta_f_error_kT']:+.3f}, goal within 0.1); bond-length JS "
          f"{w['bond_length_js']:.4f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
