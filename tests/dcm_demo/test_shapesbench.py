"""ShapesBench's evaluator: ground truth reads right, wrong attributes read wrong, shapeless blobs read at chance."""

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from dcm.io.video import decode_mp4, encode_mp4
from dcm_demo.bench import bench_prompts, ground_truth
from dcm_demo.evaluate import (
    background_distance,
    chance_levels,
    hole_pixels,
    label_components,
    object_masks,
    pixel_distance,
    score_video,
    summarise,
    wilson_interval,
)
from dcm_demo.world import COLOURS, SHAPES, Attributes, WorldConfig, make_clip, parse_caption, render, shape_mask

WORLD = WorldConfig()
SEEDS = range(60)
FEW_SEEDS = range(6)  # enough to show a wrong label reads wrong (ground truth reads right on all of SEEDS)
# Blobbed clips: each object replaced by a lumpy blob. Its base is one of the world's templates drawn independently
# of the prompt (a blob that is round whatever the prompt would test nothing but the circle template), blurred by
# this share of the object's side, with BLOB_LUMPS Gaussian bumps of random sign and height up to BLOB_LUMP_HEIGHT
# (template units), BLOB_LUMP_WIDTH of the side wide, placed within half a side of the centre; cut at the base
# template's area. Blurrier bases read as circles more and more (0.15: 62 % circle): a round blob is a circle.
BLOB_BLUR = 0.12
BLOB_LUMPS = 4
BLOB_LUMP_HEIGHT = 0.4
BLOB_LUMP_WIDTH = 0.2
# A test that a rate is "at" p: p inside the rate's 3-sigma Wilson interval (99.7 %), so a correct evaluator fails
# it about 3 times in 1000 seeds; its half-width on 144 clips is ~12 points.
Z_TEST = 3.0


def scores(transform=lambda clip: clip.frames, attributes=lambda clip: clip.attributes, seeds=SEEDS):
    return summarise([score_video(transform(clip), attributes(clip)) for clip in map(make_clip, seeds)])


def other(attributes: Attributes, **wrong) -> Attributes:
    return replace(attributes, **wrong)


def test_captions_round_trip_and_determinism():
    clip = make_clip(3)
    assert parse_caption(clip.caption) == clip.attributes
    assert np.array_equal(make_clip(3).frames, clip.frames) and clip.frames.shape == (17, 64, 64, 3)
    assert parse_caption("a small blue square moving up slowly") == Attributes(
        colour="blue", shape="square", direction="up", size="small", speed="slowly"
    )
    with pytest.raises(ValueError, match="exactly one colour"):
        parse_caption("a square moving up")
    with pytest.raises(ValueError, match="objects would leave"):
        WorldConfig(size=32, pixels_per_frame=3.0)


@pytest.mark.parametrize("codec", [False, True], ids=["pixels", "mp4"])
def test_ground_truth_reads_right_on_every_attribute(codec):
    s = scores(lambda clip: decode_mp4(encode_mp4(clip.frames, fps=8)).frames if codec else clip.frames)
    for name in ("colour", "shape", "direction", "size", "speed", "solid"):
        assert s[f"{name}_acc"] == 100, (name, s)
    assert s["multi_blob_frames"] == 0 and s["hole_frames"] == 0 and s["area_growth"] == pytest.approx(1, abs=0.02)
    assert s["jitter_px"] < 1.0 and s["consistency"] > 90, s


@pytest.mark.parametrize(
    ("metric", "wrong"),
    [
        ("colour", lambda a: other(a, colour=list(COLOURS)[(list(COLOURS).index(a.colour) + 1) % len(COLOURS)])),
        ("shape", lambda a: other(a, shape=SHAPES[(SHAPES.index(a.shape) + 1) % len(SHAPES)])),
        ("size", lambda a: other(a, size="small" if a.size == "large" else "large")),
        ("speed", lambda a: other(a, speed="" if a.speed == "slowly" else "slowly")),
    ],
)
def test_a_wrong_attribute_reads_wrong(metric, wrong):
    assert scores(attributes=lambda clip: wrong(clip.attributes), seeds=FEW_SEEDS)[f"{metric}_acc"] == 0


