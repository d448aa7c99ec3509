"""What the endpoint adds to generation: create -> completed latency of video jobs through the openai SDK, next to
the same generation in-process, at concurrency 1 and 8.

    .venv/bin/python bench/serve_latency.py [--requests 40] [--storage DIR_OR_S3_URI]

Starts a local Ray (loopback only) and the application (tiny-wan, 9x32x32, 4 steps, jobs in a temporary folder
unless ``--storage`` is given, the shipped batching settings). Each job is created and polled with
``client.videos.create_and_poll``, which waits as long as the server's ``openai-poll-after-ms`` header says: the
polling is part of the latency, as for any SDK user. Rows: client latency p50/p95; polls per job; the server's own
queue and generation seconds per job (from the job object); the sync endpoint at concurrency 1. The in-process row
runs ``VideoGenerator.generate`` with one torch thread, as a Serve replica with a fractional CPU gets (Ray sets
``OMP_NUM_THREADS=1``). Added at p50, concurrency 1: SDK p50 - in-process p50, and per job (immune to load drifting
between the two measurements) the client's latency minus the server's generation time for that job.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# Run from the repository root as documented: `serve` (this repository's folder) must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = "tiny-wan"
SMALL = {"num_frames": 9, "height": 32, "width": 32}
WARMUP_JOBS = 8
IN_PROCESS_RUNS = 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def in_process_seconds(runs: int) -> list[float]:
    import torch

    from dcm.generation import VideoGenerator, VideoRequest

    torch.set_num_threads(1)  # as in a replica with a fractional CPU
    generator = VideoGenerator(MODEL, device="cpu")
    generator.generate([VideoRequest(id="warm", prompt="warm up", **SMALL)])
    seconds = []
    for i in range(runs):
        start = time.perf_counter()
        generator.generate([VideoRequest(id=str(i), prompt=f"a red circle {i}", seed=i, **SMALL)])
        seconds.append(time.perf_counter() - start)
    return seconds


class Polls:
    """Counts the SDK's GET requests (its polls) through an httpx event hook."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, request) -> None:
        if request.method == "GET":
            self.count += 1


def run_jobs(client, polls: Polls, n: int, concurrency: int) -> tuple[list[float], list[dict], float]:
    """(client latencies, finished jobs, polls per job) for ``n`` jobs at ``concurrency``."""
    polls.count = 0

    def one(i: int):
        start = time.perf_counter()
        video = client.videos.create_and_poll(prompt=f"a red circle {i}", extra_body={"seed": i, **SMALL})
        elapsed = time.perf_counter() - start
        assert video.status == "completed", video
        return elapsed, video.model_dump()

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(one, range(n)))
    return [d[0] for d in done], [d[1] for d in done], polls.count / n


def health_seconds(base: str, n: int) -> list[float]:
    """Round trips of ``GET /healthz``: the floor every create and poll pays (proxy, replica, HTTP)."""
    seconds = []
    for _ in range(n):
        start = time.perf_counter()
        with urllib.request.urlopen(f"{base}/healthz", timeout=60) as response:
            response.read()
        seconds.append(time.perf_counter() - start)
    return seconds


def sync_seconds(base: str, n: int) -> list[float]:
    seconds = []
    for i in range(n):
        body = json.dumps({"prompt": f"a red circle {i}", "seed": i, **SMALL}).encode()
        request = urllib.request.Request(
            f"{base}/v1/videos/sync", data=body, headers={"Content-Type": "application/json"}
        )
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="jobs per row")
    parser.add_argument("--storage", default=None, help="jobs storage (default: a temporary folder)")
    args = parser.parse_args()

    direct = in_process_seconds(IN_PROCESS_RUNS)

    import openai

    from dcm.cluster.runtime import ray_session

    storage = args.storage or tempfile.mkdtemp(prefix="dcm-serve-bench-")
    with ray_session(num_cpus=4):
        from ray import serve

        from serve.app import VideoGen
        from serve.schemas import BatchingSettings

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        batching = BatchingSettings()  # the shipped defaults
        app = VideoGen.options(
            user_config={"max_batch_size": 8, "batch_wait_timeout_s": batching.batch_wait_timeout_s}
        )
        serve.run(app.bind({"model": MODEL, "storage": storage}), name="bench", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        polls = Polls()
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0,
                               http_client=openai.DefaultHttpxClient(event_hooks={"request": [polls]}))  # fmt: skip
        run_jobs(client, polls, WARMUP_JOBS, 1)  # the server learns the jobs' duration (its poll hint)
        rows = {c: run_jobs(client, polls, args.requests, c) for c in (1, 8)}
        sync = sync_seconds(base, args.requests)
        health = health_seconds(base, args.requests)
        serve.shutdown()

    ms = 1000
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {MODEL}, "
        f"{SMALL['num_frames']}x{SMALL['height']}x{SMALL['width']}, 4 steps, {args.requests} jobs per row, "
        f"batch wait {batching.batch_wait_timeout_s} s, storage {'local folder' if not args.storage else storage}"
    )
    print(
        "| path | concurrency | p50 (ms) | p95 (ms) | polls per job | server queue p50 (ms) "
        "| server generation p50 (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| in-process VideoGenerator.generate | 1 | {ms * statistics.median(direct):.1f} | "
        f"{ms * percentile(direct, 95):.1f} | - | - | - |"
    )
    for concurrency, (latency, jobs, per_job) in rows.items():
        queue = statistics.median(j["queue_seconds"] for j in jobs)
        generation = statistics.median(j["generation_seconds"] for j in jobs)
        batch = statistics.mean(j["batch_size"] for j in jobs)
        print(
            f"| jobs API, openai SDK create_and_poll (mean batch {batch:.1f}) | {concurrency} | "
            f"{ms * statistics.median(latency):.1f} | {ms * percentile(latency, 95):.1f} | {per_job:.1f} | "
            f"{ms * queue:.1f} | {ms * generation:.1f} |"
        )
    print(
        f"| POST /v1/videos/sync | 1 | {ms * statistics.median(sync):.1f} | {ms * percentile(sync, 95):.1f} | - | - "
        "| - |"
    )
    print(
        f"| GET /healthz (one HTTP round trip) | 1 | {ms * statistics.median(health):.1f} | "
        f"{ms * percentile(health, 95):.1f} | - | - | - |"
    )
    latency, jobs, _ = rows[1]
    added = ms * (statistics.median(latency) - statistics.median(direct))
    own = ms * statistics.median(t - j["generation_seconds"] for t, j in zip(latency, jobs))
    print(
        f"added at p50, concurrency 1: SDK p50 - in-process p50 = {added:.1f} ms; per job, client latency - the "
        f"server's generation time for that job = {own:.1f} ms"
    )


if __name__ == "__main__":
    main()
