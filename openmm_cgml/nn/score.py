"""Score GNN s(x, sigma) ~ grad_x log p_sigma(x) of the sigma-smoothed CG frame distribution, and its use to
repair predicted frames by annealed Langevin dynamics (NCSN, Song & Ermon 2019; Fu et al. 2023) or by a
predictor-corrector sampler of the reverse diffusion (Song et al. 2021) that needs far fewer evaluations.

The backbone sees invariants only (bead embedding, log mass, log10 sigma on nodes and edges, RBFs of edge lengths,
edge type); ``EdgeVectorHead`` gives an equivariant vector per bead, divided by sigma so the network output is of
order one at every noise level (the denoising target sigma * s = -z has unit variance).
"""
import math
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .backbone import EdgeVectorHead, GaussianRBF, GraphBackbone
from .graph import build_edges, neighbour_candidates, radius_graph, verlet_skin

#: A score prior of :func:`wall_score`: (beads (M,) indices, bead types (N,), slope (K, K) nm^-1, reach (K, K) nm).
Wall = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def sigma_levels(sigma_max: float, sigma_min: float, n_levels: int) -> List[float]:
    """``n_levels`` noise levels log-spaced from ``sigma_max`` down to ``sigma_min``, nm."""
    if n_levels < 1 or not (sigma_max >= sigma_min > 0):
        raise ValueError(f"need n_levels >= 1 and sigma_max >= sigma_min > 0 nm, got {n_levels}, {sigma_max}, {sigma_min}")
    if n_levels == 1:
        return [float(sigma_min)]
    ratio = math.log(sigma_min / sigma_max) / (n_levels - 1)
    return [float(sigma_max * math.exp(ratio * k)) for k in range(n_levels)]


