"""Training data from real videos: videos + captions -> VAE latents + text embeddings (Ray Data).

    python jobs/preprocess.py --videos data/videos --captions data/captions.json --model tiny-wan --output data/latents
    ray job submit -- python jobs/preprocess.py --videos s3://b/videos --captions s3://b/captions.json \\
        --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --output s3://b/latents --num-frames 81 --height 480 --width 832

Output: the distillation data format (meta.json, index.parquet, negative.safetensors, shards/) plus rejects.parquet
(videos that gave no clip, with the reason). Re-running the same command skips videos already in finished shards.
"""

from __future__ import annotations

import argparse
import os
import sys

from dcm.cli import job_parser, run_job
from dcm.cluster.preprocess import PreprocessConfig, run_preprocess
from dcm.cluster.runtime import ray_session
from dcm.io.storage import is_s3
from dcm.preprocess import ClipConfig
from dcm.presets import DEFAULT_MODEL


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser(__doc__, ray=True)
    p.add_argument("--videos", required=True, help="folder or s3:// prefix of the videos")
    p.add_argument("--captions", required=True, help="JSON list of {path, caption}, or CSV / Parquet (path, caption)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="teacher whose VAE and text encoder are used")
    p.add_argument("--output", required=True, help="dataset folder or s3:// prefix")
    p.add_argument("--num-frames", type=int, default=17, help="frames per clip (4n + 1)")
    p.add_argument("--height", type=int, default=64, help="clip height in pixels")
    p.add_argument("--width", type=int, default=64, help="clip width in pixels")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate the clip is sampled at")
    p.add_argument("--max-aspect-distortion", type=float, default=1.5, help="reject wider/taller sources than this")
    p.add_argument("--shard-size", type=int, default=64, help="samples per shard")
    p.add_argument("--batch-size", type=int, default=4, help="clips per encoder call")
    p.add_argument("--concurrency", type=int, default=1, help="encoder actors")
    p.add_argument("--num-gpus-per-actor", type=float, default=0.0, help="GPUs per encoder actor (0: CPU)")
    return p.parse_args(argv)


def absolute(location: str) -> str:
    """Local paths absolute (Ray workers run in another directory); s3:// as it is."""
    return location if is_s3(location) else os.path.abspath(location)


def main(args: argparse.Namespace) -> int:
    clip = ClipConfig(num_frames=args.num_frames, height=args.height, width=args.width, fps=args.fps,
                      max_aspect_distortion=args.max_aspect_distortion)  # fmt: skip
    config = PreprocessConfig(
        videos=absolute(args.videos), captions=args.captions, model=args.model, output=absolute(args.output),
        clip=clip, shard_size=args.shard_size, batch_size=args.batch_size, concurrency=args.concurrency,
        num_gpus_per_actor=args.num_gpus_per_actor, endpoint_url=args.s3_endpoint_url,
    )  # fmt: skip
    with ray_session(args.address):
        summary = run_preprocess(config)
    print(f"{summary['samples']} samples, {summary['rejects']} rejected, {summary['seconds']:.1f} s -> "
          f"{summary['output']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main, parse_args()))
