"""ShapesBench on ground truth (near 100%) and on corrupted clips (low), and the world's captions."""

import numpy as np
import pytest

from dcm.io.video import decode_mp4, encode_mp4
from dcm_demo.evaluate import pixel_distance, score_video, summarise
from dcm_demo.world import COLOURS, Attributes, WorldConfig, make_clip, parse_caption, render

SEEDS = range(60)


def scores(transform=lambda clip: clip.frames, attributes=lambda clip: clip.attributes):
    return summarise([score_video(transform(clip), attributes(clip)) for clip in map(make_clip, SEEDS)])


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


def test_ground_truth_scores_near_100():
    s = scores()
    assert s["colour_acc"] == 100 and s["direction_acc"] == 100 and s["shape_acc"] >= 95, s
    assert s["jitter_px"] < 1.0 and s["consistency"] > 90, s


def test_ground_truth_survives_the_video_codec():
    s = scores(lambda clip: decode_mp4(encode_mp4(clip.frames, fps=8)).frames)
    assert s["colour_acc"] == 100 and s["direction_acc"] == 100 and s["shape_acc"] >= 90, s


def test_reversed_motion_fails_direction():
    assert scores(lambda clip: clip.frames[::-1])["direction_acc"] == 0


def test_wrong_colour_fails_colour():
    names = list(COLOURS)

    def other(clip):
        a = clip.attributes
        return Attributes(colour=names[(names.index(a.colour) + 1) % len(names)], shape=a.shape,
                          direction=a.direction, size=a.size, speed=a.speed)  # fmt: skip

    assert scores(attributes=other)["colour_acc"] == 0


def test_wrong_shape_fails_shape():
    def other(clip):
        a = clip.attributes
        shape = {"circle": "triangle", "square": "triangle", "triangle": "square"}[a.shape]
        return Attributes(colour=a.colour, shape=shape, direction=a.direction, size=a.size, speed=a.speed)

    assert scores(attributes=other)["shape_acc"] <= 5


def test_shuffled_frames_are_jittery_and_noise_is_inconsistent():
    rng = np.random.default_rng(0)
    shuffled = scores(lambda clip: clip.frames[rng.permutation(len(clip.frames))])
    assert shuffled["jitter_px"] > 3 * scores()["jitter_px"] + 1.0
    noisy = scores(lambda clip: rng.integers(0, 256, size=clip.frames.shape, dtype=np.uint8))
    assert noisy["colour_acc"] < 50 and noisy["direction_acc"] < 50 and noisy["consistency"] < 50, noisy


def test_pixel_distance():
    clip = make_clip(1)
    assert pixel_distance(clip.frames, clip.frames) == 0.0
    other = render(clip.attributes, WorldConfig(), np.random.default_rng(99)).frames
    assert pixel_distance(clip.frames, other) > 0.0
    with pytest.raises(ValueError, match="same shape"):
        pixel_distance(clip.frames, clip.frames[:5])
