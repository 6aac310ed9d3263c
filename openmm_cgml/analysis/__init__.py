"""openmm_cgml.analysis: diffusion, structure and relaxation of (CG) trajectories.

Pure functions over NumPy arrays (positions nm, times ps, masses amu; ``openmm.unit`` quantities are
accepted and converted). Orthorhombic boxes are given as edge lengths, (3,) or one row per frame.
"""
from .collisions import COLLISION_FRACTION, collision_count, collision_rate, collision_thresholds, count_collisions
from .comparison import (compare_diffusivities, dataset_msd_exponents, diffusivity_comparison,
                         format_diffusivity_table, species_positions)
from .correlation import (
    StretchedExponential,
    autocorrelation,
    fit_stretched_exponential,
    integrated_time,
    stretched_exponential_mean_time,
)
from .divergence import js_divergence
from .plots import plot_acf, plot_msd, plot_rdf, plot_rg2_hist
from .regime import (
    MIN_DIFFUSIVE_EXPONENT,
    DiffusiveFit,
    NotDiffusiveError,
    diffusive_coefficient,
    msd_exponent,
    msd_exponent_stderr,
    msd_exponents_by_species,
    reported_diffusivity,
    reported_diffusivity_of_segments,
)
from .report import analyze_trajectory, format_table, species_diffusion
from .structure import (
    bond_lengths,
    coordination_number,
    first_peak,
    make_molecules_whole,
    radius_of_gyration_squared,
    rdf,
)
from .transport import (
    NM2_PER_PS_IN_CM2_PER_S,
    DiffusionFit,
    diffusion_by_species,
    diffusion_coefficient,
    independent_segments,
    msd,
    msd_per_particle,
    species_msd_by_segment,
    unwrap,
)

__all__ = [
    "MIN_DIFFUSIVE_EXPONENT",
    "DiffusiveFit",
    "NotDiffusiveError",
    "diffusive_coefficient",
    "msd_exponent",
    "msd_exponent_stderr",
    "msd_exponents_by_species",
    "reported_diffusivity",
    "reported_diffusivity_of_segments",
    "NM2_PER_PS_IN_CM2_PER_S",
    "COLLISION_FRACTION",
    "DiffusionFit",
    "StretchedExponential",
    "analyze_trajectory",
    "autocorrelation",
    "bond_lengths",
    "coordination_number",
    "collision_count",
    "collision_rate",
    "collision_thresholds",
    "count_collisions",
    "diffusion_by_species",
    "diffusion_coefficient",
    "diffusivity_comparison",
    "compare_diffusivities",
    "dataset_msd_exponents",
    "species_positions",
    "first_peak",
    "independent_segments",
    "fit_stretched_exponential",
    "format_diffusivity_table",
    "format_table",
    "species_diffusion",
    "integrated_time",
    "js_divergence",
    "make_molecules_whole",
    "msd",
    "msd_per_particle",
    "plot_acf",
    "plot_msd",
    "plot_rdf",
    "plot_rg2_hist",
    "radius_of_gyration_squared",
    "rdf",
    "species_msd_by_segment",
    "stretched_exponential_mean_time",
    "unwrap",
]
