"""Embedding, dynamics and score GNNs: symmetry (translation, rotation, permutation, periodic images), shapes,
determinism of the bead embeddings, refinement bookkeeping. (The learned step's tests are in test_simulate.py.)"""
import numpy as np
import pytest
import torch

from openmm_cgml.nn.dynamics import (DynamicsGNN, cluster_loadings, gaussian_nll, ion_partners, sample_acceleration,
                                    shell_mean, shell_pairs)
from openmm_cgml.nn.embedding import BeadEmbedding, TypeGraphs
from openmm_cgml.nn.score import ScoreGNN, denoising_loss, sigma_levels, type_balance



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two threads on two cores shared with other jobs make small matmuls ~100x slower; tests only.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


N_BEADS = 24
H = 3
TYPE_GRAPHS = [
    {"elements": ["C", "H", "H", "O"], "masses": [12.011, 1.008, 1.008, 15.999], "bonds": [[0, 1, 0], [0, 2, 0], [0, 3, 0]]},
    {"elements": ["Li"], "masses": [6.94], "bonds": []},
    {"elements": ["S", "O", "O", "C", "F"], "masses": [32.06, 16.0, 16.0, 12.0, 19.0],
     "bonds": [[0, 1, 2], [0, 2, 2], [0, 3, 1], [3, 4, 1]]},
]


def _random_rotation(gen):
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(torch.float32)


@pytest.fixture(scope="module")
def system():
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    emb = BeadEmbedding(embed_dim=8, hidden=16, n_layers=2)
    with torch.no_grad():
        table = emb.embed_types(TYPE_GRAPHS)
    types = torch.randint(0, 3, (N_BEADS,), generator=gen)
    box = torch.tensor([1.6, 1.7, 1.8])
    pos = torch.rand(N_BEADS, 3, generator=gen) * box
    hist = 0.05 * torch.randn(H, N_BEADS, 3, generator=gen)
    masses = 5.0 + 40.0 * torch.rand(N_BEADS, generator=gen)
    bonds = torch.tensor([[0, 1], [1, 2], [5, 9], [10, 11]])
    dyn = DynamicsGNN(8, H, cutoff=0.6, hidden=16, n_layers=2, n_rbf=8, velocity_scale=0.05, accel_scale=0.02).eval()
    score = ScoreGNN(8, cutoff=0.6, hidden=16, n_layers=2, n_rbf=8).eval()
    return dict(embed=table[types], pos=pos, hist=hist, masses=masses, bonds=bonds, box=box, dyn=dyn,
                score=score, gen=gen)


def _outputs(s, pos, hist, embed, masses, bonds, box):
    sigma = torch.full((pos.shape[0],), 0.05)
    with torch.no_grad():
        mean, std, _ = s["dyn"](pos, hist, embed, masses, bonds, box)
        sc = s["score"](pos, sigma, embed, masses, bonds, box)
    return mean, std, sc


def test_shapes_and_positive_std(system):
    s = system
    mean, std, sc = _outputs(s, s["pos"], s["hist"], s["embed"], s["masses"], s["bonds"], s["box"])
    assert mean.shape == (N_BEADS, 3) and std.shape == (N_BEADS,) and sc.shape == (N_BEADS, 3)
    assert bool((std > 0).all())
    assert torch.isfinite(mean).all() and torch.isfinite(sc).all()
    # Non-trivial: outputs depend on the neighbourhood, not only on the bead's own features.
    moved = s["pos"].clone()
    moved[1] += torch.tensor([0.05, 0.0, 0.0])
    mean2, _, sc2 = _outputs(s, moved, s["hist"], s["embed"], s["masses"], s["bonds"], s["box"])
    assert (mean2 - mean).abs().max() > 1e-6 and (sc2 - sc).abs().max() > 1e-6


