"""Prompt manifests (input of the batch job): rows -> requests, ids, and the output key of each row's video.

A manifest is a Parquet file or folder with one row per video:

| column | type | required | meaning |
|---|---|---|---|
| ``prompt`` | string | yes | the text prompt |
| ``id`` | string (or integer) | no | output name; derived from the row's content when absent |
| ``seed`` | int | no | job default (``--seed``) when absent |
| ``negative_prompt`` | string | no | used only with guidance > 1 |
| ``num_frames``, ``height``, ``width``, ``num_inference_steps``, ``fps`` | int | no | job or model default |

Parquet's own types are accepted: numpy integers, and integral floats (an integer column with nulls reads as
floats, a null as NaN). Row checks here need no model (types, ranges, the operator's limits); the generator adds the
model's own. :func:`parse_row` raises :class:`RowError` (a :class:`FieldError`) and nothing else, so a bad row is an
``error`` result naming the field and its value, never the end of a job.

Two rows must not write the same file: :func:`duplicate_ids` finds ids that appear twice (explicit, or derived from
identical rows without an id) and ids whose output keys would collide, also on case-insensitive stores.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dcm.config import FieldError
from dcm.generation.requests import RequestLimits, VideoRequest, check_request, is_integer, show
from dcm.io.storage import safe_name

REQUIRED_COLUMNS = ("prompt",)
OPTIONAL_INT_COLUMNS = ("seed", "num_frames", "height", "width", "num_inference_steps", "fps")
OPTIONAL_STR_COLUMNS = ("id", "negative_prompt")
KNOWN_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_INT_COLUMNS + OPTIONAL_STR_COLUMNS
ID_HASH_CHARS = 16
# A raw value quoted in a results row keeps at most this many characters.
RAW_TEXT_CHARS = 200


class RowError(FieldError):
    """A bad manifest row: ``field`` names the column, ``raw`` is its raw value as text (None when it was missing)
    for the results table, whose typed columns cannot hold a bad value itself (a seed of 1.5 or ``"7"``)."""

    def __init__(self, field: str, message: str, raw: str | None) -> None:
        super().__init__(field, message)
        self.raw = raw


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


def check_columns(names: list[str]) -> list[str]:
    """Fails fast on a manifest without the required columns (naming what it has); returns the columns this job
    ignores (a typo such as ``num_frame`` is worth a warning)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"manifest is missing required column(s) {missing}; it has {sorted(names)}")
    return sorted(set(names) - set(KNOWN_COLUMNS))


def is_missing(value: Any) -> bool:
    """None, NaN (a null in a float column) or pandas' NA."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def raw_text(value: Any) -> str | None:
    """A raw cell as text for a results row: strings as they are, anything else as its repr; None when missing.
    Cut to :data:`RAW_TEXT_CHARS` characters; never raises."""
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates become \\udxxx
        return text if len(text) <= RAW_TEXT_CHARS else f"{text[:RAW_TEXT_CHARS]}..."
    try:
        if is_missing(value):
            return None
    except Exception:  # an object that cannot even be compared is still shown
        pass
    return show(value)


def _as_int(name: str, value: Any) -> int | None:
    """Python/numpy integers, or integral finite floats (an integer column with nulls); None when missing."""
    if is_missing(value):
        return None
    if is_integer(value):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        number = float(value)
        if math.isfinite(number) and number.is_integer():
            return int(number)
    raise FieldError(name, f"{name} must be an integer, got {show(value)}")


def _as_text(name: str, value: Any) -> str | None:
    if is_missing(value):
        return None
    if not isinstance(value, str):
        raise FieldError(name, f"{name} must be a string, got {show(value)}")
    return str(value)


def _as_id(value: Any) -> str | None:
    """An explicit id (a string, or an integer column's value as text); None asks for a derived id."""
    if is_missing(value) or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        return str(value)
    if is_integer(value):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))  # an integer id column with nulls reads as floats
    raise FieldError("id", f"id must be a string or an integer, got {show(value)}")


