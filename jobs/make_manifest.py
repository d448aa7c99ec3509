"""Build a manifest Parquet from a text file of prompts (one per line; blank lines and # comments are skipped).

    python jobs/make_manifest.py examples/prompts.txt outputs/prompts.parquet [--seed 0]

Row n gets ``id`` = ``<n>`` (zero-padded) and ``seed`` = ``--seed + n``; other columns are left to the job defaults.
The manifest may be written to an ``s3://`` location.
"""

from __future__ import annotations

import argparse
import io
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from dcm.cli import job_parser, run_job
from dcm.io.storage import Store


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser(__doc__)
    p.add_argument("prompts", help="text file, one prompt per line")
    p.add_argument("manifest", help="Parquet file to write, local or s3://")
    p.add_argument("--seed", type=int, default=0, help="seed of the first row; row n uses seed + n")
    return p.parse_args(argv)


def read_prompts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"{path}: no prompts found (blank lines and # comments are skipped)")
    return prompts


def main(args: argparse.Namespace) -> int:
    prompts = read_prompts(args.prompts)
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    width = len(str(len(prompts) - 1))
    table = pa.table(
        {
            "id": [f"{i:0{width}d}" for i in range(len(prompts))],
            "prompt": prompts,
            "seed": pa.array([args.seed + i for i in range(len(prompts))], pa.int64()),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    folder, name = os.path.split(args.manifest.rstrip("/"))
    uri = Store(folder or ".", args.s3_endpoint_url).put_bytes(name, sink.getvalue())
    print(f"wrote {len(prompts)} rows to {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main, parse_args()))
