"""The hard core of the learned step: overlapping non-bonded beads are pushed apart (checked against brute-force
minimum-image distances), bonded pairs are left alone, a pair's centre of mass stays, and the step with a core is
the same eager, scripted and batched; a model without closest approaches is refused in one line."""
import copy

import numpy as np
import pytest
import torch

from openmm_cgml.simulate.excluded_volume import SLACK, bond_keys, push_apart
from openmm_cgml.simulate.step import LearnedStep, parse_refine, refine_settings, step_noise


def _pair_distances(x: np.ndarray, box: np.ndarray):
    """(N, N) minimum-image distances, nm (independent of the package's periodic geometry)."""
    d = x[:, None, :] - x[None, :, :]
    d -= box * np.round(d / box)
    return np.linalg.norm(d, axis=2)


def test_push_apart_separates_every_non_bonded_overlap_across_the_boundary():
    g = torch.Generator().manual_seed(0)
    box = torch.tensor([2.0, 2.2, 2.1])
    n = 60
    x = torch.rand(n, 3, generator=g) * box
    x[1] = x[0] + torch.tensor([0.05, 0.0, 0.0])  # a bonded pair closer than any core: must stay as it is
    x[3] = x[2] - box * torch.tensor([1.0, 0.0, 0.0]) + 0.02  # an overlap through the periodic boundary
    types = torch.randint(0, 2, (n,), generator=g)
    types[2], types[3] = 0, 1
    core = torch.tensor([[0.30, 0.25], [0.25, 0.20]])
    masses = 1.0 + 20.0 * torch.rand(n, generator=g)
    bonds = torch.tensor([[0, 1]])
    out = push_apart(x, types, core, masses, bond_keys(bonds, n), box, torch.zeros(n, dtype=torch.long), bonds,
                     torch.zeros((2, 2)))

    before = _pair_distances(x.numpy(), box.numpy())
    after = _pair_distances(out.numpy(), box.numpy())
    need = core.numpy()[types.numpy()][:, types.numpy()]
    non_bonded = ~np.eye(n, dtype=bool)
    non_bonded[0, 1] = non_bonded[1, 0] = False
    assert (before[non_bonded] < need[non_bonded]).sum() > 4  # the test has overlaps to remove
    assert (after[non_bonded] >= need[non_bonded] - 1e-4).all()
    assert after[0, 1] == pytest.approx(before[0, 1], abs=1e-6)
    # beads with no overlap do not move
    untouched = (before + np.where(non_bonded, 0.0, 9.0) >= need).all(axis=1)
    assert untouched.sum() > 10
    np.testing.assert_array_equal(out.numpy()[untouched], x.numpy()[untouched])


def test_push_apart_sweeps_share_a_verlet_list_with_the_result_of_fresh_searches():
    # a crowded periodic frame (cores larger than the mean spacing): several sweeps, each of which the shared
    # pair list must serve with exactly the pairs a fresh cell search finds
    g = torch.Generator().manual_seed(1)
    box = torch.tensor([2.0, 2.0, 2.0])
    n = 150
    x = torch.rand(n, 3, generator=g) * box
    types = torch.randint(0, 2, (n,), generator=g)
    core = torch.tensor([[0.30, 0.28], [0.28, 0.26]])
    masses = 1.0 + 20.0 * torch.rand(n, generator=g)
    bonds = torch.stack([torch.arange(0, 40, 2), torch.arange(1, 41, 2)], dim=1)
    cap = torch.tensor([[0.35, 0.35], [0.35, 0.35]])
    args = (types, core, masses, bond_keys(bonds, n), box, torch.zeros(n, dtype=torch.long), bonds, cap)
    one_sweep = push_apart(x, *args, max_sweeps=1)
    assert not torch.equal(push_apart(one_sweep, *args, max_sweeps=1), one_sweep)  # one sweep does not finish it
    assert torch.equal(push_apart(x, *args, skin=0.1), push_apart(x, *args, skin=0.0))


