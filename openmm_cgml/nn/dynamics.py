"""Dynamics GNN: a Gaussian over every bead's acceleration for one (large) model time step.

Conventions (Fu et al., semi-implicit Euler with dt = 1 model step): the velocity history ``h`` (H, N, 3) holds
finite-difference displacements per model step in nm (``h[-1] = x_t - x_{t-1}``); the model predicts
``a = x_{t+1} - x_t - h[-1]`` (nm per step²) as a Gaussian with mean ``mu`` (N, 3) and isotropic std ``sigma``
(N,) per bead.

Molecule noise (``molecule_noise=True``): over a 100-ps step the beads of one chain move together (in the PEO
references the centre of a 5- or 7-bead chain carries half of each bead's displacement variance, not 1/5 or 1/7),
and independent per-bead noise loses that: once the refinement restores the bonds, each chain's centre has moved
too little. The model then also predicts a per-bead loading ``s`` (N,) on one noise shared by the beads of a
molecule, so that per Cartesian component the covariance of a molecule's accelerations is
``diag(sigma²) + s sᵀ``. :func:`sample_acceleration` draws it exactly from the usual N standard normals and
:func:`gaussian_nll` scores it in closed form (matrix determinant lemma), both in O(N).

Shell motion (``shell_radius > 0``, for the beads flagged as *carried*, e.g. Li⁺): over a 100-ps step a Li⁺ moves
with the PEO and TFSI beads that solvate it (in the EO4 and EO12 references its displacement correlates 0.94 and
0.87 with the mean displacement of the beads within 0.35 nm, and the rest is a third to a half of it). Noise drawn
for the ion on its own carries it out of its shell every step. For a carried bead, the model's Gaussian is
therefore over its displacement ``x_{t+1} - x_t`` minus the mean displacement of its shell (the beads not carried
within ``shell_radius`` at step t; no shell: minus zero). The joint density factorises as p(shell) p(ion | shell):
trained on that target (:func:`shell_mean`), sampled by adding the shell's sampled mean displacement back.

Ion-cluster noise (sampling only, no training; :func:`ion_partners`, :func:`cluster_loadings`): a Li⁺ and the
PEO bead or TFSI⁻ that binds it are different molecules, so their sampled moves are independent, and a 100-ps move
(0.5 nm rms) takes them further apart than the refinement brings back. With ``cluster_noise`` f, an ion within a
partner type's binding radius of a partner joins that partner's noise group, and a fraction f of its variance (and
of a one-bead partner's) moves to the group's shared noise. Every bead keeps its marginal variance.

Molecule memory (``molecule_memory=True``): a bead's history velocity mixes its molecule's drift with its own
rattling inside the molecule, and over a 100-ps step the two have different memories (in the PEO references the
lag-1 correlation of successive chain-centre steps is -0.05 to -0.12, that of a bead relative to its chain's centre
-0.24 to -0.33). One coefficient per history velocity must compromise between them, and the compromise gives the
chain centres a step-to-step anti-correlation that the references do not have: sub-diffusive chains. The mean then
also has per-bead coefficients on the history velocities of the bead's molecule's centre of mass
(:func:`molecule_mean`), so the two memories are learned apart. Its head starts at zero, so a model fine-tuned into
molecule memory starts from its old predictions.

Equivariance by construction: the backbone sees only invariants (bead embedding, log mass, speeds |v_k|,
Gaussian RBFs of edge lengths, edge type, projections of both ends' velocities on the edge's unit vector). The
mean is ``EdgeVectorHead`` (invariant weights x edge unit vectors) plus invariant per-bead coefficients times the
history velocities (and, with molecule memory, the molecule centres' history velocities), so rotating the input
rotates ``mu`` and translations or periodic images change nothing.

Normalisation: ``velocity_scale`` and ``accel_scale`` (nm per step, nm per step²; RMS values of the training
data) make the network's inputs and outputs of order one; they are stored in the model config.
"""
import math
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .backbone import MLP, EdgeVectorHead, GaussianRBF, GraphBackbone, scatter_sum
from ..pbc import minimum_image_torch
from .graph import build_edges, radius_graph


