"""DiG score model: distance-biased attention over a bead graph, conditioned on bead types, CG bonds and time.

The network predicts the noise eps added by the VP SDE (:mod:`openmm_cgml.nn.sde`) to dimensionless coordinates
y = x / length_scale; the score is ``-eps / sigma(t)``. Inputs to the shared :class:`GraphBackbone` are all
invariant (bead embeddings from each type's atom graph, sinusoidal features of t, Gaussian RBFs of distances in
nm, edge type), and the output comes from :class:`EdgeVectorHead`, so the score is rotation equivariant and
translation invariant.

Bead types: the model embeds each type from its atom graph with the same :class:`BeadEmbedding` the dynamics
and score models use (``BeadMap.type_graphs``), so it has no fixed table of types and can sample systems whose
bead types it never saw. A :class:`Descriptor` carries the atom graphs of its types.

Centre of mass: for non-periodic systems the diffusion runs in the subspace where the bead centroid is zero
(DiG's convention): the noise and the predicted eps are projected onto it, so densities are densities on that
3(N - 1)-dimensional subspace and are well defined (a translation-invariant density is not normalisable).
Periodic systems keep all 3N coordinates; their edges use minimum images in the given box.
"""
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..pbc import minimum_image_torch
from ..pbc import remove_centroids_by_graph as remove_centroid  # the projection onto the COM-free subspace
from .embedding import BeadEmbedding, anonymous_type_graphs
from .backbone import MLP, EdgeVectorHead, GaussianRBF, GraphBackbone
from .graph import BOND_EDGE, RADIUS_EDGE, bond_edges, build_edges
from .sde import VPSDE


