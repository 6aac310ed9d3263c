"""openmm_cgml.reference"""