def test_translation_and_periodic_images(system):
    s = system
    ref = _outputs(s, s["pos"], s["hist"], s["embed"], s["masses"], s["bonds"], s["box"])
    shifted = s["pos"] + torch.tensor([0.37, -1.1, 2.3])
    images = s["pos"].clone()
    images[::3] += s["box"] * torch.tensor([1.0, -2.0, 3.0])  # whole box vectors: same periodic system
    for pos in (shifted, images):
        out = _outputs(s, pos, s["hist"], s["embed"], s["masses"], s["bonds"], s["box"])
        for a, b in zip(ref, out):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_rotation_equivariance(system):
    s = system
    rot = _random_rotation(s["gen"])
    ref = _outputs(s, s["pos"], s["hist"], s["embed"], s["masses"], s["bonds"], None)
    out = _outputs(s, s["pos"] @ rot.T, s["hist"] @ rot.T, s["embed"], s["masses"], s["bonds"], None)
    torch.testing.assert_close(out[0], ref[0] @ rot.T, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out[1], ref[1], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out[2], ref[2] @ rot.T, atol=2e-5, rtol=1e-4)


def test_permutation_equivariance(system):
    s = system
    perm = torch.randperm(N_BEADS, generator=s["gen"])
    inverse = torch.argsort(perm)
    ref = _outputs(s, s["pos"], s["hist"], s["embed"], s["masses"], s["bonds"], s["box"])
    out = _outputs(s, s["pos"][perm], s["hist"][:, perm], s["embed"][perm], s["masses"][perm], inverse[s["bonds"]],
                   s["box"])
    for a, b in zip(ref, out):
        torch.testing.assert_close(b, a[perm], atol=2e-5, rtol=1e-4)


