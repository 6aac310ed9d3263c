"""Shared fixtures: tiny systems built once per test session."""
import pytest
import torch
from openmm import unit

# The test models are tiny: one intra-op thread is fastest and avoids oversubscribing small CI machines
# (measured on 2 shared cores: 2 threads made a small matmul ~270x slower).
torch.set_num_threads(1)

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENMM_CPU_THREADS")


@pytest.fixture(autouse=True)
def _no_thread_settings_leak():
    """Verbs run in-process with ``--threads`` (the demo's default is 1) set these process-wide; a leaked
    OPENMM_CPU_THREADS changes the CPU platform's PME bits in later tests (test_faults' bit-exact resume)."""
    import os

    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    threads = torch.get_num_threads()
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_peo_litfsi():
    """2 x CH3O(CH2CH2O)3CH3 + 1 LiTFSI (76 atoms), briefly equilibrated at 400 K."""
    from openmm_cgml.systems import build_peo_litfsi

    return build_peo_litfsi(
        n_chains=2, eo_per_chain=3, n_salt=1, temperature=400 * unit.kelvin, seed=1, equilibration_ps=2.0,
        platform="Reference", progress=False,
    )


@pytest.fixture(scope="module", params=[False, True], ids=["bead_noise", "molecule_noise"])
def small_model(request):
    """An untrained 6-dimer periodic model (bead or molecule noise) and its BeadMap, one per test module."""
    from test_models import _pair_beadmap

    from openmm_cgml.training.model import BeadVocabulary, CGModel, ModelConfig

    torch.manual_seed(1)
    bm = _pair_beadmap(6, periodic=True)
    config = ModelConfig(embed_dim=8, embed_hidden=8, embed_layers=1, hidden=16, n_layers=2, n_rbf=8, cutoff=0.5,
                         history_length=2, score_hidden=16, score_layers=1, n_sigmas=6, sigma_max=0.2,
                         sigma_min=0.005, refine_levels=2, refine_steps_per_level=2, refine_step_size=1e-6,
                         timestep_ps=100.0, periodic=True, velocity_scale=0.05, accel_scale=0.05,
                         molecule_noise=request.param)
    return CGModel(config, BeadVocabulary(bm.type_names, bm.type_graphs)).eval(), bm
