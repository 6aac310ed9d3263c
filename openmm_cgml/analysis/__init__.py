"""openmm_cgml.analysis"""
