"""CG datasets (HDF5) written by the reference runner and read by training and analysis."""
from .dataset import CGDataset, CGDatasetWriter, write_dataset

__all__ = ["CGDataset", "CGDatasetWriter", "write_dataset"]
