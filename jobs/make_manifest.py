"""Build a manifest Parquet from a text file of prompts (one per line; blank lines and # comments are skipped).

    python jobs/make_manifest.py examples/prompts.txt examples/prompts.parquet [--seed 0]

Row n gets ``id`` = ``<n>`` (zero-padded) and ``seed`` = ``--seed + n``; other columns are left to the job defaults.
"""

from __future__ import annotations

import argparse
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts", help="text file, one prompt per line")
    p.add_argument("manifest", help="Parquet file to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the first row; row n uses seed + n")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with open(args.prompts, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        print(f"{args.prompts}: no prompts found", file=sys.stderr)
        return 2
    width = len(str(len(prompts) - 1))
    table = pa.table(
        {
            "id": [f"{i:0{width}d}" for i in range(len(prompts))],
            "prompt": prompts,
            "seed": pa.array([args.seed + i for i in range(len(prompts))], pa.int64()),
        }
    )
    pq.write_table(table, args.manifest)
    print(f"wrote {len(prompts)} rows to {args.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
