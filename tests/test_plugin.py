"""The compiled plugin (plugin_kernels/): same trajectory as the Python integrator, checkpoints, XML, errors."""
import copy

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from openmm_cgml import plugin
from openmm_cgml.mapping import BeadMap
from openmm_cgml.simulate import SimulationBlowUp
from openmm_cgml.training.model import BeadVocabulary, CGModel, ModelConfig

MAPPING = {"atoms_per_bead": 7, "whole_residues": ["TFS"]}

needs_plugin = pytest.mark.skipif(not plugin.is_available(),
                                  reason=f"compiled plugin unavailable: {plugin._unavailable}")


def tiny_model(beadmap, seed=0, **options):
    """A small untrained CG model (as in test_simulate.py) with two refinement evaluations per step; ``options``:
    more ModelConfig fields."""
    torch.manual_seed(seed)
    vocab = BeadVocabulary(list(beadmap.type_names), list(beadmap.type_graphs))
    config = ModelConfig(embed_dim=8, embed_hidden=8, embed_layers=1, hidden=16, n_layers=2, score_hidden=16,
                         score_layers=1, n_rbf=8, cutoff=0.7, history_length=2, timestep_ps=100.0, periodic=True,
                         velocity_scale=0.05, accel_scale=0.02, refine_levels=2, refine_steps_per_level=1,
                         mapping=dict(MAPPING), **options)
    model = CGModel(config, vocab)
    model.set_scales(0.05, 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def setup(tiny_peo_litfsi, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CGML_CACHE", str(tmp_path_factory.mktemp("cgml_cache")))  # exported steps go here
        yield _setup(tiny_peo_litfsi)


def _setup(tiny_peo_litfsi):
    built = tiny_peo_litfsi
    beadmap = BeadMap.from_openmm(built.topology, built.system, **MAPPING)
    return built, beadmap, tiny_model(beadmap)


def simulation(built, model, kernel, platform="Reference", seed=7, properties=None, **options):
    cg = plugin.coarse_grain_simulation(built.topology, built.system, built.positions, model,
                                        box_vectors=built.box_vectors, seed=seed, kernel=kernel, **options)
    sim = app.Simulation(cg.topology, cg.system, cg.integrator, openmm.Platform.getPlatformByName(platform),
                         properties)
    sim.context.setPositions(cg.positions)
    return sim


def positions(sim):
    return sim.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)


@needs_plugin
@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_compiled_and_python_integrators_agree_over_20_steps(setup, tmp_path, platform):
    built, beadmap, model = setup
    # An untrained model: 20 steps may move a bead past the default 2 nm bound, which is not what is tested here.
    bound = 10.0 * unit.nanometer
    compiled = simulation(built, model, "compiled", platform, max_displacement=bound)
    python = simulation(built, model, "python", platform, max_displacement=bound)
    assert isinstance(compiled.integrator, openmm.Integrator)
    assert not any(isinstance(f, openmm.PythonForce) for f in compiled.system.getForces())
    assert compiled.system.usesPeriodicBoundaryConditions()
    compiled.reporters.append(app.StateDataReporter(str(tmp_path / "log.csv"), 5, step=True, time=True))
    compiled.reporters.append(app.DCDReporter(str(tmp_path / "cg.dcd"), 5, enforcePeriodicBox=False))
    start = positions(compiled)
    for _ in range(20):
        compiled.step(1)
        python.step(1)
        # The same model, noise stream and float32 arithmetic: the trajectories agree to float32 round-off.
        np.testing.assert_allclose(positions(compiled), positions(python), rtol=0, atol=2e-5)
    np.testing.assert_allclose(compiled.integrator.get_history(), python.integrator.get_history(), rtol=0, atol=2e-5)
    assert np.linalg.norm(positions(compiled) - start, axis=1).max() > 1e-3  # the beads did move
    state = compiled.context.getState(getVelocities=True)
    assert state.getTime().value_in_unit(unit.picosecond) == pytest.approx(2000.0)
    assert compiled.integrator.getStepIndex() == 20
    # velocities are the last displacement over the time step, as the Python integrator reports them
    np.testing.assert_allclose(state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond),
                               compiled.integrator.get_history()[-1] / 100.0, rtol=1e-6, atol=1e-9)
    assert len((tmp_path / "log.csv").read_text().strip().splitlines()) == 5


