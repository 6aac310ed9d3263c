"""Issue #13: the skin neighbour list is exact, the cheap predictor-corrector refinement keeps the reference
refinement's statistics on an analytic score, and every scheme round-trips through model files and the CLI."""
import json
import math

import numpy as np
import pytest
import torch

from openmm_cgml.nn.graph import neighbour_candidates, radius_graph, radius_graph_from_candidates
from openmm_cgml.nn.score import ScoreGNN, refine_evaluations, sigma_levels
from openmm_cgml.simulate.step import _ladder_levels


def test_skin_list_gives_the_fresh_edges_at_every_step_of_a_rollout():
    """A diffusing periodic liquid (beads cross the boundary): at every step the Verlet list's edges equal a fresh
    cell search's, in the same order, although the list is rebuilt only now and then."""
    g = torch.Generator().manual_seed(3)
    box = torch.tensor([2.4, 2.6, 2.5])
    x = torch.rand(400, 3, generator=g) * box
    cutoff, skin = 0.5, 0.2
    reference, candidates = x.new_zeros((0, 3)), torch.zeros((2, 0), dtype=torch.long)
    builds, crossed = 0, 0
    for _ in range(60):
        x = x + 0.02 * torch.randn(x.shape, generator=g)
        before = reference
        candidates, reference = neighbour_candidates(x, cutoff, skin, reference, candidates, box)
        builds += int(reference is not before)
        fresh_index, fresh_vec = radius_graph(x, cutoff, box)
        index, vec = radius_graph_from_candidates(x, cutoff, candidates, box)
        assert torch.equal(index, fresh_index) and torch.equal(vec, fresh_vec)
        crossed += int(((x < 0) | (x > box)).any())
    assert 1 < builds < 30 and crossed > 0  # reused most steps, rebuilt when beads moved > skin / 2
    # the list itself is a superset, and a pair within the cutoff is never missing from it
    assert candidates.shape[1] > index.shape[1]


def test_canonical_edge_order_is_independent_of_the_cell_grid():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(300, 3, generator=g) * 3.0
    small, _ = radius_graph(x, 0.45)
    # the same edges from a search with a larger radius (another cell grid), filtered to 0.45 nm
    wide, _ = radius_graph(x, 0.9)
    again, _ = radius_graph_from_candidates(x, 0.45, wide)
    assert torch.equal(small, again)
    key = small[1] * 300 + small[0]
    assert bool((key[1:] > key[:-1]).all())


class GaussianScore(ScoreGNN):
    """The exact score of independent Gaussian coordinates of variance ``var`` (nm²) smoothed by sigma."""

    def __init__(self, var: torch.Tensor):
        super().__init__(4, 0.5, hidden=4, n_layers=1)
        self.var = var

    def forward(self, pos, sigma, embed, masses, bonds, box=None, batch=None, candidates=None):
        return -pos / (self.var + sigma.unsqueeze(1) ** 2)


def _refined_variance_ratio(scheme, levels, steps, step_size, var, x0, seed=0):
    score = GaussianScore(var)
    n = x0.shape[0]
    noise = torch.randn((refine_evaluations(scheme, len(levels), steps), n, 3),
                        generator=torch.Generator().manual_seed(seed))
    x = score.refine(x0, torch.tensor(levels), steps, step_size, noise, torch.zeros(n, 4), torch.ones(n),
                     torch.zeros((0, 2), dtype=torch.long), None, None, scheme)
    return x.var(dim=0) / var, ((x - x0) ** 2).mean(dim=0)


