"""DCM Platform: dual-expert consistency distillation and few-step video generation on Ray.

Importing this package does nothing but define names; see README.md for the jobs.
"""

__version__ = "0.1.0"
