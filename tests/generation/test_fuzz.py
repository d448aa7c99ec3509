"""Fuzzing the one validation path with hostile values: types, sizes, Unicode, NaN/inf, huge integers, bytes, lists.

* a few hundred random requests through ``VideoGenerator.generate`` on tiny-wan (9x32x32) in one call: no exception
  escapes, every valid request gets an MP4, every invalid one an error naming the field that was corrupted;
* a few hundred random manifest rows through ``parse_row``: only ``RowError`` (a FieldError) comes out, naming the
  corrupted column with its raw value as text, and every row it accepts resolves against the model's limits.

Each invalid case corrupts exactly one field, so the field the error must name is known.
"""

from __future__ import annotations

import datetime
import decimal
import math
import random

import numpy as np
import pandas as pd
import pytest

from dcm.config import MAX_SEED, FieldError
from dcm.generation import RequestLimits, VideoGenerator, VideoRequest, model_limits_from_source, resolve_request
from dcm.generation.requests import MAX_ID_CHARS
from dcm.io.video import decode_mp4
from dcm.manifest import RAW_TEXT_CHARS, JobDefaults, RowError, parse_row

FUZZ_SEED = 20261123
NUM_REQUESTS = 200
NUM_ROWS = 400
INVALID_SHARE = 0.6  # invalid requests cost nothing to check; valid ones cost a video each
LIMITS = RequestLimits()
OVER = LIMITS.max_prompt_chars + 1


class Hostile:
    """A cell whose repr and comparisons raise (an arbitrary Python object in an object column)."""

    __hash__ = None

    def __repr__(self):
        raise RuntimeError("no repr")

    def __eq__(self, other):
        raise RuntimeError("no comparisons")


# -- requests at the generator ------------------------------------------------------------------------------------

# Valid values keep every video at 9x32x32 and the configs few (steps x fps x guidance: 12 sampler groups).
VALID_FIELDS = {
    "prompt": ["a red circle", "猫が走る 🐈", "x" * LIMITS.max_prompt_chars, "tabs\tand\nnewlines", "nul\x00byte"],
    "seed": [0, 7, MAX_SEED, np.int64(5)],
    "negative_prompt": [None, "blurry", ""],
    "num_frames": [9, np.int64(9)],
    "height": [32, np.int32(32)],
    "width": [32],
    "num_inference_steps": [None, 2, np.int64(4)],
    "fps": [None, 24, np.int64(120)],
    "guidance_scale": [None, 1.0, 1, 2.5],
}
INVALID_FIELDS = {
    "id": ["", "   ", None, 5, ["a"], "x" * (MAX_ID_CHARS + 1), "\ud800"],
    "prompt": [None, "", " \n", b"bytes", 42, "x" * OVER, "\udfff", {"a": 1}, math.nan],
    "seed": [-1, MAX_SEED + 1, 2**70, 1.5, "7", True, None, math.nan],
    "negative_prompt": [5, b"x", "x" * OVER, ["a"], "\ud800"],
    "num_frames": [10, 0, -9, 129, 1.5, "9", True, 2**64, math.inf, 8, 9.0],
    "height": [33, 0, 528, "32", 32.0, [32], -32],
    "width": [48.5, 1296, np.float64(32), b"32"],
    "num_inference_steps": [0, 9, -1, "4", 2.0, False],
    "fps": [0, 121, 1000, 2**32, 1.5, "8", np.bool_(True)],
    "guidance_scale": [0.5, 21, math.nan, math.inf, -1, "2", True, [1.0], complex(2, 0)],
}


def fuzz_requests(rng: random.Random) -> list[tuple[VideoRequest, str | None]]:
    """(request, the field it corrupts or None)."""
    cases = []
    for n in range(NUM_REQUESTS):
        fields = {name: rng.choice(values) for name, values in VALID_FIELDS.items()}
        fields["id"] = f"req-{n}"
        bad = rng.choice(sorted(INVALID_FIELDS)) if rng.random() < INVALID_SHARE else None
        if bad is not None:
            fields[bad] = rng.choice(INVALID_FIELDS[bad])
        cases.append((VideoRequest(**fields), bad))
    return cases


@pytest.mark.slow
def test_generator_fuzz(generator):
    cases = fuzz_requests(random.Random(FUZZ_SEED))
    results = generator.generate([request for request, _ in cases])
    assert len(results) == len(cases)
    num_valid = 0
    for (request, bad), result in zip(cases, results):
        if bad is None:
            num_valid += 1
            assert result.ok, f"{request.id}: {result.error}"
            assert decode_mp4(result.mp4).frames.shape == (9, 32, 32, 3)
        else:
            assert not result.ok and result.mp4 is None, f"{request.id}: {bad}={getattr(request, bad)!r} accepted"
            assert result.error_field == bad, f"{request.id}: {bad} corrupted, error names {result.error_field}"
            assert result.error.startswith(bad), result.error
    assert 0.3 * len(cases) < num_valid < 0.7 * len(cases)  # both kinds were exercised


