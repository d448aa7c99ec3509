"""Endpoint latency and batching gain vs a direct in-process call of the same generator, in one run.

    .venv/bin/python bench/serve_latency.py [--requests 48]

Reports p50/p95/p99 latency over HTTP (127.0.0.1) at concurrency 1 and 8, with batching (max_batch_size 8) and
without (max_batch_size 1), the in-process latency of VideoGenerator.generate for one request, and the serving
overhead at p50 (HTTP p50 at concurrency 1 minus in-process p50).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import time
import urllib.request

SMALL = {"num_frames": 9, "height": 32, "width": 32}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def post(url: str, body: dict) -> float:
    start = time.perf_counter()
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return time.perf_counter() - start


def load(url: str, n: int, concurrency: int) -> tuple[list[float], float]:
    bodies = [{"prompt": f"a red circle {i}", "seed": i, **SMALL} for i in range(n)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(lambda b: post(url, b), bodies))
    return latencies, n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48)
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from dcm.generation import VideoGenerator, VideoRequest
    from serve.app import VideoGen

    generator = VideoGenerator("tiny-wan", device="cpu")
    direct = []
    for i in range(20):
        start = time.perf_counter()
        generator.generate([VideoRequest(id=str(i), prompt=f"a red circle {i}", seed=i, **SMALL)])
        direct.append(time.perf_counter() - start)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=4)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows = []
    for label, batch in (("batching", 8), ("no batching", 1)):
        app = VideoGen.options(user_config={"max_batch_size": batch, "batch_wait_timeout_s": 0.02}).bind(
            {"model": "tiny-wan"}
        )
        serve.run(app, name=label.replace(" ", "-"), route_prefix=f"/{label.replace(' ', '-')}")
        url = f"http://127.0.0.1:{port}/{label.replace(' ', '-')}/v1/videos"
        load(url, 4, 1)  # warm-up
        for concurrency in (1, 8):
            latencies, throughput = load(url, args.requests, concurrency)
            rows.append((label, concurrency, latencies, throughput))
        serve.delete(label.replace(" ", "-"))
    serve.shutdown()
    ray.shutdown()

    direct_p50 = statistics.median(direct)
    shape = f"{SMALL['num_frames']}x{SMALL['height']}x{SMALL['width']}"
    print(f"tiny-wan, {shape}, 4 steps, {args.requests} requests per row")
    print(f"in-process VideoGenerator.generate: p50 {1000 * direct_p50:.1f} ms")
    print("| server | concurrency | p50 (ms) | p95 (ms) | p99 (ms) | videos/s |")
    print("|---|---|---|---|---|---|")
    for label, concurrency, latencies, throughput in rows:
        p = [1000 * percentile(latencies, q) for q in (50, 95, 99)]
        print(f"| {label} | {concurrency} | {p[0]:.1f} | {p[1]:.1f} | {p[2]:.1f} | {throughput:.2f} |")
    serial = next(r for r in rows if r[0] == "no batching" and r[1] == 1)
    batched = next(r for r in rows if r[0] == "batching" and r[1] == 8)
    unbatched8 = next(r for r in rows if r[0] == "no batching" and r[1] == 8)
    overhead_ms = 1000 * (statistics.median(serial[2]) - direct_p50)
    print(f"serving overhead at p50 (concurrency 1, no batching): {overhead_ms:.1f} ms")
    print(f"batching gain at concurrency 8: {batched[3] / unbatched8[3]:.2f}x throughput")


if __name__ == "__main__":
    main()