class Descriptor:
    """What DiG is conditioned on: bead types (N,) int64 indices into ``type_graphs``, CG bonds (M, 2), and
    whether the system is periodic (then ``box`` (3,) nm is used for edges).

    ``type_graphs`` are the atom graphs of the types (``BeadMap.type_graphs``: one dict per type index, with
    ``elements``, ``masses`` and ``bonds``); without them the types are known only by index
    (:func:`~openmm_cgml.nn.embedding.anonymous_type_graphs`). ``type_names`` (optional) name them.
    """

    def __init__(self, bead_types, bonds=None, box=None, type_graphs: Optional[Sequence[dict]] = None,
                 type_names: Optional[Sequence[str]] = None):
        self.bead_types = torch.as_tensor(np.asarray(bead_types, dtype=np.int64)).reshape(-1)
        bonds = torch.zeros((0, 2), dtype=torch.long) if bonds is None else torch.as_tensor(
            np.asarray(bonds, dtype=np.int64))
        self.bonds = bonds.reshape(-1, 2)
        self.box = None if box is None else torch.as_tensor(box, dtype=torch.float32).reshape(3)
        if self.bead_types.numel() == 0:
            raise ValueError("a DiG descriptor needs at least one bead")
        if int(self.bead_types.min()) < 0:
            raise ValueError("bead types must be indices >= 0")
        if self.bonds.numel() and (int(self.bonds.max()) >= self.n_beads or int(self.bonds.min()) < 0):
            raise ValueError(f"CG bonds refer to beads outside 0..{self.n_beads - 1}")
        n_types = int(self.bead_types.max()) + 1
        self.type_graphs: List[dict] = list(type_graphs) if type_graphs is not None else anonymous_type_graphs(n_types)
        if len(self.type_graphs) < n_types:
            raise ValueError(f"bead type {n_types - 1} has no atom graph (the descriptor has {len(self.type_graphs)})")
        self.type_names = None if type_names is None else [str(n) for n in type_names]

    @classmethod
    def from_beadmap(cls, beadmap, box=None) -> "Descriptor":
        """A BeadMap's bead types (with their names and atom graphs) and CG bonds; ``box`` (3,) nm or None."""
        return cls(beadmap.bead_types, beadmap.bonds, box, list(beadmap.type_graphs), list(beadmap.type_names))

    def with_box(self, box) -> "Descriptor":
        """The same system in a periodic box (3,) nm."""
        return Descriptor(self.bead_types, self.bonds, box, self.type_graphs, self.type_names)

    @property
    def n_beads(self) -> int:
        return int(self.bead_types.shape[0])

    @property
    def periodic(self) -> bool:
        return self.box is not None

    def batched(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``n`` copies as one disconnected graph: (bonds (nM, 2), batch (nN,))."""
        nb = self.n_beads
        offs = (torch.arange(n) * nb).repeat_interleave(self.bonds.shape[0]).unsqueeze(1)
        bonds = self.bonds.repeat(n, 1) + offs
        batch = torch.arange(n).repeat_interleave(nb)
        return bonds, batch


def helmert_basis(n: int, dtype=torch.float64) -> torch.Tensor:
    """Orthonormal basis (n, n - 1) of the vectors in R^n that sum to zero (Helmert contrasts)."""
    h = torch.zeros(n, n - 1, dtype=torch.float64)
    for k in range(1, n):
        h[:k, k - 1] = 1.0
        h[k, k - 1] = -float(k)
        h[:, k - 1] /= math.sqrt(k * (k + 1))
    return h.to(dtype)


def subspace_rademacher(n_probes: int, shape, remove_com: bool, generator: torch.Generator) -> torch.Tensor:
    """Hutchinson probes (K, B, N, 3) with E[v v^T] = identity on the space the diffusion lives in.

    In the centroid-free subspace they are Rademacher vectors in an orthonormal (Helmert) basis of it, so an
    isotropic Jacobian is traced exactly, as plain Rademacher probes do in the full space (projected Rademacher
    vectors P r would not: |P r|^2 fluctuates, e.g. it is 0 half the time for two beads).
    """
    b, n, _ = shape
    if not remove_com:
        return torch.randint(0, 2, (n_probes, b, n, 3), generator=generator).double() * 2.0 - 1.0
    r = torch.randint(0, 2, (n_probes, b, n - 1, 3), generator=generator).double() * 2.0 - 1.0
    return torch.einsum("nm,kbmc->kbnc", helmert_basis(n), r)


def full_graph(batch: torch.Tensor) -> torch.Tensor:
    """All ordered pairs (j, i), j != i, inside each graph of ``batch``; edge_index (2, E)."""
    counts = torch.bincount(batch)
    order = torch.argsort(batch, stable=True)  # beads of each graph made contiguous
    if bool((counts == counts[0]).all()):
        c = int(counts[0])
        idx = order.view(-1, c)
        a = idx.unsqueeze(2).expand(-1, c, c)
        b = idx.unsqueeze(1).expand(-1, c, c)
        keep = a != b
        return torch.stack([a[keep], b[keep]])
    starts = torch.cumsum(counts, 0) - counts
    src, dst = [], []
    for g in range(counts.shape[0]):  # graphs of different sizes: one block at a time
        c = int(counts[g])
        idx = order[int(starts[g]) : int(starts[g]) + c]
        a = idx.repeat_interleave(c)
        b = idx.repeat(c)
        keep = a != b
        src.append(a[keep])
        dst.append(b[keep])
    return torch.stack([torch.cat(src), torch.cat(dst)])


def time_features(t: torch.Tensor, n: int, max_freq: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features of diffusion time t in [0, 1] (n even), frequencies 1..max_freq on a log scale."""
    half = n // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), half, dtype=t.dtype, device=t.device))
    arg = t.unsqueeze(-1) * freqs
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class DiGScoreModel(nn.Module):
    """Noise-prediction network for DiG.

    Args:
        length_scale: nm per unit of the diffused coordinate y (positions are divided by it).
        cutoff: radius-graph cutoff in nm, or None for a fully connected graph (small molecules, no PBC).
        rbf_max: largest distance (nm) resolved by the RBF expansion; defaults to cutoff, or 6 length scales.
        hidden, n_layers, heads, n_rbf, n_time: network sizes.
        embed_dim, embed_hidden, embed_layers: the bead-type embedding GNN (:class:`BeadEmbedding`).
        skip_sde: VP SDE config (:meth:`VPSDE.config`) enabling the Gaussian skip eps = sigma(t) y + network
            for non-periodic systems (None: plain network).
        time_max_freq: highest frequency of the sinusoidal time features (lower = smoother in t; PIDP needs
            d score / dt, so it uses a low value).
    """

    def __init__(
        self,
        length_scale: float = 1.0,
        cutoff: Optional[float] = None,
        rbf_max: Optional[float] = None,
        hidden: int = 64,
        n_layers: int = 4,
        heads: int = 4,
        n_rbf: int = 32,
        n_time: int = 16,
        embed_dim: int = 16,
        embed_hidden: int = 32,
        embed_layers: int = 2,
        time_max_freq: float = 1000.0,
        skip_sde: Optional[dict] = None,
    ):
        super().__init__()
        if length_scale <= 0:
            raise ValueError(f"length_scale must be positive (nm), got {length_scale}")
        if cutoff is not None and cutoff <= 0:
            raise ValueError(f"cutoff must be positive (nm) or None, got {cutoff}")
        self.length_scale = float(length_scale)
        self.cutoff = None if cutoff is None else float(cutoff)
        # Beyond rbf_max only the linear r / rbf_max feature resolves distances; 6 length scales covers the pair
        # distances of the N(0, I) prior (typical sqrt(6) ~ 2.4 units) with room to spare.
        self.rbf_max = float(rbf_max) if rbf_max is not None else (self.cutoff or 6.0 * self.length_scale)
        self.n_time = int(n_time) + (int(n_time) % 2)
        self.time_max_freq = float(time_max_freq)
        self.embedding = BeadEmbedding(embed_dim, embed_hidden, embed_layers)
        self.rbf = GaussianRBF(n_rbf, self.rbf_max)
        # Edge input: RBF(r), r / rbf_max (beyond the RBF range), one-hot edge type.
        self.backbone = GraphBackbone(embed_dim + self.n_time, n_rbf + 1 + 2, hidden, n_layers, attention=True,
                                      heads=heads)
        self.head = EdgeVectorHead(hidden, 1)
        # Invariant per-bead coefficient times the bead's centred coordinate (non-periodic systems): the linear
        # part of the noise prediction, exact for Gaussian marginals (eps = y at t = 1), which edge sums of
        # bounded weights times unit vectors can only approximate.
        self.linear_coef = MLP(hidden, hidden, 1, 2, layer_norm=False)
        # Gaussian skip (non-periodic systems): eps = sigma(t) * y + network. sigma(t) y is the exact noise
        # prediction for unit-variance Gaussian data (score -y at every t), an exact solution of the SDE's
        # Fokker–Planck equation; with length_scale = the data's RMS coordinate the network learns only the
        # deviation from it (EDM-style preconditioning). The last layers start at zero so training starts there.
        self.skip_sde = dict(skip_sde) if skip_sde is not None else None
        self._skip = VPSDE(**self.skip_sde) if skip_sde is not None else None
        if self._skip is not None:
            for mlp in (self.head.weight_mlp, self.linear_coef):
                nn.init.zeros_(mlp[-1].weight)
                nn.init.zeros_(mlp[-1].bias)

    def config(self) -> dict:
        """Constructor arguments as a JSON-able dict (for nn.io.save_model_dir)."""
        return {
            "length_scale": self.length_scale,
            "cutoff": self.cutoff,
            "rbf_max": self.rbf_max,
            "hidden": self.backbone.hidden,
            "n_layers": len(self.backbone.blocks),
            "heads": self.backbone.blocks[0].heads if len(self.backbone.blocks) else 4,
            "n_rbf": self.rbf.centres.shape[0],
            "n_time": self.n_time,
            "embed_dim": self.embedding.embed_dim,
            "embed_hidden": self.embedding.backbone.hidden,
            "embed_layers": len(self.embedding.backbone.blocks),
            "time_max_freq": self.time_max_freq,
            "skip_sde": self.skip_sde,
        }

    def embed(self, descriptor: Descriptor) -> torch.Tensor:
        """Per-bead embeddings (N, embed_dim) of the descriptor's system, from its types' atom graphs
        (differentiable: training updates the embedding GNN through it)."""
        table = self.embedding.embed_types(descriptor.type_graphs)
        return table[descriptor.bead_types.to(table.device)]

    def edges(
        self, x: torch.Tensor, bonds: torch.Tensor, box: Optional[torch.Tensor], batch: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edge index, edge vectors (nm) and edge types for positions ``x`` (N, 3) nm."""
        if self.cutoff is not None:
            return build_edges(x, self.cutoff, bonds, box, batch)
        if box is not None:
            raise ValueError("a periodic system needs a model with a finite cutoff")
        r_index = full_graph(batch)
        r_vec = x[r_index[1]] - x[r_index[0]]
        b_index, b_vec = bond_edges(x, bonds, None, batch)
        r_type = torch.full((r_index.shape[1],), RADIUS_EDGE, dtype=torch.long, device=x.device)
        b_type = torch.full((b_index.shape[1],), BOND_EDGE, dtype=torch.long, device=x.device)
        return torch.cat([r_index, b_index], 1), torch.cat([r_vec, b_vec], 0), torch.cat([r_type, b_type])

    def forward(
        self,
        y: torch.Tensor,
        t: torch.Tensor,
        embed: torch.Tensor,
        bonds: torch.Tensor,
        batch: Optional[torch.Tensor] = None,
        box: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Predicted noise eps (N, 3) for diffused coordinates ``y`` (N, 3) at times ``t`` (one per graph).

        Args:
            y: dimensionless coordinates, positions / length_scale.
            t: diffusion times, a scalar or (B,) tensor, one per graph of ``batch``.
            embed: (N, embed_dim) bead embeddings (:meth:`embed`).
            bonds: (M, 2) int64 CG bonds (global bead indices).
            batch: (N,) graph index per bead, or None for one graph.
            box: None, (3,) or (B, 3) nm box edge lengths for periodic systems.
        """
        n = y.shape[0]
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=y.device)
        n_graphs = int(batch.max()) + 1 if n else 1
        t = torch.as_tensor(t, dtype=y.dtype, device=y.device).reshape(-1)
        if t.shape[0] == 1:
            t = t.expand(n_graphs)
        x = y * self.length_scale
        edge_index, edge_vec, edge_type = self.edges(x, bonds, box, batch)
        r = torch.linalg.norm(edge_vec, dim=1)
        edge_attr = torch.cat(
            [self.rbf(r), (r / self.rbf_max).unsqueeze(1), nn.functional.one_hot(edge_type, 2).to(y.dtype)], dim=1
        )
        time_attr = time_features(t, self.n_time, self.time_max_freq)[batch]
        node_attr = torch.cat([embed.to(y.dtype), time_attr], dim=1)
        h, e = self.backbone(node_attr, edge_attr, edge_index)
        eps = self.head(e, edge_vec, edge_index, n)[:, 0, :]
        if box is None:
            y_c = remove_centroid(y, batch, n_graphs)
            eps = eps + self.linear_coef(h) * y_c
            if self._skip is not None:
                eps = eps + self._skip.marginal_std(t)[batch].unsqueeze(1) * y_c
            eps = remove_centroid(eps, batch, n_graphs)
        return eps


class GraphScore:
    """score(y (B, N, 3), t (B,)) = -eps(y, t) / sigma(t) of ``model`` on B copies of one system.

    The bead embeddings (without gradients: sampling, densities and PIDP keep the embedding GNN fixed) and the
    batched graph of each batch size are computed once per instance.
    """

    def __init__(self, model: "DiGScoreModel", sde: VPSDE, descriptor: Descriptor, device=None):
        self.model, self.sde, self.descriptor = model, sde, descriptor
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self._graphs = {}
        self._embed = None

    def _bead_embeddings(self) -> torch.Tensor:
        if self._embed is None:
            with torch.no_grad():
                self._embed = self.model.embed(self.descriptor)
        return self._embed

    def __call__(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, n = y.shape[0], y.shape[1]
        if b not in self._graphs:
            bonds, batch = self.descriptor.batched(b)
            box = None if self.descriptor.box is None else self.descriptor.box.to(self.device)
            self._graphs[b] = (bonds.to(self.device), batch.to(self.device), box)
        bonds, batch, box = self._graphs[b]
        embed = self._bead_embeddings().repeat(b, 1)
        eps = self.model(y.reshape(b * n, 3), t, embed, bonds, batch, box).reshape(b, n, 3)
        return -eps / self.sde.marginal_std(t).to(y.dtype).view(b, 1, 1)


def wrap_positions(x: torch.Tensor, box: Optional[torch.Tensor]) -> torch.Tensor:
    """Positions (N, 3) nm as their minimum image about the origin, components in [-box/2, box/2] (periodic
    samples are centred; :func:`openmm_cgml.pbc.wrap` gives the [0, box) convention of simulations)."""
    return minimum_image_torch(x, box)
