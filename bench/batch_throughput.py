"""Ray Data batch job vs a plain Python loop over the same VideoGenerator, same machine, one run.

    .venv/bin/python bench/batch_throughput.py [--num-prompts 64] [--batch-size 4] [--model tiny-wan]

Reports Ray start-up, the job's end-to-end time (start-up excluded; actor start and model load included), its
steady-state throughput (first result to last), and the loop's throughput (model load excluded). Ray gives each
CPU actor OMP_NUM_THREADS=1, so the loop runs with one torch thread too: the comparison is per thread.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dcm.cluster.batch import BatchConfig, run_batch
from dcm.cluster.runtime import init_ray, shutdown_ray
from dcm.generation import VideoGenerator, VideoRequest
from dcm.manifest import JobDefaults

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down")


def prompts(n: int) -> list[str]:
    return [f"a {COLOURS[i % 4]} {SHAPES[i % 3]} moving {MOTIONS[(i // 3) % 4]}" for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--model", default="tiny-wan")
    args = parser.parse_args()
    texts = prompts(args.num_prompts)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    # 1. Plain loop, one torch thread, batches of the same size as the job's.
    torch.set_num_threads(1)
    generator = VideoGenerator(args.model, device="cpu")
    requests = [VideoRequest(id=str(i), prompt=p, seed=i) for i, p in enumerate(texts)]
    start = time.perf_counter()
    for i in range(0, len(requests), args.batch_size):
        results = generator.generate(requests[i : i + args.batch_size])
        assert all(r.ok for r in results)
    loop_seconds = time.perf_counter() - start
    loop_rate = len(texts) / loop_seconds

    # 2. The Ray Data job.
    with tempfile.TemporaryDirectory() as tmp:
        manifest = os.path.join(tmp, "prompts.parquet")
        pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "prompt": texts,
                                 "seed": list(range(len(texts)))}), manifest)  # fmt: skip
        start = time.perf_counter()
        init_ray()
        startup = time.perf_counter() - start
        config = BatchConfig(manifest=manifest, output=os.path.join(tmp, "out"), model=args.model,
                             defaults=JobDefaults(), batch_size=args.batch_size, gallery=False)  # fmt: skip
        summary = run_batch(config, progress=False)
        shutdown_ray()
    assert summary.count("ok") == len(texts), summary.line()
    job_rate = len(texts) / summary.wall_seconds
    steady_rate = summary.steady_videos_per_second
    print(f"{len(texts)} prompts, model {args.model}, batch size {args.batch_size}, 1 actor / 1 torch thread")
    print(f"ray start-up: {startup:.2f} s")
    print(f"plain loop: {loop_seconds:.2f} s, {loop_rate:.2f} videos/s")
    print(f"ray data job end to end (start-up excluded): {summary.wall_seconds:.2f} s, {job_rate:.2f} videos/s "
          f"(first results after {summary.first_result_seconds:.2f} s)")  # fmt: skip
    print(f"ray data job steady state: {steady_rate:.2f} videos/s")
    print(f"overhead vs loop: end to end {100 * (loop_rate / job_rate - 1):.1f}%, "
          f"steady state {100 * (loop_rate / steady_rate - 1):.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
