"""The demo stack, apart from the core library: the shapes world, ShapesBench, and the demo VAE and teacher training.

The core library (``dcm``) needs none of it: the bundled demo model is an ordinary DCM folder in ``dcm/assets``.
"""
