"""A synthetic world of moving coloured shapes and ShapesBench, its pixel-only evaluator."""
