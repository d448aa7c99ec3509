"""VideoGenerator (shared by the batch job and the endpoint): grouping, defaults, per-request errors, MP4 output."""

import pytest

from dcm.generation import RequestLimits, VideoGenerator, VideoRequest, check_request
from dcm.io.video import decode_mp4


@pytest.fixture(scope="module")
def generator():
    return VideoGenerator("tiny-wan", device="cpu")


def test_groups_compatible_requests_and_keeps_order(generator):
    requests = [
        VideoRequest(id="a", prompt="a red circle", seed=1),
        VideoRequest(id="b", prompt="a blue square", seed=2, num_frames=9, height=32, width=32),
        VideoRequest(id="c", prompt="green", seed=3),
        VideoRequest(id="bad", prompt="x", seed=4, num_frames=10),
    ]
    results = generator.generate(requests)
    assert [r.id for r in results] == ["a", "b", "c", "bad"]
    assert [r.batch_size for r in results] == [2, 1, 2, 0]
    assert results[3].error.startswith("num_frames must be 4*n + 1") and results[3].mp4 is None
    video = decode_mp4(results[1].mp4)
    assert video.frames.shape == (9, 32, 32, 3)
    default = generator.defaults
    assert decode_mp4(results[0].mp4).frames.shape == (default.num_frames, default.height, default.width, 3)


def test_same_seed_same_video_batched_or_not(generator):
    alone = generator.generate([VideoRequest(id="x", prompt="a red circle", seed=11)])[0]
    batched = generator.generate(
        [VideoRequest(id="y", prompt="other", seed=12), VideoRequest(id="x", prompt="a red circle", seed=11)]
    )[1]
    a, b = decode_mp4(alone.mp4).frames.astype(int), decode_mp4(batched.mp4).frames.astype(int)
    assert abs(a - b).max() <= 2  # identical up to encoder rounding of 1-level differences


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"prompt": " "}, "prompt must be a non-empty"),
        ({"prompt": "x" * 3000}, "prompt must be at most"),
        ({"seed": -5}, "seed must be an integer"),
        ({"seed": True}, "seed must be an integer"),
        ({"num_frames": 1000}, r"num_frames must be an integer in \[1, 129\]"),
        ({"height": "64"}, "height must be an integer in"),
        ({"num_inference_steps": 0}, r"num_inference_steps must be an integer in \[1, 8\]"),
        ({"guidance_scale": 0.2}, "guidance_scale must be a number"),
    ],
)
def test_request_checks_name_field_and_value(changes, match):
    request = VideoRequest(**{"id": "r", "prompt": "ok", "seed": 0, **changes})
    with pytest.raises(ValueError, match=match):
        check_request(request, RequestLimits())


def test_steps_outside_dcm_schedule_are_request_errors(generator):
    result = generator.generate([VideoRequest(id="s", prompt="ok", seed=0, num_inference_steps=9)])[0]
    assert result.error and "num_inference_steps" in result.error
