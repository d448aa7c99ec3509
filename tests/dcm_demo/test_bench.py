"""The ShapesBench runner: prompts disjoint from training seeds, rows through real pipelines, table and chart."""

import numpy as np

from bench.shapesbench import frame_strip
from dcm_demo.bench import (
    BENCH_SEEDS,
    Row,
    bench_prompts,
    chart,
    generate_row,
    markdown_table,
    score_row,
    vae_ceiling,
)
from dcm_demo.world import WorldConfig, make_clip

WORLD = WorldConfig()


def test_prompts_come_from_benchmark_seeds_only():
    from jobs.train_demo import CHECK_SEEDS, DATA_SEEDS, VAE_SEEDS

    prompts = bench_prompts(16, WORLD)
    seeds = [p.seed for p in prompts]
    assert seeds == list(range(BENCH_SEEDS, BENCH_SEEDS + 16))
    # Every training range of jobs/train_demo.py ends far below the benchmark seeds.
    assert max(VAE_SEEDS, DATA_SEEDS, CHECK_SEEDS) + 1_000_000 <= BENCH_SEEDS
    assert [p.caption for p in prompts] == [make_clip(s, WORLD).caption for s in seeds]


def test_rows_score_ground_truth_perfectly_and_noise_badly(tmp_path):
    prompts = bench_prompts(6, WORLD)
    truth = np.stack([make_clip(p.seed, WORLD).frames for p in prompts])
    noise = np.random.default_rng(0).integers(0, 256, truth.shape, dtype=np.uint8)
    slow = {"seconds_per_video": 2.0, "sampling_seconds_per_video": 1.8}
    fast = {"seconds_per_video": 0.1, "sampling_seconds_per_video": 0.05}
    teacher = Row(name="ground truth", model="-", steps=50, guidance_scale=5.0)
    reference = score_row(teacher, truth, slow, prompts, None)
    noisy = score_row(Row(name="noise", model="-", steps=4), noise, fast, prompts, truth)
    assert reference.metrics["colour_acc"] == 100 and reference.metrics["direction_acc"] == 100
    assert noisy.metrics["colour_acc"] < 50 and noisy.metrics["distance_to_reference"] > 0.2
    table = markdown_table([reference, noisy])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| row | steps | NFE | colour %") and len(lines) == 4
    assert lines[2].startswith("| ground truth | 50 | 100 | 100.0 |")  # CFG: 2 NFE per step
    assert lines[3].startswith("| noise | 4 | 4 |") and lines[3].rstrip().endswith("| 20.0x | 0.050 | 36.0x |")
    chart([reference, noisy], str(tmp_path / "chart.png"))
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    strip = frame_strip([truth[0], truth[1]], every=4)
    assert strip.shape == (2 * 66, 5 * 66, 3)


def test_generate_row_runs_a_real_pipeline_through_mp4(tiny_wan):
    prompts = bench_prompts(3, WORLD)
    row = Row(name="DCM-4", model="tiny-wan", steps=4)
    videos, seconds = generate_row(tiny_wan, row, prompts)
    assert videos.shape == (3, 17, 64, 64, 3) and videos.dtype == np.uint8
    assert 0 < seconds["sampling_seconds_per_video"] < seconds["seconds_per_video"]
    again, _ = generate_row(tiny_wan, row, prompts[:1])
    assert np.array_equal(again[0], videos[0])  # a video depends on its prompt and seed only


def test_a_random_vae_has_a_low_ceiling(tiny_wan):
    # The ceiling is measured, not assumed: an untrained VAE does not give back the ground-truth clips' colours.
    ceiling = vae_ceiling(tiny_wan, bench_prompts(4, WORLD), WORLD)
    assert set(ceiling) >= {"colour_acc", "shape_acc", "direction_acc"} and ceiling["colour_acc"] < 50, ceiling
