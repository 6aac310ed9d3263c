"""Where a learned model's structure error comes from, measured in minutes instead of a long run.

    python -m benchmarks.structure_repair --reference REF.h5 [--model MODEL] [--refine SPEC] [--frames 60]

From ``--frames`` frames spread over an all-atom CG dataset (never a training set, for a verdict on transfer):

- ``true``: the frames themselves;
- ``refined``: each frame through the second half of a learned step alone (the score GNN's refinement, then the
  hard core and bond cap: ``LearnedStep.repair``). A score that knew the equilibrium distribution would leave the
  frames' statistics unchanged, so what changes here is the score's own bias;
- ``one_step``: one whole learned step (dynamics, then repair) from each frame with its true velocity history.
  A long run inherits this error, so what ``one_step`` loses beyond ``refined`` is what the repair fails to undo
  of the dynamics' prediction;
- ``predicted``: the same step's dynamics prediction alone, before any repair (the same noise).

``--cluster-noise F`` adds ``cluster_step``: the same step with ion-cluster noise (``--refine ...,cluster=F``, see
``openmm_cgml.nn.dynamics``): each Li⁺ joins the noise group of its nearest binding partner (within the model
config's ``cluster_radius_nm``), with a fraction F of its (and a one-bead partner's) variance moved to the group's
shared noise. Every bead's marginal variance is the model's; only the ions' independence from what binds them is
dropped.

For each: the RDF first-peak heights of every species pair, Li⁺ neighbours of a Li⁺ within 0.5 nm (all-atom: 0)
and the mean chain Rg²; per species the mean squared displacement (nm²) that the repair alone adds to a true frame,
against the true displacement over one model step: the repair's share of transport. ``step_transport`` compares,
per species and for the centres of mass of multi-bead molecules (``chain_com``), the one-step displacement of the
dynamics alone and of the whole step with the true one: on a system the dynamics GNN transfers to, both ratios
are near 1. ``step_memory`` compares the lag-1 memory of chain centres, of the beads within their chains and of
the one-bead molecules, all-atom and in the dynamics GNN's mean (:func:`step_memory`). Writes JSON and a figure of
the Li–PEO and Li–TFSI RDFs of the sets.
"""
import json
import sys

import numpy as np
import torch

from openmm_cgml.analysis import rdf
from openmm_cgml.data import CGDataset
from openmm_cgml.nn.dynamics import molecule_mean
from openmm_cgml.simulate import LearnedStep, parse_refine
from openmm_cgml.simulate.calibrate import true_history
from openmm_cgml.simulate.step import refine_settings, step_noise
from openmm_cgml.training.loop import provenance_path
from openmm_cgml.training.model import load_model, model_path

from .accuracy import CONTACT_NM, structure
from .common import benchmark_parser, figure_path, machine, set_threads, write_json

SETS = ("true", "refined", "one_step", "predicted")
#: Species pairs drawn in the figure.
DRAWN = ("LI-PEO", "LI-TFS")


def learned_sets(step: LearnedStep, dynamics: LearnedStep, x: np.ndarray, stride: int, frames: np.ndarray,
                 box: np.ndarray, seed: int, cluster: "LearnedStep | None" = None):
    """(F, N, 3) nm positions of the sets for reference frames ``frames`` of unwrapped positions ``x``
    (``predicted`` from ``dynamics``, the model's step without repair); with ``cluster`` (the step with ion-cluster
    noise) also ``cluster_step``."""
    box_t = torch.as_tensor(box, dtype=torch.float32)
    histories = torch.as_tensor(true_history(x, frames, stride, step.history_length), dtype=torch.float32)
    out = {name: [] for name in SETS + (("cluster_step",) if cluster is not None else ())}
    with torch.no_grad():
        for k, (i, history) in enumerate(zip(frames, histories)):
            dyn_noise, refine_noise = step_noise(seed, k, x.shape[1], int(step.n_refine))
            now = torch.as_tensor(x[i], dtype=torch.float32)
            out["true"].append(x[i])
            out["refined"].append(step.repair(now, box_t, refine_noise).numpy())
            out["one_step"].append(step(now, history, box_t, dyn_noise, refine_noise)[0].numpy())
            out["predicted"].append(dynamics(now, history, box_t, dyn_noise, refine_noise[:0])[0].numpy())
            if cluster is not None:
                out["cluster_step"].append(cluster(now, history, box_t, dyn_noise, refine_noise)[0].numpy())
    return {name: np.stack(values).astype(np.float64) for name, values in out.items()}


def true_step_msd(x: np.ndarray, frames: np.ndarray, stride: int, species: np.ndarray,
                  chains: "np.ndarray | None" = None) -> dict:
    """Per species, the all-atom mean squared displacement (nm²) over one model step (``stride`` dataset frames)
    from ``frames`` (and ``chain_com``'s with ``chains``, see :func:`displacement_msd`); frames too close to the
    end for a step are left out."""
    ahead = frames[frames + stride < x.shape[0]]
    return displacement_msd(x[ahead + stride] - x[ahead], species, chains)


