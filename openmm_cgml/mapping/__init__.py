"""METIS bead mapping: OpenMM Topology/System -> BeadMap; PBC-aware position and trajectory mapping."""
from .beadmap import BeadMap, box_matrix, minimum_image_np

__all__ = ["BeadMap", "box_matrix", "minimum_image_np"]
