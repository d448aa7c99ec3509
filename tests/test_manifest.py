"""Manifest rows -> requests: defaults, derived ids, type and range errors naming the field and value."""

import math

import numpy as np
import pytest

from dcm.generation import RequestLimits
from dcm.manifest import JobDefaults, check_columns, output_key, parse_row, row_id

LIMITS = RequestLimits()


def test_defaults_and_derived_id():
    request = parse_row({"prompt": "a red circle"}, JobDefaults(seed=7, num_frames=9), LIMITS)
    assert request.seed == 7 and request.num_frames == 9 and request.height is None
    assert request.id == parse_row({"prompt": "a red circle"}, JobDefaults(seed=7, num_frames=9), LIMITS).id
    other = parse_row({"prompt": "a red circle", "seed": 8}, JobDefaults(seed=7, num_frames=9), LIMITS)
    assert other.id != request.id  # the id follows the content


def test_parquet_types_are_accepted():
    row = {"prompt": "p", "seed": np.int64(3), "num_frames": 17.0, "height": math.nan, "id": 12}
    request = parse_row(row, JobDefaults(), LIMITS)
    assert (request.seed, request.num_frames, request.height, request.id) == (3, 17, None, "12")


@pytest.mark.parametrize(
    "row, match",
    [
        ({"prompt": None}, "prompt must be a non-empty string, got None"),
        ({"prompt": ""}, "prompt must be a non-empty string"),
        ({"prompt": "p", "seed": -1}, "seed must be an integer in"),
        ({"prompt": "p", "seed": "abc"}, "seed must be an integer, got 'abc'"),
        ({"prompt": "p", "num_frames": 17.5}, "num_frames must be an integer, got 17.5"),
        ({"prompt": "p", "height": 0}, r"height must be an integer in \[1, 1280\], got 0"),
        ({"prompt": "p", "negative_prompt": 3}, "negative_prompt must be a string, got 3"),
        ({"prompt": "x" * 5000}, "prompt must be at most"),
    ],
)
def test_bad_rows(row, match):
    with pytest.raises(ValueError, match=match):
        parse_row(row, JobDefaults(), LIMITS)


def test_missing_prompt_column():
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['prompt'\]"):
        check_columns(["id", "text"])


def test_output_keys_stay_inside_the_prefix():
    for evil in ("../x", "/abs", "a/b", "..", ".hidden"):
        key = output_key(evil)
        assert "/" not in key and not key.startswith(".") and key.endswith(".mp4")
    assert output_key("clip-1") == "clip-1.mp4"
    assert len(row_id({"prompt": "p"})) == 16
