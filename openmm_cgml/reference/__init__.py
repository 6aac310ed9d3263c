"""All-atom reference MD and the CG datasets made from it."""
from .coarse_grain import coarse_grain_trajectory, unwrap_bead_trajectory
from .campaign import Campaign, CampaignSystem, campaign_status, load_campaign, run_campaign
from .runner import ReferenceConfig, reference_status, repartition_hydrogen_mass, run_reference

__all__ = ["ReferenceConfig", "run_reference", "reference_status", "coarse_grain_trajectory", "unwrap_bead_trajectory",
           "repartition_hydrogen_mass",
           "Campaign", "CampaignSystem", "load_campaign", "run_campaign", "campaign_status"]
