"""DCM distillation objectives, one file per objective (pure torch: no Ray, no I/O)."""
