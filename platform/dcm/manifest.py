"""Prompt manifests (input) and results manifests (output) of the batch job.

A manifest is a Parquet file or folder with one row per video:

| column | type | required | meaning |
|---|---|---|---|
| ``prompt`` | string | yes | the text prompt |
| ``id`` | string | no | output name; derived from the row content when absent |
| ``seed`` | int | no | job default (``--seed``) when absent |
| ``negative_prompt`` | string | no | used only with guidance > 1 |
| ``num_frames``, ``height``, ``width``, ``num_inference_steps``, ``fps`` | int | no | job or model default |

Row checks here need no model (types, ranges); the generator adds the model's geometry checks. A bad row becomes
an ``error`` result naming the field and the value; it never stops the job.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from dcm.generation import RequestLimits, VideoRequest, check_request
from dcm.io.storage import safe_name

REQUIRED_COLUMNS = ("prompt",)
OPTIONAL_INT_COLUMNS = ("seed", "num_frames", "height", "width", "num_inference_steps", "fps")
OPTIONAL_STR_COLUMNS = ("id", "negative_prompt")
KNOWN_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_INT_COLUMNS + OPTIONAL_STR_COLUMNS
ID_HASH_CHARS = 16
@dataclass(frozen=True, kw_only=True)
class JobDefaults:
    """Job-level values for optional columns; None leaves the model's own default."""

    seed: int = 0
    negative_prompt: str | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    fps: int | None = None


def check_columns(names: list[str]) -> None:
    """Fails fast on a manifest without the required columns (naming what it has)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"manifest is missing required column(s) {missing}; it has {sorted(names)}")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_int(name: str, value: Any) -> int:
    """Integers from Parquet arrive as Python/numpy ints, or as floats when the column has nulls."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__index__"):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(value)
    return int(value)


def row_id(fields: dict[str, Any]) -> str:
    """A deterministic id from the row's content (prompt, seed and parameters): same row, same id, same file."""
    canonical = json.dumps({k: fields.get(k) for k in sorted(KNOWN_COLUMNS) if k != "id"}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:ID_HASH_CHARS]


def parse_row(row: dict[str, Any], defaults: JobDefaults, limits: RequestLimits) -> VideoRequest:
    """A manifest row -> a validated request. Raises ValueError naming the field and the value."""
    fields: dict[str, Any] = {}
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {prompt!r}")
    fields["prompt"] = prompt
    for name in OPTIONAL_INT_COLUMNS:
        value = row.get(name)
        fields[name] = getattr(defaults, name) if _is_missing(value) else _as_int(name, value)
    negative = row.get("negative_prompt")
    if not _is_missing(negative) and not isinstance(negative, str):
        raise ValueError(f"negative_prompt must be a string, got {negative!r}")
    fields["negative_prompt"] = defaults.negative_prompt if _is_missing(negative) else negative
    raw_id = row.get("id")
    if _is_missing(raw_id) or raw_id == "":
        raw_id = row_id(fields)
    elif not isinstance(raw_id, str):
        raw_id = str(raw_id)
    request = VideoRequest(id=raw_id, **fields)
    check_request(request, limits)
    return request


def output_key(request_id: str) -> str:
    """The object key of a row's video, relative to the run's output prefix; it cannot escape the prefix."""
    return f"{safe_name(request_id)}.mp4"
