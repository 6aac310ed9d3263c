"""Excluded volume and bond caps of the learned step: non-bonded beads closer than a hard-core distance are pushed
apart, bonded beads farther than a cap are pulled together.

Why it is needed: the score GNN learns a repulsion only where its training frames have density. A bead-type pair
the all-atom data rarely bring close (Li⁺–Li⁺ in PEO/LiTFSI: never below 0.39 nm) gets no learned repulsion at all, so a prediction
that lands two such beads on top of each other is not repaired (held-out EO4/LiTFSI: a learned Li–Li RDF peak at
0.03 nm). Learned CG force fields meet the same gap with a prior for the unsampled region (CGSchNet, Husic et
al. 2020); here the prior is a hard core, applied as a projection, so it has no stiffness or step size to tune.

The hard-core distance of a type pair is a fraction (``ModelConfig.hard_core``) of its closest approach in the
training data (``contacts.json``, :mod:`openmm_cgml.data.contacts`), its bond cap a multiple
(``ModelConfig.bond_cap``) of its longest bond there: a bond the refinement left stretched (a rare prediction far
outside the score's training noise) is pulled back instead of being fed to the next step's velocity history.
Everything is TorchScript-compatible: the projection is part of the exported step that the compiled plugin runs.
"""
from typing import List, Optional

import torch

from ..nn.backbone import scatter_sum
from ..nn.graph import neighbour_candidates, radius_graph_from_candidates, verlet_skin
from ..pbc import minimum_image_torch

#: Sweeps of :func:`push_apart` before it gives up on a crowded frame (each sweep removes every overlap it sees).
MAX_SWEEPS = 10
#: An overlapping pair is separated to this multiple of its core distance: the slack keeps the small pushes of
#: its neighbours' overlaps in the same sweep from re-creating it (without it, crowded frames converge slowly).
SLACK = 1.02
#: Verlet skin (nm) of the pair list the sweeps of one :func:`push_apart` share: pushes are small, so one cell
#: search usually serves every sweep (a dynamics-only step needs about 10); it changes no result.
SKIN_NM = 0.1


def bond_keys(bonds: torch.Tensor, n_beads: int) -> torch.Tensor:
    """Sorted keys ``i * n_beads + j`` of the bonded pairs (both orders), the pairs :func:`push_apart` skips."""
    b = bonds.reshape(-1, 2).to(torch.long)
    keys = torch.cat([b[:, 0] * n_beads + b[:, 1], b[:, 1] * n_beads + b[:, 0]])
    return torch.sort(keys).values


def push_apart(x: torch.Tensor, types: torch.Tensor, core: torch.Tensor, masses: torch.Tensor,
               bonded: torch.Tensor, box: Optional[torch.Tensor], batch: torch.Tensor, bonds: torch.Tensor,
               cap: torch.Tensor, max_sweeps: int = MAX_SWEEPS, slack: float = SLACK,
               skin: float = SKIN_NM) -> torch.Tensor:
    """``x`` (N, 3) nm with non-bonded beads i, j at least ``core[types[i], types[j]]`` nm apart and bonded ones at
    most ``cap[types[i], types[j]]``.

    Each sweep finds the overlapping pairs (a radius graph within the largest core distance, minimum image
    under PBC, from a Verlet list the sweeps share) and the over-long bonds, and moves each pair along its
    line: an overlap to ``slack`` times its core (:data:`SLACK`), a bond to its cap over ``slack``; the move is
    split inversely to mass so that the pair's centre of mass stays put. Pairs of one sweep move together, so a
    bead in several pairs can end slightly past its target; sweeps repeat until nothing is left to fix or
    ``max_sweeps`` have run.

    Args:
        x: (N, 3) positions, nm. types: (N,) index of each bead's row of ``core`` and ``cap``.
        core: (K, K) symmetric hard-core distances, nm (all 0: no core). masses: (N,) amu.
        bonded: sorted pair keys from :func:`bond_keys` (never pushed apart). box: None or (3,) / (B, 3) nm.
        batch: (N,) replica of each bead (no pair spans two replicas). bonds: (P, 2) bonded bead pairs.
        cap: (K, K) longest allowed bond, nm (all 0: no cap). skin: Verlet skin of the shared pair list, nm.
    """
    n = x.shape[0]
    cutoff = float(core.max())
    use_cap = bool((cap > 0).any()) and bonds.shape[0] > 0
    if (cutoff <= 0.0 and not use_cap) or n < 2:
        return x
    bead_box: Optional[torch.Tensor] = None
    if box is not None:
        bead_box = box if box.dim() == 1 else box[batch[bonds[:, 0]]]
    skin = verlet_skin(skin, cutoff, box)
    reference = x.new_zeros((0, 3))
    candidates = torch.zeros((2, 0), dtype=torch.long, device=x.device)
    for _ in range(max_sweeps):
        targets: List[torch.Tensor] = []
        moves: List[torch.Tensor] = []
        if cutoff > 0.0:
            candidates, reference = neighbour_candidates(x, cutoff, skin, reference, candidates, box, batch)
            edge_index, edge_vec = radius_graph_from_candidates(x, cutoff, candidates, box, batch)
            j, i = edge_index[0], edge_index[1]
            r = torch.linalg.norm(edge_vec, dim=1)
            close = (core[types[i], types[j]] > r) & (r > 0)  # coincident beads have no line to separate along
            if bonded.numel() > 0:
                close = close & ~torch.isin(i * n + j, bonded)
            i, j, r, edge_vec = i[close], j[close], r[close], edge_vec[close]
            # edge_vec = x_i - x_j: bead i moves away from j by its mass share of the overlap (j does so in the
            # reverse edge, which the radius graph also lists), so the pair ends slack * core apart.
            overlap = slack * core[types[i], types[j]] - r
            targets.append(i)
            moves.append((overlap * masses[j] / (masses[i] + masses[j]) / r).unsqueeze(1) * edge_vec)
        if use_cap:
            a, b = bonds[:, 0], bonds[:, 1]
            vec = minimum_image_torch(x[a] - x[b], bead_box)
            r = torch.linalg.norm(vec, dim=1)
            limit = cap[types[a], types[b]]
            stretched = (limit > 0) & (r > limit)
            a, b, r, vec, limit = a[stretched], b[stretched], r[stretched], vec[stretched], limit[stretched]
            excess = (r - limit / slack) / r  # both ends move towards each other by their mass share
            total = masses[a] + masses[b]
            targets += [a, b]
            moves += [-(excess * masses[b] / total).unsqueeze(1) * vec, (excess * masses[a] / total).unsqueeze(1) * vec]
        index = torch.cat(targets)
        if index.numel() == 0:
            break
        x = x + scatter_sum(torch.cat(moves), index, n)
    return x
