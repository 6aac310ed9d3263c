"""PIDP at scale (issue #14): how much MD data does pre-training DiG from the energy alone save?

    python -m benchmarks.pidp_scale [--beads 30] [--pidp-iterations 1500] [--frames 16 64 256 1024]

System: a sequence-defined bead-spring chain (``build_bead_spring("chain")``: implicit solvent, LJ wells per
bead type, harmonic bonds, 300 K). Its bead types go to DiG as index-only types (the chain has no atom graphs).

1. Ground truth: Langevin MD (OpenMM, one thread) long enough for thousands of independent Rg^2 samples.
2. PIDP: DiG trained from the OpenMM energy alone (:func:`openmm_cgml.training.pidp.train_pidp`); its collocation
   structures are minimised self-avoiding random walks (no MD, no Boltzmann samples).
3. For each MD budget K (the first K frames, one per ps, of a separate MD run): DSM fine-tuning of the PIDP
   model and DSM from scratch, with the same settings and iterations.
Score: Rg^2 Jensen-Shannon divergence (20 bins at the truth's quantiles) and <Rg^2> error of 2,000 ODE samples
against the ground truth. "Data saved" is the factor by which scratch DSM needs more frames for the JS that
fine-tuning reaches with K (log-linear interpolation of scratch JS over K; None when scratch never reaches it).
Writes benchmarks/results/pidp_scale.json and pidp_scale.png.
"""
import math

import numpy as np
import openmm
import torch
from openmm import unit

from openmm_cgml.analysis import js_divergence
from openmm_cgml.dig import DiGSampler
from openmm_cgml.nn.dig_model import Descriptor
from openmm_cgml.systems import build_bead_spring
from openmm_cgml.training.dig import DiGConfig, FrameSet, fit_dig
from openmm_cgml.training.pidp import OpenMMEnergy, PIDPConfig, train_pidp

from .common import Stopwatch, benchmark_parser, figure_path, machine, set_threads, write_json

NETWORK = dict(hidden=32, n_layers=3, heads=4, n_rbf=16, n_time=16, embed_dim=8, gaussian_skip=True, cutoff=None,
               n_steps=500, time_max_freq=30.0)


def rg2(x) -> np.ndarray:
    x = np.asarray(x, float)
    x = x - x.mean(axis=1, keepdims=True)
    return (x**2).sum(axis=2).mean(axis=1)


