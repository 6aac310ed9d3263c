"""CG datasets (HDF5) written by the reference runner and read by training and analysis."""
from .dataset import CGDataset, CGDatasetWriter, contact_distances, write_dataset

__all__ = ["CGDataset", "CGDatasetWriter", "contact_distances", "write_dataset"]