def test_molecule_memory_is_equivariant_and_follows_the_mass_weighted_centre(system):
    """With molecule memory the mean stays rotation and permutation equivariant, the molecule centres' history is
    mass-weighted per molecule (molecule_mean), and one bead's history reaches the other beads of its molecule even
    where no path of edges does."""
    from openmm_cgml.nn.dynamics import molecule_mean

    s = system
    torch.manual_seed(5)
    dyn = DynamicsGNN(8, H, cutoff=0.6, hidden=16, n_layers=2, n_rbf=8, velocity_scale=0.05, accel_scale=0.02,
                      molecule_memory=True).eval()
    torch.nn.init.normal_(dyn.memory_head[-1].weight, std=0.5)  # a trained head: nonzero coefficients
    molecule = torch.arange(N_BEADS)
    molecule[[1, 2]] = 0
    molecule[9], molecule[11] = 5, 10
    molecule = torch.unique(molecule, return_inverse=True)[1]
    n_mol = int(molecule.max()) + 1
    centre = molecule_mean(s["hist"], s["masses"], molecule, n_mol)
    m = s["masses"][:3].unsqueeze(1)
    torch.testing.assert_close(centre[:, 2], (s["hist"][:, :3] * m).sum(1) / m.sum(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(centre[:, 3], s["hist"][:, 3])

    def mean(pos, hist, perm=None):
        embed, masses, mol = s["embed"], s["masses"], molecule
        bonds = s["bonds"]
        if perm is not None:
            inverse = torch.argsort(perm)
            embed, masses, mol, bonds = embed[perm], masses[perm], mol[perm], inverse[bonds]
        with torch.no_grad():
            return dyn(pos, hist, embed, masses, bonds, None, None, None, mol, n_mol)[0]

    ref = mean(s["pos"], s["hist"])
    rot = _random_rotation(s["gen"])
    torch.testing.assert_close(mean(s["pos"] @ rot.T, s["hist"] @ rot.T), ref @ rot.T, atol=2e-5, rtol=1e-4)
    perm = torch.randperm(N_BEADS, generator=s["gen"])
    torch.testing.assert_close(mean(s["pos"][perm], s["hist"][:, perm], perm), ref[perm], atol=2e-5, rtol=1e-4)
    # bead 20 moved 10 nm away sees nothing of bead 0 through the graph; joined to bead 0's molecule (an index
    # only, no bond), it feels bead 0's history through the molecule centre alone
    pos = s["pos"].clone()
    pos[20] += 10.0
    hist = s["hist"].clone()
    hist[:, 0] += 0.05
    before, after = mean(pos, s["hist"]), mean(pos, hist)
    assert torch.equal(before[20], after[20])
    molecule[20] = molecule[0]
    assert (mean(pos, hist)[20] - mean(pos, s["hist"])[20]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="molecule index"):
        dyn(s["pos"], s["hist"], s["embed"], s["masses"], s["bonds"], None, None)


def test_embedding_deterministic_and_permutation_invariant():
    torch.manual_seed(0)
    emb = BeadEmbedding(embed_dim=8, hidden=16, n_layers=2).eval()
    # The same chemistry listed twice, once with its atoms in another order, plus an unseen element (Xe).
    water = {"elements": ["O", "H", "H"], "masses": [16.0, 1.0, 1.0], "bonds": [[0, 1, 0], [0, 2, 0]]}
    water_reordered = {"elements": ["H", "O", "H"], "masses": [1.0, 16.0, 1.0], "bonds": [[1, 0, 0], [1, 2, 0]]}
    xenon = {"elements": ["Xe"], "masses": [131.3], "bonds": []}
    with torch.no_grad():
        table = emb.embed_types([water, water_reordered, xenon, TYPE_GRAPHS[0]])
        again = emb.embed_types([water])
    assert table.shape == (4, 8)
    torch.testing.assert_close(table[0], table[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(table[0], again[0], atol=1e-6, rtol=1e-6)
    assert (table[0] - table[2]).abs().max() > 1e-4 and (table[0] - table[3]).abs().max() > 1e-4
    assert torch.isfinite(table).all()


def test_type_graph_validation():
    with pytest.raises(ValueError, match="outside"):
        TypeGraphs([{"elements": ["C"], "masses": [12.0], "bonds": [[0, 3, 0]]}])
    with pytest.raises(ValueError, match="masses"):
        TypeGraphs([{"elements": ["C", "H"], "masses": [12.0], "bonds": []}])


def test_losses_and_levels():
    levels = sigma_levels(1.0, 0.001, 20)
    assert len(levels) == 20 and levels[0] == pytest.approx(1.0) and levels[-1] == pytest.approx(0.001)
    assert all(a > b for a, b in zip(levels, levels[1:]))
    # The NLL is minimised by the true mean and std.
    gen = torch.Generator().manual_seed(0)
    target = 0.3 * torch.randn(20000, 3, generator=gen) + 0.1
    mean = torch.full_like(target, 0.1)
    best = gaussian_nll(target, mean, torch.full((20000,), 0.3))
    assert best < gaussian_nll(target, mean, torch.full((20000,), 0.25))
    assert best < gaussian_nll(target, mean, torch.full((20000,), 0.36))
    assert best < gaussian_nll(target, mean + 0.05, torch.full((20000,), 0.3))
    z = torch.randn(10, 3, generator=gen)
    sigma = torch.full((10,), 0.2)
    assert float(denoising_loss(-z / 0.2, z, sigma)) == pytest.approx(0.0, abs=1e-10)
    # Type balance: each bead type's mean loss weighs the same, however many beads it has.
    types = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    score = torch.randn(10, 3, generator=gen)
    per_bead = ((sigma.unsqueeze(1) * score + z) ** 2).mean(dim=1)
    balanced = denoising_loss(score, z, sigma, type_balance(types))
    assert float(balanced) == pytest.approx(float(0.5 * (per_bead[:8].mean() + per_bead[8:].mean())), rel=1e-6)
    assert float(denoising_loss(score, z, sigma)) == pytest.approx(float(per_bead.mean()), rel=1e-6)


def test_molecule_noise_samples_and_scores_its_covariance():
    """Molecule noise: the draws have covariance diag(std²) + s sᵀ within each molecule and none across, and
    the NLL equals torch's multivariate normal log density under that covariance."""
    gen = torch.Generator().manual_seed(3)
    molecule = torch.tensor([0, 0, 0, 1, 2, 2])
    std = torch.tensor([0.2, 0.3, 0.25, 0.4, 0.1, 0.15])
    shared = torch.tensor([0.3, 0.1, 0.2, 0.5, 0.0, 0.2])
    cov = torch.diag(std ** 2) + (molecule[:, None] == molecule[None, :]) * torch.outer(shared, shared)
    mean = torch.randn(6, 3, generator=gen)
    z = torch.randn(200000, 6, 3, generator=gen)
    # 200,000 independent copies of the three molecules in one call (molecule indices offset per copy).
    copies = (molecule + 3 * torch.arange(200000).unsqueeze(1)).reshape(-1)
    a = sample_acceleration(mean.repeat(200000, 1), std.repeat(200000), shared.repeat(200000), copies, 600000,
                            z.reshape(-1, 3)).reshape(200000, 6, 3)
    d = (a - mean).permute(0, 2, 1).reshape(-1, 6)
    torch.testing.assert_close((d.t() @ d) / d.shape[0], cov, atol=3e-3, rtol=0)
    target = torch.randn(6, 3, generator=gen)
    law = torch.distributions.MultivariateNormal(torch.zeros(6), cov.double())
    exact = -law.log_prob((target - mean).t().double()).sum() / target.numel()
    nll = gaussian_nll(target, mean, std, 1.0, shared, molecule, 3)
    assert float(nll) == pytest.approx(float(exact), rel=1e-5)
    # No loading is the independent Gaussian, bit for bit in the draw.
    zero = torch.zeros(6)
    assert torch.equal(sample_acceleration(mean, std, zero, molecule, 3, z[0]), mean + std.unsqueeze(1) * z[0])
    assert float(gaussian_nll(target, mean, std, 1.0, zero, molecule, 3)) == pytest.approx(
        float(gaussian_nll(target, mean, std)), rel=1e-6)


def test_ion_partners_take_the_closest_bead_in_units_of_its_binding_radius():
    """Each ion's partner is the bead of its own graph with the smallest distance / binding radius below 1
    (minimum image, two periodic boxes); beads without a radius and ions with no partner in reach are skipped."""
    gen = torch.Generator().manual_seed(5)
    box = torch.tensor([[1.6, 1.8, 1.7], [2.0, 1.7, 1.9]])
    batch = torch.tensor([0] * 40 + [1] * 40)
    pos = torch.rand(80, 3, generator=gen) * box[batch]
    ion = torch.zeros(80, dtype=torch.bool)
    ion[[0, 3, 41, 50, 77]] = True
    reach = torch.where(torch.arange(80) % 3 == 0, 0.3, 0.5)
    reach[ion] = 0.0
    pos[77] = pos[76] + torch.tensor([0.0, 0.0, 1.89])  # across the boundary from bead 76 of box 1 (0.01 nm)
    got = dict(zip(*[t.tolist() for t in ion_partners(pos, ion, reach, box, batch)]))
    want = {}
    x, b = pos.double().numpy(), box.double().numpy()
    for i in np.flatnonzero(ion.numpy()):
        d = x - x[i]
        d -= b[batch[i]] * np.round(d / b[batch[i]])
        ratio = np.linalg.norm(d, axis=1) / np.where(reach.numpy() > 0, reach.numpy(), np.nan)
        ratio[(batch != batch[i]).numpy()] = np.nan
        if np.nanmin(ratio) < 1.0:
            want[int(i)] = int(np.nanargmin(ratio))
    assert got == want and got[77] == 76 and len(got) >= 3
    none = ion_partners(pos, ion, torch.zeros(80), box, batch)
    assert none[0].numel() == 0


def test_cluster_loadings_keep_each_marginal_and_correlate_ion_and_partner():
    """Ion-cluster noise: every bead keeps its variance, an ion joins its partner's molecule, and its draws
    correlate with a one-bead partner's as fraction² and with a chain through the chain's loading."""
    molecule = torch.tensor([0, 0, 0, 1, 2, 3])  # a 3-bead chain, a one-bead anion, two ions
    std = torch.tensor([0.2, 0.3, 0.25, 0.4, 0.1, 0.15])
    shared = torch.tensor([0.3, 0.1, 0.2, 0.5, 0.0, 0.2])
    lone = torch.tensor([False, False, False, True, True, True])
    ions, partners = torch.tensor([4, 5]), torch.tensor([3, 1])
    new_std, new_shared, group = cluster_loadings(std, shared, molecule, ions, partners, lone, 0.9)
    torch.testing.assert_close(new_std ** 2 + new_shared ** 2, std ** 2 + shared ** 2)
    assert group.tolist() == [0, 0, 0, 1, 1, 0]
    assert torch.equal(new_std[:3], std[:3]) and torch.equal(new_shared[:3], shared[:3])  # a chain keeps its own
    n = 200000
    z = torch.randn(n * 6, 3, generator=torch.Generator().manual_seed(6))
    copies = (group + 4 * torch.arange(n).unsqueeze(1)).reshape(-1)
    a = sample_acceleration(torch.zeros(n * 6, 3), new_std.repeat(n), new_shared.repeat(n), copies, 4 * n, z)
    a = a.reshape(n, 6, 3)[..., 0]
    corr = torch.corrcoef(a.t())
    assert float(corr[4, 3]) == pytest.approx(0.81, abs=0.01)  # both split 0.9 : shared
    chain = float(0.9 * shared[1] / torch.sqrt(std[1] ** 2 + shared[1] ** 2))
    assert float(corr[5, 1]) == pytest.approx(chain, abs=0.01)
    assert abs(float(corr[4, 5])) < 0.01  # different groups stay independent


def test_shell_pairs_and_mean_match_a_brute_force_search():
    """Shell pairs: every bead not carried within the radius of a carried bead of the same graph, minimum image
    across periodic boxes of two graphs of different sizes; a carried bead without a shell gets a zero mean."""
    gen = torch.Generator().manual_seed(4)
    box = torch.tensor([[1.2, 1.5, 1.3], [2.0, 1.1, 1.7]])
    batch = torch.tensor([0] * 30 + [1] * 30)
    pos = torch.rand(60, 3, generator=gen) * box[batch]
    carried = torch.zeros(60, dtype=torch.bool)
    carried[[0, 5, 31, 40]] = True
    # bead 40 gets no shell: its graph's beads within 0.3 nm move to the farthest point of the box from it
    d40 = torch.linalg.norm(torch.remainder(pos - pos[40] + box[1] / 2, box[1]) - box[1] / 2, dim=1)
    pos[(d40 < 0.3) & (batch == 1) & ~carried] = pos[40] + box[1] / 2
    ion, shell = shell_pairs(pos, carried, 0.3, box, batch)
    want = set()
    x, b = pos.double().numpy(), box.double().numpy()
    for i in [0, 5, 31, 40]:
        for j in range(60):
            if carried[j] or batch[j] != batch[i]:
                continue
            d = x[j] - x[i]
            d -= b[batch[i]] * np.round(d / b[batch[i]])
            if np.linalg.norm(d) < 0.3:
                want.add((i, j))
    assert set(zip(ion.tolist(), shell.tolist())) == want and len(want) > 3
    values = torch.randn(60, 3, generator=gen)
    mean = shell_mean(values, ion, shell)
    for i in [0, 5, 31]:
        torch.testing.assert_close(mean[i], values[[j for a, j in want if a == i]].mean(0))
    assert not mean[40].any() and not mean[~carried].any()


def test_refine_uses_noise_and_levels(system):
    s = system
    levels = torch.tensor(sigma_levels(0.1, 0.01, 3))
    noise = torch.randn(6, N_BEADS, 3, generator=s["gen"])
    args = (s["embed"], s["masses"], s["bonds"], s["box"], None)
    with torch.no_grad():
        x1 = s["score"].refine(s["pos"], levels, 2, 1e-5, noise, *args)
        x2 = s["score"].refine(s["pos"], levels, 2, 1e-5, noise, *args)
        x3 = s["score"].refine(s["pos"], levels, 2, 1e-5, torch.zeros_like(noise), *args)
    torch.testing.assert_close(x1, x2)
    # The noise term has total variance sum_i steps * 2 alpha_i per coordinate.
    alphas = 1e-5 * (levels / levels[-1]) ** 2
    expected = float(torch.sqrt((2 * 2 * alphas).sum()))
    spread = float((x1 - x3).std())
    assert 0.6 * expected < spread < 1.6 * expected
    with pytest.raises(Exception, match="one row per score evaluation"):
        s["score"].refine(s["pos"], levels, 3, 1e-5, noise, *args)


# ---------------------------------------------------------------------------------------------- learned step
def _pair_beadmap(n_pairs: int, periodic: bool, element: str = "C", mass: float = 12.0):
    """n_pairs two-bead molecules, one atom per bead, atoms bonded within a pair."""
    from openmm_cgml.mapping import BeadMap

    n = 2 * n_pairs
    graph = {"elements": [element], "masses": [mass], "atom_types": [f"{element}1:x"], "bonds": []}
    return BeadMap.from_dict({
        "format_version": 1, "atom_to_bead": list(range(n)), "atom_masses": [mass] * n,
        "atom_bonds": [[2 * k, 2 * k + 1] for k in range(n_pairs)], "bead_types": [0] * n,
        "type_names": [f"PAIR:{element}-000000"], "type_graphs": [graph], "bead_residue_names": ["PAI"] * n,
        "bead_species": ["PAIR"] * n, "periodic": periodic,
    })


def test_edge_blocked_passes_are_bit_identical_to_whole_graph_ones():
    """Graphs with more edges than one block give exactly the whole-graph edge/node update and vector head, with
    and without autograd; with autograd the caller's edge latent is left intact."""
    from openmm_cgml.nn.backbone import EDGE_BLOCK, EdgeVectorHead, InteractionBlock, scatter_sum

    torch.manual_seed(0)
    block, head = InteractionBlock(16).eval(), EdgeVectorHead(16, 2).eval()
    n, n_edges = 2000, 5 * EDGE_BLOCK + 123
    h, e = torch.randn(n, 16), torch.randn(n_edges, 16)
    edge_index = torch.randint(0, n, (2, n_edges))
    edge_vec = torch.randn(n_edges, 3)
    src, dst = edge_index
    with torch.no_grad():
        e_want = e + block.edge_mlp(torch.cat([h[dst], h[src], e], dim=1))
        h_want = h + block.node_mlp(torch.cat([h, scatter_sum(e_want, dst, n)], dim=1))
        unit = edge_vec / torch.linalg.norm(edge_vec, dim=1, keepdim=True)
        vec_want = scatter_sum(head.weight_mlp(e).unsqueeze(-1) * unit.unsqueeze(1), dst, n)
        h_got, e_got = block(h, e.clone(), edge_index)
        vec_got = head(e, edge_vec, edge_index, n)
    assert torch.equal(e_got, e_want) and torch.equal(h_got, h_want) and torch.equal(vec_got, vec_want)
    e_leaf = e.clone().requires_grad_(True)
    h_grad, e_grad = block(h, e_leaf, edge_index)
    assert torch.equal(e_leaf.detach(), e)  # not overwritten: autograd needs it
    assert torch.equal(e_grad.detach(), e_want) and torch.equal(h_grad.detach(), h_want)
    (h_grad.sum() + e_grad.sum()).backward()
    assert e_leaf.grad is not None and bool(torch.isfinite(e_leaf.grad).all())
