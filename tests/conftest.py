"""Shared fixtures: tiny systems built once per test session."""
import pytest
import torch
from openmm import unit

# The test models are tiny: one intra-op thread is fastest and avoids oversubscribing small CI machines
# (measured on 2 shared cores: 2 threads made a small matmul ~270x slower).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_peo_litfsi():
    """2 x CH3O(CH2CH2O)3CH3 + 1 LiTFSI (76 atoms), briefly equilibrated at 400 K."""
    from openmm_cgml.systems import build_peo_litfsi

    return build_peo_litfsi(
        n_chains=2, eo_per_chain=3, n_salt=1, temperature=400 * unit.kelvin, seed=1, equilibration_ps=2.0,
        platform="Reference", progress=False,
    )
