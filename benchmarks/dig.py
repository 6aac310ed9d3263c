"""DiG benchmark: independent samples per second from DiG vs from Langevin MD of the same 100-bead chain.

MD (OpenMM, implicit-solvent bead-spring chain from openmm_cgml.systems) yields one independent sample per
2 tau_int of its Rg^2 time series (tau_int: integrated autocorrelation time); DiG yields independent samples by
construction. A small DiG model is trained by DSM on the MD frames (so the comparison includes what DiG learned:
mean and distribution of Rg^2 are reported next to MD's). Prints a summary and writes benchmarks/results/dig.json.

Graph: fully connected by default (``--cutoff`` sets a radius graph instead). The chain's Rg is ~4.7 nm, so a
1.5 nm cutoff (this benchmark's earlier setting) hides the chain's overall shape from the model: it made chains
half as large as MD's (<Rg^2> 12.0 vs 22.6 nm^2, JS 0.59). The Gaussian skip (``gaussian_skip``) starts the
model at the Gaussian with the data's RMS coordinate, which already has about the right size.

Sampling: the probability-flow ODE by DPM-Solver++(2M), 20 steps (``--method ode``: Heun, 50 steps).

    python -m benchmarks.dig [--md-ps 2000] [--train-iterations 1500] [--cutoff NM] [--method dpm] [--threads 1]
"""
import numpy as np
import openmm
from openmm import unit

from openmm_cgml.analysis import autocorrelation, integrated_time, js_divergence
from openmm_cgml.dig import DiGSampler
from openmm_cgml.dig.sampler import DEFAULT_STEPS
from openmm_cgml.nn.dig_model import Descriptor
from openmm_cgml.systems import build_bead_spring
from openmm_cgml.training.dig import DiGConfig, FrameSet, fit_dig

from .common import Stopwatch, benchmark_parser, machine, set_threads, write_json


def rg2(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    return (x**2).sum(axis=2).mean(axis=1)


def run_md(built, md_ps: float, dt_ps: float, report_steps: int, threads: int, seed: int):
    integrator = openmm.LangevinMiddleIntegrator(built.temperature, 1.0 / unit.picosecond, dt_ps * unit.picosecond)
    integrator.setRandomNumberSeed(seed)
    plat = openmm.Platform.getPlatformByName("CPU")
    context = openmm.Context(built.system, integrator, plat, {"Threads": str(threads)})
    context.setPositions(built.positions)
    context.setVelocitiesToTemperature(built.temperature, seed)
    integrator.step(int(50.0 / dt_ps))  # 50 ps equilibration
    n_frames = int(md_ps / dt_ps / report_steps)
    frames = np.empty((n_frames, built.system.getNumParticles(), 3), dtype=np.float32)
    with Stopwatch() as clock:
        for k in range(n_frames):
            integrator.step(report_steps)
            frames[k] = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return frames, clock.seconds


def main(argv=None):
    parser = benchmark_parser(__doc__, "dig", threads=1)
    parser.add_argument("--beads", type=int, default=100)
    parser.add_argument("--md-ps", type=float, default=2000.0, help="production MD length (ps)")
    parser.add_argument("--dt", type=float, default=0.02, help="MD time step (ps)")
    parser.add_argument("--report-steps", type=int, default=50)
    parser.add_argument("--train-iterations", type=int, default=1500)
    parser.add_argument("--n-samples", type=int, default=512)
    parser.add_argument("--method", default="dpm", choices=("dpm", "ode"), help="ODE integrator")
    parser.add_argument("--steps", type=int, default=None, help="integrator steps (default: dpm 20, ode 50)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cutoff", type=float, default=None, help="radius-graph cutoff (nm); default: full graph")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    steps = args.steps or DEFAULT_STEPS[args.method]

    built = build_bead_spring("chain", chain_length=args.beads, seed=1)
    frames, md_wall = run_md(built, args.md_ps, args.dt, args.report_steps, args.threads, seed=1)
    frame_ps = args.dt * args.report_steps
    series = rg2(frames)
    tau_ps = integrated_time(autocorrelation(series), frame_ps)
    md_steps_per_s = len(frames) * args.report_steps / md_wall
    md_wall_per_ps = md_wall / args.md_ps
    md_independent_per_s = 1.0 / (2.0 * tau_ps * md_wall_per_ps)
    print(f"MD: {args.md_ps:.0f} ps in {md_wall:.1f} s ({md_steps_per_s:.0f} steps/s); Rg^2 tau_int = {tau_ps:.1f} ps"
          f" -> {md_independent_per_s:.3f} independent samples/s")

    bonds = np.array([[i, i + 1] for i in range(args.beads - 1)])
    desc = Descriptor(np.zeros(args.beads, dtype=np.int64), bonds)
    config = DiGConfig(hidden=32, n_layers=3, heads=4, n_rbf=16, n_time=16, embed_dim=8, cutoff=args.cutoff,
                       gaussian_skip=True,
                       batch_size=8, n_iterations=args.train_iterations, lr=2e-3, lr_final=1e-4, ema_decay=0.995,
                       checkpoint_every=0, n_steps=500)
    with Stopwatch() as clock:
        model, sde = fit_dig([FrameSet(frames, desc)], config, device=args.device, progress=False)
    train_wall = clock.seconds
    sampler = DiGSampler(model, sde, device=args.device)
    sampler.sample(8, desc, method=args.method, steps=2, batch_size=8)  # warm-up
    with Stopwatch() as clock:
        samples = sampler.sample(args.n_samples, desc, method=args.method, steps=steps, seed=0,
                                 batch_size=64).numpy()
    sample_wall = clock.seconds
    dig_per_s = args.n_samples / sample_wall
    dig_rg2 = rg2(samples)
    print(f"DiG: trained {args.train_iterations} iterations in {train_wall:.0f} s; {args.n_samples} samples "
          f"({steps} {args.method} steps) in {sample_wall:.1f} s -> {dig_per_s:.2f} independent samples/s "
          f"({dig_per_s / md_independent_per_s:.1f}x MD)")
    print(f"Rg^2 (nm^2): MD {series.mean():.3f} +- {series.std():.3f}, DiG {dig_rg2.mean():.3f} +- {dig_rg2.std():.3f},"
          f" JS divergence {js_divergence(dig_rg2, series, bins_from='pooled'):.3f} nats")

    result = {
        "system": f"{args.beads}-bead implicit-solvent bead-spring chain (openmm_cgml.systems.build_bead_spring)",
        "machine": machine(args.threads, args.device),
        "md": {"length_ps": args.md_ps, "dt_ps": args.dt, "frame_interval_ps": frame_ps, "wall_s": md_wall,
               "steps_per_s": md_steps_per_s, "rg2_tau_int_ps": tau_ps,
               "independent_samples_per_s": md_independent_per_s,
               "rg2_mean_nm2": float(series.mean()), "rg2_std_nm2": float(series.std())},
        "dig": {"train_iterations": args.train_iterations, "train_wall_s": train_wall,
                "config": {k: v for k, v in config.__dict__.items()}, "method": args.method, "steps": steps,
                "n_samples": args.n_samples, "sample_wall_s": sample_wall, "independent_samples_per_s": dig_per_s,
                "rg2_mean_nm2": float(dig_rg2.mean()), "rg2_std_nm2": float(dig_rg2.std()),
                "rg2_js_vs_md": js_divergence(dig_rg2, series, bins_from='pooled')},
        "speedup_independent_samples": dig_per_s / md_independent_per_s,
    }
    print(f"wrote {write_json(result, args.out)}")


if __name__ == "__main__":
    main()
