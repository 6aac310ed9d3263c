"""Baseline (c) of the polymer benchmark: a supervised GNN that reads a chain's CG graph and predicts its
<Rg^2> and Rg^2 relaxation time directly, with no dynamics at all.

    from benchmarks.polymer.make_datasets import load_config
    from benchmarks.polymer.supervised import supervised_baseline
    result = supervised_baseline(load_config("benchmarks/polymer/config.yaml"), "benchmarks/data/polymer")

The labels are what the training data can give: each class-I chain's mean CG Rg^2 (nm^2) and the integrated
autocorrelation time of its Rg^2 (ps, :func:`benchmarks.polymer.metrics.relaxation_time`), both from its
*short* trajectory (``load_fine_observables``). A graph is the chain's CG beads, joined by its CG bonds (both
directions); a bead's features are the embedding of its bead type, computed by
:class:`~openmm_cgml.nn.embedding.BeadEmbedding` from the type's atom graph (so the class-II bead types, never
seen in training, still get one), and its mass. The shared :class:`~openmm_cgml.nn.backbone.GraphBackbone` passes
messages, the bead latents are averaged per chain and an MLP head gives the two standardised log labels. Training
is the project's :class:`~openmm_cgml.training.loop.TrainingLoop` (in memory) on the mean squared error.

What the baseline measures: how far a model gets that learns the property map from short-run labels, with no
physics; its tau labels are capped by the training length, and class II lies outside class I's composition range.
With tens of labels and ~170k weights it fits its own training labels almost exactly, so the reported train-set
fit is no estimate of its error on new chains.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import nn

from openmm_cgml.nn.backbone import MLP, GraphBackbone, scatter_sum
from openmm_cgml.nn.embedding import BeadEmbedding, TypeGraphs
from openmm_cgml.training.loop import OptimConfig, TrainingLoop

from .make_datasets import _timestep_ps, dataset_chains, load_fine_observables
from .metrics import relaxation_time

MASS_SCALE_AMU = 1000.0  # bead masses enter as mass / 1000 amu: O(1) for beads of a few hundred to 1000s amu
N_EDGE_FEATURES = 2  # [1 (a bond), |i - j| / (n_beads - 1)]
LABELS = ("log_rg2_nm2", "log_tau_ps")


# ------------------------------------------------------------------------------------------------ graphs
class GraphBatch(NamedTuple):
    """Several chain graphs packed into one disconnected graph.

    ``types`` (N,) index of each bead's type in the :class:`ChainGraphs` vocabulary, ``masses`` (N,) amu,
    ``edge_index`` (2, E) both directions of every CG bond, ``edge_attr`` (E, N_EDGE_FEATURES), ``batch`` (N,)
    graph of each bead, ``n_graphs``.
    """

    types: torch.Tensor
    masses: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    batch: torch.Tensor
    n_graphs: int


def _graph_key(graph: dict) -> str:
    return json.dumps({k: graph[k] for k in ("elements", "masses", "bonds") if k in graph}, sort_keys=True,
                      default=lambda v: np.asarray(v).tolist())


class ChainGraphs:
    """The CG graphs of a set of chains, optionally with their targets, ready for :class:`PropertyGNN`.

    Args:
        beadmaps: one :class:`~openmm_cgml.mapping.BeadMap` per chain (anything with ``n_beads``, ``bead_types``,
            ``type_graphs``, ``bead_masses`` in amu and ``bonds``).
        targets: (n_chains, n_targets) unstandardised targets (here the log labels), or None to predict only.

    Bead types are pooled over the chains by their atom graph, so each distinct graph is embedded once per step.
    """

    def __init__(self, beadmaps: Sequence, targets=None, device="cpu"):
        if len(beadmaps) == 0:
            raise ValueError("need at least one chain graph")
        self.device = torch.device(device)
        vocab: dict = {}
        type_graphs: List[dict] = []
        self._types, self._masses, self._edges, self._edge_attr = [], [], [], []
        for bm in beadmaps:
            local = []
            for graph in bm.type_graphs:
                key = _graph_key(graph)
                if key not in vocab:
                    vocab[key] = len(type_graphs)
                    type_graphs.append(graph)
                local.append(vocab[key])
            n = int(bm.n_beads)
            types = np.asarray(local, dtype=np.int64)[np.asarray(bm.bead_types, dtype=np.int64)]
            bonds = torch.as_tensor(np.asarray(bm.bonds, dtype=np.int64).reshape(-1, 2))
            masses = np.asarray(bm.bead_masses, dtype=np.float32)
            if len(types) != n or len(masses) != n or (len(bonds) and not (0 <= bonds.min() and bonds.max() < n)):
                raise ValueError(f"a bead map of {n} beads has {len(types)} bead types, {len(masses)} masses or "
                                 "bonds outside its beads")
            # separation along the chain, normalised by its length: a bond feature that stays O(1) at any size
            sep = (bonds[:, 1] - bonds[:, 0]).abs().to(torch.float32) / max(n - 1, 1)
            attr = torch.stack([torch.ones_like(sep), sep], dim=1)
            self._types.append(torch.as_tensor(types))
            self._masses.append(torch.as_tensor(masses))
            self._edges.append(torch.cat([bonds.t(), bonds.t().flip(0)], dim=1))  # messages flow both ways
            self._edge_attr.append(torch.cat([attr, attr]))
        self.type_graphs = TypeGraphs(type_graphs).to(self.device)
        self.type_keys = list(vocab)  # the atom graph of each vocabulary type, as canonical JSON
        self.targets = None
        if targets is not None:
            self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32)).reshape(len(beadmaps), -1)
            if not torch.isfinite(self.targets).all():
                raise ValueError("chain targets must be finite")

    def __len__(self) -> int:
        return len(self._types)

    def batch(self, indices) -> GraphBatch:
        """The graphs ``indices`` (a sequence or 1-D tensor of chain numbers) packed into one GraphBatch."""
        types, masses, edges, attrs, graph = [], [], [], [], []
        offset = 0
        for g, k in enumerate(torch.as_tensor(indices).reshape(-1).tolist()):
            n = self._types[k].shape[0]
            types.append(self._types[k])
            masses.append(self._masses[k])
            edges.append(self._edges[k] + offset)
            attrs.append(self._edge_attr[k])
            graph.append(torch.full((n,), g, dtype=torch.long))
            offset += n
        to = lambda t: t.to(self.device)  # noqa: E731
        return GraphBatch(to(torch.cat(types)), to(torch.cat(masses)), to(torch.cat(edges, dim=1)),
                          to(torch.cat(attrs)), to(torch.cat(graph)), len(graph))


# ------------------------------------------------------------------------------------------------ model
class PropertyGNN(nn.Module):
    """Chain graph -> ``n_out`` standardised properties (here log <Rg^2> and log tau).

    Args:
        embed_dim: size of the bead-type embedding (from the type's atom graph).
        hidden: latent width of the backbone over the CG bond graph and of the head.
        n_layers: message-passing steps over the CG bonds (3 reach 3 bonds away on either side).
        n_out: number of outputs.

    The buffers ``target_mean`` and ``target_std`` (set by :meth:`set_target_scale`) map outputs to targets:
    ``target = target_mean + target_std * output``.
    """

    def __init__(self, embed_dim: int = 16, hidden: int = 64, n_layers: int = 3, n_out: int = 2):
        super().__init__()
        self.embedding = BeadEmbedding(embed_dim, hidden=32, n_layers=2)
        self.type_norm = nn.BatchNorm1d(embed_dim)
        self.backbone = GraphBackbone(embed_dim + 1, N_EDGE_FEATURES, hidden, n_layers)
        self.head = MLP(hidden, hidden, n_out, n_hidden=2, layer_norm=False)
        self.register_buffer("target_mean", torch.zeros(n_out))
        self.register_buffer("target_std", torch.ones(n_out))

    def set_target_scale(self, mean, std):
        """Targets are learned as (target - mean) / std (per output)."""
        self.target_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.target_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, type_graphs: TypeGraphs, batch: GraphBatch) -> torch.Tensor:
        """Standardised outputs (n_graphs, n_out) of the graphs in ``batch``; its ``types`` index ``type_graphs``."""
        raw = self.embedding(type_graphs)
        # Standardise the embeddings over the type vocabulary (the whole training vocabulary at every step, so
        # the statistics do not depend on the mini-batch; running statistics at prediction, so new types are
        # scaled as the training ones were). Fresh embeddings of different types differ by a few per cent of
        # their common part (one-hot elements next to a 5-unit atom mass feature); unscaled, training sits on
        # a plateau for hundreds of steps before the head can tell the chains apart.
        norm = self.type_norm
        embed = nn.functional.batch_norm(raw, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                                         training=self.training and raw.shape[0] > 1, momentum=norm.momentum,
                                         eps=norm.eps)[batch.types]
        node = torch.cat([embed, (batch.masses / MASS_SCALE_AMU).unsqueeze(1)], dim=1)
        h, _ = self.backbone(node, batch.edge_attr, batch.edge_index)
        # mean, not sum: the properties are intensive in composition, and the mean is the same at any batch size
        total = scatter_sum(h, batch.batch, batch.n_graphs)
        count = scatter_sum(torch.ones_like(batch.batch, dtype=h.dtype), batch.batch, batch.n_graphs)
        return self.head(total / count.unsqueeze(1))

    @torch.no_grad()
    def predict(self, chains: ChainGraphs, batch_size: int = 64) -> np.ndarray:
        """Targets (n_chains, n_out), unstandardised, of every chain in ``chains``."""
        was_training = self.training
        self.eval()
        out = [self(chains.type_graphs, chains.batch(idx)) * self.target_std + self.target_mean
               for idx in torch.arange(len(chains)).split(batch_size)]
        self.train(was_training)
        return torch.cat(out).cpu().numpy().astype(np.float64)


class PropertyObjective:
    """Mean squared error on the standardised targets, for :class:`TrainingLoop`: mini-batches of graphs drawn
    epoch by epoch in an order shuffled by the loop's generator (so a run is a function of its seed)."""

    def __init__(self, model: PropertyGNN, chains: ChainGraphs, batch_size: int, names: Sequence[str] = LABELS):
        if chains.targets is None:
            raise ValueError("training chains need targets")
        self.chains, self.batch_size = chains, int(batch_size)
        self.names = tuple(f"mse_{name}" for name in names)
        self.scaled = (chains.targets.to(chains.device) - model.target_mean) / model.target_std
        self.order = torch.arange(len(chains))
        self.cursor = 0

    def start(self, generator: torch.Generator):
        self.order = torch.randperm(len(self.chains), generator=generator)

    def loss(self, model: PropertyGNN, generator: torch.Generator):
        idx = self.order[self.cursor: self.cursor + self.batch_size]
        pred = model(self.chains.type_graphs, self.chains.batch(idx))
        per_target = ((pred - self.scaled[idx.to(self.scaled.device)]) ** 2).mean(dim=0)
        return per_target.mean(), tuple(float(v) for v in per_target.detach())

    def after_step(self, model, generator: torch.Generator, iteration: int) -> dict:
        self.cursor += self.batch_size
        if self.cursor >= len(self.chains):  # end of an epoch: reshuffle
            self.cursor = 0
            self.order = torch.randperm(len(self.chains), generator=generator)
        return {}

    def state_dict(self) -> dict:
        return {"order": self.order, "cursor": self.cursor}

    def load_state_dict(self, state: dict):
        self.order, self.cursor = state["order"], int(state["cursor"])


def fit_property_gnn(chains: ChainGraphs, n_iterations: int = 1500, seed: int = 0, batch_size: int = 16,
                     lr: float = 1e-3, weight_decay: float = 0.0, model_kwargs: Optional[dict] = None, device="cpu",
                     progress: bool = False) -> tuple[PropertyGNN, TrainingLoop]:
    """A :class:`PropertyGNN` trained on ``chains`` (with targets) by :class:`TrainingLoop`, in memory.

    The initial weights and the batch order both come from ``seed``; the targets are standardised by their mean
    and standard deviation over ``chains``. Returns the model (in eval mode) and the loop (for its losses).
    """
    if chains.targets is None:
        raise ValueError("training chains need targets")
    targets = chains.targets.numpy()
    with torch.random.fork_rng(devices=[]):  # seeded initial weights without touching the global RNG
        torch.manual_seed(int(seed))
        model = PropertyGNN(n_out=targets.shape[1], **(model_kwargs or {}))
    # a floor on the scale: identical labels (one chain, or a constant target) must not divide by zero
    model.set_target_scale(targets.mean(axis=0), np.maximum(targets.std(axis=0), 1e-3))
    model.to(device)
    config = OptimConfig(batch_size=min(int(batch_size), len(chains)), n_iterations=int(n_iterations), lr=lr,
                         lr_final=0.01 * lr, weight_decay=weight_decay, checkpoint_every=0, seed=int(seed))
    objective = PropertyObjective(model, chains, config.batch_size,
                                  LABELS if targets.shape[1] == len(LABELS) else
                                  [f"target_{k}" for k in range(targets.shape[1])])
    loop = TrainingLoop(model, config, objective, out_dir=None, device=device, desc="supervised GNN")
    loop.run(progress=progress)
    model.load_state_dict(loop.final_state_dict())
    return model.eval(), loop


# ------------------------------------------------------------------------------------------------ labels
def chain_beadmaps(data_root: str, name: str) -> list:
    """The BeadMap of every chain of dataset ``name``, in chain order."""
    from openmm_cgml.data import CGDataset

    maps = []
    for path in dataset_chains(data_root, name):
        with CGDataset(path) as ds:
            maps.append(ds.beadmap)
    return maps


def chain_labels(config: dict, data_root: str, name: str, discard_steps: int = 0) -> list[dict]:
    """Each chain's ``rg2_nm2`` (mean CG Rg^2, nm^2) and ``tau_ps`` (integrated autocorrelation time of its Rg^2,
    ps) from the fine observables of dataset ``name``, without its first ``discard_steps`` MD steps."""
    if name not in config["datasets"]:
        raise ValueError(f"unknown dataset {name!r}; the config has {sorted(config['datasets'])}")
    interval = int(config["datasets"][name]["observable_interval"])
    if discard_steps < 0 or discard_steps % interval:
        raise ValueError(f"discard_steps must be a non-negative multiple of {name}'s observable_interval "
                         f"({interval}), got {discard_steps}")
    rg2 = load_fine_observables(os.path.join(data_root, name))["rg2_cg"][discard_steps // interval:]
    if rg2.shape[0] < 2 or rg2.shape[1] == 0:
        raise ValueError(f"{name} has {rg2.shape[0]} observable rows after discarding {discard_steps} steps; "
                         "need at least 2 and one chain")
    dt_ps = _timestep_ps(config["physics"])[0] * interval
    return [{"rg2_nm2": float(np.mean(rg2[:, k])), "tau_ps": relaxation_time(rg2[:, k], dt_ps)}
            for k in range(rg2.shape[1])]


def _log_targets(labels: list[dict]) -> np.ndarray:
    out = np.array([[c["rg2_nm2"], c["tau_ps"]] for c in labels], dtype=np.float64)
    if not (np.isfinite(out).all() and (out > 0).all()):
        raise ValueError("chain labels must be finite and positive")
    return np.log(out)


def _summary(values) -> dict:
    v = np.asarray(values, float)
    return {"min": float(v.min()), "mean": float(v.mean()), "median": float(np.median(v)), "max": float(v.max())}


def score(per_chain: list[dict], labels: list[dict]) -> dict:
    """Mean |relative error| of <Rg^2> and mean |log10 tau ratio| of predictions against ``labels`` (the
    :func:`chain_labels` of the same chains), the benchmark's aggregate metrics."""
    if len(per_chain) != len(labels):
        raise ValueError(f"{len(per_chain)} predictions for {len(labels)} labelled chains")
    rel = [p["rg2_pred_nm2"] / t["rg2_nm2"] - 1.0 for p, t in zip(per_chain, labels)]
    ratio = [math.log10(p["tau_pred_ps"] / t["tau_ps"]) for p, t in zip(per_chain, labels)]
    return {"rg2_mean_abs_rel_error": float(np.mean(np.abs(rel))),
            "tau_mean_abs_log10_ratio": float(np.mean(np.abs(ratio))),
            "rg2_mean_rel_error": float(np.mean(rel)), "tau_mean_log10_ratio": float(np.mean(ratio)),
            "n_chains": len(labels)}


def _per_chain(log_pred: np.ndarray) -> list[dict]:
    return [{"chain": k, "rg2_pred_nm2": float(math.exp(r)), "tau_pred_ps": float(math.exp(t))}
            for k, (r, t) in enumerate(log_pred)]


# ------------------------------------------------------------------------------------------------ baseline
def supervised_baseline(config: dict, data_root: str, train: str = "class_I", truth: str = "class_II",
                        n_iterations: int = 1500, seed: int = 0, progress: bool = False, batch_size: int = 16,
                        device="cpu") -> dict:
    """Baseline (c): train :class:`PropertyGNN` on ``train``'s chain labels, predict every ``truth`` chain.

    Only the CG graphs of the ``truth`` chains are read, never their trajectories. Returns ``per_chain`` (one
    ``{"chain", "rg2_pred_nm2", "tau_pred_ps"}`` per truth chain, nm^2 and ps), ``train_labels`` (min, mean,
    median, max of the training labels), the model's fit to its own training labels
    (``train_rg2_mean_abs_rel_error``, ``train_tau_mean_abs_log10_ratio``), ``n_train_chains``, the final
    training loss and the wall time (s). The same ``seed`` gives the same result (on one thread).
    """
    started = time.perf_counter()
    train_maps = chain_beadmaps(data_root, train)
    labels = chain_labels(config, data_root, train)
    if len(train_maps) != len(labels):
        raise ValueError(f"{train} has {len(train_maps)} chain files but fine observables for {len(labels)} chains")
    truth_chains = ChainGraphs(chain_beadmaps(data_root, truth), device=device)
    train_chains = ChainGraphs(train_maps, _log_targets(labels), device)
    model, loop = fit_property_gnn(train_chains, n_iterations, seed, batch_size, device=device, progress=progress)
    fit = score(_per_chain(model.predict(train_chains)), labels)
    recent = np.asarray(loop.losses[-50:], float).reshape(-1, 2)
    return {
        "baseline": "c_supervised_gnn", "train_dataset": train, "truth_dataset": truth,
        "per_chain": _per_chain(model.predict(truth_chains)),
        "n_train_chains": len(labels),
        "train_labels": {"rg2_nm2": _summary([c["rg2_nm2"] for c in labels]),
                         "tau_ps": _summary([c["tau_ps"] for c in labels])},
        "train_rg2_mean_abs_rel_error": fit["rg2_mean_abs_rel_error"],
        "train_tau_mean_abs_log10_ratio": fit["tau_mean_abs_log10_ratio"],
        "final_train_mse": dict(zip(loop.objective.names, recent.mean(axis=0).tolist())) if len(recent) else None,
        "n_iterations": int(n_iterations), "seed": int(seed), "batch_size": loop.config.batch_size,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        # bead types of the truth chains whose atom graph no training chain has: embedded by extrapolation
        "n_bead_types": {"train": len(train_chains.type_keys), "truth": len(truth_chains.type_keys),
                         "truth_unseen": len(set(truth_chains.type_keys) - set(train_chains.type_keys))},
        "wall_s": time.perf_counter() - started,
    }