def species_means(values: np.ndarray, species: np.ndarray) -> dict:
    """Per species, the mean of ``values`` (F, N) over frames and that species' beads."""
    return {kind: float(values[:, species == kind].mean()) for kind in sorted(set(species.tolist()))}


def chain_weights(beadmap) -> np.ndarray:
    """(C, N) mass weights of the centres of mass of the multi-bead molecules (chains) of ``beadmap``."""
    molecule = np.asarray(beadmap.bead_molecule)
    masses = np.asarray(beadmap.bead_masses, dtype=np.float64)
    weights = np.stack([np.where(molecule == m, masses, 0.0) for m in np.unique(molecule)])
    weights = weights[(weights > 0).sum(axis=1) > 1]
    return weights / weights.sum(axis=1, keepdims=True)


def displacement_msd(d: np.ndarray, species: np.ndarray, chains: "np.ndarray | None" = None) -> dict:
    """Per species the mean squared bead displacement (nm²) of displacements ``d`` (F, N, 3), and with ``chains``
    (:func:`chain_weights`) that of the chains' centres of mass as ``chain_com``."""
    out = species_means((d ** 2).sum(-1), species)
    if chains is not None and chains.size:
        out["chain_com"] = float((np.einsum("cn,fnk->fck", chains, d) ** 2).sum(-1).mean())
    return out


def step_memory(step: LearnedStep, x: np.ndarray, stride: int, frames: np.ndarray, box: np.ndarray,
                beadmap) -> dict:
    """The step-to-step memory of the motion, all-atom and as the dynamics GNN predicts it from true frames.

    For the centres of mass of the chains (``chain_com``), the beads' motion relative to their chain's centre
    (``internal``) and the one-bead molecules (``single``; beads the step carries with their shell are left out):
    1 + the least-squares slope of the acceleration on the last velocity (per model step, over every bead and
    Cartesian component), with the all-atom next frame (``allatom``) and with the dynamics GNN's mean (``model``).
    For a stationary series it is the lag-1 correlation of successive steps; a model below the all-atom value
    reverses its steps too much and makes that part sub-diffusive.
    """
    molecule = torch.as_tensor(np.asarray(beadmap.bead_molecule))
    masses = torch.as_tensor(np.asarray(beadmap.bead_masses, dtype=np.float64))
    size = torch.bincount(molecule)[molecule]
    chains, single = (size > 1).numpy(), ((size == 1) & ~step.carried).numpy()

    def parts(d):  # chain centres (repeated on each of their beads: a mass-free mean), within chains, one-bead
        centre = molecule_mean(torch.as_tensor(d), masses, molecule, int(molecule.max()) + 1).numpy()
        return {"chain_com": centre[:, chains], "internal": (d - centre)[:, chains], "single": d[:, single]}

    box_t = torch.as_tensor(box, dtype=torch.float32)
    ahead = frames[frames + stride < x.shape[0]]
    histories = true_history(x, ahead, stride, step.history_length)
    with torch.no_grad():
        mean = np.stack([step.dynamics(torch.as_tensor(x[i], dtype=torch.float32),
                                       torch.as_tensor(history, dtype=torch.float32), step.embed, step.masses,
                                       step.bonds, box_t, step.batch, None, step.molecule, step.n_molecules)[0].numpy()
                         for i, history in zip(ahead, histories)]).astype(np.float64)
    v = histories[:, -1]
    velocity = parts(v)
    accelerations = {"allatom": parts(x[ahead + stride] - x[ahead] - v), "model": parts(mean)}
    out = {}
    for kind, vk in velocity.items():
        if vk.size:
            norm = float((vk * vk).sum())
            out[kind] = {name: 1.0 + float((vk * a[kind]).sum()) / norm for name, a in accelerations.items()}
    return out


