"""The batch job at two manifest sizes next to a plain loop: throughput, driver memory and per-row overhead.

    .venv/bin/python bench/batch_throughput.py --num-prompts 20000 [--small 500] [--size 5x16x16] [--steps 2]

1. A plain Python loop over the same VideoGenerator (one torch thread, batches of ``--batch-size``; model load
   excluded) gives the reference rate on ``--small`` prompts.
2. The job runs twice, each in a fresh driver process with its own local Ray: ``--small`` prompts, then
   ``--num-prompts``. Each reports Ray start-up, planning, end-to-end time, its steady-state rate (first result to
   last, so actor start and model load are excluded) and the driver's peak RSS.

Printed: both runs side by side with ratios (large / small), the steady-state overhead and the per-row overhead in
milliseconds against the plain loop and against the job's own generator calls (the ``seconds`` its actors measured
per video while it ran: the same work as the loop, timed under the same machine load). Goals (docs/batch.md):
throughput within 10 % across sizes, driver RSS flat, steady state within 10 % of the loop. Ray gives each CPU actor
OMP_NUM_THREADS=1, so the loop runs one torch thread too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down")
KIB = 1024  # ru_maxrss is in KiB on Linux
MIB = 1024 * 1024


def prompts(n: int) -> list[str]:
    return [f"a {COLOURS[i % 4]} {SHAPES[i % 3]} moving {MOTIONS[(i // 3) % 4]}, take {i}" for i in range(n)]


def parse_size(text: str) -> tuple[int, int, int]:
    frames, height, width = (int(v) for v in text.lower().split("x"))
    return frames, height, width


def loop_rate(args: argparse.Namespace) -> float:
    """Videos per second of a plain loop over the generator (model load excluded)."""
    import torch

    from dcm.generation import VideoGenerator, VideoRequest

    torch.set_num_threads(1)
    frames, height, width = parse_size(args.size)
    generator = VideoGenerator(args.model, device="cpu")
    requests = [VideoRequest(id=str(i), prompt=p, seed=i, num_frames=frames, height=height, width=width,
                             num_inference_steps=args.steps) for i, p in enumerate(prompts(args.small))]  # fmt: skip
    start = time.perf_counter()
    for i in range(0, len(requests), args.batch_size):
        assert all(r.ok for r in generator.generate(requests[i : i + args.batch_size]))
    return len(requests) / (time.perf_counter() - start)


def child(args: argparse.Namespace) -> None:
    """One job run in this process (a fresh driver); prints one JSON line."""
    from dcm.cluster.batch import BatchConfig, run_batch
    from dcm.cluster.runtime import ray_session
    from dcm.manifest import JobDefaults

    frames, height, width = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="dcm-bench-") as tmp:
        manifest = os.path.join(tmp, "prompts.parquet")
        texts = prompts(args.child)
        pq.write_table(pa.table({"id": [f"{i:07d}" for i in range(len(texts))], "prompt": texts,
                                 "seed": list(range(len(texts)))}), manifest)  # fmt: skip
        defaults = JobDefaults(num_frames=frames, height=height, width=width, num_inference_steps=args.steps)
        config = BatchConfig(manifest=manifest, output=os.path.join(tmp, "out"), model=args.model, defaults=defaults,
                             batch_size=args.batch_size)  # fmt: skip
        start = time.perf_counter()
        with ray_session():
            startup = time.perf_counter() - start
            summary = run_batch(config, progress=False)
        results_bytes = os.path.getsize(os.path.join(tmp, "out", "results.parquet"))
        records = summary.records()
    assert summary.count("ok") == len(texts), summary.line()
    print(json.dumps({
        "rows": len(texts), "startup_s": startup, "wall_s": summary.wall_seconds, "plan_s": summary.plan_seconds,
        "first_result_s": summary.timings.first_result_seconds, "steady_rate": summary.steady_videos_per_second,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB / MIB,
        "results_mib": results_bytes / MIB,
        # What the generator itself spent per video (sampling + MP4), measured in the actor while the job ran.
        "generator_rate": 1 / records["seconds"].mean(),
    }))  # fmt: skip


def run_child(args: argparse.Namespace, rows: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", str(rows), "--model", args.model, "--size",
               args.size, "--steps", str(args.steps), "--batch-size", str(args.batch_size)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=2000, help="rows of the large run")
    parser.add_argument("--small", type=int, default=500, help="rows of the small run and of the plain loop")
    parser.add_argument("--model", default="tiny-wan", help="model preset or folder")
    parser.add_argument("--size", default="5x16x16", help="frames x height x width of every video")
    parser.add_argument("--steps", type=int, default=2, help="sampler steps")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per actor call and per loop call")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return

    loop = loop_rate(args)
    small, large = run_child(args, args.small), run_child(args, args.num_prompts)
    print(f"model {args.model}, {args.size}, {args.steps} steps, batch size {args.batch_size}, 1 actor, "
          f"1 torch thread; plain loop {loop:.2f} videos/s")  # fmt: skip
    print(f"{'':28}{small['rows']:>12}{large['rows']:>12}{'ratio':>9}")
    rows = [("ray start-up (s)", "startup_s"), ("planning (s)", "plan_s"), ("first result (s)", "first_result_s"),
            ("end to end (s)", "wall_s"), ("steady state (videos/s)", "steady_rate"),
            ("driver peak RSS (MiB)", "peak_rss_mib"), ("results.parquet (MiB)", "results_mib")]  # fmt: skip
    for label, key in rows:
        ratio = large[key] / small[key] if small[key] else float("nan")
        print(f"{label:28}{small[key]:>12.2f}{large[key]:>12.2f}{ratio:>9.2f}")
    for run in (small, large):
        for name, rate in (("the plain loop", loop), ("its own generator calls", run["generator_rate"])):
            overhead = 100 * (rate / run["steady_rate"] - 1)
            per_row_ms = 1000 * (1 / run["steady_rate"] - 1 / rate)
            print(f"{run['rows']} rows: steady state vs {name} ({rate:.2f} videos/s): {overhead:+.1f} % "
                  f"({per_row_ms:+.1f} ms per row)")  # fmt: skip
        print(f"{run['rows']} rows: planning {1000 * run['plan_s'] / run['rows']:.2f} ms per row")


if __name__ == "__main__":
    main()