def run_md(built, ps: float, seed: int, frame_ps: float = 1.0, dt_ps: float = 0.02) -> np.ndarray:
    """Langevin MD frames (F, N, 3) nm every ``frame_ps`` after 50 ps of equilibration."""
    integrator = openmm.LangevinMiddleIntegrator(built.temperature, 1.0 / unit.picosecond, dt_ps * unit.picosecond)
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(built.system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(built.positions)
    context.setVelocitiesToTemperature(built.temperature, seed)
    integrator.step(int(50.0 / dt_ps))
    every = int(round(frame_ps / dt_ps))
    frames = []
    for _ in range(int(ps / frame_ps)):
        integrator.step(every)
        frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.asarray(frames, np.float32)


def minimised_random_walks(built, n_walks: int, bond_nm: float, seed: int, max_force: float = 100.0) -> np.ndarray:
    """Self-avoiding random walks with the bond length (no bead within 0.8 bond lengths of an earlier one), each
    relaxed to convergence by OpenMM's minimiser. Walks left with a force above ``max_force`` (kJ/mol/nm) are
    dropped: one overlap makes the Boltzmann score, PIDP's boundary target, 10^7 times its typical size. These
    structures are not Boltzmann samples."""
    rng = np.random.default_rng(seed)
    n = built.system.getNumParticles()
    context = openmm.Context(built.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": "1"})
    out = []
    while len(out) < n_walks:
        x = [np.zeros(3)]
        while len(x) < n:
            u = rng.normal(size=3)
            step = x[-1] + bond_nm * u / np.linalg.norm(u)
            if len(x) < 2 or np.linalg.norm(np.asarray(x[:-1]) - step, axis=1).min() > 0.8 * bond_nm:
                x.append(step)
        context.setPositions(np.asarray(x) * unit.nanometer)
        openmm.LocalEnergyMinimizer.minimize(context, 1.0, 0)
        state = context.getState(getPositions=True, getForces=True)
        if np.abs(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)).max() \
                > max_force:
            continue
        x = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        out.append(x - x.mean(axis=0))
    return np.asarray(out, np.float32)


def score(model, sde, desc, truth_rg2, n_samples: int, ode_steps: int) -> dict:
    x = DiGSampler(model, sde).sample(n_samples, desc, method="ode", steps=ode_steps, seed=1, batch_size=500)
    r = rg2(x.numpy())
    return {"rg2_js": js_divergence(r, truth_rg2, 20, bins_from="reference"),
            "rg2_mean_nm2": float(r.mean()), "rg2_rel_error": float(r.mean() / truth_rg2.mean() - 1.0)}


def frames_for_equal_js(target_js: float, budgets, scratch_js) -> float | None:
    """Frames scratch DSM needs for ``target_js`` (log-linear interpolation in K over the measured budgets)."""
    logk = np.log(np.asarray(budgets, float))
    js = np.asarray(scratch_js, float)
    if js[0] <= target_js:
        return float(budgets[0])
    for i in range(1, len(js)):
        if js[i] <= target_js:
            w = (js[i - 1] - target_js) / (js[i - 1] - js[i])
            return float(math.exp(logk[i - 1] + w * (logk[i] - logk[i - 1])))
    return None


def plot(result: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["budgets"]
    k = [r["frames"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.loglog(k, [r["scratch"]["rg2_js"] for r in rows], "o-", label="DSM from scratch")
    ax.loglog(k, [r["pidp_finetuned"]["rg2_js"] for r in rows], "s-", label="PIDP pre-trained + DSM")
    ax.axhline(result["pidp_only"]["rg2_js"], color="0.5", ls="--", label="PIDP only (no MD)")
    ax.set(xlabel="MD frames used (1 per ps)", ylabel="Rg² JS divergence vs long MD",
           title=f"{result['system']['beads']}-bead chain")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    parser = benchmark_parser(__doc__, "pidp_scale", threads=1)
    parser.add_argument("--beads", type=int, default=30)
    parser.add_argument("--truth-ps", type=float, default=6000.0)
    parser.add_argument("--pidp-iterations", type=int, default=1000)
    parser.add_argument("--dsm-iterations", type=int, default=600)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--ode-steps", type=int, default=30)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    progress = not args.quiet

    built = build_bead_spring("chain", chain_length=args.beads, seed=1)
    names = [atom.name[0] for atom in built.topology.atoms()]  # atom names are type letter + index
    vocab = sorted(set(names))
    desc = Descriptor([vocab.index(c) for c in names], [[i, i + 1] for i in range(args.beads - 1)])
    with Stopwatch() as md_clock:
        truth = run_md(built, args.truth_ps, seed=11)
    truth_rg2 = rg2(truth)
    train_frames = run_md(built, float(max(args.frames)), seed=22)
    sigma = float(built.metadata["args"]["sigma_nm"])  # the bond length of the random-walk collocation starts

    starts = minimised_random_walks(built, 256, sigma, seed=3)
    pidp_config = PIDPConfig(n_iterations=args.pidp_iterations, batch_size=16, lr=2e-3, lr_final=2e-4,
                             ema_decay=0.99, checkpoint_every=0, length_scale=float(np.sqrt((starts**2).mean())),
                             perturb=0.01, **NETWORK)  # ~ the thermal bond-length fluctuation (stiff bonds)
    energy = OpenMMEnergy(built.system, "CPU", temperature=built.temperature)
    with Stopwatch() as pidp_clock:
        pidp_model, sde = train_pidp(energy, starts, desc, pidp_config, progress=progress)
    result = {"benchmark": "pidp_scale", "machine": machine(threads),
              "system": {"beads": args.beads, "types": "".join(names), "builder": "build_bead_spring('chain')"},
              "truth": {"ps": args.truth_ps, "frames": len(truth), "wall_s": md_clock.seconds,
                        "rg2_mean_nm2": float(truth_rg2.mean())},
              "pidp_only": {"iterations": args.pidp_iterations, "wall_s": pidp_clock.seconds,
                            **score(pidp_model, sde, desc, truth_rg2, args.samples, args.ode_steps)},
              "budgets": []}
    dsm = DiGConfig(n_iterations=args.dsm_iterations, batch_size=16, lr=1e-3, lr_final=1e-4, ema_decay=0.99,
                    checkpoint_every=0, **NETWORK)
    for k in args.frames:
        sets = [FrameSet(train_frames[:k], desc)]
        tuned, _ = fit_dig(sets, dsm, progress=progress, init=pidp_model)
        scratch, _ = fit_dig(sets, DiGConfig(**dict(dsm.to_dict(), length_scale=pidp_model.length_scale)),
                             progress=progress)
        row = {"frames": k, "pidp_finetuned": score(tuned, sde, desc, truth_rg2, args.samples, args.ode_steps),
               "scratch": score(scratch, sde, desc, truth_rg2, args.samples, args.ode_steps)}
        result["budgets"].append(row)
        print(f"K={k}: JS fine-tuned {row['pidp_finetuned']['rg2_js']:.4f}, scratch {row['scratch']['rg2_js']:.4f}",
              flush=True)
    budgets = [r["frames"] for r in result["budgets"]]
    scratch_js = [r["scratch"]["rg2_js"] for r in result["budgets"]]
    for r in result["budgets"]:
        need = frames_for_equal_js(r["pidp_finetuned"]["rg2_js"], budgets, scratch_js)
        r["scratch_frames_for_equal_js"] = need
        r["data_saved_factor"] = None if need is None else need / r["frames"]
    write_json(result, args.out)
    plot(result, figure_path(args.out))
    print(f"PIDP only ({args.pidp_iterations} iterations, {pidp_clock.seconds:.0f} s): JS "
          f"{result['pidp_only']['rg2_js']:.4f}, <Rg²> error {100 * result['pidp_only']['rg2_rel_error']:+.1f} %")
    for r in result["budgets"]:
        print(f"  {r['frames']:5d} frames: fine-tuned JS {r['pidp_finetuned']['rg2_js']:.4f}, scratch "
              f"{r['scratch']['rg2_js']:.4f}; data saved {r['data_saved_factor']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