def wall_score(pos: torch.Tensor, wall: Wall, box: Optional[torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
    """(N, 3) score (nm^-1) of linear repulsive walls between the beads ``wall[0]``: a pair of types (a, b) closer
    than ``reach[a, b]`` nm adds ``slope[a, b]`` along the line pushing them apart (the gradient of ln g for
    ln g(r) = slope (r - reach), ``data.contacts.rdf_wall``). Only the M wall beads are searched (cell list),
    so it costs next to nothing beside the score GNN. ``box`` None or (3,) / (B, 3) nm, ``batch`` (N,)."""
    beads, types, slope, reach = wall
    out = torch.zeros_like(pos)
    if beads.shape[0] < 2:
        return out
    t = types[beads]
    edge_index, vec = radius_graph(pos[beads], float(reach.max()), box, batch[beads])
    j, i = edge_index[0], edge_index[1]
    r = torch.linalg.norm(vec, dim=1).clamp(min=1e-6)
    push = torch.where(r < reach[t[i], t[j]], slope[t[i], t[j]] / r, torch.zeros_like(r))
    return out.index_add(0, beads[i], push.unsqueeze(1) * vec)  # vec = x_i - x_j: away from j


class ScoreGNN(nn.Module):
    """Noise-conditional score network (output in nm^-1).

    Args:
        embed_dim: size of the bead embeddings. cutoff: neighbour radius, nm.
        hidden, n_layers, mlp_layers, n_rbf: backbone width/depth and number of distance RBFs.
    """

    def __init__(self, embed_dim: int, cutoff: float, hidden: int = 64, n_layers: int = 4, mlp_layers: int = 2,
                 n_rbf: int = 16):
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"cutoff must be a positive length in nm, got {cutoff}")
        self.embed_dim = int(embed_dim)
        self.cutoff = float(cutoff)
        self.n_rbf = int(n_rbf)
        self.rbf = GaussianRBF(n_rbf, cutoff)
        self.backbone = GraphBackbone(embed_dim + 2, n_rbf + 3, hidden, n_layers, mlp_layers)
        self.vector_head = EdgeVectorHead(hidden, 1, mlp_layers)

    def forward(
        self,
        pos: torch.Tensor,
        sigma: torch.Tensor,
        embed: torch.Tensor,
        masses: torch.Tensor,
        bonds: torch.Tensor,
        box: Optional[torch.Tensor] = None,
        batch: Optional[torch.Tensor] = None,
        candidates: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Score (N, 3) in nm^-1 at noise level ``sigma`` (N,) nm per bead (constant within a graph); the radius
        edges from ``candidates`` (a ``graph.neighbour_candidates`` list) when given."""
        n = pos.shape[0]
        edge_index, edge_vec, edge_type = build_edges(pos, self.cutoff, bonds, box, batch, candidates)
        r = torch.linalg.norm(edge_vec, dim=1).clamp(min=1e-6)
        log_sigma = torch.log10(sigma).unsqueeze(1)
        node_attr = torch.cat([embed, torch.log(masses / 10.0).unsqueeze(1), log_sigma], dim=1)
        edge_attr = torch.cat(
            [self.rbf(r), F.one_hot(edge_type, 2).to(pos.dtype), log_sigma[edge_index[1]]], dim=1
        )
        _, e = self.backbone(node_attr, edge_attr, edge_index)
        return self.vector_head(e, edge_vec, edge_index, n)[:, 0] / sigma.unsqueeze(1)

    def _listed_score(self, x: torch.Tensor, sigma: torch.Tensor, embed: torch.Tensor, masses: torch.Tensor,
                      bonds: torch.Tensor, box: Optional[torch.Tensor], batch: Optional[torch.Tensor], skin: float,
                      reference: torch.Tensor, candidates: torch.Tensor, wall: Optional[Wall] = None):
        """The score at ``x`` (plus ``wall``'s, :func:`wall_score`), with the Verlet list (``reference``,
        ``candidates``) updated first if ``skin`` > 0."""
        if skin > 0:
            candidates, reference = neighbour_candidates(x, self.cutoff, skin, reference, candidates, box, batch)
            score = self.forward(x, sigma, embed, masses, bonds, box, batch, candidates)
        else:
            score = self.forward(x, sigma, embed, masses, bonds, box, batch, None)
        if wall is not None:
            score = score + wall_score(x, wall, box, batch if batch is not None else torch.zeros_like(wall[1]))
        return score, candidates, reference

    @torch.jit.export
    def refine(
        self,
        x: torch.Tensor,
        levels: torch.Tensor,
        steps_per_level: int,
        step_size: float,
        noise: torch.Tensor,
        embed: torch.Tensor,
        masses: torch.Tensor,
        bonds: torch.Tensor,
        box: Optional[torch.Tensor] = None,
        batch: Optional[torch.Tensor] = None,
        scheme: str = "langevin",
        skin: float = 0.0,
        wall: Optional[Wall] = None,
        temperature: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Repair ``x`` (N, 3) nm by sampling down the noise ``levels`` (L,) nm (decreasing); see :data:`SCHEMES`.

        ``scheme="langevin"`` (annealed Langevin, NCSN): at level i, ``steps_per_level`` updates
        x += alpha_i s(x, sigma_i) + sqrt(2 alpha_i) z with alpha_i = step_size * sigma_i² / sigma_L² (``step_size``
        in nm², sigma_L the last level); L * steps_per_level evaluations.

        ``scheme="pc"`` (predictor-corrector, Song et al. 2021): at each level, ``steps_per_level`` Langevin
        corrector updates as above, then (except at the last level) one ancestral predictor update from sigma_i to
        sigma_{i+1}: x += d s(x, sigma_i) + (sigma_{i+1} / sigma_i) sqrt(d) z with d = sigma_i² - sigma_{i+1}², the
        mean (Tweedie) and variance of the noising posterior. Treating x as a sample of the sigma_1-smoothed
        distribution, it ends near the sigma_L-smoothed one after L * steps_per_level + L - 1 evaluations
        (:func:`refine_evaluations`); unlike Langevin steps it adds almost no random displacement to soft
        (collective) coordinates, which the dynamics GNN already samples.

        ``noise`` holds one row of standard normals z (N, 3) per evaluation, consumed in order. With ``skin`` > 0
        (nm) the evaluations share a Verlet neighbour list (``graph.neighbour_candidates``), rebuilt only when a
        bead has moved more than skin / 2: the same edges in the same order as a fresh search, so the same result.
        ``wall`` adds the score of repulsive pair walls (:func:`wall_score`) to every evaluation. ``temperature``
        T, one value or one per bead (N,) (None: 1), scales every noise term by sqrt(T): the correctors then sample
        p_sigma^(1/T), and their diffusion moves beads T times the mean-square distance (T = 0: noise-free ascent
        of log p_sigma).
        """
        n_levels = levels.shape[0]
        if noise.shape[0] != refine_evaluations(scheme, n_levels, steps_per_level):
            raise ValueError("refinement noise must have one row per score evaluation (refine_evaluations)")
        last = levels[n_levels - 1]
        k = 0
        heat = x.new_ones(()) if temperature is None else temperature.to(x.dtype).sqrt()
        if heat.dim() == 1:
            heat = heat.unsqueeze(1)
        skin = verlet_skin(skin, self.cutoff, box)
        reference = x.new_zeros((0, 3))
        candidates = torch.zeros((2, 0), dtype=torch.long, device=x.device)
        for i in range(n_levels):
            alpha = step_size * (levels[i] / last) ** 2
            sigma = levels[i].expand(x.shape[0])
            for _ in range(steps_per_level):
                score, candidates, reference = self._listed_score(x, sigma, embed, masses, bonds, box, batch, skin,
                                                                  reference, candidates, wall)
                x = x + alpha * score + heat * torch.sqrt(2.0 * alpha) * noise[k]
                k += 1
            if scheme == "pc" and i + 1 < n_levels:
                d = levels[i] ** 2 - levels[i + 1] ** 2
                score, candidates, reference = self._listed_score(x, sigma, embed, masses, bonds, box, batch, skin,
                                                                  reference, candidates, wall)
                x = x + d * score + heat * torch.sqrt(d) * (levels[i + 1] / levels[i]) * noise[k]
                k += 1
        return x


#: Refinement schemes of :meth:`ScoreGNN.refine`.
SCHEMES = ("langevin", "pc")


def refine_evaluations(scheme: str, n_levels: int, steps_per_level: int) -> int:
    """Score evaluations (= rows of refinement noise) of one refinement; see :meth:`ScoreGNN.refine`."""
    if scheme == "langevin":
        return n_levels * steps_per_level
    if scheme == "pc":
        return n_levels * steps_per_level + max(n_levels - 1, 0)
    raise ValueError("unknown refinement scheme " + scheme + "; use langevin or pc")


def denoising_loss(score: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
                   weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Denoising score matching with sigma² weighting: mean |sigma s(x + sigma z) + z|² per coordinate.

    ``score`` (N, 3) nm^-1 evaluated at the noised positions, ``noise`` (N, 3) the standard normals z, ``sigma`` (N,);
    ``weight`` (N,) >= 0 makes it the weighted mean over beads (e.g. :func:`type_balance`).
    """
    per_bead = ((sigma.unsqueeze(1) * score + noise) ** 2).mean(dim=1)
    if weight is None:
        return per_bead.mean()
    return (weight * per_bead).sum() / weight.sum()


def type_balance(types: torch.Tensor) -> torch.Tensor:
    """(N,) weights 1 / (number of beads of the same type): every bead type present weighs the same in a mean.
    A rare type (a few Li+ among hundreds of polymer beads) otherwise hardly shapes what the score GNN learns."""
    counts = torch.bincount(types)
    return 1.0 / counts[types].to(torch.float32)