def test_push_apart_keeps_an_isolated_pairs_centre_of_mass_and_moves_the_light_bead_more():
    x = torch.tensor([[1.0, 1.0, 1.0], [1.1, 1.0, 1.0], [3.0, 3.0, 3.0]])
    masses = torch.tensor([30.0, 10.0, 5.0])
    core = torch.tensor([[0.4]])
    none = torch.zeros((0, 2), dtype=torch.long)
    out = push_apart(x, torch.zeros(3, dtype=torch.long), core, masses, torch.zeros(0, dtype=torch.long), None,
                     torch.zeros(3, dtype=torch.long), none, torch.zeros((1, 1)))
    assert float(torch.linalg.norm(out[1] - out[0])) == pytest.approx(SLACK * 0.4, abs=1e-6)
    com = (masses[:2, None] * x[:2]).sum(0) / masses[:2].sum()
    torch.testing.assert_close((masses[:2, None] * out[:2]).sum(0) / masses[:2].sum(), com)
    assert float(out[1, 0] - x[1, 0]) == pytest.approx(3 * float(x[0, 0] - out[0, 0]), rel=1e-5)
    assert torch.equal(out[2], x[2])
    # no core and no cap: the frame is returned as it is
    assert torch.equal(push_apart(x, torch.zeros(3, dtype=torch.long), torch.zeros((1, 1)), masses,
                                  torch.zeros(0, dtype=torch.long), None, torch.zeros(3, dtype=torch.long), none,
                                  torch.zeros((1, 1))), x)


def test_bond_cap_pulls_stretched_bonds_back_across_the_boundary_and_keeps_the_centre_of_mass():
    box = torch.tensor([2.0, 2.0, 2.0])
    # a 3-bead chain whose second bond (0.9 nm) crosses the boundary, and a far-away dimer at a normal length
    x = torch.tensor([[1.0, 1.0, 1.0], [1.3, 1.0, 1.0], [1.3 + 0.9 - 2.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.8, 0.5, 0.5]])
    bonds = torch.tensor([[0, 1], [1, 2], [3, 4]])
    types = torch.tensor([0, 1, 1, 0, 1])
    masses = torch.tensor([12.0, 16.0, 16.0, 12.0, 16.0])
    cap = torch.tensor([[0.0, 0.45], [0.45, 0.5]])
    out = push_apart(x, types, torch.zeros((2, 2)), masses, bond_keys(bonds, 5), box, torch.zeros(5, dtype=torch.long),
                     bonds, cap)
    lengths = _pair_distances(out.numpy(), box.numpy())
    assert lengths[1, 2] <= 0.5 + 1e-5 and lengths[1, 2] == pytest.approx(0.5 / SLACK, abs=0.02)
    assert lengths[0, 1] <= 0.45 + 1e-5
    np.testing.assert_array_equal(out[3:].numpy(), x[3:].numpy())  # bonds within their cap are left alone
    # each pull keeps its pair's centre of mass, so the (unwrapped) chain's centre does not move
    shift = torch.tensor([2.0, 0.0, 0.0])
    before, after = x[:3].clone(), out[:3].clone()
    before[2] += shift
    after[2] += shift
    torch.testing.assert_close((masses[:3, None] * after).sum(0), (masses[:3, None] * before).sum(0))


