"""Bead-type embeddings computed from each bead type's atom graph (the "embedding GNN" of Fu et al.).

A bead type is described by the chemistry inside it (``BeadMap.type_graphs``): elements, atom masses and the
bonds between its atoms. Each atom gets a one-hot atomic number (Z <= 100, 0 for unknown/virtual) and its mass;
each bond its bond order; the shared :class:`~openmm_cgml.nn.backbone.GraphBackbone` passes messages over the
atom graph and the mean of the atom latents, projected to ``embed_dim``, is the bead embedding. Identical atom
graphs therefore give identical embeddings, and a bead type never seen in training still gets one (the network
extrapolates from its atoms), which is what lets a model run on new chemistry.
"""
from typing import List, Sequence

import torch
from torch import nn

from .backbone import GraphBackbone, scatter_sum

MAX_Z = 100
N_BOND_ORDERS = 5  # 0 = unspecified, 1..3 single/double/triple, 4 = aromatic or other
ATOM_FEATURES = MAX_Z + 1 + 2  # one-hot Z, mass / 20 amu, degree / 4


def _atomic_number(symbol: str) -> int:
    from openmm.app import element

    try:
        z = element.Element.getBySymbol(symbol).atomic_number
    except KeyError:
        return 0  # unknown or virtual site: its own "element"
    return z if 0 < z <= MAX_Z else 0


class TypeGraphs:
    """The atom graphs of a list of bead types packed into tensors (one disconnected graph per type).

    Attributes: ``node_attr`` (A, ATOM_FEATURES), ``edge_attr`` (E, N_BOND_ORDERS), ``edge_index`` (2, E) both
    directions of every bond, ``graph_index`` (A,) type of each atom, ``n_types``.
    """

    def __init__(self, type_graphs: Sequence[dict]):
        if len(type_graphs) == 0:
            raise ValueError("need at least one bead type graph to embed")
        nodes: List[List[float]] = []
        edges: List[List[int]] = []
        orders: List[int] = []
        graph_index: List[int] = []
        offset = 0
        for t, graph in enumerate(type_graphs):
            try:
                elements, masses, bonds = graph["elements"], graph["masses"], graph.get("bonds", [])
            except (KeyError, TypeError):
                raise ValueError(f"bead type graph {t} needs 'elements' and 'masses' lists") from None
            n = len(elements)
            if n == 0 or len(masses) != n:
                raise ValueError(f"bead type graph {t} has {n} elements and {len(masses)} masses")
            degree = [0] * n
            for bond in bonds:
                i, j = int(bond[0]), int(bond[1])
                if not (0 <= i < n and 0 <= j < n):
                    raise ValueError(f"bead type graph {t} has a bond {bond} outside its {n} atoms")
                order = int(bond[2]) if len(bond) > 2 else 0
                order = order if 0 <= order < N_BOND_ORDERS else N_BOND_ORDERS - 1
                edges += [[offset + i, offset + j], [offset + j, offset + i]]
                orders += [order, order]
                degree[i] += 1
                degree[j] += 1
            for k in range(n):
                row = [0.0] * ATOM_FEATURES
                row[_atomic_number(str(elements[k]))] = 1.0
                row[MAX_Z + 1] = float(masses[k]) / 20.0
                row[MAX_Z + 2] = degree[k] / 4.0
                nodes.append(row)
                graph_index.append(t)
            offset += n
        self.node_attr = torch.tensor(nodes, dtype=torch.float32)
        self.edge_index = torch.tensor(edges, dtype=torch.long).reshape(-1, 2).t().contiguous()
        self.edge_attr = torch.nn.functional.one_hot(
            torch.tensor(orders, dtype=torch.long), N_BOND_ORDERS
        ).to(torch.float32).reshape(-1, N_BOND_ORDERS)
        self.graph_index = torch.tensor(graph_index, dtype=torch.long)
        self.n_types = len(type_graphs)

    def to(self, device) -> "TypeGraphs":
        for name in ("node_attr", "edge_index", "edge_attr", "graph_index"):
            setattr(self, name, getattr(self, name).to(device))
        return self


class BeadEmbedding(nn.Module):
    """Embedding GNN: atom graph of a bead type -> ``embed_dim`` vector (mean over the type's atoms).

    Args:
        embed_dim: size of the bead embedding.
        hidden, n_layers, mlp_layers: width and depth of the backbone over the atom graph.
    """

    def __init__(self, embed_dim: int = 32, hidden: int = 32, n_layers: int = 2, mlp_layers: int = 2):
        super().__init__()
        self.backbone = GraphBackbone(ATOM_FEATURES, N_BOND_ORDERS, hidden, n_layers, mlp_layers)
        self.project = nn.Linear(hidden, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, graphs: TypeGraphs) -> torch.Tensor:
        """Embeddings of every type in ``graphs``, (n_types, embed_dim)."""
        h, _ = self.backbone(graphs.node_attr, graphs.edge_attr, graphs.edge_index)
        total = scatter_sum(h, graphs.graph_index, graphs.n_types)
        count = scatter_sum(torch.ones_like(graphs.graph_index, dtype=h.dtype), graphs.graph_index, graphs.n_types)
        return self.project(total / count.unsqueeze(1))

    def embed_types(self, type_graphs: Sequence[dict]) -> torch.Tensor:
        """Embeddings (n_types, embed_dim) of a list of ``BeadMap.type_graphs`` dicts."""
        device = self.project.weight.device
        return self.forward(TypeGraphs(type_graphs).to(device))


class BeadVocabulary:
    """Bead types a model was trained on: ``type_names`` and their atom graphs ``type_graphs``."""

    def __init__(self, type_names, type_graphs):
        self.type_names = [str(n) for n in type_names]
        self.type_graphs = list(type_graphs)
        if len(self.type_names) != len(self.type_graphs):
            raise ValueError("a bead vocabulary needs one atom graph per type name")

    def index(self, name: str) -> int:
        return self.type_names.index(name)

    def add(self, name: str, graph: dict) -> int:
        """Index of type ``name``, appending it (with its atom graph) if new."""
        if name not in self.type_names:
            self.type_names.append(str(name))
            self.type_graphs.append(graph)
        return self.type_names.index(name)

    def to_dict(self) -> dict:
        return {"type_names": list(self.type_names), "type_graphs": list(self.type_graphs)}

    def __len__(self):
        return len(self.type_names)

    def unseen(self, names: Sequence[str]) -> List[str]:
        """The names among ``names`` that are not in the vocabulary, sorted."""
        return sorted({str(n) for n in names} - set(self.type_names))


def anonymous_type_graphs(n_types: int) -> List[dict]:
    """Atom graphs for ``n_types`` bead types known only by index (no chemistry): type k is one virtual atom
    (no element) of mass 10 (k + 1) amu, so the types embed differently but nothing transfers between them."""
    return [{"elements": ["X"], "masses": [10.0 * (k + 1)], "bonds": []} for k in range(int(n_types))]
