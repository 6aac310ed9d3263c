"""The project's benchmarks: each module writes benchmarks/results/NAME.json; ``python -m benchmarks`` runs them all.

Run from the repository root: ``python -m benchmarks.NAME --help``. The modules share :mod:`benchmarks.common`.
"""
