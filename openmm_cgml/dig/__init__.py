"""openmm_cgml.dig"""
