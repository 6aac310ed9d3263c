"""Dynamics GNN: a Gaussian over every bead's acceleration for one (large) model time step.

Conventions (Fu et al., semi-implicit Euler with dt = 1 model step): the velocity history ``h`` (H, N, 3) holds
finite-difference displacements per model step in nm (``h[-1] = x_t - x_{t-1}``); the model predicts
``a = x_{t+1} - x_t - h[-1]`` (nm per step²) as a Gaussian with mean ``mu`` (N, 3) and isotropic std ``sigma``
(N,) per bead.

Equivariance by construction: the backbone sees only invariants (bead embedding, log mass, speeds |v_k|,
Gaussian RBFs of edge lengths, edge type, projections of both ends' velocities on the edge's unit vector). The
mean is ``EdgeVectorHead`` (invariant weights x edge unit vectors) plus invariant per-bead coefficients times the
history velocities, so rotating the input rotates ``mu`` and translations or periodic images change nothing.

Normalisation: ``velocity_scale`` and ``accel_scale`` (nm per step, nm per step²; RMS values of the training
data) make the network's inputs and outputs of order one; they are stored in the model config.
"""
import math
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .backbone import MLP, EdgeVectorHead, GaussianRBF, GraphBackbone
from .graph import build_edges


class DynamicsGNN(nn.Module):
    """Gaussian acceleration model.

    Args:
        embed_dim: size of the bead embeddings given to :meth:`forward`.
        history_length: H, number of past velocities used.
        cutoff: radius of the neighbour graph, nm (CG bonds are always edges).
        hidden, n_layers, mlp_layers, n_rbf: backbone width/depth and number of distance RBFs.
        min_std: floor of the predicted std in units of ``accel_scale``.
        velocity_scale, accel_scale: normalisation, nm per step and nm per step².
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
        h = self.history_length
        self.rbf = GaussianRBF(n_rbf, cutoff)
        self.backbone = GraphBackbone(embed_dim + 1 + h, n_rbf + 2 + 2 * h, hidden, n_layers, mlp_layers)
        self.vector_head = EdgeVectorHead(hidden, 1, mlp_layers)
        # Per bead: H coefficients of the history velocities and the raw std.
        self.node_head = MLP(hidden, hidden, h + 1, mlp_layers, layer_norm=False)

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
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean (N, 3) nm/step² and std (N,) nm/step² of each bead's acceleration.

        Args:
            pos: (N, 3) positions, nm. history: (H, N, 3) displacements per step, nm (last = most recent).
            embed: (N, embed_dim) bead embeddings. masses: (N,) amu. bonds: (M, 2) CG bonds.
            box: None or (3,) / (B, 3) orthorhombic box, nm. batch: (N,) graph index of each bead, or None.
            candidates: None (fresh neighbour search) or a ``graph.neighbour_candidates`` list.
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
        std = self.accel_scale * (self.min_std + F.softplus(out[:, self.history_length]))
        return mean, std


def gaussian_nll(target: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Mean negative log-likelihood per coordinate of ``target`` (N, 3) under N(mean, std² I) (std (N,)).

    ``scale`` (e.g. the model's accel_scale) only shifts the value so it is of order one; gradients are unchanged.
    """
    z = (target - mean) / std.unsqueeze(1)
    return (0.5 * z * z).mean() + torch.log(std / scale).mean() + 0.5 * math.log(2.0 * math.pi)