def _read(row: dict[str, Any], name: str, parse: Callable[[str, Any], Any]) -> Any:
    """One cell through its parser; whatever goes wrong is a RowError naming the column."""
    value = row.get(name)
    try:
        return parse(name, value)
    except FieldError as err:
        raise RowError(name, str(err), raw_text(value)) from err
    except Exception as err:  # a cell no parser foresaw (an object whose comparisons raise) is still its row's error
        raise RowError(
            name, f"{name} cannot be read ({type(err).__name__}), got {show(value)}", raw_text(value)
        ) from err


def row_id(fields: dict[str, Any]) -> str:
    """A deterministic id from the row's content (prompt, seed and parameters): same row, same id, same file."""
    canonical = json.dumps({k: fields.get(k) for k in sorted(KNOWN_COLUMNS) if k != "id"}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:ID_HASH_CHARS]


def _fields(row: dict[str, Any], defaults: JobDefaults) -> dict[str, Any]:
    """The row's typed values with the job's defaults filled in (no range checks yet)."""
    fields: dict[str, Any] = {"prompt": _read(row, "prompt", _as_text)}
    if fields["prompt"] is None:
        raise RowError("prompt", f"prompt must be a non-empty string, got {show(row.get('prompt'))}", None)
    for name in OPTIONAL_INT_COLUMNS:
        value = _read(row, name, _as_int)
        fields[name] = getattr(defaults, name) if value is None else value
    negative = _read(row, "negative_prompt", _as_text)
    fields["negative_prompt"] = defaults.negative_prompt if negative is None else negative
    return fields


def request_id(row: dict[str, Any], defaults: JobDefaults) -> str | None:
    """The id :func:`parse_row` gives this row (explicit, or derived from its content); None when the row is too
    broken to have one (it becomes an error result anyway)."""
    try:
        explicit = _read(row, "id", lambda _, value: _as_id(value))
        return explicit if explicit is not None else row_id(_fields(row, defaults))
    except RowError:
        return None


def parse_row(row: dict[str, Any], defaults: JobDefaults, limits: RequestLimits) -> VideoRequest:
    """A manifest row -> a request checked against the operator's limits (the model's are checked when resolved).

    Raises:
        RowError: (a FieldError) naming the column, with the message showing the value and ``raw`` its text.
            Nothing else is raised, whatever the row holds.
    """
    if not isinstance(row, dict):
        raise RowError("row", f"a manifest row must be a mapping of columns, got {show(row)}", raw_text(row))
    fields = _fields(row, defaults)
    explicit = _read(row, "id", lambda _, value: _as_id(value))
    request = VideoRequest(id=explicit if explicit is not None else row_id(fields), **fields)
    try:
        check_request(request, limits)
    except FieldError as err:
        column = err.field if err.field in row else None
        raw = raw_text(row.get(column)) if column else raw_text(getattr(request, err.field, None))
        raise RowError(err.field, str(err), raw) from err
    return request


def output_key(request_id: str) -> str:
    """The object key of a row's video, relative to the run's output prefix; it cannot escape the prefix."""
    return f"{safe_name(request_id)}.mp4"


def duplicate_ids(ids: Iterable[str | None]) -> frozenset[str]:
    """The ids whose video would land on the same key as another row's: the same id twice (explicit ids, or the
    derived ids of identical rows without one), or different ids whose keys match on a case-insensitive store.
    Every such row should be an error result (which one was meant is unknowable). None entries are skipped.
    """
    by_key: dict[str, list[str]] = defaultdict(list)
    for request_id_ in ids:
        if request_id_ is not None:
            by_key[output_key(request_id_).casefold()].append(request_id_)
    return frozenset(i for same in by_key.values() if len(same) > 1 for i in same)


def manifest_duplicates(rows: Iterable[dict[str, Any]], defaults: JobDefaults) -> frozenset[str]:
    """:func:`duplicate_ids` over rows (the batch job and ``--dry-run`` pass a manifest's rows, batch by batch)."""
    return duplicate_ids(request_id(row, defaults) for row in rows)
