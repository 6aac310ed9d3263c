"""CG datasets (HDF5) written by the reference runner and read by training and analysis."""
from .contacts import (CONTACTS_FILE, closest_approach, contact_distances, contact_table, read_contacts,
                       write_contacts)
from .dataset import CGDataset, CGDatasetWriter, write_dataset

__all__ = ["CONTACTS_FILE", "CGDataset", "CGDatasetWriter", "closest_approach", "contact_distances", "contact_table",
           "read_contacts", "write_contacts", "write_dataset"]
