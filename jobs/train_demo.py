"""Train the demo stack on the shapes world, on a CPU: VAE -> data -> teacher -> DCM -> baselines.

    python jobs/train_demo.py --work-dir outputs/demo                 # every stage, each resumable by its folder
    python jobs/train_demo.py --work-dir outputs/demo --stage vae --vae-steps 1500
    python jobs/train_demo.py --work-dir outputs/demo --stage package # ship dcm/final + dcm/export

Stages and their folders: see dcm_demo.stages. With --stage all a stage whose folder exists is skipped, so an
interrupted run continues where it stopped (the teacher stage also resumes from its own checkpoint); a named stage
is re-run. Errors in the arguments print one line and exit 2 (--debug shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import replace

from dcm.cluster.runtime import ray_session
from dcm_demo.recipes import DEMO_STEPS, TEACHER_RECIPES
from dcm_demo.stages import (
    DEFAULT_DATA_CLIPS,
    PACKAGE_STAGE,
    RAY_STAGES,
    SCALES,
    STAGES,
    DemoRun,
    logger,
    run_stages,
)
from dcm_demo.training import DemoVAEConfig
from dcm_demo.world import WorldConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="outputs/demo")
    p.add_argument("--stage", choices=[*STAGES, PACKAGE_STAGE, "all"], default="all")
    p.add_argument("--scale", choices=sorted(SCALES), default="demo", help="model sizes ('test': smoke run)")
    p.add_argument("--teacher", choices=sorted(TEACHER_RECIPES), default=None,
                   help="teacher recipe (dcm_demo.recipes; default: the --scale's teacher)")  # fmt: skip
    p.add_argument("--size", type=int, default=WorldConfig().size, help="clip height and width")
    p.add_argument("--frames", type=int, default=WorldConfig().num_frames, help="frames per clip (1 + 4k)")
    p.add_argument("--vae-steps", type=int, default=DemoVAEConfig().num_steps, help="VAE steps on short clips")
    p.add_argument("--vae-finetune-steps", type=int, default=DemoVAEConfig().finetune_steps,
                   help="VAE fine-tune steps on full-length clips")  # fmt: skip
    p.add_argument("--data-clips", type=int, default=DEFAULT_DATA_CLIPS, help="clips the teacher and DCM train on")
    p.add_argument("--teacher-steps", type=int, default=None, help="default: the teacher recipe's")
    p.add_argument("--snapshot-every", type=int, default=0, help="also save the teacher every N steps (0: never)")
    p.add_argument("--semantic-steps", type=int, default=DEMO_STEPS, help="DCM stage I steps")
    p.add_argument("--detail-steps", type=int, default=DEMO_STEPS, help="DCM stage II steps")
    p.add_argument("--debug", action="store_true", help="show tracebacks of argument errors")
    return p.parse_args(argv)


def build_run(args: argparse.Namespace) -> DemoRun:
    """The run's configs from the arguments (the only place flags become config fields)."""
    world = WorldConfig(size=args.size, num_frames=args.frames, pixels_per_frame=args.size / 64 * 1.5)
    vae, teacher = SCALES[args.scale]
    teacher = TEACHER_RECIPES[args.teacher]() if args.teacher else teacher
    teacher = replace(teacher, num_steps=args.teacher_steps) if args.teacher_steps else teacher
    stages = (*STAGES,) if args.stage == "all" else (args.stage,)
    return DemoRun(
        work_dir=args.work_dir, stages=stages, rerun=args.stage != "all", world=world,
        vae=replace(vae, num_steps=args.vae_steps, finetune_steps=args.vae_finetune_steps), teacher=teacher,
        data_clips=args.data_clips, semantic_steps=args.semantic_steps, detail_steps=args.detail_steps,
        snapshot_every=args.snapshot_every,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    # 1. Arguments -> configs
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        run = build_run(args)
        os.makedirs(run.work_dir, exist_ok=True)
        total = time.perf_counter()
        # 2. Local stages
        run_stages(run, tuple(s for s in run.stages if s not in RAY_STAGES))
        # 3. Distillation stages, on one Ray: a local one on 127.0.0.1, or $RAY_ADDRESS under `ray job submit`
        ray_stages = tuple(s for s in run.stages if s in RAY_STAGES)
        if ray_stages:
            with ray_session():
                run_stages(run, ray_stages)
    except ValueError as error:
        if args.debug:
            raise
        print(f"train_demo: {error}", file=sys.stderr)
        return 2
    logger.info("all requested stages done in %.1f s", time.perf_counter() - total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
