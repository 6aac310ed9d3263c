"""openmm_cgml.training"""
