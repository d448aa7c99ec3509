"""From a create body to a resolved request, without Ray: OpenAI's seconds and size, 400 vs 422, and ``param``.

.venv/bin/python -m pytest -q tests/endpoint/test_video_request.py
"""

import pytest

from dcm.generation import RequestLimits, VideoGenerator
from serve.schemas import ApiError
from serve.video_request import format_seconds, frames_for_seconds, resolve_create


@pytest.fixture(scope="module")
def generator():
    return VideoGenerator("tiny-wan", device="cpu", limits=RequestLimits(max_num_frames=33, max_size=80))


def resolve(generator, **fields):
    return resolve_create(fields, job_id="video_test", served_model="tiny-wan", generator=generator)


def refusal(generator, **fields) -> ApiError:
    with pytest.raises(ApiError) as info:
        resolve(generator, **fields)
    return info.value


@pytest.mark.parametrize("seconds, fps, frames", [(4, 16, 65), (5, 16, 81), (1, 8, 9), (0.01, 8, 1), (1.2, 8, 9)])
def test_seconds_round_to_the_nearest_4n_plus_1_frames(seconds, fps, frames):
    assert frames_for_seconds(seconds, fps, 4) == frames
    assert (frames - 1) % 4 == 0


def test_openai_fields_become_a_generation_request(generator):
    body, resolved = resolve(generator, prompt="a red circle", seconds="2", size="48x32", model="tiny-wan", seed=5)
    c = resolved.config
    fps = generator.model_limits.defaults.fps
    assert (c.width, c.height, c.num_frames, c.fps) == (48, 32, frames_for_seconds(2, fps, 4), fps)
    assert resolved.seed == 5 and resolved.prompt == "a red circle" and resolved.id == "video_test"
    assert format_seconds(c.num_frames, c.fps) == "2.125"  # 17 frames at 8 fps
    _, defaults = resolve(generator, prompt="p")
    assert defaults.config == generator.model_limits.defaults and defaults.seed == 0


@pytest.mark.parametrize(
    "fields, status, param, text",
    [
        ({}, 400, "prompt", "prompt is required"),
        ({"prompt": 3}, 400, "prompt", "string"),
        ({"prompt": "p", "seed": "3"}, 400, "seed", "integer"),
        ({"prompt": "p", "seed": True}, 400, "seed", "integer"),
        ({"prompt": "p", "colour": "red"}, 400, "colour", "unknown field 'colour'"),
        ({"prompt": "p", "seconds": [4]}, 400, "seconds", 'a string such as "4"'),
        ({"prompt": "p", "seconds": "four"}, 400, "seconds", "number of seconds"),
        ({"prompt": "p", "seconds": "-2"}, 422, "seconds", "positive"),
        ({"prompt": "p", "seconds": "9"}, 422, "seconds", "at most 33 frames (4.125 s at 8 fps)"),
        ({"prompt": "p", "seconds": "1", "num_frames": 9}, 400, "seconds", "not both"),
        ({"prompt": "p", "size": "big"}, 400, "size", "WIDTHxHEIGHT"),
        ({"prompt": "p", "size": "1280x720"}, 422, "size", "each one of 16, 32, 48, 64, 80"),
        ({"prompt": "p", "size": "40x32"}, 422, "size", "(default 64x64)"),
        ({"prompt": "p", "size": "32x32", "width": 32}, 400, "size", "not both"),
        ({"prompt": "p", "model": "sora-2"}, 400, "model", "serves model 'tiny-wan'"),
        ({"prompt": "p", "num_frames": 10}, 422, "num_frames", "4*n + 1"),
        ({"prompt": "p", "num_frames": 37}, 422, "num_frames", "[1, 33]"),
        ({"prompt": "p", "height": 40}, 422, "height", "multiple of 16"),
        ({"prompt": "p", "num_inference_steps": 99}, 422, "num_inference_steps", "99"),
        ({"prompt": "p", "seed": -1}, 422, "seed", "-1"),
        ({"prompt": "   "}, 422, "prompt", "non-empty"),
        ({"prompt": "p", "fps": 100000}, 422, "fps", "100000"),
        ({"prompt": "p", "guidance_scale": 99.0}, 422, "guidance_scale", "99.0"),
    ],
)
def test_refusals_name_the_field_the_client_sent(generator, fields, status, param, text):
    err = refusal(generator, **fields)
    assert (err.status, err.detail.param) == (status, param), err.detail
    assert text in err.detail.message, err.detail.message
