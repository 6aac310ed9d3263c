"""openmm-cgml: learned coarse-grained molecular dynamics for OpenMM.

Pipeline (data flows one way): systems -> mapping -> reference -> data -> nn -> training
-> simulate / dig -> analysis -> cli.
"""
__version__ = "0.1.0"
