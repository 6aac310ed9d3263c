"""DiG: independent equilibrium structures from a diffusion model; densities, free energies, guidance, paths."""
from .commands import sample_main
from .paths import interpolate, kabsch_align, write_dcd
from .sampler import DiGSampler
from .seeding import initial_states

__all__ = ["DiGSampler", "initial_states", "interpolate", "kabsch_align", "sample_main", "write_dcd"]
