"""The one message-passing backbone shared by every model (embedding, dynamics, score, DiG).

Encode-process-decode in the style of GNS (Sanchez-Gonzalez et al. 2020): node and edge features are encoded by
MLPs, ``n_layers`` residual interaction blocks update edges then nodes, and task heads decode the latents.
With ``attention=True`` each block aggregates messages by multi-head attention whose logits carry a bias computed
from the edge latent (itself built from distances): the distance-biased attention of Graphormer, which is what
the DiG score model uses. Heads that output vectors combine edge unit vectors with invariant weights, so every
model is rotation equivariant and translation invariant by construction.
"""
import math
from typing import Tuple

import torch
from torch import nn


class MLP(nn.Sequential):
    """``n_hidden`` hidden layers of width ``hidden`` with SiLU, optional LayerNorm on the output (GNS style)."""

    def __init__(self, n_in: int, hidden: int, n_out: int, n_hidden: int = 2, layer_norm: bool = True):
        layers = []
        width = n_in
        for _ in range(n_hidden):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, n_out))
        if layer_norm:
            layers.append(nn.LayerNorm(n_out))
        super().__init__(*layers)


class GaussianRBF(nn.Module):
    """Expands distances (nm) on ``n`` Gaussians evenly spaced on [0, cutoff] nm."""

    def __init__(self, n: int, cutoff: float):
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.0, cutoff, n))
        self.width = cutoff / max(n - 1, 1)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * ((r.unsqueeze(-1) - self.centres) / self.width) ** 2)


#: Edges per block of the edge-wise passes (gather, MLP, scatter). Small enough that a block's temporaries stay in
#: a core's L2 cache, large enough that each matmul is efficient.
EDGE_BLOCK: int = 8192


