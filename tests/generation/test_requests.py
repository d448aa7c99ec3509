"""The one validation path: operator limits, the model's own limits (from the demo model's configs), field names.

Every trigger the hardening issue measured is here: fps 2**32 and 1000, num_frames 129 and height 264 on the demo
model (its 32-position RoPE table), an over-long negative prompt, and a model default above the operator's limit.
"""

from dataclasses import replace

import numpy as np
import pytest

from dcm.config import FieldError
from dcm.generation import FPS_CEILING, RequestLimits, VideoRequest, check_request, model_limits_from_source
from dcm.generation.requests import MAX_ID_CHARS, SHOWN_VALUE_CHARS, resolve_request


@pytest.fixture(scope="module")
def demo():
    return model_limits_from_source("demo")


def resolve(demo, limits=None, **fields):
    request = VideoRequest(**{"id": "r", "prompt": "a red circle moving left", **fields})
    return resolve_request(request, limits=limits or RequestLimits(), model=demo)


def refused(demo, field, limits=None, **fields) -> str:
    with pytest.raises(FieldError) as info:
        resolve(demo, limits, **fields)
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(field), str(info.value)
    return str(info.value)


@pytest.mark.parametrize("fps", [2**32, 1000, 121, 0, 2.5, "8"])
def test_fps_outside_what_an_mp4_holds_is_refused(demo, fps):
    assert "fps must be an integer in [1, 120]" in refused(demo, "fps", fps=fps)


def test_no_operator_may_allow_frame_rates_mp4s_cannot_hold():
    with pytest.raises(ValueError, match=f"max_fps must be <= {FPS_CEILING}"):
        RequestLimits(max_fps=1000)
    assert RequestLimits(max_fps=FPS_CEILING).max_fps == FPS_CEILING


def test_the_demo_models_positional_table_bounds_frames_and_size(demo):
    # Within the operator's 129 / 1280, beyond the demo model's 32-position RoPE table (latent 4x, patch 2).
    assert demo.geometry.max_num_frames == 125 and demo.geometry.max_size == 256
    message = refused(demo, "num_frames", num_frames=129)
    assert "num_frames must be <= 125 for this model" in message and "got 129" in message
    for field in ("height", "width"):
        message = refused(demo, field, **{field: 264})
        assert f"{field} must be <= 256 for this model" in message and "got 264" in message
    assert resolve(demo, num_frames=125, height=256, width=256).config.num_frames == 125


def test_model_defaults_keep_the_operators_limits(demo):
    message = refused(demo, "num_frames", RequestLimits(max_num_frames=9))
    assert message == "num_frames must be an integer in [1, 9], got 17 (the model's default)"
    assert resolve(demo, RequestLimits(max_num_frames=9), num_frames=9).config.num_frames == 9


def test_prompt_length_is_the_operators_only(demo):
    long = "a red circle moving left " * 120  # 3000 characters: far beyond the demo's 16 text tokens
    assert resolve(demo, RequestLimits(max_prompt_chars=5000), prompt=long).prompt == long
    assert "prompt must be at most 2000 characters, got 3000" in refused(demo, "prompt", prompt=long)
    assert demo.max_sequence_length == 16  # truncated by the text encoder, documented, not refused


def test_negative_prompt_has_the_prompt_cap(demo):
    limits = RequestLimits(max_prompt_chars=50)
    message = refused(demo, "negative_prompt", limits, negative_prompt="x" * 51, guidance_scale=2.0)
    assert message == "negative_prompt must be at most 50 characters, got 51"
    assert resolve(demo, limits, negative_prompt="x" * 50, guidance_scale=2.0).negative_prompt == "x" * 50
    assert resolve(demo, limits, negative_prompt="x" * 50).negative_prompt is None  # unused without guidance


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("seed", 1.5, "seed must be an integer in"),
        ("seed", 2**70, "seed must be an integer in"),
        ("seed", "7", "seed must be an integer in"),
        ("seed", True, "seed must be an integer in"),
        ("prompt", "\ud800 lone surrogate", "prompt must be valid Unicode text"),
        ("prompt", b"bytes", "prompt must be a non-empty string, got b'bytes'"),
        ("id", "", "id must be a non-empty string"),
        ("id", "x" * (MAX_ID_CHARS + 1), f"id must be at most {MAX_ID_CHARS} characters"),
        ("id", ["a"], r"id must be a non-empty string, got \['a'\]"),
        ("guidance_scale", float("nan"), "guidance_scale must be a number in"),
        ("guidance_scale", float("inf"), "guidance_scale must be a number in"),
        ("num_inference_steps", 9, r"num_inference_steps must be an integer in \[1, 8\]"),
        ("num_frames", 10, "num_frames must be 4\\*n \\+ 1"),
        ("height", 36, "height must be a multiple of 8"),
    ],
)
def test_bad_fields_are_named_with_their_value(demo, field, value, match):
    with pytest.raises(FieldError, match=match) as info:
        resolve(demo, **{field: value})
    assert info.value.field == field


def test_a_huge_value_is_shown_cut_short(demo):
    with pytest.raises(FieldError) as info:
        resolve(demo, seed=list(range(100_000)))
    assert len(str(info.value)) < SHOWN_VALUE_CHARS + 100


def test_numpy_scalars_resolve_to_plain_numbers(demo):
    resolved = resolve(
        demo, seed=np.int64(3), num_frames=np.int32(9), height=np.int64(32), guidance_scale=np.float32(2)
    )
    assert type(resolved.seed) is int and type(resolved.config.num_frames) is int and resolved.config.height == 32
    assert type(resolved.config.guidance_scale) is float and resolved.config.guidance_scale == 2.0


def test_steps_outside_the_dcm_schedule_name_the_field(demo):
    # With the boundary at grid index 2, 8 steps leave the detail expert too few grid points to walk.
    grid = replace(demo.schedule, boundary_index=2, num_detail_phases=1)
    message = refused(replace(demo, schedule=grid), "num_inference_steps", num_inference_steps=8)
    assert "not strictly decreasing" in message
    assert resolve(replace(demo, schedule=grid), num_inference_steps=4).config.num_inference_steps == 4


def test_check_request_needs_no_model():
    check_request(VideoRequest(id="a", prompt="p", num_frames=10), RequestLimits())  # the frame rule is the model's
    with pytest.raises(FieldError, match="height must be an integer in"):
        check_request(VideoRequest(id="a", prompt="p", height="64"), RequestLimits())