@pytest.fixture(scope="module")
def generator():
    return VideoGenerator("tiny-wan", device="cpu")


# -- manifest rows ------------------------------------------------------------------------------------------------

VALID_CELLS = {
    "prompt": ["a red circle", "猫 🐈", np.str_("numpy string")],
    "id": [None, math.nan, "", "Clip-01", "a/../b", 12, np.int64(7), 13.0, pd.NA],
    "seed": [None, math.nan, 3, np.int64(3), 7.0, np.float32(2), MAX_SEED, pd.NA],
    "negative_prompt": [None, math.nan, "blurry"],
    "num_frames": [None, math.nan, 9, 9.0, np.int64(9), np.float64(9)],
    "height": [None, 32, 32.0, np.uint16(32)],
    "width": [None, 32, np.int8(32)],
    "num_inference_steps": [None, 2, 4.0],
    "fps": [None, 8, 120.0],
}
INVALID_CELLS = {
    "prompt": [None, math.nan, "", b"bytes", 3, ["a"], "x" * OVER, "\ud800", Hostile(), np.array(["a"]),
               {"text": ["nested", {"deeper": b"x"}]}, np.array([["a", "b"], ["c", "d"]])],
    "id": [1.5, b"id", ["a"], {"k": 1}, math.inf, "x" * (MAX_ID_CHARS + 1), "\udc80", Hostile(), True],
    "seed": [1.5, 2**70, "7", -1, math.inf, -math.inf, b"7", [7], True, np.bool_(False), decimal.Decimal(7),
             datetime.date(2020, 1, 1), complex(7, 0), Hostile(), np.array([1, 2]), 1e300],
    "negative_prompt": [3, b"x", "x" * OVER, ["n"], "\ud800", Hostile(), [["a", ["b"]]], {"a": [1, {"b": 2}]}],
    "num_frames": [1.5, "9", -1, 0, 10**30, [9], math.inf, {"n": 9}],
    "height": [32.5, "32", 0, 2000],
    "width": [b"32", -32, 1e10],
    "num_inference_steps": [0, 9, 2.5],
    "fps": [0, 121, 1000, 2**32, 1.5],
}  # fmt: skip


def fuzz_rows(rng: random.Random) -> list[tuple[dict, str | None]]:
    cases = []
    for _ in range(NUM_ROWS):
        row = {
            name: rng.choice(values) for name, values in VALID_CELLS.items() if rng.random() < 0.7 or name == "prompt"
        }
        bad = rng.choice(sorted(INVALID_CELLS)) if rng.random() < INVALID_SHARE else None
        if bad is not None:
            row[bad] = rng.choice(INVALID_CELLS[bad])
        cases.append((row, bad))
    return cases


def test_parse_row_fuzz():
    model = model_limits_from_source("tiny-wan")
    defaults = JobDefaults(seed=0, num_frames=9, height=32, width=32)
    for row, bad in fuzz_rows(random.Random(FUZZ_SEED)):
        try:
            request = parse_row(row, defaults, LIMITS)
        except RowError as err:
            assert bad is not None, f"a valid row was refused: {err} ({row!r:.300})"
            assert err.field == bad, f"{bad} corrupted, the error names {err.field}: {err}"
            assert str(err).startswith(bad)
            assert err.raw is None or (isinstance(err.raw, str) and len(err.raw) <= RAW_TEXT_CHARS + 3)
            continue
        assert bad is None, f"{bad}={row[bad]!r:.100} was accepted"
        resolved = resolve_request(request, limits=LIMITS, model=model)
        assert resolved.config.num_frames == 9 and isinstance(resolved.seed, int)


def test_parse_row_raises_only_field_errors_on_random_rows():
    """Arbitrary cells in arbitrary columns: a request or a FieldError naming a known column, nothing else."""
    rng = random.Random(FUZZ_SEED + 1)
    pool = [v for values in (*VALID_CELLS.values(), *INVALID_CELLS.values()) for v in values]
    columns = [*VALID_CELLS, "extra"]
    for _ in range(NUM_ROWS):
        row = {c: rng.choice(pool) for c in columns if rng.random() < 0.6}
        try:
            parse_row(row, JobDefaults(), LIMITS)
        except FieldError as err:
            assert err.field in VALID_CELLS, err
