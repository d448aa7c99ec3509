"""Generate a few videos from prompts on this machine (no Ray): ``python jobs/generate.py --prompt "..."``.

Writes ``<output>/<n>.mp4`` per prompt and prints where they went. For many prompts use jobs/batch_generate.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from dcm.io.model_folder import load_pipeline
from dcm.io.video import write_mp4
from dcm.presets import DEFAULT_MODEL

logger = logging.getLogger("generate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for several videos")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="preset, model folder, s3:// folder or hub id")
    parser.add_argument("--output", default="outputs/generate", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first prompt; the n-th uses seed + n")
    parser.add_argument("--num-frames", type=int, help="frames (4n+1); default: the model's")
    parser.add_argument("--height", type=int, help="height in pixels; default: the model's")
    parser.add_argument("--width", type=int, help="width in pixels; default: the model's")
    parser.add_argument("--steps", type=int, help="sampler steps; default: the model's")
    parser.add_argument("--guidance-scale", type=float, help="real CFG weight (1 = off); default: the model's")
    parser.add_argument("--fps", type=int, help="frames per second of the MP4; default: the model's")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    dcm = load_pipeline(args.model)
    overrides = {
        "num_frames": args.num_frames, "height": args.height, "width": args.width,
        "num_inference_steps": args.steps, "guidance_scale": args.guidance_scale, "fps": args.fps,
    }  # fmt: skip
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "num_inference_steps" in overrides:
        overrides["sigmas"] = None  # an explicit step count replaces the model's stored sigma list
    config = dcm.with_defaults(**overrides)
    seeds = [args.seed + i for i in range(len(args.prompt))]
    start = time.perf_counter()
    frames = dcm.generate(args.prompt, seeds=seeds, config=config)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for i, video in enumerate(frames):
        path = out / f"{i:03d}.mp4"
        write_mp4(video, path, fps=config.fps)
        logger.info("%s  seed=%d  %r", path, seeds[i], args.prompt[i])
    logger.info("%d video(s) in %.2f s -> %s", len(frames), time.perf_counter() - start, out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
