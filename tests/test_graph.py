"""The cell-list radius graph equals a brute-force pair search (periodic, batched, and widely spread beads)."""
import pytest
import torch

from openmm_cgml.nn.graph import build_edges, radius_graph


def brute_force(pos, cutoff, box=None, batch=None):
    n = pos.shape[0]
    batch = torch.zeros(n, dtype=torch.long) if batch is None else batch
    d = pos.unsqueeze(0) - pos.unsqueeze(1)  # d[j, i] = x_i - x_j
    if box is not None:
        b = box[batch] if box.dim() == 2 else box.expand(n, 3)
        d = d - b.unsqueeze(0) * torch.round(d / b.unsqueeze(0))
    close = (d.norm(dim=2) < cutoff) & (batch.unsqueeze(0) == batch.unsqueeze(1))
    close.fill_diagonal_(False)
    return {(int(j), int(i)) for j, i in close.nonzero().tolist()}


@pytest.mark.parametrize("case", ["open", "periodic", "batched-periodic", "spread"])
def test_radius_graph_matches_brute_force(case):
    g = torch.Generator().manual_seed(1)
    cutoff, box, batch = 0.6, None, None
    if case == "open":
        pos = torch.rand(300, 3, generator=g) * 3.0
    elif case == "periodic":
        box = torch.tensor([2.0, 2.5, 3.0])
        pos = (torch.rand(300, 3, generator=g) - 0.3) * 6.0  # unwrapped: outside the box too
    elif case == "batched-periodic":
        box = torch.tensor([[2.0, 2.0, 2.0], [1.3, 2.6, 1.9]])
        batch = torch.arange(2).repeat_interleave(150)
        pos = torch.rand(300, 3, generator=g) * 2.0
    else:  # a few clustered beads far from the rest: the cell grid must stay small
        pos = torch.randn(300, 3, generator=g) * 200.0
        pos[:30] = torch.randn(30, 3, generator=g) * 0.2
    edge_index, edge_vec = radius_graph(pos, cutoff, box, batch)
    got = {(int(j), int(i)) for j, i in edge_index.t().tolist()}
    assert got == brute_force(pos, cutoff, box, batch) and len(got) > 0
    # edge vectors are x_i - x_j under the minimum image (the vector, not only its length: a flipped sign fails)
    j, i = edge_index
    assert torch.all(edge_vec.norm(dim=1) < cutoff)
    expected = pos[i] - pos[j]
    if box is not None:
        b = box[batch[i]] if box.dim() == 2 else box.expand_as(expected)
        expected = expected - b * torch.round(expected / b)
        assert not torch.allclose(expected, pos[i] - pos[j])  # some edges really cross the boundary
    assert torch.allclose(edge_vec, expected, atol=1e-6)


def test_build_edges_adds_typed_bond_edges_and_scripts():
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [1.5, 0.0, 0.0]])
    bonds = torch.tensor([[1, 2]])
    index, vec, types = build_edges(pos, 0.5, bonds)
    pairs = {(int(a), int(b), int(t)) for (a, b), t in zip(index.t().tolist(), types.tolist())}
    assert pairs == {(0, 1, 0), (1, 0, 0), (1, 2, 1), (2, 1, 1)}
    scripted = torch.jit.script(build_edges)
    assert torch.equal(scripted(pos, 0.5, bonds)[0], index)
    # under PBC both edge kinds carry x_i - x_j of the minimum image (edge (j, i)): beads 0 and 2 meet across the
    # boundary, so x_2 - x_0 = 1.5 nm becomes -0.3 nm
    box = torch.tensor([1.8, 2.0, 2.0])
    index, vec, types = build_edges(pos, 0.5, torch.tensor([[0, 2]]), box)
    got = {(int(a), int(b), int(t)): v.tolist() for (a, b), t, v in zip(index.t().tolist(), types.tolist(), vec)}
    for key, want in {(0, 1, 0): [0.3, 0, 0], (1, 0, 0): [-0.3, 0, 0], (2, 0, 0): [0.3, 0, 0], (0, 2, 0): [-0.3, 0, 0],
                      (2, 0, 1): [0.3, 0, 0], (0, 2, 1): [-0.3, 0, 0]}.items():
        assert got.pop(key) == pytest.approx(want, abs=1e-6), key
    assert not got
