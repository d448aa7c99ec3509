"""The batch job's records: one results row per manifest row, each video's provenance, and the output's current view.

An output folder (local or ``s3://``) holds, besides ``<id>.mp4`` and the gallery pages:

    <id>.json                         the video's provenance: the ``ok`` record that made it (model, version, run)
    results/<run-id>/part-NNNNN.parquet   every record of one run, one per manifest row, written while it goes
    results.parquet                   the current view: one row per id over every run (see :func:`current_view`)

A ``skipped`` record is the record of the video it found (model, version, timing, the ``run_id`` that made it);
only ``row`` and ``status`` are the skipping run's.

A record's typed columns hold only values of their type: a bad value (a seed of 1.5, ``2**70`` or ``"7"``) is quoted
in ``error`` and its column is null, so the table can always be written. Nothing here touches Ray or a model.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import dcm
from dcm.config import json_ready, to_dict
from dcm.io.storage import ObjectInfo, Store, safe_name

if TYPE_CHECKING:
    from dcm.generation import ModelLimits

STATUS_OK, STATUS_ERROR, STATUS_SKIPPED = "ok", "error", "skipped"
STATUSES = (STATUS_OK, STATUS_ERROR, STATUS_SKIPPED)

RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("row", pa.int64()),  # the row's 0-based position in the manifest (files in name order)
        ("prompt", pa.string()),
        ("seed", pa.int64()),
        ("negative_prompt", pa.string()),
        ("num_frames", pa.int64()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("num_inference_steps", pa.int64()),
        ("fps", pa.int64()),
        ("uri", pa.string()),
        ("bytes", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("error_field", pa.string()),
        ("seconds", pa.float64()),
        ("batch_size", pa.int64()),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("run_id", pa.string()),  # the run that made the video (ok, skipped) or found the error
    ]
)
PARAM_COLUMNS = ("num_frames", "height", "width", "num_inference_steps", "fps")
# What must match between a manifest row and the record of an existing video for the video to count as the row's.
REQUEST_COLUMNS = ("prompt", "seed", "negative_prompt", *PARAM_COLUMNS)

RESULTS_NAME = "results.parquet"
RESULTS_DIR = "results"
# results.parquet's schema metadata: the run ids folded into it (their parts need not be read again).
RUNS_METADATA_KEY = b"dcm.runs"
PARQUET_TYPE = "application/vnd.apache.parquet"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
RUN_ID_SUFFIX_BYTES = 3


def new_run_id() -> str:
    """A run id that sorts by start time: ``20261201T091500Z-a1b2c3`` (UTC, plus a random suffix)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(RUN_ID_SUFFIX_BYTES)}"


def provenance_key(request_id: str) -> str:
    """The key of a video's provenance sidecar (beside ``<safe id>.mp4``)."""
    return f"{safe_name(request_id)}.json"


def part_key(run_id: str, number: int) -> str:
    return f"{RESULTS_DIR}/{run_id}/part-{number:05d}.parquet"


def model_version(limits: ModelLimits, weights: Iterable[ObjectInfo] = ()) -> str:
    """``dcm-<platform version>+<fingerprint>``: the fingerprint covers the model's limits and defaults (geometry,
    schedule, generation defaults, text length) and, for a folder, its weight files' names, sizes and ETags, so a
    model re-uploaded to the same ``s3://`` URI gets a new version. Computed from configs, without loading weights.
    """
    files = sorted((w.key, w.size, w.etag) for w in weights if w.key.endswith(".safetensors"))
    canonical = json.dumps({"limits": to_dict(limits), "weights": files}, sort_keys=True)
    return f"dcm-{dcm.__version__}+{hashlib.sha256(canonical.encode()).hexdigest()[:10]}"


# -- records ----------------------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:  # a lone surrogate cannot be stored in Parquet: keep it visible as an escape
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _int64(value: Any) -> int | None:
    """Integers, and integral floats (an integer column with nulls reads as floats), within int64."""
    if isinstance(value, bool) or isinstance(value, str):
        return None
    if hasattr(value, "__index__"):
        number = int(value.__index__())
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    else:
        return None
    return number if INT64_MIN <= number <= INT64_MAX else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


_CONVERT = {pa.string(): _text, pa.int64(): _int64, pa.float64(): _float}


def record(**values: Any) -> dict[str, Any]:
    """A results row: every column of :data:`RESULT_SCHEMA`, each value of its column's type or None.

    Values that do not fit (a float seed, an integer beyond int64, a non-string prompt) become None; the caller
    quotes the raw value in ``error``. Unknown keys raise (a typo must not vanish).
    """
    unknown = set(values) - set(RESULT_SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown results column(s) {sorted(unknown)}; columns are {RESULT_SCHEMA.names}")
    return {f.name: _CONVERT[f.type](values.get(f.name)) for f in RESULT_SCHEMA}


def records_table(records: list[dict[str, Any]]) -> pa.Table:
    """Records (from :func:`record`) as a table of :data:`RESULT_SCHEMA`."""
    return pa.Table.from_pylist(records, schema=RESULT_SCHEMA)


def conform(table: pa.Table) -> pa.Table:
    """A results table of any earlier layout (fewer columns) as :data:`RESULT_SCHEMA`: missing columns are null."""
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in RESULT_SCHEMA
    ]
    return pa.Table.from_arrays(columns, schema=RESULT_SCHEMA)


def parquet_bytes(table: pa.Table, metadata: dict[bytes, bytes] | None = None) -> bytes:
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def sidecar_bytes(ok_record: dict[str, Any]) -> bytes:
    """The provenance sidecar of a video: its ``ok`` record as JSON (ASCII, so any prompt survives)."""
    return (json.dumps(json_ready(ok_record), sort_keys=True, indent=1) + "\n").encode()