class DynamicsGNN(nn.Module):
    """Gaussian acceleration model.

    Args:
        embed_dim: size of the bead embeddings given to :meth:`forward`.
        history_length: H, number of past velocities used.
        cutoff: radius of the neighbour graph, nm (CG bonds are always edges).
        hidden, n_layers, mlp_layers, n_rbf: backbone width/depth and number of distance RBFs.
        min_std: floor of the predicted std in units of ``accel_scale``.
        velocity_scale, accel_scale: normalisation, nm per step and nm per step².
        molecule_noise: also predict each bead's loading on its molecule's shared noise (else it is zero).
        shell_radius: nm; > 0 makes the Gaussian of each carried bead one over its displacement relative to its
            shell's (see the module docstring; which beads are carried is the caller's mask), 0 = off.
        molecule_memory: the mean also depends on the history velocities of each bead's molecule's centre of mass
            (module docstring); :meth:`forward` then needs the molecule index of every bead.
    """

    def __init__(
        self,
        embed_dim: int,
        history_length: int,
        cutoff: float,
        hidden: int = 64,
        n_layers: int = 4,
        mlp_layers: int = 2,
        n_rbf: int = 16,
        min_std: float = 1e-3,
        velocity_scale: float = 1.0,
        accel_scale: float = 1.0,
        molecule_noise: bool = False,
        shell_radius: float = 0.0,
        molecule_memory: bool = False,
    ):
        super().__init__()
        if history_length < 1:
            raise ValueError(f"history_length must be >= 1, got {history_length}")
        if cutoff <= 0:
            raise ValueError(f"cutoff must be a positive length in nm, got {cutoff}")
        self.embed_dim = int(embed_dim)
        self.history_length = int(history_length)
        self.cutoff = float(cutoff)
        self.n_rbf = int(n_rbf)
        self.min_std = float(min_std)
        self.velocity_scale = float(velocity_scale)
        self.accel_scale = float(accel_scale)
        self.molecule_noise = bool(molecule_noise)
        if shell_radius < 0:
            raise ValueError(f"shell_radius must be >= 0 nm (0 = off), got {shell_radius}")
        self.shell_radius = float(shell_radius)
        h = self.history_length
        self.rbf = GaussianRBF(n_rbf, cutoff)
        self.backbone = GraphBackbone(embed_dim + 1 + h, n_rbf + 2 + 2 * h, hidden, n_layers, mlp_layers)
        self.vector_head = EdgeVectorHead(hidden, 1, mlp_layers)
        # Per bead: H coefficients of the history velocities, the raw std and (molecule noise) the raw loading.
        self.node_head = MLP(hidden, hidden, h + 1 + int(self.molecule_noise), mlp_layers, layer_norm=False)
        # Per bead: H coefficients of its molecule centre's history velocities, zero at the start (module docstring).
        self.molecule_memory = bool(molecule_memory)
        self.memory_head = MLP(hidden, hidden, h, mlp_layers, layer_norm=False) if molecule_memory else nn.Identity()
        if molecule_memory:
            nn.init.zeros_(self.memory_head[-1].weight)
            nn.init.zeros_(self.memory_head[-1].bias)

    def forward(
        self,
        pos: torch.Tensor,
        history: torch.Tensor,
        embed: torch.Tensor,
        masses: torch.Tensor,
        bonds: torch.Tensor,
        box: Optional[torch.Tensor] = None,
        batch: Optional[torch.Tensor] = None,
        candidates: Optional[torch.Tensor] = None,
        molecule: Optional[torch.Tensor] = None,
        n_molecules: int = 0,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean (N, 3), std (N,) and molecule-noise loading (N,; zeros without molecule noise) of each bead's
        acceleration, all nm/step².

        Args:
            pos: (N, 3) positions, nm. history: (H, N, 3) displacements per step, nm (last = most recent).
            embed: (N, embed_dim) bead embeddings. masses: (N,) amu. bonds: (M, 2) CG bonds.
            box: None or (3,) / (B, 3) orthorhombic box, nm. batch: (N,) graph index of each bead, or None.
            candidates: None (fresh neighbour search) or a ``graph.neighbour_candidates`` list.
            molecule: (N,) molecule index of each bead, 0 .. n_molecules - 1 (needed with molecule memory).
        """
        n = pos.shape[0]
        edge_index, edge_vec, edge_type = build_edges(pos, self.cutoff, bonds, box, batch, candidates)
        src, dst = edge_index[0], edge_index[1]
        r = torch.linalg.norm(edge_vec, dim=1).clamp(min=1e-6)
        unit = edge_vec / r.unsqueeze(1)
        v = history / self.velocity_scale  # (H, N, 3)
        speed = torch.linalg.norm(v, dim=2).t()  # (N, H)
        node_attr = torch.cat([embed, torch.log(masses / 10.0).unsqueeze(1), speed], dim=1)
        v_dst = (v[:, dst] * unit.unsqueeze(0)).sum(dim=2).t()  # (E, H)
        v_src = (v[:, src] * unit.unsqueeze(0)).sum(dim=2).t()
        edge_attr = torch.cat([self.rbf(r), F.one_hot(edge_type, 2).to(pos.dtype), v_dst, v_src], dim=1)
        h, e = self.backbone(node_attr, edge_attr, edge_index)
        vec = self.vector_head(e, edge_vec, edge_index, n)[:, 0]  # (N, 3)
        out = self.node_head(h)
        coef = out[:, : self.history_length].t().unsqueeze(2)  # (H, N, 1)
        mean = self.accel_scale * (vec + (coef * v).sum(dim=0))
        if self.molecule_memory:
            if molecule is None:
                raise ValueError("a molecule-memory dynamics GNN needs the molecule index of every bead")
            centre = molecule_mean(v, masses, molecule, n_molecules)
            mean = mean + self.accel_scale * (self.memory_head(h).t().unsqueeze(2) * centre).sum(dim=0)
        std = self.accel_scale * (self.min_std + F.softplus(out[:, self.history_length]))
        if self.molecule_noise:
            shared = self.accel_scale * F.softplus(out[:, self.history_length + 1])
        else:
            shared = torch.zeros_like(std)
        return mean, std, shared


def molecule_mean(values: torch.Tensor, weights: torch.Tensor, molecule: torch.Tensor,
                  n_molecules: int) -> torch.Tensor:
    """The ``weights``-weighted mean (e.g. masses, amu) of ``values`` (..., N, 3) over each bead's molecule
    (``molecule`` (N,) in 0 .. n_molecules - 1), given back per bead: (..., N, 3)."""
    n = values.shape[-2]
    flat = values.reshape(-1, n, 3).transpose(0, 1).reshape(n, -1)  # (N, ... x 3)
    w = weights.unsqueeze(1)
    centre = scatter_sum(flat * w, molecule, n_molecules) / scatter_sum(w, molecule, n_molecules)
    return centre[molecule].reshape(n, -1, 3).transpose(0, 1).reshape(values.shape)


def _molecule_projection(std: torch.Tensor, shared: torch.Tensor, z: torch.Tensor, molecule: torch.Tensor,
                         n_molecules: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``w = shared / std`` (N, 1), ``q = |w|²`` (M, 1) and ``wᵀz`` (M, 3) per molecule, for standardised ``z``
    (N, 3): all the molecule-noise covariance needs, in sampling and in the likelihood."""
    w = (shared / std).unsqueeze(1)
    return w, scatter_sum(w * w, molecule, n_molecules), scatter_sum(w * z, molecule, n_molecules)


def sample_acceleration(mean: torch.Tensor, std: torch.Tensor, shared: torch.Tensor, molecule: torch.Tensor,
                        n_molecules: int, z: torch.Tensor) -> torch.Tensor:
    """An acceleration (N, 3) with per-component covariance ``diag(std²) + shared sharedᵀ`` within each molecule,
    from standard normals ``z`` (N, 3); ``molecule`` (N,) indexes the molecules 0 .. n_molecules - 1.

    With ``w = shared / std``, ``q = |w|²`` per molecule and ``c = 1 / (1 + sqrt(1 + q))``, the factor
    ``diag(std) (I + c w wᵀ)`` squares to the covariance, so no extra random numbers are needed (and the stream of
    a model without molecule noise, ``shared = 0``, is unchanged)."""
    w, q, wz = _molecule_projection(std, shared, z, molecule, n_molecules)
    c = 1.0 / (1.0 + torch.sqrt(1.0 + q))
    return mean + std.unsqueeze(1) * (z + w * (c * wz)[molecule])


def ion_partners(pos: torch.Tensor, ion: torch.Tensor, reach: torch.Tensor, box: Optional[torch.Tensor],
                 batch: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(ion bead, partner bead) pairs (P,), (P,): for every bead flagged in ``ion`` (N,) bool, the bead of the
    same graph closest to it in units of its binding radius ``reach`` (N,) nm (0: never a partner), if within it.
    ``pos`` (N, 3) nm, ``box`` None or (3,) / (B, 3) nm, ``batch`` (N,) graph index. Uses the cell-list radius
    graph, so the cost grows linearly with N."""
    none = torch.zeros(0, dtype=torch.long, device=pos.device)
    cutoff = float(reach.max()) if reach.numel() > 0 else 0.0
    if cutoff <= 0.0 or not bool(ion.any()):
        return none, none
    edge_index, vec = radius_graph(pos, cutoff, box, batch)
    src, dst = edge_index[0], edge_index[1]
    keep = ion[dst] & (reach[src] > 0)
    src, dst = src[keep], dst[keep]
    ratio = torch.linalg.norm(vec[keep], dim=1) / reach[src]
    bound = ratio < 1.0
    src, dst, ratio = src[bound], dst[bound], ratio[bound]
    # the closest partner per ion: order by ratio, then stably by ion, and keep each ion's first row
    order = torch.sort(ratio, stable=True)[1]
    order = order[torch.sort(dst[order], stable=True)[1]]
    src, dst = src[order], dst[order]
    first = torch.ones_like(dst, dtype=torch.bool)
    first[1:] = dst[1:] != dst[:-1]
    return dst[first], src[first]


def cluster_loadings(std: torch.Tensor, shared: torch.Tensor, molecule: torch.Tensor, ions: torch.Tensor,
                     partners: torch.Tensor, lone: torch.Tensor,
                     fraction: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Std, shared loading (N,) nm per step² and noise group (N,) for ion-cluster noise (module docstring): each
    ion of ``ions`` joins the group (molecule) of its partner in ``partners`` (from :func:`ion_partners`), and a
    fraction ``fraction`` in [0, 1) of its variance, and of a partner alone in its molecule (``lone`` (N,) bool),
    moves to the shared noise. Shared loadings are non-negative, so bound beads move with their group."""
    group = molecule.clone()
    group[ions] = molecule[partners]
    moved = torch.cat([ions, partners[lone[partners]]])
    total = torch.sqrt(std[moved] ** 2 + shared[moved] ** 2)
    std, shared = std.clone(), shared.clone()
    shared[moved] = fraction * total
    std[moved] = math.sqrt(1.0 - fraction * fraction) * total
    return std, shared, group


def shell_pairs(pos: torch.Tensor, carried: torch.Tensor, radius: float, box: Optional[torch.Tensor],
                batch: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(carried bead, shell bead) index pairs (P,), (P,): every bead not carried within ``radius`` nm (minimum
    image) of a carried bead of the same graph. ``pos`` (N, 3) nm, ``carried`` (N,) bool, ``box`` None or (3,) /
    (B, 3) nm, ``batch`` (N,) graph index. All pairs of the few carried beads are tested: no neighbour list."""
    ci = torch.nonzero(carried).flatten()
    if ci.numel() == 0:
        return ci, ci
    delta = pos.unsqueeze(0) - pos[ci].unsqueeze(1)  # (C, N, 3)
    if box is not None:
        delta = minimum_image_torch(delta, box if box.dim() == 1 else box[batch[ci]].unsqueeze(1))
    near = (torch.linalg.norm(delta, dim=2) < radius) & ~carried.unsqueeze(0) & \
        (batch[ci].unsqueeze(1) == batch.unsqueeze(0))
    pairs = torch.nonzero(near)  # (P, 2): row into ci, bead index
    return ci[pairs[:, 0]], pairs[:, 1]


def shell_mean(values: torch.Tensor, carried: torch.Tensor, shell: torch.Tensor) -> torch.Tensor:
    """Per bead, the mean of ``values`` (N, 3) over its shell beads (pairs ``carried``, ``shell`` from
    :func:`shell_pairs`); zero for beads without a shell."""
    n = values.shape[0]
    total = scatter_sum(values[shell], carried, n)
    count = scatter_sum(torch.ones_like(values[shell][:, :1]), carried, n)
    return total / count.clamp(min=1.0)


def gaussian_nll(target: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, scale: float = 1.0,
                 shared: Optional[torch.Tensor] = None, molecule: Optional[torch.Tensor] = None,
                 n_molecules: int = 0) -> torch.Tensor:
    """Mean negative log-likelihood per coordinate of ``target`` (N, 3) under N(mean, std² I) (std (N,)), or with
    ``shared`` (N,) and ``molecule`` (N,), under the molecule-noise covariance ``diag(std²) + shared sharedᵀ`` of
    each molecule and Cartesian component (see :func:`sample_acceleration`).

    ``scale`` (e.g. the model's accel_scale) only shifts the value so it is of order one; gradients are unchanged.
    """
    z = (target - mean) / std.unsqueeze(1)
    nll = (0.5 * z * z).mean() + torch.log(std / scale).mean() + 0.5 * math.log(2.0 * math.pi)
    if shared is None or molecule is None:
        return nll
    # Matrix determinant lemma and Sherman-Morrison for diag(std²) + s sᵀ, per molecule and component:
    # log det gains log(1 + q), the quadratic form loses (wᵀz)² / (1 + q), with w = s / std and q = |w|².
    _, q, wz = _molecule_projection(std, shared, z, molecule, n_molecules)
    n_coords = float(z.numel())
    return nll + (1.5 * torch.log1p(q).sum() - 0.5 * (wz * wz / (1.0 + q)).sum()) / n_coords
