"""openmm_cgml.systems: builders of all-atom and bead-spring OpenMM models, and the shipped PEO/LiTFSI force field.

Every builder returns a :class:`BuiltSystem` (topology, system, positions, box, temperature, metadata) that
saves to and loads from a directory; :func:`default_box` loads the shipped, pre-equilibrated default
PEO/LiTFSI box without building it.
"""
from .bead_spring import build_bead_spring
from .built import BuiltSystem
from .default_box import DEFAULT_BOX_BUILD, default_box
from .peo_litfsi import (PEO_LITFSI_XML, build_peo_litfsi, peo_litfsi_forcefield, peo_litfsi_system,
                         peo_litfsi_topology, scale_ion_charges, use_geometric_mixing)
from .sequences import (SEQUENCE_CLASSES, SequenceClass, build_sequence_chains, generate_sequences,
                        sequence_statistics)

__all__ = ["BuiltSystem", "build_peo_litfsi", "default_box", "DEFAULT_BOX_BUILD", "build_bead_spring",
           "peo_litfsi_forcefield", "peo_litfsi_system", "peo_litfsi_topology", "scale_ion_charges", "use_geometric_mixing", "PEO_LITFSI_XML",
           "SEQUENCE_CLASSES", "SequenceClass", "build_sequence_chains", "generate_sequences", "sequence_statistics"]