def read_sidecar(data: bytes) -> dict[str, Any] | None:
    """A sidecar back as a record; None when it is not one (a foreign ``.json`` file beside the videos)."""
    try:
        values = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(values, dict):
        return None
    rec = record(**{k: v for k, v in values.items() if k in RESULT_SCHEMA.names})
    return rec if rec["status"] == STATUS_OK and rec["id"] is not None and rec["model"] is not None else None


# -- streaming parts --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class PartWriter:
    """Writes one run's records as Parquet parts while the run goes: a part every ``part_rows`` records or every
    ``part_seconds``, so a killed driver loses at most the records of the last few seconds (the videos themselves
    and their sidecars are already written by then).

    Args:
        store: the output.
        run_id: names the folder ``results/<run_id>/``.
        part_rows / part_seconds: flush thresholds.
    """

    store: Store
    run_id: str
    part_rows: int
    part_seconds: float

    def __post_init__(self) -> None:
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._parts = 0
        self._last_flush = time.monotonic()
        self.counts = {status: 0 for status in STATUSES}

    def add(self, table: pa.Table) -> None:
        """Buffers a table of records; writes a part when a threshold is reached."""
        if not len(table):
            return
        self._buffer.append(table)
        self._buffered += len(table)
        for status, count in zip(*_value_counts(table.column("status"))):
            self.counts[status] = self.counts.get(status, 0) + count
        if self._buffered >= self.part_rows or time.monotonic() - self._last_flush >= self.part_seconds:
            self.flush()

    def flush(self) -> None:
        if self._buffered:
            table = pa.concat_tables(self._buffer)
            self.store.put_bytes(part_key(self.run_id, self._parts), parquet_bytes(table), content_type=PARQUET_TYPE)
            self._parts += 1
        self._buffer, self._buffered, self._last_flush = [], 0, time.monotonic()

    @property
    def num_parts(self) -> int:
        return self._parts


def _value_counts(column: pa.ChunkedArray) -> tuple[list[str], list[int]]:
    counts = column.value_counts()
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def run_records(store: Store, run_id: str) -> pa.Table:
    """Every record of one run, in the order they were written."""
    keys = sorted(k for k in store.list(f"{RESULTS_DIR}/{run_id}") if k.endswith(".parquet"))
    tables = [conform(pq.read_table(io.BytesIO(store.get_bytes(k)))) for k in keys]
    return pa.concat_tables(tables) if tables else RESULT_SCHEMA.empty_table()


# -- the current view -------------------------------------------------------------------------------------------


def _runs_of(listing: Iterable[str]) -> list[str]:
    """Run ids with parts in a listing, oldest first (run ids sort by start time)."""
    prefix = f"{RESULTS_DIR}/"
    return sorted({k[len(prefix) :].split("/")[0] for k in listing if k.startswith(prefix) and k.count("/") == 2})


def current_view(store: Store) -> tuple[pa.Table, list[str]]:
    """(the output's current view, the run ids it covers).

    The view describes the output, one row per id: the latest ``ok`` or ``error`` record over every run; an id
    with only ``skipped`` records (a video whose ``ok`` record was lost with a killed driver, known from its sidecar)
    gets its latest one as ``ok``: its video exists and ``run_id`` names the run that made it. Rows without an id (a
    row too broken to have one) are kept from the newest run only. It starts from ``results.parquet`` and adds the
    parts of the runs it does not cover yet (a run whose driver was killed), so it lists ``results/`` only, never the
    videos.
    """
    tables, covered = [], []
    if store.exists(RESULTS_NAME):
        base = pq.read_table(io.BytesIO(store.get_bytes(RESULTS_NAME)))
        covered = json.loads((base.schema.metadata or {}).get(RUNS_METADATA_KEY, b"[]"))
        tables.append(conform(base))
    runs = [r for r in _runs_of(store.list(RESULTS_DIR)) if r not in covered]
    tables.extend(run_records(store, run_id) for run_id in runs)
    table = pa.concat_tables(tables) if tables else RESULT_SCHEMA.empty_table()
    return latest_per_id(table), sorted(set(covered) | set(runs))


def latest_per_id(table: pa.Table) -> pa.Table:
    """One row per id (records in the order they were written in, see :func:`current_view`), sorted errors first,
    then by id, so the gallery's first page shows what needs attention."""
    if not len(table):
        return table
    frame = table.select(["id", "status", "run_id"]).to_pandas()
    frame["order"] = range(len(frame))
    frame["rank"] = (frame["status"] != STATUS_SKIPPED).astype(int)
    with_id = frame[frame["id"].notna()].sort_values(["rank", "order"], kind="stable")
    with_id = with_id.drop_duplicates("id", keep="last")
    no_id = frame[frame["id"].isna()]
    if no_id["run_id"].notna().any():
        no_id = no_id[no_id["run_id"] == no_id["run_id"].max()]
    chosen = (
        frame.loc[[*with_id.index, *no_id.index]]
        .assign(ok=lambda f: f["status"] != STATUS_ERROR)
        .sort_values(["ok", "id", "order"], na_position="last", kind="stable")
        .index
    )
    view = table.take(pa.array(chosen, pa.int64()))
    status = pc.if_else(pc.equal(view.column("status"), STATUS_SKIPPED), STATUS_OK, view.column("status"))
    return view.set_column(view.schema.get_field_index("status"), "status", status)


def write_view(store: Store, view: pa.Table, runs: list[str]) -> str:
    """Writes ``results.parquet`` (the view, with the run ids it covers in its metadata); returns its URI."""
    metadata = {RUNS_METADATA_KEY: json.dumps(runs).encode()}
    return store.put_bytes(RESULTS_NAME, parquet_bytes(view, metadata), content_type=PARQUET_TYPE)
