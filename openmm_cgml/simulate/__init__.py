"""openmm_cgml.simulate"""
