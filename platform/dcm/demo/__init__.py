"""Training the demo stack on the shapes world: a tiny VAE and a tiny flow-matching Wan teacher (CPU-sized)."""
