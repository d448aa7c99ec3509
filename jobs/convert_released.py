"""Convert the authors' released DCM checkpoint (``DCM_WAN/``, ``DCM_HY/``) into our folders (no Ray):

    python jobs/convert_released.py --model ckpt/DCM_WAN --output models/dcm-wan --export models/dcm-wan-diffusers

``--output`` gets our DCM folder (semantic transformer, ``detail_expert/``, ``dcm_config.json`` with the released
schedule); ``--export`` (Wan only) gets a Wan2.2-style folder that stock ``diffusers.WanPipeline`` runs. Tensors are
streamed from the released file one at a time and written in shards, so the 26 GB HunyuanVideo file converts in about
one shard of memory. ``--model`` may be an ``s3://`` folder (downloaded once into the model cache). Running the
released folder needs no conversion: ``--model`` of every job and the endpoint loads it as it is.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from dcm.cli import job_parser, run_job
from dcm.io.model_cache import localise
from dcm.io.released import MAX_SHARD_BYTES, convert_released, is_released_layout

logger = logging.getLogger("convert_released")
BYTES_PER_GB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser(__doc__)
    parser.add_argument("--model", required=True, help="the released folder, local or s3://")
    parser.add_argument("--output", required=True, help="where to write our DCM folder")
    parser.add_argument("--export", help="also write a stock-diffusers Wan2.2-style folder here (Wan only)")
    parser.add_argument("--max-shard-gb", type=float, default=MAX_SHARD_BYTES / BYTES_PER_GB,
                        help="largest weight file written (the converter holds one in memory)")  # fmt: skip
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    if args.max_shard_gb <= 0:
        raise ValueError(f"--max-shard-gb must be > 0, got {args.max_shard_gb}")
    source = localise(args.model, args.s3_endpoint_url)
    if not is_released_layout(source):
        raise ValueError(f"--model {args.model!r} is not in the released layout (no LoRA adapter in its "
                         f"transformer/ weights); our folders and diffusers pipelines need no conversion")  # fmt: skip
    start = time.perf_counter()
    layout = convert_released(source, args.output, export=args.export,
                              max_shard_bytes=int(args.max_shard_gb * BYTES_PER_GB))  # fmt: skip
    logger.info("converted the released %s checkpoint (LoRA %r r=%d alpha=%g) in %.1f s", layout.family,
                layout.adapter_name, layout.lora_rank, layout.lora_alpha, time.perf_counter() - start)  # fmt: skip
    logger.info("DCM folder: %s", Path(args.output).resolve())
    if args.export:
        logger.info("stock-diffusers export: %s", Path(args.export).resolve())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
