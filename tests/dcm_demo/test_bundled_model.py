"""The bundled demo model (package data): the default model of the jobs, it draws what its prompts ask for, and its
stock-diffusers export runs in an unmodified ``WanPipeline``."""

import os

import numpy as np
import pytest
import torch
from diffusers import WanPipeline

from dcm.io.model_folder import load_pipeline
from dcm.presets import DEFAULT_MODEL, DEMO_EXPORT_FOLDER, DEMO_FOLDER
from dcm_demo.bench import bench_prompts, default_num_prompts, through_mp4, vae_ceiling
from dcm_demo.evaluate import score_video, summarise
from dcm_demo.geometry import colour_separation
from dcm_demo.text import MAX_SEQUENCE_LENGTH
from dcm_demo.world import WorldConfig

# Package size budget of the issue: the model and its export together.
MAX_PACKAGE_MB = 15
NUM_PROMPTS = 12
# Floors well below what ShapesBench measures for this model (docs/demo-model.md), so noise in 12 prompts does not
# fail the test, while a broken model (random weights, wrong schedule, wrong text side) scores near the chance levels
# (1 in 4 directions, 1 in 6 colours) or finds no object at all. Shape is not asserted: this model draws blobs.
MIN_DIRECTION_ACCURACY = 75.0
MIN_COLOUR_ACCURACY = 50.0
# The shape score on ground truth through the demo VAE and an MP4, over the whole benchmark: what lets ShapesBench
# call a model's shapes right or wrong at all.
MIN_CEILING_SHAPE_ACCURACY = 98.0


def folder_mb(path) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 1e6


@pytest.fixture(scope="module")
def demo():
    return load_pipeline(DEFAULT_MODEL)


def test_the_demo_model_ships_inside_the_package_and_is_the_default(demo):
    assert DEFAULT_MODEL == "demo" and demo.is_dual_expert
    assert (DEMO_FOLDER / "dcm_config.json").is_file() and (DEMO_EXPORT_FOLDER / "model_index.json").is_file()
    assert folder_mb(DEMO_FOLDER) + folder_mb(DEMO_EXPORT_FOLDER) < MAX_PACKAGE_MB
    defaults = demo.with_defaults()
    assert (defaults.num_frames, defaults.height, defaults.num_inference_steps, defaults.guidance_scale) == (
        17, 64, 4, 1.0)  # fmt: skip


@pytest.fixture(scope="module")
def prompts():
    return bench_prompts(NUM_PROMPTS, WorldConfig())


def scores(videos, prompts) -> dict[str, float]:
    return summarise([score_video(v, p.attributes) for v, p in zip(through_mp4(videos, 8), prompts)])


def test_the_demo_model_draws_the_prompted_colour_moving_the_prompted_way(demo, prompts):
    videos = demo.generate([p.caption for p in prompts], seeds=[p.seed for p in prompts])
    result = scores(videos, prompts)
    assert result["direction_acc"] >= MIN_DIRECTION_ACCURACY, result
    assert result["colour_acc"] >= MIN_COLOUR_ACCURACY, result


def test_the_export_runs_in_stock_diffusers(prompts):
    pipe = WanPipeline.from_pretrained(DEMO_EXPORT_FOLDER)
    chosen = prompts[:8]
    generators = [torch.Generator().manual_seed(p.seed) for p in chosen]
    # The demo's prompts are 16 word tokens (WanPipeline's default of 512 pads them with tokens it never saw).
    out = pipe([p.caption for p in chosen], num_frames=17, height=64, width=64, num_inference_steps=4,
               guidance_scale=1.0, generator=generators, output_type="np",
               max_sequence_length=MAX_SEQUENCE_LENGTH).frames  # fmt: skip
    videos = (np.asarray(out) * 255).round().astype(np.uint8)
    assert videos.shape == (8, 17, 64, 64, 3)
    result = scores(videos, chosen)
    assert result["direction_acc"] >= MIN_DIRECTION_ACCURACY, result


@pytest.mark.slow
def test_shapesbench_reads_ground_truth_through_the_demo_vae_right():
    # The ceiling of every ShapesBench row: the benchmark's ground-truth clips through the demo VAE and an MP4 keep
    # colour, motion, size and speed, and their shapes read right (the misses are small triangles whose tip blurs).
    world = WorldConfig()
    ceiling = vae_ceiling(load_pipeline(DEFAULT_MODEL), bench_prompts(default_num_prompts(world), world), world)
    assert ceiling["shape_acc"] >= MIN_CEILING_SHAPE_ACCURACY, ceiling
    for name in ("colour", "direction", "size", "speed"):
        assert ceiling[f"{name}_acc"] == 100, (name, ceiling)


def test_the_demo_vae_keeps_every_pair_of_colours_apart(demo):
    # The VAE is trained with a hinge on the latent distance between colour-swapped clips
    # (DemoVAEConfig.colour_contrast_*): a clip in two colours encodes at least 0.3 times as far apart as the clip and
    # another layout of its caption, so the teacher's signal for each colour word is not drowned.
    separation = colour_separation(demo.pipe.vae, WorldConfig(), range(5_000_000, 5_000_008))
    assert len(separation) == 15 and all(0.3 < r < 2 for r in separation.values()), separation
