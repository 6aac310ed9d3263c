"""openmm_cgml.data"""