def scatter_sum(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Sum rows of ``src`` (E, ...) into ``n`` rows by ``index`` (E,)."""
    out = torch.zeros((n,) + src.shape[1:], dtype=src.dtype, device=src.device)
    return out.index_add_(0, index, src)


def scatter_softmax(logits: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of ``logits`` (E, H) over the edges that share a target ``index``."""
    expanded = index.unsqueeze(1).expand_as(logits)
    peak = torch.full((n, logits.shape[1]), -1e30, dtype=logits.dtype, device=logits.device)
    peak = peak.scatter_reduce(0, expanded, logits, reduce="amax", include_self=True)
    weights = torch.exp(logits - peak[index])
    return weights / (scatter_sum(weights, index, n)[index] + 1e-12)


class InteractionBlock(nn.Module):
    """One residual message-passing step: edges from (h_i, h_j, e_ij), then nodes from (h_i, sum of messages).

    Without autograd (inference, or inputs that need no gradient) ``e`` is overwritten with the new edge latent.
    """

    def __init__(self, hidden: int, mlp_layers: int = 2, attention: bool = False, heads: int = 4):
        super().__init__()
        self.edge_mlp = MLP(3 * hidden, hidden, hidden, mlp_layers)
        self.node_mlp = MLP(2 * hidden, hidden, hidden, mlp_layers)
        self.block = EDGE_BLOCK  # TorchScript cannot read module-level constants
        self.attention = attention
        self.heads = heads if attention else 1
        if attention:
            if hidden % heads != 0:
                raise ValueError(f"hidden width {hidden} must be divisible by heads {heads}")
            self.query = nn.Linear(hidden, hidden, bias=False)
            self.key = nn.Linear(hidden, hidden, bias=False)
            self.edge_bias = nn.Linear(hidden, heads)
        else:
            # Unused placeholders keep TorchScript's attribute set identical for both modes.
            self.query = nn.Identity()
            self.key = nn.Identity()
            self.edge_bias = nn.Identity()

    def forward(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        src, dst = edge_index[0], edge_index[1]
        n = h.shape[0]
        n_edges = e.shape[0]
        # Without autograd the edge latent is updated in place: a fresh (E, hidden) tensor per layer costs more in
        # page faults than its edge MLP at 10^5 beads. With autograd the input stays intact.
        inplace = not (torch.is_grad_enabled() and (e.requires_grad or h.requires_grad))
        e_new = e if inplace else torch.empty_like(e)
        total = torch.zeros_like(h)  # sum of messages per target bead (sum aggregation)
        # One pass over blocks of edges does gather, edge MLP, residual and (sum aggregation) scatter while the
        # block is in cache: no whole-graph temporary of (E, 3 * hidden) exists, so the cost per edge stays flat
        # up to 10^5 beads. A block reads only its own rows of e, rows are independent and index_add_ adds in edge
        # order either way, so the result is bit-identical to the whole-graph update.
        for start in range(0, n_edges, self.block):
            stop = min(start + self.block, n_edges)
            to = dst[start:stop]
            part = e[start:stop] + self.edge_mlp(torch.cat([h[to], h[src[start:stop]], e[start:stop]], dim=1))
            e_new[start:stop] = part
            if not self.attention:
                total.index_add_(0, to, part)
        e = e_new
        if self.attention:
            d_head = h.shape[1] // self.heads
            q = self.query(h).view(n, self.heads, d_head)[dst]
            k = self.key(h).view(n, self.heads, d_head)[src]
            logits = (q * k).sum(-1) / math.sqrt(d_head) + self.edge_bias(e)
            alpha = scatter_softmax(logits, dst, n)  # (E, H)
            total = scatter_sum((alpha.unsqueeze(-1) * e.view(-1, self.heads, d_head)).reshape(e.shape), dst, n)
        h = h + self.node_mlp(torch.cat([h, total], dim=1))
        return h, e


class GraphBackbone(nn.Module):
    """Encode node/edge features, run ``n_layers`` interaction blocks; returns node and edge latents.

    Args:
        node_in: width of the input node features (invariant scalars).
        edge_in: width of the input edge features (invariant scalars, e.g. RBF of distance, edge type).
        hidden: latent width.
        n_layers: number of message-passing steps.
        attention: distance-biased multi-head attention aggregation (Graphormer-style) instead of a sum.
    """

    def __init__(
        self,
        node_in: int,
        edge_in: int,
        hidden: int = 64,
        n_layers: int = 4,
        mlp_layers: int = 2,
        attention: bool = False,
        heads: int = 4,
    ):
        super().__init__()
        self.node_encoder = MLP(node_in, hidden, hidden, mlp_layers)
        self.edge_encoder = MLP(edge_in, hidden, hidden, mlp_layers)
        self.blocks = nn.ModuleList(
            [InteractionBlock(hidden, mlp_layers, attention, heads) for _ in range(n_layers)]
        )
        self.hidden = hidden
        self.block = EDGE_BLOCK

    def forward(
        self, node_attr: torch.Tensor, edge_attr: torch.Tensor, edge_index: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.node_encoder(node_attr)
        e = edge_attr.new_empty((edge_attr.shape[0], self.hidden))
        for start in range(0, edge_attr.shape[0], self.block):
            e[start:start + self.block] = self.edge_encoder(edge_attr[start:start + self.block])
        for block in self.blocks:
            h, e = block(h, e, edge_index)
        return h, e


class EdgeVectorHead(nn.Module):
    """Equivariant vector per node: sum over incoming edges of an invariant weight times the unit edge vector.

    ``n_out`` vectors are produced per node, shape (N, n_out, 3). Rotating the input rotates the output; the
    weights depend only on invariant latents, so translation invariance also holds.
    """

    def __init__(self, hidden: int, n_out: int = 1, mlp_layers: int = 2):
        super().__init__()
        self.weight_mlp = MLP(hidden, hidden, n_out, mlp_layers, layer_norm=False)
        self.n_out = n_out
        self.block = EDGE_BLOCK

    def forward(self, e: torch.Tensor, edge_vec: torch.Tensor, edge_index: torch.Tensor, n: int) -> torch.Tensor:
        r = torch.linalg.norm(edge_vec, dim=1, keepdim=True).clamp(min=1e-6)
        unit = (edge_vec / r).unsqueeze(1)
        dst = edge_index[1]
        out = e.new_zeros((n, self.n_out, 3))
        for start in range(0, e.shape[0], self.block):  # blocked like InteractionBlock, for the same reason
            stop = start + self.block
            w = self.weight_mlp(e[start:stop])  # (block, n_out)
            out.index_add_(0, dst[start:stop], w.unsqueeze(-1) * unit[start:stop])
        return out
