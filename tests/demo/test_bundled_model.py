"""The bundled demo model (package data): the default model of the jobs, it draws what its prompts ask for, and its
stock-diffusers export runs in an unmodified ``WanPipeline``."""

import os

import numpy as np
import pytest
import torch
from diffusers import WanPipeline

from dcm.demo.geometry import colour_separation
from dcm.demo.text import MAX_SEQUENCE_LENGTH
from dcm.io.model_folder import load_pipeline
from dcm.presets import DEFAULT_MODEL, DEMO_EXPORT_FOLDER, DEMO_FOLDER
from dcm.shapes.bench import bench_prompts, through_mp4, vae_ceiling
from dcm.shapes.evaluate import score_video, summarise
from dcm.shapes.world import WorldConfig

# Package size budget of the issue: the model and its export together.
MAX_PACKAGE_MB = 15
NUM_PROMPTS = 12
# A floor below what ShapesBench measures for this model's motion directions (README: ~90 %), so noise in 12 prompts
# does not fail the test, while a broken model (random weights, wrong schedule, wrong text side) scores near the
# 1-in-4 chance level or finds no motion at all. Colour is not asserted: the model draws the prompted colour in
# about three videos in five (ShapesBench, README), and on 12 prompts that measures anywhere from 4 to 8 of 12
# (33-67 % on three disjoint seed sets), too close to the 1-in-6 chance level for a floor that cannot flake.
MIN_DIRECTION_ACCURACY = 75.0


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


def test_the_demo_model_moves_objects_the_prompted_way(demo, prompts):
    videos = demo.generate([p.caption for p in prompts], seeds=[p.seed for p in prompts])
    result = scores(videos, prompts)
    assert result["direction_acc"] >= MIN_DIRECTION_ACCURACY, result


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


def test_the_demo_vae_gives_back_colour_shape_and_motion(demo, prompts):
    # The ceiling of every ShapesBench row (README): the ground-truth clips through the demo VAE keep their colour and
    # motion and mostly their shape (measured 100 / 92 / 100 % on these prompts; the misses are triangles whose tip
    # blurs, read as discs).
    ceiling = vae_ceiling(demo, prompts, WorldConfig())
    assert ceiling["colour_acc"] >= 90 and ceiling["shape_acc"] >= 70 and ceiling["direction_acc"] >= 90, ceiling


def test_the_demo_vae_puts_blue_next_to_purple_and_red_next_to_green(demo):
    # Why the demo teacher mixes up these colours (README, Known limitations): its VAE encodes a clip in blue and the
    # same clip in purple (or red / green) nearly alike, at about a seventh of the distance to another layout of the
    # caption, while colours of different brightness (red / yellow) lie about as far apart as a new layout (measured
    # 0.12, 0.17 and 0.87 on 16 clips). A VAE retrained to separate colours should change this test's numbers.
    separation = colour_separation(demo.pipe.vae, WorldConfig(), range(5_000_000, 5_000_008))
    assert len(separation) == 15 and all(0 < r < 2 for r in separation.values()), separation
    assert max(separation["blue~purple"], separation["red~green"]) < 0.5 * separation["red~yellow"], separation
