"""Two-stage DCM distillation on Ray Train.

    ray job submit -- python jobs/distill.py --recipe wan2.1-1.3b --data s3://bucket/latents --output s3://bucket/dcm
    python jobs/distill.py --recipe tiny --data outputs/tiny-data --synthetic-data 32 --output outputs/tiny-dcm

Stage I (semantic expert) writes ``<output>/semantic``; Stage II (detail expert) writes ``<output>/final`` (a DCM
model folder the batch job and the endpoint load) and, for Wan, ``<output>/export`` (stock diffusers). Checkpoints go
to ``--storage-path``/``<run-name>-<stage>``; re-running the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

from dcm.cluster.runtime import init_ray, shutdown_ray
from dcm.distill.config import STAGES, STRATEGIES
from dcm.distill.recipes import RECIPES as CORE_RECIPES
from dcm_demo.recipes import RECIPES as DEMO_RECIPES

logger = logging.getLogger("distill")
RECIPES = CORE_RECIPES | DEMO_RECIPES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="tiny", help="named defaults (spec §9)")
    p.add_argument("--teacher", help="teacher: preset, diffusers folder or hub id (default: the recipe's)")
    p.add_argument("--data", required=True, help="training data (dcm.data format), local or s3://")
    p.add_argument("--output", required=True, help="output folder or s3:// prefix")
    p.add_argument(
        "--synthetic-data",
        type=int,
        metavar="N",
        help="first write N synthetic samples to --data with the teacher's VAE/text encoder",
    )
    p.add_argument("--synthetic-frames", type=int, default=17, help="frames of synthetic clips")
    p.add_argument("--synthetic-size", type=int, default=64, help="height and width of synthetic clips")
    p.add_argument("--stage", choices=[*STAGES, "both"], help="stages to run (default: the recipe's; most run both)")
    p.add_argument("--semantic-steps", type=int)
    p.add_argument("--detail-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--semantic-lr", type=float)
    p.add_argument("--detail-lr", type=float)
    p.add_argument("--disc-lr", type=float)
    p.add_argument("--boundary-index", type=int, help="k: grid indices >= k are the semantic expert's")
    p.add_argument("--grid-steps", type=int, help="points of the Euler grid (default 50)")
    p.add_argument("--shift", type=float, help="flow-matching shift (default 17)")
    p.add_argument("--cfg-weight", type=float, help="teacher CFG weight w (0 = none)")
    p.add_argument("--lora-rank", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None, help="train on GPUs")
    p.add_argument("--strategy", choices=STRATEGIES)
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--validate-every", type=int, help="rank 0 writes a validation MP4 every N steps (0 = never)")
    p.add_argument("--max-failures", type=int, help="worker failures Ray Train recovers from")
    p.add_argument("--storage-path", help="Ray Train run folder, local or s3://")
    p.add_argument("--run-name", help="run name; the same name resumes the same run")
    p.add_argument("--seed", type=int)
    p.add_argument("--address", help="Ray address (default: $RAY_ADDRESS or a local Ray on 127.0.0.1)")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    recipe = RECIPES[args.recipe]
    kwargs = {"data": args.data, "output": args.output}
    if args.teacher:
        kwargs["teacher"] = args.teacher
    config = recipe(**kwargs)
    schedule = {k: v for k, v in {"boundary_index": args.boundary_index, "num_grid_steps": args.grid_steps,
                                  "shift": args.shift}.items() if v is not None}  # fmt: skip
    semantic, detail = config.semantic, config.detail
    if args.semantic_steps is not None:
        semantic = replace(semantic, num_steps=args.semantic_steps)
    if args.semantic_lr is not None:
        semantic = replace(semantic, optimizer=replace(semantic.optimizer, lr=args.semantic_lr))
    if args.detail_steps is not None:
        detail = replace(detail, num_steps=args.detail_steps)
    if args.detail_lr is not None:
        detail = replace(detail, optimizer=replace(detail.optimizer, lr=args.detail_lr))
    if args.disc_lr is not None:
        detail = replace(detail, disc_optimizer=replace(detail.disc_optimizer, lr=args.disc_lr))
    overrides = {
        "stages": None if args.stage is None else STAGES if args.stage == "both" else (args.stage,),
        "schedule": replace(config.schedule, **schedule),
        "semantic": semantic,
        "detail": detail,
        "batch_size": args.batch_size,
        "teacher_cfg_weight": args.cfg_weight,
        "num_workers": args.num_workers,
        "use_gpu": args.gpu,
        "strategy": args.strategy,
        "activation_checkpointing": args.activation_checkpointing,
        "checkpoint_every": args.checkpoint_every,
        "validate_every": args.validate_every,
        "max_failures": args.max_failures,
        "storage_path": args.storage_path,
        "run_name": args.run_name,
        "seed": args.seed,
    }
    if args.lora_rank is not None:
        overrides["detail_expert"] = replace(config.detail_expert, lora_rank=args.lora_rank,
                                             lora_alpha=2.0 * args.lora_rank)  # fmt: skip
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    owns_ray = False
    try:
        config = build_config(args)
        if args.synthetic_data:
            from dcm.io.model_folder import load_pipeline
            from dcm_demo.synthetic import write_synthetic_dataset

            meta = write_synthetic_dataset(load_pipeline(config.teacher), config.data, num_samples=args.synthetic_data,
                                           num_frames=args.synthetic_frames, height=args.synthetic_size,
                                           width=args.synthetic_size, seed=config.seed)  # fmt: skip
            logger.info("wrote %d synthetic samples %s to %s", meta["num_samples"], meta["latent_shape"], config.data)
        from dcm.cluster.train import check_config, run_distillation

        check_config(config)  # bad input fails here, before any worker starts
        owns_ray = init_ray(args.address)
        results = run_distillation(config)
    except (ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    finally:
        if owns_ray:
            shutdown_ray()
    for stage, metrics in results.items():
        shown = {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
        print(f"{stage}: {shown}")
    print(f"model: {config.output.rstrip('/')}/final" if "detail" in config.stages else f"model: {config.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