@pytest.mark.parametrize("small_model", [False], indirect=True)
def test_step_with_a_hard_core_is_scripted_batched_and_overlap_free(small_model):
    model, bm = small_model
    model = copy.deepcopy(model)  # the fixture is shared by the module: give this copy closest approaches
    with pytest.raises(ValueError, match="contacts.json"):
        LearnedStep.from_model(model, bm, {"hard_core": 0.9})
    model.contacts = {"type_names": list(bm.type_names), "min_distance_nm": [[0.4]]}
    with pytest.raises(ValueError, match="max_bond_nm"):  # an older contacts file has no bond lengths
        LearnedStep.from_model(model, bm, {"bond_cap": 1.2})
    model.contacts["max_bond_nm"] = [[0.25]]
    spec = parse_refine("model,core=0.9,cap=1.2")
    step = LearnedStep.from_model(model, bm, spec)
    assert step.hard_core == 0.9 and step.bond_cap == 1.2
    assert {k: refine_settings(model.config, spec)[k] for k in ("hard_core", "bond_cap")} == {"hard_core": 0.9,
                                                                                              "bond_cap": 1.2}
    assert LearnedStep.from_model(model, bm).hard_core == 0.0  # the model's default (ModelConfig.hard_core) is off
    # ,rdf=G raises the core to where the training RDF first reaches G, never below the closest-approach core
    with pytest.raises(ValueError, match="rdf_g"):
        LearnedStep.from_model(model, bm, parse_refine("model,core=0.9,rdf=0.1"))
    model.contacts.update(rdf_edges_nm=[0.0, 0.2, 0.4, 0.45, 0.5], rdf_g=[[[0.0, 0.02, 0.3, 1.0]]])
    assert float(LearnedStep.from_model(model, bm, parse_refine("model,core=0.9,rdf=0.1")).core) == pytest.approx(0.4)
    assert float(LearnedStep.from_model(model, bm, parse_refine("model,core=0.9,rdf=0.01")).core) == \
        pytest.approx(0.36)  # the onset (0.2 nm) lies below 0.9 x the closest approach
    with pytest.raises(ValueError, match="needs hard_core > 0"):
        LearnedStep.from_model(model, bm, parse_refine("model,core=0,rdf=0.1"))
    del model.contacts["rdf_g"], model.contacts["rdf_edges_nm"]
    g = torch.Generator().manual_seed(5)
    box = torch.tensor([1.3, 1.3, 1.3])
    x = torch.rand(bm.n_beads, 3, generator=g) * box
    h = 0.02 * torch.randn(2, bm.n_beads, 3, generator=g)
    dyn, ref = step_noise(3, 0, bm.n_beads, step.n_refine)
    plain = LearnedStep.from_model(model, bm)
    with torch.no_grad():
        x1, _ = step(x, h, box, dyn, ref)
        x0, _ = plain(x, h, box, dyn, ref)
        xs, _ = torch.jit.script(step)(x, h, box, dyn, ref)
        xb, _ = step.batched(2)(torch.cat([x, x]), torch.cat([h, h], dim=1), torch.stack([box, box]),
                                torch.cat([dyn, dyn]), torch.cat([ref, ref], dim=1))
    assert torch.equal(x1, xs)
    torch.testing.assert_close(xb[:bm.n_beads], x1)
    torch.testing.assert_close(xb[bm.n_beads:], x1)
    d = _pair_distances(x1.numpy(), box.numpy())
    bonded = np.zeros_like(d, dtype=bool)
    for a, b in np.asarray(bm.bonds):
        bonded[a, b] = bonded[b, a] = True
    mask = ~np.eye(bm.n_beads, dtype=bool) & ~bonded
    assert (d[mask] >= 0.36 - 1e-4).all() and (d[bonded] <= 0.3 + 1e-4).all()
    plain_d = _pair_distances(x0.numpy(), box.numpy())
    assert (plain_d[mask] < 0.36).any() and (plain_d[bonded] > 0.3).any()  # without them: overlaps, long bonds


def test_hard_core_spec_errors_are_one_line():
    assert parse_refine("none,core=0.5") == {"n_levels": 0, "hard_core": 0.5}
    assert parse_refine("pc:4x0,core=1") == {"scheme": "pc", "n_levels": 4, "steps_per_level": 0, "hard_core": 1.0}
    assert parse_refine("model,cap=1.5,core=0.8") == {"bond_cap": 1.5, "hard_core": 0.8}
    assert parse_refine("pc:8x4,step=2e-6") == {"scheme": "pc", "n_levels": 8, "steps_per_level": 4,
                                                "step_size": 2e-6}
    for bad in ("model,core=1.5", "model,hard=0.9", "model,core=x", "model,cap=0.5", "model,step=0",
                "none,step=1e-6"):
        with pytest.raises(ValueError, match="core=F") as err:
            parse_refine(bad)
        assert "\n" not in str(err.value)
