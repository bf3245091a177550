"""ray_mtl: Ray-distributed scheduling of multi-task training under dataset imbalance.

Entry points: ``python -m ray_mtl.prepare`` (data), ``python -m ray_mtl.train`` (one run),
``python -m ray_mtl.tune`` (a sweep), ``python -m ray_mtl.report`` (the frontier report).
"""

__version__ = "0.1.0"
