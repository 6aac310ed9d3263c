"""Shared fixtures: tiny systems built once per test session."""
import pytest
from openmm import unit


@pytest.fixture(scope="session")
def tiny_peo_litfsi():
    """2 x CH3O(CH2CH2O)3CH3 + 1 LiTFSI (76 atoms), briefly equilibrated at 400 K."""
    from openmm_cgml.systems import build_peo_litfsi

    return build_peo_litfsi(
        n_chains=2, eo_per_chain=3, n_salt=1, temperature=400 * unit.kelvin, seed=1, equilibration_ps=2.0,
        platform="Reference", progress=False,
    )