@needs_plugin
def test_compiled_step_carries_molecule_memory(setup):
    """The exported step passes every bead's molecule to a molecule-memory dynamics GNN (here with a nonzero head,
    as after training): compiled and Python integrators agree, and differ from the same model with the head at zero."""
    built, beadmap, _ = setup
    model = tiny_model(beadmap, molecule_memory=True)
    torch.nn.init.normal_(model.dynamics.memory_head[-1].weight, std=1.0)
    bound = 10.0 * unit.nanometer
    compiled = simulation(built, model, "compiled", max_displacement=bound)
    python = simulation(built, model, "python", max_displacement=bound)
    silent = copy.deepcopy(model)
    torch.nn.init.zeros_(silent.dynamics.memory_head[-1].weight)
    plain = simulation(built, silent, "python", max_displacement=bound)
    for sim in (compiled, python, plain):
        sim.step(3)
    np.testing.assert_allclose(positions(compiled), positions(python), rtol=0, atol=2e-5)
    assert np.abs(positions(python) - positions(plain)).max() > 1e-4


def _has_platform(name):
    return any(openmm.Platform.getPlatform(i).getName() == name for i in range(openmm.Platform.getNumPlatforms()))


@needs_plugin
@pytest.mark.parametrize("platform", ["OpenCL", "CUDA"])
def test_compiled_step_runs_on_a_device_platform_as_on_reference(setup, platform):
    """OpenCL and CUDA keep positions in device memory in their own atom order; the kernel reaches them through
    ContextImpl and gives the Reference trajectory. Torch runs on the Context's GPU on CUDA with a CUDA torch."""
    if not _has_platform(platform):
        pytest.skip(f"no {platform} platform (OpenCL on a CPU: apt install pocl-opencl-icd)")
    built, beadmap, model = setup
    bound = 10.0 * unit.nanometer
    reference = simulation(built, model, "compiled", "Reference", max_displacement=bound)
    device = simulation(built, model, "compiled", platform, properties={"Precision": "double"},
                        max_displacement=bound)
    on_gpu = platform == "CUDA" and torch.cuda.is_available()
    assert device.integrator.getDevice() == ("cuda:0" if on_gpu else "cpu")
    assert reference.integrator.getDevice() == "cpu"
    for _ in range(20):
        reference.step(1)
        device.step(1)
    # host torch: the same float32 arithmetic as Reference; GPU torch: other reduction orders (looser)
    tolerance = 1e-3 if on_gpu else 2e-5
    np.testing.assert_allclose(positions(device), positions(reference), rtol=0, atol=tolerance)
    np.testing.assert_allclose(device.integrator.get_history(), reference.integrator.get_history(), rtol=0,
                               atol=tolerance)
    assert device.integrator.getStepIndex() == 20


@needs_plugin
def test_other_seed_gives_other_trajectory(setup):
    built, beadmap, model = setup
    a, b = simulation(built, model, "compiled", seed=7), simulation(built, model, "compiled", seed=8)
    a.step(2)
    b.step(2)
    assert np.abs(positions(a) - positions(b)).max() > 1e-3


@needs_plugin
def test_checkpoint_round_trip_is_bit_exact(setup):
    built, beadmap, model = setup
    sim = simulation(built, model, "compiled", platform="CPU", seed=3)
    sim.step(4)
    checkpoint = sim.context.createCheckpoint()
    sim.step(5)
    expected, expected_history = positions(sim), sim.integrator.get_history()
    resumed = simulation(built, model, "compiled", platform="CPU", seed=99)  # the checkpoint carries the seed
    resumed.context.loadCheckpoint(checkpoint)
    assert resumed.integrator.seed == 3 and resumed.integrator.getStepIndex() == 4
    resumed.step(5)
    assert np.array_equal(positions(resumed), expected)
    assert np.array_equal(resumed.integrator.get_history(), expected_history)


