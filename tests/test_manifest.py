"""Manifest rows -> requests: defaults, derived ids, duplicates and key collisions, and errors that are always a
RowError naming the column with its raw value (the seeds 1.5 / 2**70 / "7" that broke the results table)."""

import math

import numpy as np
import pytest

from dcm.config import FieldError
from dcm.generation import RequestLimits
from dcm.manifest import (
    RAW_TEXT_CHARS,
    JobDefaults,
    RowError,
    check_columns,
    duplicate_ids,
    manifest_duplicates,
    output_key,
    parse_row,
    raw_text,
    request_id,
    row_id,
)

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


@pytest.mark.parametrize(
    "seed, raw",
    [(1.5, "1.5"), (2**70, "1180591620717411303424"), ("7", "7"), (math.inf, "inf"), (b"7", "b'7'")],
)
def test_bad_seeds_are_row_errors_with_the_raw_value_as_text(seed, raw):
    """Issue: a seed of 1.5, 2**70 or "7" broke the results table after every video was made."""
    with pytest.raises(RowError) as info:
        parse_row({"prompt": "p", "seed": seed}, JobDefaults(), LIMITS)
    assert info.value.field == "seed" and info.value.raw == raw
    assert str(info.value).startswith("seed must be an integer")


def test_row_errors_are_field_errors_even_for_objects_nobody_foresaw():
    class Weird:
        def __repr__(self):
            raise RuntimeError("no repr")

    with pytest.raises(RowError) as info:
        parse_row({"prompt": Weird()}, JobDefaults(), LIMITS)
    assert isinstance(info.value, FieldError) and info.value.field == "prompt"
    assert "<unprintable Weird>" in str(info.value)
    with pytest.raises(RowError, match="a manifest row must be a mapping"):
        parse_row(["prompt"], JobDefaults(), LIMITS)


def test_long_raw_values_are_cut_and_lone_surrogates_escaped():
    with pytest.raises(RowError) as info:
        parse_row({"prompt": "p", "negative_prompt": "\ud800" + "x" * 5000}, JobDefaults(), LIMITS)
    assert info.value.raw.startswith("\\ud800x") and len(info.value.raw) <= RAW_TEXT_CHARS + 3
    assert raw_text(math.nan) is None and raw_text(None) is None


def test_negative_prompt_over_the_cap():
    with pytest.raises(RowError, match="negative_prompt must be at most 2000 characters, got 2001") as info:
        parse_row({"prompt": "p", "negative_prompt": "n" * 2001}, JobDefaults(), LIMITS)
    assert info.value.field == "negative_prompt"


def test_fps_that_mp4_cannot_hold_is_refused():
    for fps in (2**32, 1000):
        with pytest.raises(RowError, match=r"fps must be an integer in \[1, 120\]") as info:
            parse_row({"prompt": "p", "fps": fps}, JobDefaults(), LIMITS)
        assert info.value.field == "fps"


def test_identical_rows_without_ids_are_flagged_like_duplicate_explicit_ids():
    rows = [{"prompt": "a red circle"}, {"prompt": "a red circle"}, {"prompt": "a red circle", "seed": 1},
            {"prompt": "b", "id": "x"}, {"prompt": "c", "id": "x"}, {"prompt": "d", "id": "y"}]  # fmt: skip
    ids = [request_id(row, JobDefaults()) for row in rows]
    assert ids[0] == ids[1] != ids[2]
    assert manifest_duplicates(rows, JobDefaults()) == {ids[0], "x"}
    # A job default makes rows differ or not: the derived id follows the filled-in content.
    assert request_id({"prompt": "a"}, JobDefaults(seed=3)) == request_id({"prompt": "a", "seed": 3}, JobDefaults())


def test_ids_differing_by_case_get_different_keys():
    keys = {output_key(i) for i in ("Clip", "clip", "CLIP", "cLiP")}
    assert len(keys) == 4 and len({k.casefold() for k in keys}) == 4
    assert output_key("clip") == "clip.mp4" and output_key("Clip") == output_key("Clip")  # deterministic
    assert duplicate_ids(["Clip", "clip", "CLIP"]) == frozenset()


def test_ids_whose_keys_collide_are_flagged():
    """An id chosen to equal another id's sanitised key cannot overwrite that row's video."""
    crafted = output_key("a/b").removesuffix(".mp4")
    assert crafted != "a/b" and duplicate_ids(["a/b", crafted, "c"]) == {"a/b", crafted}


def test_broken_rows_have_no_id_and_are_not_counted():
    assert request_id({"prompt": "p", "seed": "x"}, JobDefaults()) is None
    assert request_id({"prompt": "p", "id": "given", "seed": "x"}, JobDefaults()) == "given"
    assert duplicate_ids([None, None, "a"]) == frozenset()


def test_unknown_columns_are_reported():
    assert check_columns(["prompt", "num_frame", "seed"]) == ["num_frame"]
