"""Two-stage DCM distillation on Ray Train.

    python jobs/distill.py --recipe tiny --data outputs/tiny-data --output outputs/tiny-dcm
    python jobs/distill.py --recipe wan2.1-1.3b --data s3://bucket/latents --output s3://bucket/dcm --plan
    ray job submit --working-dir . -- python jobs/distill.py --recipe wan2.1-1.3b --data s3://bucket/latents \\
        --output s3://bucket/dcm

A recipe (``dcm.distill.recipes``, ``dcm_demo.recipes``) is the whole run; the flags below override a few
run-level fields. To vary anything else, write a recipe function. Stage I (semantic expert) writes
``<output>/semantic``; Stage II (detail expert) writes ``<output>/final`` (the DCM model the batch job and the
endpoint load) and, for Wan, ``<output>/export`` (stock diffusers). Checkpoints go to
``<output>/checkpoints/<run-name>-<stage>`` unless ``--storage-path`` says otherwise; submitting the same command
again resumes from the latest one. ``--plan`` prints the per-GPU memory plan and starts nothing. See
docs/distillation.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

from dcm.cli import job_parser, run_job
from dcm.distill.config import DETAIL_STAGE, FSDP, SEMANTIC_STAGE, STAGES, STRATEGIES, DistillConfig
from dcm.distill.recipes import RECIPES as CORE_RECIPES
from dcm_demo.recipes import RECIPES as DEMO_RECIPES

logger = logging.getLogger("distill")
RECIPES = CORE_RECIPES | DEMO_RECIPES
BOTH = "both"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser(__doc__, ray=True)
    p.add_argument("--recipe", required=True, choices=sorted(RECIPES), help="the run (dcm.distill.recipes)")
    p.add_argument("--data", required=True, help="training data (dcm.data format), local or s3://")
    p.add_argument("--output", required=True, help="output folder or s3:// prefix")
    p.add_argument("--teacher", help="preset, diffusers folder, s3:// folder or hub id (default: recipe)")
    p.add_argument("--stage", choices=[*STAGES, BOTH], help="stages to run (default: the recipe's)")
    p.add_argument("--semantic-steps", type=int, help="Stage I steps (default: the recipe's)")
    p.add_argument("--detail-steps", type=int, help="Stage II steps (default: the recipe's)")
    p.add_argument("--num-workers", type=int, help="Ray Train workers (default: the recipe's)")
    p.add_argument("--strategy", choices=STRATEGIES, help="ddp or fsdp (default: the recipe's)")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None, help="GPU workers (default: recipe)")
    p.add_argument("--max-failures", type=int, help="worker-group restarts Ray Train recovers from (default: recipe)")
    p.add_argument("--storage-path", help="checkpoint folder, local or s3:// (default: <output>/checkpoints)")
    p.add_argument("--run-name", help="run name; the same name, storage path and run resume (default: the recipe's)")
    p.add_argument("--seed", type=int, help="seed (default: the recipe's)")
    p.add_argument("--plan", action="store_true", help="print the memory plan per GPU and exit (no Ray, no workers)")
    p.add_argument("--gpu-memory-gb", type=float, help="one GPU's memory in GiB, for the plan (default: recipe)")
    p.add_argument("--ignore-memory-plan", action="store_true", help="start even when the plan says it does not fit")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> DistillConfig:
    """The recipe with the run-level overrides given on the command line."""
    kwargs = {"data": args.data, "output": args.output} | ({"teacher": args.teacher} if args.teacher else {})
    config = RECIPES[args.recipe](**kwargs)
    stages = {None: None, BOTH: STAGES, SEMANTIC_STAGE: (SEMANTIC_STAGE,), DETAIL_STAGE: (DETAIL_STAGE,)}[args.stage]
    steps = {"semantic": args.semantic_steps, "detail": args.detail_steps}
    overrides = {
        "stages": stages,
        "semantic": None if steps["semantic"] is None else replace(config.semantic, num_steps=steps["semantic"]),
        "detail": None if steps["detail"] is None else replace(config.detail, num_steps=steps["detail"]),
        "num_workers": args.num_workers,
        "strategy": args.strategy,
        "use_gpu": args.gpu,
        "max_failures": args.max_failures,
        "storage_path": args.storage_path,
        "run_name": args.run_name,
        "seed": args.seed,
        "gpu_memory_gb": args.gpu_memory_gb,
    }
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def warn_ineffective(args: argparse.Namespace, config: DistillConfig) -> None:
    """Flags that change nothing for this run say so (they are not errors: a recipe may be run on CPUs for a try)."""
    if not config.use_gpu and (args.gpu_memory_gb is not None or args.ignore_memory_plan) and not args.plan:
        logger.warning("--gpu-memory-gb / --ignore-memory-plan have no effect: this run uses no GPU")
    if config.strategy == FSDP and config.num_workers == 1:
        logger.warning("--strategy fsdp with one worker shards nothing: the one worker holds every parameter")


def main(args: argparse.Namespace) -> int:
    config = build_config(args)
    warn_ineffective(args, config)
    if args.plan:
        from dcm.distill.memory import format_plan
        from dcm.distill.preflight import check_inputs, plan_run

        print(format_plan(plan_run(config, check_inputs(config, require_data=False))))
        return 0
    from dcm.cluster.runtime import ray_session
    from dcm.cluster.train import prepare_distillation, train_stages
    from dcm.distill.build import STAGE_DIRS

    # Bad input fails here, before Ray starts: paths, teacher, data, memory plan, another run's folders.
    run = prepare_distillation(config, enforce_memory_plan=not args.ignore_memory_plan,
                               on_cluster=bool(args.address) or None)  # fmt: skip
    with ray_session(args.address):
        results = train_stages(run)
    for stage, metrics in results.items():
        shown = {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
        print(f"{stage}: {shown}")
    last = DETAIL_STAGE if DETAIL_STAGE in config.stages else SEMANTIC_STAGE
    print(f"model: {run.config.output.rstrip('/')}/{STAGE_DIRS[last]}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main, parse_args()))
