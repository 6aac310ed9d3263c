"""openmm_cgml.systems"""