@needs_plugin
def test_serialization_round_trip_restores_the_integrator(setup):
    built, beadmap, model = setup
    sim = simulation(built, model, "compiled", seed=5, max_displacement=1.5 * unit.nanometer)
    start = positions(sim)
    xml = openmm.XmlSerializer.serialize(sim.integrator)
    assert 'type="CGMLIntegrator"' in xml
    restored = plugin.deserialize_integrator(xml)
    assert restored.seed == 5 and restored.getMaxDisplacement() == 1.5
    assert restored.getModelFile() == sim.integrator.getModelFile()
    assert restored.getStepSize() == sim.integrator.getStepSize()
    other = app.Simulation(sim.topology, sim.system, restored, openmm.Platform.getPlatformByName("Reference"))
    other.context.setPositions(start)
    sim.step(3)
    other.step(3)
    assert np.array_equal(positions(other), positions(sim))


@needs_plugin
def test_blow_up_keeps_the_last_good_state(setup):
    built, beadmap, model = setup
    sim = simulation(built, model, "compiled", max_displacement=1e-6)
    before = positions(sim)
    with pytest.raises(SimulationBlowUp, match="learned step 0: bead"):
        sim.step(1)
    assert np.array_equal(positions(sim), before)


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


@needs_plugin
def test_bad_model_files_and_bead_count_mismatch_give_one_line_errors(setup, tmp_path):
    built, beadmap, model = setup
    with pytest.raises(ValueError) as err:
        plugin.CGMLIntegrator(str(tmp_path / "missing.pt"))
    assert "does not exist" in one_line(err)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torchscript archive")
    with pytest.raises(ValueError) as err:
        plugin.CGMLIntegrator(str(corrupt))
    assert "not a TorchScript file" in one_line(err)
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    with pytest.raises(ValueError) as err:
        plugin.CGMLIntegrator(str(plain))
    assert "is not a learned step" in one_line(err)
    sim = simulation(built, model, "compiled")
    system = openmm.System()
    for _ in range(beadmap.n_beads + 1):
        system.addParticle(10.0)
    integrator = plugin.CGMLIntegrator(sim.integrator.getModelFile())
    with pytest.raises(openmm.OpenMMException) as err:
        openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    assert f"is for {beadmap.n_beads} beads but the System has {beadmap.n_beads + 1}" in one_line(err)


@needs_plugin
def test_exported_step_reproduces_the_python_rollout(setup, tmp_path):
    """The exported file and the kernel's noise give exactly the pure-torch rollout of step.py."""
    from openmm_cgml.simulate import rollout

    built, beadmap, model = setup
    sim = simulation(built, model, "compiled", seed=11)
    step = torch.jit.load(sim.integrator.getModelFile())
    x0 = torch.as_tensor(positions(sim), dtype=torch.float32)
    box = torch.tensor(np.diag(built.box_vectors.value_in_unit(unit.nanometer)), dtype=torch.float32)
    frames, history = rollout(step, x0, torch.zeros(2, beadmap.n_beads, 3), box, seed=11, n_steps=3)
    sim.step(3)
    assert np.array_equal(positions(sim), frames[-1].numpy().astype(np.float64))
    assert np.array_equal(sim.integrator.get_history(), history.numpy().astype(np.float64))


def test_without_a_toolchain_auto_falls_back_to_the_python_integrator_in_one_line(setup, monkeypatch, capsys):
    built, beadmap, model = setup
    helper = plugin._build_helper()
    monkeypatch.setattr(helper, "_tool", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(helper.BuildError, match="no cmake found"):
        helper.toolchain()
    monkeypatch.setattr(plugin, "is_available", lambda build=True: False)
    monkeypatch.setattr(plugin, "_unavailable", "cannot build the compiled plugin: no cmake found")
    cg = plugin.coarse_grain_simulation(built.topology, built.system, built.positions, model,
                                        box_vectors=built.box_vectors, kernel="auto")
    assert isinstance(cg.integrator, openmm.CustomIntegrator)  # the Python bridge
    assert any(isinstance(f, openmm.PythonForce) for f in cg.system.getForces())
    notice = capsys.readouterr().err.strip().splitlines()
    assert notice == ["openmm-cgml: using the Python integrator (cannot build the compiled plugin: no cmake found)"]
