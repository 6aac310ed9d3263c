"""Wall time per learned step inside OpenMM: the compiled plugin vs the Python (CustomIntegrator + PythonForce) bridge.

The system is the random periodic bead liquid of ``model_step`` (15 beads/nm³, or a larger box when that one
would be shorter than twice the cutoff) advanced by an untrained model of the default architecture, with
refinement (5 x 2 annealed-Langevin evaluations per step) and dynamics-only. Each case times
``integrator.step(1)`` in an OpenMM Context on the CPU platform for both integrators, and the TorchScript step
called directly from Python (no OpenMM) as the floor both wrappers add to. Writes benchmarks/results/plugin_step.json.

    python -m benchmarks.plugin_step                            # 60, 1,000 and 10,000 beads
    python -m benchmarks.plugin_step --sizes 60 1000 --max-refined-beads 1000 --threads 1
"""
import numpy as np
import openmm
import torch
from openmm import unit

from openmm_cgml import plugin
from openmm_cgml.simulate import CGMLIntegrator, LearnedStep, create_cg_system, step_noise
from openmm_cgml.training.model import BeadVocabulary, CGModel, ModelConfig

from .common import Stopwatch, benchmark_parser, machine, set_threads, write_json
from .model_step import TYPE_GRAPHS, RandomLiquid


def seconds_per_step(advance, min_steps: int, budget_s: float):
    """(median wall seconds of ``advance()``, number of timed calls) after one warm-up call."""
    advance()  # TorchScript profiling run, Context set-up
    times = []
    while len(times) < min_steps or (sum(times) < budget_s and len(times) < 20):
        with Stopwatch() as clock:
            advance()
        times.append(clock.seconds)
    return sorted(times)[len(times) // 2], len(times)


def context_for(integrator, system, x):
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(x.numpy().astype(np.float64) * unit.nanometer)
    return context


def time_case(model, liquid, x, edge: float, refine, min_steps: int, budget_s: float) -> dict:
    step = LearnedStep.from_model(model, liquid, refine=refine)
    scripted = torch.jit.script(step)
    box = torch.full((3,), edge)
    h = torch.zeros(step.history_length, liquid.n_beads, 3)
    dyn, ref = step_noise(0, 0, liquid.n_beads, int(step.n_refine))

    def direct():
        with torch.no_grad():
            scripted(x, h, box, dyn, ref)

    box_vectors = [openmm.Vec3(*row) for row in np.eye(3) * edge] * unit.nanometer
    python = CGMLIntegrator(scripted, seed=1, max_displacement=100.0)
    python_context = context_for(python, create_cg_system(liquid, box_vectors=box_vectors), x)
    compiled = plugin.CGMLIntegrator(scripted, seed=1, max_displacement=100.0)
    compiled_context = context_for(compiled, plugin.create_cg_system(liquid, box_vectors), x)
    row = {"model_evaluations": 1 + int(step.n_refine)}
    for label, advance in (("direct_torchscript", direct), ("python_bridge", lambda: python.step(1)),
                           ("compiled", lambda: compiled.step(1))):
        seconds, repeats = seconds_per_step(advance, min_steps, budget_s)
        row[label] = {"seconds_per_step": seconds, "timed_steps": repeats}
    del python_context, compiled_context
    row["compiled_speedup_over_python"] = row["python_bridge"]["seconds_per_step"] / row["compiled"]["seconds_per_step"]
    return row


def main(argv=None):
    parser = benchmark_parser(__doc__, "plugin_step", threads=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[60, 1000, 10000])
    parser.add_argument("--density", type=float, default=15.0, help="beads per nm³")
    parser.add_argument("--max-refined-beads", type=int, default=1000,
                        help="skip the refined case above this many beads (about a minute per step at 10^4)")
    parser.add_argument("--budget", type=float, default=5.0, help="seconds of timing per case (at least 2 steps)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if not plugin.is_available():
        raise SystemExit(f"plugin_step: the compiled plugin is unavailable ({plugin._unavailable})")
    gen = torch.Generator().manual_seed(0)
    config = ModelConfig(timestep_ps=100.0, periodic=True, velocity_scale=0.3, accel_scale=0.3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CGModel(config, BeadVocabulary([f"T{k}" for k in range(len(TYPE_GRAPHS))], TYPE_GRAPHS)).eval()
    cases = []
    for n in args.sizes:
        liquid = RandomLiquid(n, gen)
        edge = max((n / args.density) ** (1.0 / 3.0), 2.0 * config.cutoff + 0.05)
        x = torch.rand(n, 3, generator=gen) * edge
        row = {"n_beads": n, "box_nm": edge}
        for label, refine in (("full", None), ("dynamics_only", False)):
            if label == "full" and n > args.max_refined_beads:
                row[label] = {"skipped": f"more than --max-refined-beads={args.max_refined_beads}"}
                continue
            row[label] = time_case(model, liquid, x, edge, refine, 2, args.budget)
            r = row[label]
            print(f"{n:>6} beads {label:>13}: compiled {r['compiled']['seconds_per_step'] * 1e3:9.2f} ms/step, "
                  f"Python bridge {r['python_bridge']['seconds_per_step'] * 1e3:9.2f} ms/step, "
                  f"TorchScript alone {r['direct_torchscript']['seconds_per_step'] * 1e3:9.2f} ms "
                  f"({r['compiled_speedup_over_python']:.2f}x)")
        cases.append(row)
    result = {
        "machine": machine(),
        "platform": "CPU",
        "bead_density_per_nm3": args.density,
        "model_config": config.to_dict(),
        "note": "untrained default architecture; median wall time of integrator.step(1); shared, loaded machine",
        "cases": cases,
    }
    print(f"wrote {write_json(result, args.out)}")


if __name__ == "__main__":
    main()
