"""The ShapesBench runner: a balanced prompt set on seeds of its own, rows through real pipelines, table and chart."""

from collections import Counter

import numpy as np

from bench.shapesbench import all_rows, frame_strip, main
from dcm_demo.bench import (
    BENCH_SEEDS,
    VALIDATION_SEEDS,
    Row,
    bench_prompts,
    chart,
    default_num_prompts,
    generate_row,
    ground_truth,
    markdown_table,
    score_row,
    vae_ceiling,
    validation_prompts,
)
from dcm_demo.evaluate import chance_levels, score_video
from dcm_demo.stages import CHECK_SEEDS, DATA_SEEDS, VAE_SEEDS
from dcm_demo.world import SIZES, SPEEDS, WorldConfig, parse_caption

WORLD = WorldConfig()
# Grey levels (0-255) within which two renderings of one prompt and seed count as the same video.
SAME_VIDEO_MEAN_LEVELS = 0.1
SAME_VIDEO_MAX_LEVELS = 8
COMBINATIONS = len(WORLD.colours) * len(WORLD.shapes) * len(WORLD.directions)


def test_the_benchmark_covers_every_combination_twice_with_balanced_variants():
    prompts = bench_prompts(default_num_prompts(WORLD), WORLD)
    assert len(prompts) == 2 * COMBINATIONS == 144
    combos = Counter((p.attributes.colour, p.attributes.shape, p.attributes.direction) for p in prompts)
    assert len(combos) == COMBINATIONS and set(combos.values()) == {2}
    variants = Counter((p.attributes.size, p.attributes.speed) for p in prompts)
    assert len(variants) == len(SIZES) * len(SPEEDS) and set(variants.values()) == {36}
    for field in ("colour", "shape", "direction"):  # each variant equally often for every word
        per_word = Counter((getattr(p.attributes, field), p.attributes.size, p.attributes.speed) for p in prompts)
        assert len(set(per_word.values())) == 1, (field, per_word)
    by_combo = {}
    for p in prompts:  # the two copies of a combination differ in size and in speed
        by_combo.setdefault((p.attributes.colour, p.attributes.shape, p.attributes.direction), []).append(p.attributes)
    assert all(a.size != b.size and a.speed != b.speed for a, b in by_combo.values())
    assert all(parse_caption(p.caption) == p.attributes for p in prompts)


def test_prompt_seeds_never_meet_training_or_validation_seeds():
    bench, validation = bench_prompts(144, WORLD), validation_prompts(WORLD)
    assert [p.seed for p in bench] == list(range(BENCH_SEEDS, BENCH_SEEDS + 144))
    assert [p.seed for p in validation] == list(range(VALIDATION_SEEDS, VALIDATION_SEEDS + COMBINATIONS))
    assert len({(p.attributes.colour, p.attributes.shape, p.attributes.direction) for p in validation}) == 72
    # Every training range of dcm_demo.stages ends far below the validation and benchmark seeds.
    assert max(VAE_SEEDS, DATA_SEEDS, CHECK_SEEDS) + 1_000_000 <= VALIDATION_SEEDS < BENCH_SEEDS - COMBINATIONS


def test_ground_truth_draws_each_prompt():
    prompts = bench_prompts(12, WORLD)
    clips = ground_truth(prompts, WORLD)
    assert clips.shape == (12, 17, 64, 64, 3) and clips.dtype == np.uint8
    scores = [score_video(c, p.attributes) for c, p in zip(clips, prompts)]
    assert all(s.colour_ok and s.shape_ok and s.size_ok and s.speed_ok for s in scores)


def test_rows_score_ground_truth_perfectly_and_noise_badly(tmp_path):
    prompts = bench_prompts(6, WORLD)
    truth = ground_truth(prompts, WORLD)
    noise = np.random.default_rng(0).integers(0, 256, truth.shape, dtype=np.uint8)
    slow = {"seconds_per_video": 2.0, "sampling_seconds_per_video": 1.8}
    fast = {"seconds_per_video": 0.1, "sampling_seconds_per_video": 0.05}
    teacher = Row(name="ground truth", model="-", steps=50, guidance_scale=5.0)
    reference = score_row(teacher, truth, slow, prompts, None, WORLD)
    noisy = score_row(Row(name="noise", model="-", steps=4), noise, fast, prompts, truth, WORLD)
    assert reference.metrics["colour_acc"] == 100 and reference.metrics["shape_acc"] == 100
    confusion = reference.metrics["shape_confusion"]
    assert sum(confusion[s][s] for s in WORLD.shapes) == 6 and sum(map(sum, map(dict.values, confusion.values()))) == 6
    assert noisy.metrics["colour_acc"] < 50 and noisy.metrics["distance_to_reference"] > 0.2
    table = markdown_table([reference, noisy], chance=chance_levels(WORLD), ceiling=reference.metrics)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| row | steps | NFE | colour % | shape % | direction % | size % | speed % | solid %")
    assert len(lines) == 6 and lines[2].startswith("| chance | — | — | 16.7 | 33.3 | 25.0 | 50.0 | 50.0 | — |")
    # 6 of 6 right: 100 with its Wilson interval; CFG counts 2 NFE per step.
    assert lines[3].startswith("| ground truth | 50 | 100 | 100.0 [61.0, 100.0] |")
    assert lines[4].startswith("| noise | 4 | 4 |") and lines[4].rstrip().endswith("| 20.0x | 0.050 | 36.0x |")
    assert lines[5].startswith("| ceiling: ground truth via VAE + MP4 | — | — | 100.0 [61.0, 100.0] |")
    chart([reference, noisy], str(tmp_path / "chart.png"), chance=chance_levels(WORLD))
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
    # A video depends on its prompt and seed only: alone or in a batch of 3 it is the same up to float rounding
    # (batched matmuls round differently, ~1e-6 in the latents), a grey level here and there after the MP4.
    change = np.abs(again[0].astype(int) - videos[0].astype(int))
    assert change.mean() < SAME_VIDEO_MEAN_LEVELS and change.max() <= SAME_VIDEO_MAX_LEVELS
    assert np.abs(videos[1].astype(int) - videos[0].astype(int)).mean() > SAME_VIDEO_MEAN_LEVELS  # prompts differ


def test_a_random_vae_has_a_low_ceiling(tiny_wan):
    # The ceiling is measured, not assumed: an untrained VAE does not give back the ground-truth clips' colours.
    ceiling = vae_ceiling(tiny_wan, bench_prompts(4, WORLD), WORLD)
    assert set(ceiling) >= {"colour_acc", "shape_acc", "direction_acc"} and ceiling["colour_acc"] < 50, ceiling


def test_the_runner_names_unknown_rows_and_missing_folders(tmp_path, capsys):
    assert main(["--rows", "teacher-50,nope", "--out", str(tmp_path)]) == 2
    assert "unknown keys ['nope']" in capsys.readouterr().err
    assert main(["--work-dir", str(tmp_path / "none"), "--rows", "dcm-4", "--out", str(tmp_path)]) == 2
    assert "missing model folders" in capsys.readouterr().err
    assert all_rows("w")["bundled-dcm-4"].model == "demo" and all_rows("w")["teacher-50"].nfe == 100
