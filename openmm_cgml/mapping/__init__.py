"""openmm_cgml.mapping"""
