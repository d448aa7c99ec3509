"""Batch generation with Ray Data: a Parquet manifest of prompts in, one MP4 per row out.

    python jobs/batch_generate.py --manifest examples/prompts.parquet
    ray job submit -- python jobs/batch_generate.py --manifest s3://bucket/prompts.parquet --output s3://bucket/run1

Writes ``<output>/<id>.mp4`` per row, ``<output>/results.parquet`` (one row per manifest row: status ok / error /
skipped, URI, bytes, seconds, parameters, model id and version) and ``<output>/index.html`` (a gallery).
Re-running the same command skips rows whose video exists (``--overwrite`` regenerates them).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from dcm.cluster.batch import DEFAULT_CPUS_PER_ACTOR, BatchConfig, dry_run, run_batch
from dcm.cluster.runtime import init_ray, shutdown_ray
from dcm.generation import RequestLimits
from dcm.manifest import JobDefaults
from dcm.presets import DEFAULT_MODEL

logger = logging.getLogger("batch_generate")
DEFAULT_OUTPUT_ROOT = "outputs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="Parquet file or folder, local or s3://")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"preset, model folder, s3:// folder or hub id ({DEFAULT_MODEL})"
    )
    p.add_argument("--output", help="local folder or s3://bucket/prefix (default: outputs/<run-name>/)")
    p.add_argument("--run-name", help="name of the default output folder (default: the manifest's file name)")
    p.add_argument("--s3-endpoint-url", help="S3-compatible endpoint (MinIO, R2); default: $AWS_ENDPOINT_URL")
    g = p.add_argument_group("defaults for rows that leave a column empty (otherwise the model's defaults)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--negative-prompt")
    g.add_argument("--num-frames", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--steps", type=int, dest="num_inference_steps")
    g.add_argument("--fps", type=int)
    r = p.add_argument_group("resources")
    r.add_argument("--concurrency", type=int, default=1, help="number of generator actors")
    r.add_argument("--num-gpus-per-actor", type=float, default=0.0, help="1 for one GPU per actor; 0 runs on CPU")
    r.add_argument("--num-cpus-per-actor", type=float, default=DEFAULT_CPUS_PER_ACTOR)
    r.add_argument("--batch-size", type=int, default=4, help="rows per actor call (compatible rows share a run)")
    r.add_argument("--max-retries", type=int, default=3, help="restarts of a dead actor; its rows are retried")
    r.add_argument("--address", help="Ray address (default: $RAY_ADDRESS or a local Ray on 127.0.0.1)")
    p.add_argument("--overwrite", action="store_true", help="regenerate rows whose video already exists")
    p.add_argument("--dry-run", action="store_true", help="validate the manifest and print the plan; generate nothing")
    p.add_argument("--no-gallery", action="store_true", help="do not write index.html")
    p.add_argument("--max-prompt-chars", type=int, default=RequestLimits().max_prompt_chars)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> BatchConfig:
    run_name = args.run_name or Path(args.manifest.rstrip("/")).stem
    defaults = JobDefaults(
        seed=args.seed, negative_prompt=args.negative_prompt, num_frames=args.num_frames, height=args.height,
        width=args.width, num_inference_steps=args.num_inference_steps, fps=args.fps,
    )  # fmt: skip
    return BatchConfig(
        manifest=args.manifest,
        output=args.output or os.path.join(DEFAULT_OUTPUT_ROOT, run_name),
        model=args.model,
        defaults=defaults,
        concurrency=args.concurrency,
        num_gpus_per_actor=args.num_gpus_per_actor,
        num_cpus_per_actor=args.num_cpus_per_actor,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        max_actor_restarts=args.max_retries,
        endpoint_url=args.s3_endpoint_url,
        gallery=not args.no_gallery,
        limits=RequestLimits(max_prompt_chars=args.max_prompt_chars),
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.s3_endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = args.s3_endpoint_url  # pyarrow and Ray workers read it too
    owns_ray = False
    try:
        config = build_config(args)
        if args.dry_run:
            report = dry_run(config)
            valid = int((report["status"] == "valid").sum())
            print(f"manifest {config.manifest}: {len(report)} rows, {valid} valid, {len(report) - valid} invalid")
            for row in report[report["status"] != "valid"].head(20).to_dict("records"):
                print(f"  invalid row id={row['id']!r}: {row['error']}")
            print(f"plan: model {config.model}, {config.concurrency} actor(s) x {config.num_gpus_per_actor} GPU, "
                  f"batch size {config.batch_size}, output {config.output}")  # fmt: skip
            return 0
        owns_ray = init_ray(args.address)
        summary = run_batch(config)
    except ValueError as err:
        logger.error("%s", err)
        return 2
    finally:
        if owns_ray:
            shutdown_ray()
    print(summary.line())
    if summary.gallery_uri:
        print(f"gallery: {summary.gallery_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
