"""DCM distillation without Ray: objectives, the train steps, wiring, checkpoints and the memory plan.

    consistency.py, temporal.py, adversarial.py   the objectives, one file each (pure torch)
    discriminator.py, features.py                 Stage II's discriminator and the teacher's feature taps
    steps.py                                      one train step per stage: what the Ray loop and the tests call
    parallel.py                                   activation checkpointing, FSDP2, DDP, optimizers
    build.py, validation.py                       one stage's models on one worker; validation samples
    checkpoint.py                                 sharded checkpoints (torch.distributed.checkpoint), run identity
    memory.py, preflight.py                       the memory plan; checks before any worker starts
    config.py, recipes.py                         DistillConfig and the named runs

The Ray side (the worker loop, the driver) is :mod:`dcm.cluster.train`; the job is ``jobs/distill.py``.
"""