def test_reversed_motion_fails_direction():
    assert scores(lambda clip: clip.frames[::-1], seeds=FEW_SEEDS)["direction_acc"] == 0


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(3 * sigma) + 1
    kernel = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    rows = np.apply_along_axis(np.convolve, 0, image, kernel, mode="same")
    return np.apply_along_axis(np.convolve, 1, rows, kernel, mode="same")


def blob_window(base: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """(3 side, 3 side) bool: a lumpy blob centred in the window (see BLOB_BLUR)."""
    template = shape_mask(base, side)
    field = np.zeros((3 * side, 3 * side))
    field[side : 2 * side, side : 2 * side] = template
    field = _blur(field, BLOB_BLUR * side)
    yy, xx = (np.mgrid[0 : 3 * side, 0 : 3 * side] + 0.5) / side - 1.5  # in sides from the centre
    for (y, x), height in zip(rng.uniform(-0.5, 0.5, (BLOB_LUMPS, 2)),
                              rng.uniform(-BLOB_LUMP_HEIGHT, BLOB_LUMP_HEIGHT, BLOB_LUMPS)):  # fmt: skip
        field += height * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * BLOB_LUMP_WIDTH**2))
    return field >= np.sort(field.ravel())[::-1][int(template.sum()) - 1]


def blobbed(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The clip with its object replaced, frame by frame, by one lumpy blob of the same colour and side, centred
    where the object's bounding box is."""
    masks, n = object_masks(frames), frames.shape[1]
    ys, xs = np.nonzero(masks[0])
    side = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    window = blob_window(str(rng.choice(WORLD.shapes)), side, rng)
    out = frames.copy()
    for t, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        top = int(round((ys.max() + ys.min() + 1) / 2 - 1.5 * side))
        left = int(round((xs.max() + xs.min() + 1) / 2 - 1.5 * side))
        blob = np.zeros((n, n), dtype=bool)
        y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + 3 * side, n), min(left + 3 * side, n)
        blob[y0:y1, x0:x1] = window[y0 - top : y1 - top, x0 - left : x1 - left]
        border = np.concatenate([frames[t, 0], frames[t, -1], frames[t, :, 0], frames[t, :, -1]])
        out[t][mask] = np.median(border, axis=0).astype(np.uint8)
        out[t][blob] = frames[t][mask].mean(0).astype(np.uint8)
    return out


def test_blobs_read_at_chance_and_spread_over_the_shapes():
    prompts = bench_prompts(144, WORLD)
    rng = np.random.default_rng(0)
    results = [score_video(blobbed(clip, rng), p.attributes) for clip, p in zip(ground_truth(prompts, WORLD), prompts)]
    hits = int(sum(s.shape_ok for s in results))
    low, high = wilson_interval(hits, len(results), z=Z_TEST)
    assert low <= 1 / 3 <= high, (hits, len(results))
    # No shape takes the blobs over: each gets between half and one and a half times its fair third.
    drawn = Counter(s.predicted["shape"] for s in results)
    assert set(drawn) == set(WORLD.shapes) and all(48 / 2 <= n <= 48 * 1.5 for n in drawn.values()), drawn
    # The blobs keep colour, motion and size: only the shape is lost.
    summary = summarise(results)
    assert summary["colour_acc"] == summary["direction_acc"] == summary["speed_acc"] == 100, summary


