"""Training data from real videos: videos + captions -> VAE latents + text embeddings (Ray Data).

    python jobs/preprocess.py --videos data/videos --captions data/captions.json --model tiny-wan --output data/latents
    ray job submit -- python jobs/preprocess.py --videos s3://b/videos --captions s3://b/captions.json \\
        --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --output s3://b/latents --num-frames 81 --height 480 --width 832

Output: the distillation data format (meta.json, index.parquet, negative.safetensors, shards/) plus rejects.parquet
(videos that gave no clip, with the reason). Re-running the same command skips videos already in finished shards.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dcm.cluster.preprocess import PreprocessConfig, run_preprocess
from dcm.cluster.runtime import init_ray, shutdown_ray
from dcm.preprocess import ClipConfig
from dcm.presets import DEFAULT_MODEL

logger = logging.getLogger("preprocess")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", required=True, help="folder or s3:// prefix of the videos")
    p.add_argument("--captions", required=True, help="JSON list of {path, caption}, or CSV / Parquet (path, caption)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="teacher whose VAE and text encoder are used")
    p.add_argument("--output", required=True, help="dataset folder or s3:// prefix")
    p.add_argument("--num-frames", type=int, default=17, help="frames per clip (4n + 1)")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--fps", type=float, default=8.0, help="frame rate the clip is sampled at")
    p.add_argument("--max-aspect-distortion", type=float, default=1.5, help="reject wider/taller sources than this")
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=1, help="encoder actors")
    p.add_argument("--num-gpus-per-actor", type=float, default=0.0)
    p.add_argument("--s3-endpoint-url", help="S3-compatible endpoint; default: $AWS_ENDPOINT_URL")
    p.add_argument("--address", help="Ray address (default: $RAY_ADDRESS or a local Ray on 127.0.0.1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.s3_endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = args.s3_endpoint_url
    owns_ray = False
    try:
        clip = ClipConfig(num_frames=args.num_frames, height=args.height, width=args.width, fps=args.fps,
                          max_aspect_distortion=args.max_aspect_distortion)  # fmt: skip
        config = PreprocessConfig(
            videos=args.videos if args.videos.startswith("s3://") else os.path.abspath(args.videos),
            captions=args.captions, model=args.model,
            output=args.output if args.output.startswith("s3://") else os.path.abspath(args.output), clip=clip,
            shard_size=args.shard_size, batch_size=args.batch_size, concurrency=args.concurrency,
            num_gpus_per_actor=args.num_gpus_per_actor, endpoint_url=args.s3_endpoint_url,
        )  # fmt: skip
        owns_ray = init_ray(args.address)
        summary = run_preprocess(config)
    except (ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    finally:
        if owns_ray:
            shutdown_ray()
    print(f"{summary['samples']} samples, {summary['rejects']} rejected, {summary['seconds']:.1f} s -> "
          f"{summary['output']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