def test_cheap_refinement_keeps_the_reference_statistics_on_an_analytic_score():
    """Stiff (bond-like, 0.003-0.03 nm) and soft coordinates of a Gaussian target, predicted with 0.05 nm errors.

    Reference: today's annealed Langevin over 8 levels x 5 steps (40 evaluations); cheap: predictor-corrector
    over 5 of the same levels (4 evaluations). Tolerance: the cheap scheme's refined variance of every stiff coordinate is
    within a factor 2.5 of the target (the reference's: within 2.5 too), its mean |log variance ratio| is no
    more than 0.1 worse than the reference's, and it adds no more random displacement to soft coordinates."""
    ladder = sigma_levels(0.3, 0.003, 12)
    var3 = torch.tensor([1e-5, 1e-4, 1e-3])
    g = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.sqrt(var3) * torch.randn((n, 3), generator=g) + 0.05 * torch.randn((n, 3), generator=g)
    ref_ratio, _ = _refined_variance_ratio("langevin", ladder[-8:], 5, 5e-6, var3, x0)
    cheap_levels = _ladder_levels(ladder, "pc", 5, 8)  # 5 of the same 8 levels: pc:5x0 on the shipped model
    assert cheap_levels[0] == ladder[-8] and cheap_levels[-1] == ladder[-1]
    cheap_ratio, _ = _refined_variance_ratio("pc", cheap_levels, 0, 5e-6, var3, x0)
    assert refine_evaluations("pc", 5, 0) == 4 and refine_evaluations("langevin", 8, 5) == 40
    for ratio in (ref_ratio, cheap_ratio):
        assert bool(((ratio > 1 / 2.5) & (ratio < 2.5)).all()), ratio
    assert float(cheap_ratio.log().abs().mean()) <= float(ref_ratio.log().abs().mean()) + 0.1
    # soft coordinates (1 nm²): the refinement should leave them where the dynamics put them
    soft = torch.ones(3)
    x_soft = torch.randn((n, 3), generator=g)
    _, ref_moved = _refined_variance_ratio("langevin", ladder[-8:], 5, 5e-6, soft, x_soft)
    _, cheap_moved = _refined_variance_ratio("pc", cheap_levels, 0, 5e-6, soft, x_soft)
    assert bool((cheap_moved < ref_moved).all()) and float(cheap_moved.max()) < 0.01
    # without the corrector the prediction would not be repaired at all: the input's variance is 250x the target
    assert float((x0.var(dim=0) / var3)[0]) > 100


def test_pc_scheme_consumes_one_noise_row_per_evaluation():
    score = GaussianScore(torch.ones(3))
    x = torch.zeros(5, 3)
    with pytest.raises(ValueError, match="one row per score evaluation"):
        score.refine(x, torch.tensor([0.1, 0.01]), 1, 1e-5, torch.zeros(2, 5, 3), torch.zeros(5, 4), torch.ones(5),
                     torch.zeros((0, 2), dtype=torch.long), None, None, "pc")
    assert refine_evaluations("pc", 2, 1) == 3


@pytest.mark.parametrize("spec, scheme, evaluations", [("pc:4x0", "pc", 3), ("pc:2x1", "pc", 3),
                                                       ("langevin:3x1", "langevin", 3), ("none", "langevin", 0)])
def test_schemes_round_trip_through_model_files_and_the_cli(spec, scheme, evaluations, tmp_path, tiny_peo_litfsi):
    from openmm_cgml.cli import main
    from openmm_cgml.mapping import BeadMap
    from openmm_cgml.simulate import LearnedStep, parse_refine
    from openmm_cgml.training.model import load_model

    from test_simulate import MAPPING, tiny_model

    built = tiny_peo_litfsi
    built.save(str(tmp_path / "system"))
    beadmap = BeadMap.from_openmm(built.topology, built.system, **MAPPING)
    model = tiny_model(beadmap)
    refine = parse_refine(spec)
    if refine:  # the scheme as the model file's default ...
        model.config.refine_scheme = refine["scheme"]
        model.config.refine_levels = refine["n_levels"]
        model.config.refine_steps_per_level = refine["steps_per_level"]
    else:
        model.config.refine_levels = 0
    model.save(str(tmp_path / "model"))
    loaded = load_model(str(tmp_path / "model"))
    step = LearnedStep.from_model(loaded, beadmap)
    assert step.n_refine == evaluations and (not evaluations or step.scheme == scheme)
    # ... and through the CLI, on a model whose own default is another scheme
    model.config.refine_scheme, model.config.refine_levels, model.config.refine_steps_per_level = "langevin", 2, 2
    model.save(str(tmp_path / "model"), overwrite=True)
    assert LearnedStep.from_model(load_model(str(tmp_path / "model")), beadmap).n_refine == 4
    rc = main(["simulate", str(tmp_path / "model"), "--system", str(tmp_path / "system"), "--ns", "0.2", "--quiet",
               "--refine", spec, "-o", str(tmp_path / "run")])
    info = json.loads((tmp_path / "run" / "simulate.json").read_text())
    assert rc == 0 and info["score_evaluations_per_step"] == evaluations
    # a resume with another refinement is refused in one line
    rc = main(["simulate", str(tmp_path / "model"), "--system", str(tmp_path / "system"), "--ns", "0.4", "--quiet",
               "--refine", "langevin:1x1" if spec != "langevin:1x1" else "none", "-o", str(tmp_path / "run")])
    assert rc == 2