def test_blobs_split_into_fragments_or_grown_fail_solidity():
    clip = make_clip(5)
    fragmented = clip.frames.copy()
    masks = object_masks(clip.frames)
    for frame, mask in zip(fragmented, masks):
        ys, xs = np.nonzero(mask)
        frame[(ys.min() + ys.max()) // 2] = frame[0, 0]  # a background line cut through the object: two blobs
    growing = np.stack([render(replace(clip.attributes, size="small" if t < 8 else "large"), WORLD,
                               np.random.default_rng(5)).frames[t] for t in range(WORLD.num_frames)])  # fmt: skip
    one = score_video(fragmented, clip.attributes)
    two = score_video(growing, replace(clip.attributes, size="large"))
    assert one.solid_ok == 0 and one.multi_blob_frames == 1.0, one
    assert two.solid_ok == 0 and two.area_growth > 2 and two.multi_blob_frames == 0, two
    assert score_video(clip.frames, clip.attributes).solid_ok == 1


def test_components_and_holes():
    masks = np.zeros((2, 12, 12), dtype=bool)
    masks[0, 1:4, 1:4] = masks[0, 6:9, 6:9] = True  # two squares; their corners do not touch
    masks[1, 2:10, 2:10] = True
    masks[1, 4:7, 4:7] = False  # a ring with a 3x3 hole

    def count(labels):
        return len(np.unique(labels[labels > 0]))

    labels = label_components(masks)
    assert count(labels[0]) == 2 and count(labels[1]) == 1
    masks[0, 4:6, 4:6] = True  # a block touching both squares at its corners only
    assert count(label_components(masks[0])) == 1 and count(label_components(masks[0], diagonal=False)) == 3
    assert hole_pixels(masks).tolist() == [0, 9]


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, Table I: 81/263 -> 0.2553-0.3662; 15/148 -> 0.0624-0.1605;
    # 0/20 -> 0-0.1611; 1/29 -> 0.0061-0.1718.
    for (k, n), expected in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611),
                             (1, 29): (0.0061, 0.1718)}.items():  # fmt: skip
        assert wilson_interval(k, n) == pytest.approx(expected, abs=1e-4), (k, n)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    with pytest.raises(ValueError, match="successes=11, n=10"):
        wilson_interval(11, 10)


def test_chance_levels_follow_the_world_vocabulary():
    assert chance_levels(WORLD) == pytest.approx(
        {"colour_acc": 100 / 6, "shape_acc": 100 / 3, "direction_acc": 25.0, "size_acc": 50.0, "speed_acc": 50.0}
    )
    assert chance_levels(replace(WORLD, colours=("red", "blue"), shapes=("circle",)))["colour_acc"] == 50
    assert chance_levels(replace(WORLD, colours=("red", "blue"), shapes=("circle",)))["shape_acc"] == 100


def test_summary_intervals_bracket_the_accuracies():
    s = scores(attributes=lambda clip: other(clip.attributes, shape="circle"), seeds=range(12))
    low, high = s["shape_acc_ci"]
    assert 0 < low < s["shape_acc"] < high < 100, s
    assert (low, high) == pytest.approx([100 * b for b in wilson_interval(round(s["shape_acc"] * 12 / 100), 12)])


def test_noise_is_inconsistent_and_shuffled_frames_are_jittery():
    rng = np.random.default_rng(0)
    shuffled = scores(lambda clip: clip.frames[rng.permutation(len(clip.frames))], seeds=range(12))
    assert shuffled["jitter_px"] > 3 * scores(seeds=range(12))["jitter_px"] + 1.0
    noisy = scores(lambda clip: rng.integers(0, 256, size=clip.frames.shape, dtype=np.uint8), seeds=range(12))
    assert noisy["colour_acc"] < 50 and noisy["direction_acc"] < 50 and noisy["consistency"] < 50, noisy


def test_background_distance_is_zero_on_the_background():
    clip = make_clip(2)
    distance = background_distance(clip.frames)
    assert distance.shape == (17, 64, 64) and np.median(distance) < 10 and distance.max() > 100


def test_pixel_distance():
    clip = make_clip(1)
    assert pixel_distance(clip.frames, clip.frames) == 0.0
    other_layout = render(clip.attributes, WorldConfig(), np.random.default_rng(99)).frames
    assert pixel_distance(clip.frames, other_layout) > 0.0
    with pytest.raises(ValueError, match="same shape"):
        pixel_distance(clip.frames, clip.frames[:5])