def draw(curves: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DRAWN), figsize=(5 * len(DRAWN), 3.6))
    for ax, pair in zip(axes, DRAWN):
        for name in curves:
            r, g = curves[name][pair]
            ax.plot(r, g, label=name.replace("_", " "))
        ax.set_xlabel("r (nm)")
        ax.set_ylabel(f"g(r), {pair}")
        ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "structure_repair", threads=1)
    parser.add_argument("--reference", required=True, help="all-atom CG dataset (.h5) of a held-out system")
    parser.add_argument("--model", default=None, help="shipped model name or directory (default: the default model)")
    parser.add_argument("--refine", default="model", help="refinement spec, as `cgml simulate --refine`")
    parser.add_argument("--frames", type=int, default=60, help="reference frames, spread over the run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cluster-noise", type=float, default=0.0, metavar="F",
                        help="also run one step with ion-cluster noise of shared fraction F in (0, 1)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.cluster_noise < 1.0:
        raise SystemExit(f"--cluster-noise must lie in [0, 1), got {args.cluster_noise}")
    set_threads(args.threads)
    path = model_path(args.model)
    model = load_model(path)
    with CGDataset(args.reference) as ds:
        x = np.asarray(ds.positions[:], dtype=np.float64)
        box, beadmap, interval = np.asarray(ds.box[0], dtype=np.float64), ds.beadmap, ds.frame_interval_ps
    stride = int(round(model.timestep_ps / interval))
    if stride < 1 or abs(stride * interval - model.timestep_ps) > 1e-6:
        raise SystemExit(f"model step {model.timestep_ps} ps is not a multiple of the reference interval {interval} ps")
    first = model.history_length * stride
    if x.shape[0] <= first + args.frames:
        raise SystemExit(f"{args.reference} holds {x.shape[0]} frames: too few for {args.frames} frames after a "
                         f"velocity history of {first}")
    refine = parse_refine(args.refine)
    step = LearnedStep.from_model(model, beadmap, refine).eval()
    frames = np.linspace(first, x.shape[0] - 1, args.frames).astype(int)
    species = np.asarray(beadmap.bead_species())
    dynamics = LearnedStep.from_model(model, beadmap, False).eval()
    chains = chain_weights(beadmap)
    cluster = None
    if args.cluster_noise:
        base = {} if refine is None else {"n_levels": 0} if refine is False else refine
        cluster = LearnedStep.from_model(model, beadmap, {**base, "cluster_noise": args.cluster_noise}).eval()
    sets = learned_sets(step, dynamics, x, stride, frames, box, args.seed, cluster)

    r_max = 0.45 * float(box.min())
    boxes = np.tile(box, (frames.size, 1))
    table, curves = {}, {}
    for name, positions in sets.items():
        peaks, contacts, rg2 = structure(positions, boxes, beadmap, r_max)
        table[name] = {"first_peak_height": {pair: peak[1] for pair, peak in peaks.items()},
                       f"li_li_within_{CONTACT_NM}nm": contacts.get("LI-LI"), "rg2_nm2": rg2}
        if name != "true":  # transport over the step (the refined set's is the repair's own displacement)
            table[name]["msd_from_frame_nm2"] = displacement_msd(positions - sets["true"], species, chains)
        curves[name] = {pair: rdf(positions, boxes, species == pair.split("-")[0], species == pair.split("-")[1],
                                  r_max, n_bins=60) for pair in DRAWN}
    true, true_step = table["true"], true_step_msd(x, frames, stride, species, chains)
    for name in list(sets)[1:]:
        table[name]["peak_error"] = {pair: height / true["first_peak_height"][pair] - 1.0
                                     for pair, height in table[name]["first_peak_height"].items()}
        table[name]["rg2_error"] = table[name]["rg2_nm2"] / true["rg2_nm2"] - 1.0
    result = {
        "machine": machine(args.threads),
        "command": "python -m benchmarks.structure_repair " + " ".join(argv if argv is not None else sys.argv[1:]),
        "reference": args.reference, "reference_ns": float(x.shape[0] * interval / 1000.0),
        "model": provenance_path(path), "refine": refine_settings(model.config, refine), "frames": int(frames.size),
        "sets": table,
        "repair_displacement": {kind: {"repair_nm2": repaired, "true_step_nm2": true_step[kind],
                                       "ratio": repaired / true_step[kind]}
                                for kind, repaired in table["refined"]["msd_from_frame_nm2"].items()},
        # one step from true frames against the true step: near 1 where the dynamics GNN transfers
        "step_transport": {kind: {"true_step_nm2": true_step[kind],
                                  **{f"{name}_ratio": table[name]["msd_from_frame_nm2"][kind] / true_step[kind]
                                     for name in ("predicted", "one_step")}} for kind in true_step},
        # lag-1 memory of the step (1 + slope of acceleration on velocity): all-atom and the dynamics GNN's mean
        "step_memory": step_memory(dynamics, x, stride, frames, box, beadmap),
        "cluster_noise": args.cluster_noise,
        "figure": draw(curves, figure_path(args.out)),
    }
    write_json(result, args.out)
    for name in sets:
        row = table[name]
        errors = row.get("peak_error", {})
        print(f"{name:9s} " + "  ".join(f"{pair} {h:6.2f}" + (f" ({errors[pair]:+.0%})" if errors else "")
                                       for pair, h in row["first_peak_height"].items() if pair.startswith("LI"))
              + f"  Li-Li<{CONTACT_NM} nm {row[f'li_li_within_{CONTACT_NM}nm']:.3f}  Rg2 {row['rg2_nm2']:.4f}")
    print(json.dumps(result["repair_displacement"], indent=1))
    print("one-step MSD / true (dynamics alone, whole step): " + ", ".join(
        f"{kind} {row['predicted_ratio']:.2f}, {row['one_step_ratio']:.2f}" for kind, row in result["step_transport"].items()))
    print("lag-1 step memory, all-atom / model mean: " + ", ".join(
        f"{kind} {row['allatom']:+.3f} / {row['model']:+.3f}" for kind, row in result["step_memory"].items()))
    return result


if __name__ == "__main__":
    main()