def test_bad_refinement_spec_is_one_line(capsys, tmp_path):
    from openmm_cgml.cli import main

    rc = main(["simulate", "missing-model", "--system", str(tmp_path), "--ns", "1", "--refine", "pc:4", "-o",
               str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "SCHEME:LxK" in err[0]
    from openmm_cgml.simulate import parse_refine

    assert parse_refine("model,stepcap=0") == {"step_cap": 0.0} and parse_refine("none,stepcap=2")["step_cap"] == 2.0
    with pytest.raises(ValueError, match="stepcap=F") as bad:
        parse_refine("model,stepcap=0.5")  # a cap below the longest training step would cut ordinary motion
    assert "\n" not in str(bad.value)
    with pytest.raises(ValueError, match="refine_scheme"):
        from openmm_cgml.training.model import ModelConfig

        ModelConfig(refine_scheme="euler", timestep_ps=1.0).validate()


def test_step_with_skin_list_equals_fresh_search(tiny_peo_litfsi):
    """The learned step gives bit-identical frames with the refinement's Verlet list and without it."""
    from openmm import unit

    from openmm_cgml.mapping import BeadMap
    from openmm_cgml.simulate import LearnedStep, parse_refine, rollout

    from test_simulate import MAPPING, tiny_model

    built = tiny_peo_litfsi
    beadmap = BeadMap.from_openmm(built.topology, built.system, **MAPPING)
    model = tiny_model(beadmap)
    box_nm = np.diag(built.box_vectors.value_in_unit(unit.nanometer))
    x = torch.tensor(beadmap.map_positions(built.positions, built.box_vectors), dtype=torch.float32)
    h = torch.zeros(model.history_length, *x.shape)
    box = torch.tensor(box_nm, dtype=torch.float32)
    frames = {}
    for skin in (0.0, 0.2):
        step = torch.jit.script(LearnedStep.from_model(model, beadmap, refine=parse_refine("pc:3x1")))
        step.skin = skin
        frames[skin], _ = rollout(step, x, h, box, seed=2, n_steps=4)
    assert torch.equal(frames[0.0], frames[0.2]) and not math.isnan(float(frames[0.2].sum()))


def test_denoise_is_one_noise_free_tweedie_step_after_the_refinement(tiny_peo_litfsi):
    """``,denoise=S``: the repair ends with x + S² score(x, S) (scripted alike) and costs one more evaluation; a
    negative level or a denoise without refinement is refused."""
    from openmm import unit

    from openmm_cgml.mapping import BeadMap
    from openmm_cgml.simulate import LearnedStep, parse_refine
    from openmm_cgml.simulate.step import refine_settings, step_noise

    from test_simulate import MAPPING, tiny_model

    built = tiny_peo_litfsi
    beadmap = BeadMap.from_openmm(built.topology, built.system, **MAPPING)
    model = tiny_model(beadmap)
    x = torch.tensor(beadmap.map_positions(built.positions, built.box_vectors), dtype=torch.float32)
    box = torch.tensor(np.diag(built.box_vectors.value_in_unit(unit.nanometer)), dtype=torch.float32)
    plain, spec = LearnedStep.from_model(model, beadmap), parse_refine("model,denoise=0.01")
    step = LearnedStep.from_model(model, beadmap, spec)
    assert step.denoise == 0.01 and plain.denoise == 0.0
    assert refine_settings(model.config, spec)["evaluations"] == refine_settings(model.config)["evaluations"] + 1
    _, noise = step_noise(4, 0, beadmap.n_beads, step.n_refine)
    with torch.no_grad():
        refined = plain.repair(x, box, noise)
        score = step.score(refined, torch.full((beadmap.n_beads,), 0.01), step.embed, step.masses, step.bonds, box,
                           step.batch)
        want = refined + 0.01 ** 2 * score
        torch.testing.assert_close(step.repair(x, box, noise), want, rtol=0, atol=1e-7)
        torch.testing.assert_close(torch.jit.script(step).repair(x, box, noise), want, rtol=0, atol=1e-7)
    assert float((want - refined).abs().max()) > 1e-6
    for bad in ("model,denoise=-0.1", "none,denoise=0.01"):
        with pytest.raises(ValueError, match="denoise=S with S >= 0"):
            parse_refine(bad)


def test_pareto_front_keeps_only_undominated_settings():
    from benchmarks.pareto import pareto_front

    costs = [1.0, 2.0, 3.0, 2.5, None]
    errors = [3.0, 2.0, 1.0, 2.5, 0.0]  # (2.5, 2.5) is beaten by (2.0, 2.0); None is not measured
    assert pareto_front(costs, errors) == [0, 1, 2]


def test_rdf_wall_fits_the_rising_edge_and_pushes_pairs_apart():
    """``data.contacts.rdf_wall`` recovers a known exponential edge g = exp(k (r - r1)); ``nn.score.wall_score``
    adds k along the minimum-image line of each wall pair closer than r1 and nothing to other beads."""
    from openmm_cgml.data.contacts import rdf_wall
    from openmm_cgml.nn.score import wall_score

    edges = np.round(np.arange(0.0, 1.0001, 0.01), 3)
    centres = edges[:-1] + 0.005
    g = np.where(centres < 0.3, 0.0, np.minimum(np.exp(8.0 * (centres - 0.7)), 1.3))
    contacts = {"type_names": ["LI:a", "PEO:b"], "rdf_edges_nm": edges.tolist(),
                "rdf_g": [[g.tolist(), g.tolist()], [g.tolist(), None]]}
    walls = rdf_wall(contacts, ["li-li"])
    assert walls["slope_per_nm"][0][0] == pytest.approx(8.0, rel=1e-6)
    assert walls["reach_nm"][0][0] == pytest.approx(0.7, abs=0.01)  # g first reaches 1 in the bin holding r1
    assert walls["slope_per_nm"][0][1] is None and walls["reach_nm"][1][1] is None
    assert rdf_wall({"type_names": ["LI:a"]}, ["LI-LI"]) is None

    # beads 0 and 2 are walled (0.3 nm apart across the box edge), bead 1 is not; bead 3 is walled but far off
    pos = torch.tensor([[0.1, 0.0, 0.0], [0.2, 0.0, 0.0], [1.8, 0.0, 0.0], [1.0, 1.0, 1.0]])
    types = torch.tensor([0, 1, 0, 0])
    slope, reach = torch.tensor([[4.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    wall = (torch.tensor([0, 2, 3]), types, slope, reach)
    got = wall_score(pos, wall, torch.tensor([2.0, 2.0, 2.0]), torch.zeros(4, dtype=torch.long))
    want = torch.zeros(4, 3)
    want[0, 0], want[2, 0] = 4.0, -4.0
    torch.testing.assert_close(got, want)


def test_rdf_wall_enters_every_score_evaluation_of_the_step(tiny_peo_litfsi):
    """``,wall=W``: the step's refinement and denoising step see the walls (scripted alike); W = 0, a model
    without training RDFs, or a negative W are handled or refused with one line."""
    from openmm import unit

    from openmm_cgml.mapping import BeadMap
    from openmm_cgml.simulate import LearnedStep, parse_refine
    from openmm_cgml.simulate.step import refine_settings, step_noise

    from test_simulate import MAPPING, tiny_model

    built = tiny_peo_litfsi
    beadmap = BeadMap.from_openmm(built.topology, built.system, **MAPPING)
    model = tiny_model(beadmap, rdf_wall_pairs=["PEO-PEO"])
    names = beadmap.type_names
    edges = np.round(np.arange(0.0, 1.0001, 0.01), 3)
    g = np.minimum(np.exp(6.0 * (edges[:-1] + 0.005 - 0.45)), 1.2).tolist()
    model.contacts = {"type_names": names, "min_distance_nm": [[0.1] * len(names) for _ in names],
                      "rdf_edges_nm": edges.tolist(), "rdf_g": [[g for _ in names] for _ in names]}
    x = torch.tensor(beadmap.map_positions(built.positions, built.box_vectors), dtype=torch.float32)
    box = torch.tensor(np.diag(built.box_vectors.value_in_unit(unit.nanometer)), dtype=torch.float32)
    spec = parse_refine("model,wall=2,denoise=0.01")
    walled, plain = (LearnedStep.from_model(model, beadmap, s) for s in (spec, parse_refine("model,denoise=0.01")))
    peo = [i for i, n in enumerate(names) if n.startswith("PEO")]
    assert walled.rdf_wall == 2.0 and refine_settings(model.config, spec)["rdf_wall"] == 2.0
    assert sorted(walled.wall_beads.tolist()) == [i for i, t in enumerate(beadmap.bead_types) if t in peo]
    assert float(walled.wall_slope.max()) == pytest.approx(12.0, rel=1e-4) and float(plain.wall_slope.abs().max()) == 0
    _, noise = step_noise(4, 0, beadmap.n_beads, walled.n_refine)
    with torch.no_grad():
        a, b = walled.repair(x, box, noise), plain.repair(x, box, noise)
        torch.testing.assert_close(torch.jit.script(walled).repair(x, box, noise), a, rtol=0, atol=1e-6)
        batched = walled.batched(2).repair(torch.cat([x, x]), torch.stack([box, box]), torch.cat([noise, noise], 1))
        torch.testing.assert_close(batched, torch.cat([a, a]), rtol=0, atol=1e-5)
    assert float((a - b).abs().max()) > 1e-5
    assert LearnedStep.from_model(model, beadmap, parse_refine("model,wall=0")).rdf_wall == 0.0
    model.contacts = {k: v for k, v in model.contacts.items() if k != "rdf_g"}
    with pytest.raises(ValueError, match="rdf_wall needs the model's contacts.json"):
        LearnedStep.from_model(model, beadmap, spec)
    with pytest.raises(ValueError, match="wall=W with W >= 0"):
        parse_refine("model,wall=-1")


def test_refinement_temperature_scales_the_langevin_noise():
    """``temperature`` T: on an analytic Gaussian score, long Langevin runs at one level sample variance
    T (var + sigma²) (discretisation error < 10 %), and T = 0 is noise-free ascent, independent of the noise."""
    var, sigma, n = torch.full((3,), 1e-4), 0.01, 4000
    score = GaussianScore(var)
    args = (torch.zeros(n, 4), torch.ones(n), torch.zeros((0, 2), dtype=torch.long), None, None, "langevin")
    noise = torch.randn((200, n, 3), generator=torch.Generator().manual_seed(0))
    x0 = torch.zeros(n, 3)
    level = torch.tensor([sigma])
    target = float(var[0]) + sigma ** 2
    for temperature in (1.0, 0.25):
        x = score.refine(x0, level, 200, 1e-5, noise, *args, temperature=torch.tensor(temperature))
        assert float(x.var(dim=0).mean()) == pytest.approx(temperature * target, rel=0.1)
    assert float(score.refine(x0, level, 200, 1e-5, noise, *args).var(dim=0).mean()) == pytest.approx(target, rel=0.1)
    # one temperature per bead: the first half at 1, the second at 0.25 (refine_residue_temperature)
    per_bead = torch.cat([torch.ones(n // 2), torch.full((n // 2,), 0.25)])
    x = score.refine(x0, level, 200, 1e-5, noise, *args, temperature=per_bead)
    assert float(x[: n // 2].var(dim=0).mean()) == pytest.approx(target, rel=0.1)
    assert float(x[n // 2:].var(dim=0).mean()) == pytest.approx(0.25 * target, rel=0.1)
    x1 = torch.full((n, 3), 0.05)
    zero = torch.tensor(0.0)
    cold = score.refine(x1, level, 200, 1e-5, noise, *args, temperature=zero)
    torch.testing.assert_close(cold, score.refine(x1, level, 200, 1e-5, -noise, *args, temperature=zero))
    assert float(cold.abs().max()) < 0.05 * 1e-3  # ascends to the mode: 0.95^200 of the start


def test_step_refines_at_the_model_or_requested_temperature(tiny_peo_litfsi):
    """``,temp=T`` (``ModelConfig.refine_temperature``): the step's refinement at T = 0.25 is the plain one with
    the noise halved (scripted and batched alike); a negative T is refused with one line."""
    from openmm import unit

    from openmm_cgml.mapping import BeadMap
    from openmm_cgml.simulate import LearnedStep, parse_refine
    from openmm_cgml.simulate.step import refine_settings, step_noise

    from test_simulate import MAPPING, tiny_model

    built = tiny_peo_litfsi
    beadmap = BeadMap.from_openmm(built.topology, built.system, **MAPPING)
    model = tiny_model(beadmap)
    x = torch.tensor(beadmap.map_positions(built.positions, built.box_vectors), dtype=torch.float32)
    box = torch.tensor(np.diag(built.box_vectors.value_in_unit(unit.nanometer)), dtype=torch.float32)
    spec = parse_refine("model,temp=0.25")
    cold, plain = LearnedStep.from_model(model, beadmap, spec), LearnedStep.from_model(model, beadmap)
    assert bool((cold.temperature == 0.25).all()) and bool((plain.temperature == 1.0).all())
    assert refine_settings(model.config, spec)["temperature"] == 0.25
    model.config.refine_temperature = 0.25
    assert bool((LearnedStep.from_model(model, beadmap).temperature == 0.25).all())
    # per residue: PEO beads at 1, the ions at refine_temperature; a spec's temp=T is every bead's
    model.config.refine_residue_temperature = {"PEO": 1.0}
    peo = torch.tensor([s == "PEO" for s in beadmap.bead_species()])
    mixed = LearnedStep.from_model(model, beadmap).temperature
    assert bool(peo.any() and (~peo).any())
    torch.testing.assert_close(mixed, torch.where(peo, 1.0, 0.25))
    assert bool((LearnedStep.from_model(model, beadmap, parse_refine("model,temp=0.5")).temperature == 0.5).all())
    assert refine_settings(model.config)["residue_temperature"] == {"PEO": 1.0}
    model.config.refine_residue_temperature = {}
    _, noise = step_noise(4, 0, beadmap.n_beads, cold.n_refine)
    with torch.no_grad():
        a = cold.repair(x, box, noise)
        torch.testing.assert_close(plain.repair(x, box, 0.5 * noise), a, rtol=0, atol=1e-6)
        torch.testing.assert_close(torch.jit.script(cold).repair(x, box, noise), a, rtol=0, atol=1e-6)
        batched = cold.batched(2).repair(torch.cat([x, x]), torch.stack([box, box]), torch.cat([noise, noise], 1))
        torch.testing.assert_close(batched, torch.cat([a, a]), rtol=0, atol=1e-5)
    assert float((a - plain.repair(x, box, noise)).abs().max()) > 1e-5
    with pytest.raises(ValueError, match="temp=T with T >= 0"):
        parse_refine("model,temp=-1")
    # replicas at different temperatures advance together, each at its own
    both = LearnedStep.concatenate([cold, plain])
    with torch.no_grad():
        together = both.repair(torch.cat([x, x]), torch.stack([box, box]), torch.cat([noise, noise], 1))
        torch.testing.assert_close(together, torch.cat([a, plain.repair(x, box, noise)]), rtol=0, atol=1e-5)


def test_step_transport_counts_chain_centres_of_mass_once():
    """``benchmarks.structure_repair``: a two-bead chain (masses 1 and 3) and a lone ion; the chain's centre of
    mass moves by the mass-weighted mean displacement, the ion is no chain."""
    from types import SimpleNamespace

    from benchmarks.structure_repair import chain_weights, displacement_msd

    beadmap = SimpleNamespace(bead_molecule=[5, 5, 2], bead_masses=[1.0, 3.0, 7.0])
    chains = chain_weights(beadmap)
    np.testing.assert_allclose(chains, [[0.25, 0.75, 0.0]])
    d = np.zeros((2, 3, 3))
    d[:, 0, 0], d[:, 1, 0], d[:, 2, 1] = 0.4, 0.0, 2.0  # the chain's centre moves 0.1 nm, the ion 2 nm
    got = displacement_msd(d, np.array(["PEO", "PEO", "LI"]), chains)
    assert got == pytest.approx({"PEO": 0.08, "LI": 4.0, "chain_com": 0.01})


def test_step_memory_recovers_known_lag1_correlations():
    """``benchmarks.structure_repair.step_memory`` on dimers whose centre and separation steps are AR(1) with
    lag-1 correlations 0.5 and -0.5, beside lone beads with 0.2: the all-atom side recovers each; a model whose
    mean acceleration is -v (constant position) shows 0 everywhere."""
    from types import SimpleNamespace

    from benchmarks.structure_repair import step_memory

    rng = np.random.default_rng(0)
    n_dimers, n_lone, n_frames = 100, 100, 400
    rho = {"centre": 0.5, "separation": -0.5, "lone": 0.2}
    steps = {k: np.zeros((n_frames, n, 3)) for k, n in (("centre", n_dimers), ("separation", n_dimers),
                                                         ("lone", n_lone))}
    for k, d in steps.items():
        for t in range(1, n_frames):
            d[t] = rho[k] * d[t - 1] + rng.normal(0.0, 0.1, d[t].shape)
    c, r, lone = (np.cumsum(steps[k], axis=0) for k in ("centre", "separation", "lone"))
    x = np.concatenate([c + r / 2, c - r / 2, lone], axis=1)  # beads 0..99 and 100..199 pair up
    molecule = np.concatenate([np.arange(n_dimers)] * 2 + [n_dimers + np.arange(n_lone)])
    beadmap = SimpleNamespace(bead_molecule=molecule.tolist(), bead_masses=[1.0] * x.shape[1])
    n = x.shape[1]
    step = SimpleNamespace(
        history_length=1, carried=torch.zeros(n, dtype=torch.bool), embed=None, masses=None, bonds=None,
        batch=None, molecule=None, n_molecules=0,
        dynamics=lambda pos, hist, *rest: (-hist[-1], None, None))
    got = step_memory(step, x, 1, np.arange(5, n_frames - 1), np.full(3, 100.0), beadmap)
    assert got["chain_com"]["allatom"] == pytest.approx(0.5, abs=0.03)
    assert got["internal"]["allatom"] == pytest.approx(-0.5, abs=0.03)
    assert got["single"]["allatom"] == pytest.approx(0.2, abs=0.03)
    for kind in got:
        assert got[kind]["model"] == pytest.approx(0.0, abs=1e-6)
