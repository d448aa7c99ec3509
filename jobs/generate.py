"""Generate a few videos from prompts on this machine (no Ray).

    python jobs/generate.py --prompt "a red circle moving left" --prompt "a blue square moving up"

Writes ``<output>/<n>.mp4`` per prompt (n = 000, 001, ...) and prints where they went. Every request is checked as
the batch job and the endpoint check theirs (the operator's limits, then the model's frame rule, size and steps,
read from its configs) before the model loads: bad input is one line and exit code 2. For many prompts use
jobs/batch_generate.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from dcm.cli import job_parser, run_job
from dcm.generation import RequestLimits, VideoGenerator, VideoRequest, model_limits_from_source, resolve_request
from dcm.io.storage import Store
from dcm.presets import DEFAULT_MODEL

logger = logging.getLogger("generate")
# Ids (and file names) of the prompts: 000, 001, ...
ID_DIGITS = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser(__doc__)
    p.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for several videos")
    p.add_argument("--model", default=DEFAULT_MODEL, help="preset, model folder, s3:// folder or hub id")
    p.add_argument("--output", default="outputs/generate", help="output folder or s3:// prefix")
    p.add_argument("--seed", type=int, default=0, help="seed of the first prompt; the n-th uses seed + n")
    p.add_argument("--negative-prompt", help="negative prompt (used with --guidance-scale > 1)")
    p.add_argument("--num-frames", type=int, help="frames (4n+1); None: the model's default")
    p.add_argument("--height", type=int, help="height in pixels; None: the model's default")
    p.add_argument("--width", type=int, help="width in pixels; None: the model's default")
    p.add_argument("--steps", type=int, help="sampler steps; None: the model's default")
    p.add_argument("--guidance-scale", type=float, help="real CFG weight (1 = off); None: the model's default")
    p.add_argument("--fps", type=int, help="frames per second of the MP4; None: the model's default")
    return p.parse_args(argv)


def requests_of(args: argparse.Namespace) -> list[VideoRequest]:
    return [
        VideoRequest(
            id=f"{i:0{ID_DIGITS}d}",
            prompt=prompt,
            seed=args.seed + i,
            negative_prompt=args.negative_prompt,
            num_frames=args.num_frames,
            height=args.height,
            width=args.width,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            fps=args.fps,
        )  # fmt: skip
        for i, prompt in enumerate(args.prompt)
    ]


def main(args: argparse.Namespace) -> int:
    # 1. Check every request against the model's configs (no weights yet): a bad flag fails in a second.
    limits = RequestLimits()
    requests = requests_of(args)
    model = model_limits_from_source(args.model, args.s3_endpoint_url)
    for request in requests:
        resolve_request(request, limits=limits, model=model)
    # 2. Generate and write.
    generator = VideoGenerator(args.model, limits=limits, endpoint_url=args.s3_endpoint_url)
    start = time.perf_counter()
    results = generator.generate(requests)
    store = Store(args.output, args.s3_endpoint_url)
    failed = 0
    for request, result in zip(requests, results):
        if not result.ok:
            failed += 1
            print(f"error: prompt {request.id} ({request.prompt!r}): {result.error}", file=sys.stderr)
            continue
        uri = store.put_bytes(f"{request.id}.mp4", result.mp4, content_type="video/mp4")
        logger.info("%s  seed=%d  %r", uri, request.seed, request.prompt)
    logger.info("%d video(s) in %.2f s -> %s", len(results) - failed, time.perf_counter() - start, store.root)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_job(main, parse_args()))
