"""openmm_cgml.nn"""
