"""Batch generation with Ray Data: a Parquet manifest of prompts in, one MP4 per row out (docs/batch.md).

    python jobs/batch_generate.py --manifest examples/prompts.parquet
    python jobs/batch_generate.py --manifest examples/prompts.parquet --dry-run
    ray job submit -- python jobs/batch_generate.py --manifest s3://bucket/prompts.parquet --output s3://bucket/run1

Writes ``<output>/<id>.mp4`` and its provenance ``<id>.json`` per row, ``<output>/results/<run-id>/part-*.parquet``
(this run's record of every row: ok / error / skipped, with its row number) while it runs, then
``<output>/results.parquet`` (one row per id over every run) and the gallery (``index.html``, ``index-2.html``, ...).
Re-running skips rows whose video exists without starting Ray; an output made by another model is refused unless
``--overwrite``. Checks that need no Ray (model, output, manifest) run first: bad input is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dcm.cli import job_parser, run_job
from dcm.cluster.batch import (
    DEFAULT_CPUS_PER_ACTOR,
    DEFAULT_GALLERY_MAX_PAGES,
    DEFAULT_GALLERY_PAGE_SIZE,
    DEFAULT_PART_SECONDS,
    DEFAULT_ROWS_PER_BLOCK,
    BatchConfig,
    dry_run,
    run_batch,
)
from dcm.generation import RequestLimits
from dcm.manifest import JobDefaults
from dcm.presets import DEFAULT_MODEL

DEFAULT_OUTPUT_ROOT = "outputs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser(__doc__, ray=True)
    p.add_argument("--manifest", required=True, help="Parquet file or folder, local or s3://")
    p.add_argument("--model", default=DEFAULT_MODEL, help="preset, model folder, s3:// folder or hub id")
    p.add_argument("--output", help="local folder or s3://bucket/prefix; None: outputs/<run name>")
    p.add_argument("--run-name", help="name of the default output folder; None: the manifest's file name")
    p.add_argument("--overwrite", action="store_true", help="regenerate rows whose video exists (any model's)")
    p.add_argument("--dry-run", action="store_true", help="run every check and print the plan; generate nothing")
    p.add_argument("--no-gallery", action="store_true", help="do not write the gallery pages")
    g = p.add_argument_group("defaults for rows that leave a column empty (None: the model's own)")
    g.add_argument("--seed", type=int, default=0, help="seed")
    g.add_argument("--negative-prompt", help="negative prompt (used with guidance > 1)")
    g.add_argument("--num-frames", type=int, help="frames (4n+1)")
    g.add_argument("--height", type=int, help="height in pixels")
    g.add_argument("--width", type=int, help="width in pixels")
    g.add_argument("--steps", type=int, dest="num_inference_steps", metavar="STEPS", help="sampler steps")
    g.add_argument("--fps", type=int, help="frames per second of the MP4s")
    limits = RequestLimits()
    g.add_argument("--max-prompt-chars", type=int, default=limits.max_prompt_chars, help="longest prompt allowed")
    r = p.add_argument_group("resources and scale")
    r.add_argument("--concurrency", type=int, default=1, help="number of generator actors")
    r.add_argument("--num-gpus-per-actor", type=float, default=0.0, help="1 for one GPU per actor; 0 runs on CPU")
    r.add_argument("--num-cpus-per-actor", type=float, default=DEFAULT_CPUS_PER_ACTOR, help="CPUs per actor")
    r.add_argument("--batch-size", type=int, default=4, help="rows per actor call (compatible rows share a run)")
    r.add_argument("--rows-per-block", type=int, default=DEFAULT_ROWS_PER_BLOCK,
                   help="most rows per Ray Data block; records and progress arrive a block at a time")  # fmt: skip
    r.add_argument("--max-retries", type=int, default=3, help="restarts of a dead actor; its block is retried")
    r.add_argument(
        "--results-every",
        type=float,
        default=DEFAULT_PART_SECONDS,
        metavar="SECONDS",
        help="write this run's records to results/<run-id>/ at least this often (0: after every block)",
    )
    r.add_argument("--gallery-page-size", type=int, default=DEFAULT_GALLERY_PAGE_SIZE, help="rows per gallery page")
    r.add_argument("--gallery-pages", type=int, default=DEFAULT_GALLERY_MAX_PAGES,
                   help="gallery pages written (the rest of the rows are in results.parquet)")  # fmt: skip
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> BatchConfig:
    run_name = args.run_name or Path(args.manifest.rstrip("/")).stem
    defaults = JobDefaults(
        seed=args.seed, negative_prompt=args.negative_prompt, num_frames=args.num_frames, height=args.height,
        width=args.width, num_inference_steps=args.num_inference_steps, fps=args.fps,
    )  # fmt: skip
    return BatchConfig(
        manifest=args.manifest,
        output=args.output or str(Path(DEFAULT_OUTPUT_ROOT, run_name)),
        model=args.model,
        defaults=defaults,
        concurrency=args.concurrency,
        num_gpus_per_actor=args.num_gpus_per_actor,
        num_cpus_per_actor=args.num_cpus_per_actor,
        batch_size=args.batch_size,
        rows_per_block=args.rows_per_block,
        overwrite=args.overwrite,
        max_actor_restarts=args.max_retries,
        endpoint_url=args.s3_endpoint_url,
        gallery=not args.no_gallery,
        gallery_page_size=args.gallery_page_size,
        gallery_max_pages=args.gallery_pages,
        part_seconds=args.results_every,
        limits=RequestLimits(max_prompt_chars=args.max_prompt_chars),
    )


def main(args: argparse.Namespace) -> int:
    config = build_config(args)
    if args.dry_run:
        print("\n".join(dry_run(config).lines()))
        return 0
    summary = run_batch(config, address=args.address)  # Ray starts only when a row is left to generate
    print(summary.line())
    print(f"results: {summary.results_uri}")
    if summary.gallery_uri:
        print(f"gallery: {summary.gallery_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main, parse_args()))
