"""The batch job: a Parquet manifest of prompts -> one MP4 per row, the run's records, the output's view, a gallery.

    preflight (model configs, output writable, manifest readable; no Ray)
      -> plan on the driver, streaming the manifest: every row checked as the actors would (resolve_request with
         the model's limits from its configs), duplicates, one LIST of the output for what exists
      -> only rows still to do go to Ray Data: blocks of a few hundred rows -> map_batches(GenerateAndWrite actors)
      -> records streamed to results/<run-id>/part-*.parquet while blocks finish
      -> results.parquet (the output's current view) and the gallery pages

Nothing here stops on a row's content: a bad row is an ``error`` record naming its field, and the generator
isolates a request that fails while generating. A finished manifest re-runs without starting Ray. Each video has a
provenance sidecar (``<id>.json``) written before it, so a skipped row reports the model that made its video, and a
run with another model refuses to add to an output it did not make (``overwrite`` regenerates instead).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dcm.cluster.runtime import ray_session
from dcm.config import FieldError
from dcm.generation import ModelLimits, RequestLimits, VideoGenerator, VideoRequest, resolve_request
from dcm.generation.generator import describe
from dcm.io.model_cache import FOLDER, S3, source_kind
from dcm.io.storage import ObjectInfo, Store, is_s3
from dcm.manifest import JobDefaults, check_columns, duplicate_ids, output_key, parse_row, request_id
from dcm.pages.gallery import GalleryItem, Page, RunSummary, num_pages, page_name, render_page
from dcm.preflight import PREFLIGHT_ATTEMPTS, check_model, check_writable
from dcm.presets import DEFAULT_MODEL, PRESETS
from dcm.results import (
    PARAM_COLUMNS,
    REQUEST_COLUMNS,
    RESULT_SCHEMA,
    RESULTS_NAME,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_SKIPPED,
    PartWriter,
    current_view,
    model_version,
    new_run_id,
    provenance_key,
    read_sidecar,
    record,
    records_table,
    run_records,
    sidecar_bytes,
    write_view,
)

logger = logging.getLogger(__name__)

GALLERY_NAME = "index.html"
# Actors take a fraction of a CPU so Ray Data's tasks always find one (a known hang on small machines).
DEFAULT_CPUS_PER_ACTOR = 0.5
# Rows per Ray Data block: big enough that per-block overhead vanishes, small enough that results (and progress)
# arrive every few minutes even with a slow model. Small runs use smaller blocks so every actor gets work.
DEFAULT_ROWS_PER_BLOCK = 256
BLOCKS_PER_ACTOR = 4
# Manifest rows read per Arrow batch while planning: the driver's working set is this many rows as Python values
# (about 10 MB), whatever the manifest's size.
PLAN_BATCH_ROWS = 2048
# A results part is written every this many records or seconds, whichever comes first.
PART_ROWS = 10_000
DEFAULT_PART_SECONDS = 30.0
DEFAULT_GALLERY_PAGE_SIZE = 200
DEFAULT_GALLERY_MAX_PAGES = 50
# Invalid rows a dry run lists (all are counted).
DRY_RUN_EXAMPLES = 20


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    """Everything a batch run needs.

    Args:
        manifest: Parquet file or folder, local or ``s3://``.
        output: local folder or ``s3://bucket/prefix`` for videos, sidecars, ``results/``, ``results.parquet``
            and the gallery.
        model: preset, model folder, ``s3://`` folder or hub id.
        defaults: job-level values for optional manifest columns.
        concurrency: number of generator actors.
        num_gpus_per_actor / num_cpus_per_actor: resources of one actor (GPU actors: num_gpus_per_actor=1).
        batch_size: rows per actor call; compatible rows in a call share one sampler run.
        rows_per_block: most rows per Ray Data block (results and progress arrive a block at a time).
        overwrite: regenerate rows whose video exists, whichever model made it.
        max_actor_restarts: restarts of a dead actor (its block is retried as many times).
        endpoint_url: S3-compatible endpoint (else ``AWS_ENDPOINT_URL``).
        gallery: write the gallery pages.
        gallery_page_size / gallery_max_pages: rows per page, and pages written (the rest is in results.parquet).
        part_seconds: records are written to ``results/<run-id>/`` at least this often (0: after every block).
        limits: the operator's per-row limits (prompt length, frames, size, steps).
    """

    manifest: str
    output: str
    model: str = DEFAULT_MODEL
    defaults: JobDefaults = field(default_factory=JobDefaults)
    concurrency: int = 1
    num_gpus_per_actor: float = 0.0
    num_cpus_per_actor: float = DEFAULT_CPUS_PER_ACTOR
    batch_size: int = 4
    rows_per_block: int = DEFAULT_ROWS_PER_BLOCK
    overwrite: bool = False
    max_actor_restarts: int = 3
    endpoint_url: str | None = None
    gallery: bool = True
    gallery_page_size: int = DEFAULT_GALLERY_PAGE_SIZE
    gallery_max_pages: int = DEFAULT_GALLERY_MAX_PAGES
    part_seconds: float = DEFAULT_PART_SECONDS
    limits: RequestLimits = field(default_factory=RequestLimits)

    def __post_init__(self) -> None:
        for name in ("concurrency", "batch_size", "rows_per_block", "gallery_page_size", "gallery_max_pages"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FieldError(name, f"{name} must be an integer >= 1, got {value!r}")
        if not self.num_cpus_per_actor > 0 or not self.num_gpus_per_actor >= 0:
            raise FieldError(
                "num_cpus_per_actor",
                f"num_cpus_per_actor must be > 0 and num_gpus_per_actor >= 0, got {self.num_cpus_per_actor} and "
                f"{self.num_gpus_per_actor}",
            )
        if not self.part_seconds >= 0:
            raise FieldError("part_seconds", f"part_seconds must be >= 0, got {self.part_seconds}")
        if self.max_actor_restarts < 0:
            raise FieldError("max_actor_restarts", f"max_actor_restarts must be >= 0, got {self.max_actor_restarts}")


# -- preflight --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Preflight:
    """What the checks before Ray found: the model's limits, its version, the manifest's row count."""

    limits: ModelLimits
    version: str
    num_rows: int


def _manifest_dataset(manifest: str, endpoint_url: str | None) -> pads.Dataset:
    """The manifest's Parquet dataset (metadata only); ``s3://`` honours ``endpoint_url`` or ``AWS_ENDPOINT_URL``."""
    try:
        if is_s3(manifest) and endpoint_url:
            parts = urlparse(endpoint_url)
            fs = pafs.S3FileSystem(endpoint_override=parts.netloc, scheme=parts.scheme or "https")
            return pads.dataset(manifest.removeprefix("s3://"), format="parquet", filesystem=fs)
        return pads.dataset(manifest, format="parquet")
    except FileNotFoundError as err:
        raise ValueError(f"manifest {manifest!r} does not exist (no such file, folder or bucket)") from err
    except (OSError, pa.ArrowException, ValueError) as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"manifest {manifest!r} cannot be read as Parquet: {cause}") from err


def check_manifest(manifest: str, endpoint_url: str | None) -> int:
    """The manifest's row count, after checking it opens and has a ``prompt`` column (no row is read)."""
    dataset = _manifest_dataset(manifest, endpoint_url)
    ignored = check_columns(dataset.schema.names)
    if ignored:
        logger.warning("manifest columns %s are not used by this job (known: id, prompt, seed, ...)", ignored)
    try:
        num_rows = dataset.count_rows()
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"manifest {manifest!r} cannot be read: {str(err).strip().splitlines()[0]}") from err
    if num_rows == 0:
        raise ValueError(f"manifest {manifest!r} has no rows")
    return num_rows


def _weight_files(model: str, endpoint_url: str | None) -> list[ObjectInfo]:
    """The model folder's files (for its version); none for a tiny preset or a hub id."""
    preset = PRESETS.get(model)
    source = str(preset.folder) if preset is not None and preset.folder is not None else model
    if preset is not None and preset.folder is None:
        return []
    if source_kind(source) not in (FOLDER, S3):
        return []
    return Store(source, endpoint_url, max_attempts=PREFLIGHT_ATTEMPTS).list_objects()


def preflight(config: BatchConfig) -> Preflight:
    """Every check that needs no Ray, each failing with one line (ValueError): manifest, model, output."""
    num_rows = check_manifest(config.manifest, config.endpoint_url)
    limits = check_model(config.model, config.endpoint_url)
    check_writable(config.output, config.endpoint_url)
    version = model_version(limits, _weight_files(config.model, config.endpoint_url))
    return Preflight(limits=limits, version=version, num_rows=num_rows)


# -- what the output holds --------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Existing:
    """The output before this run: its videos (one LIST) and each video's provenance record.

    A video's provenance is the view's record for its id (``results.parquet`` and the parts of runs it does not
    cover yet), else its sidecar; a video with neither is in ``unknown``. Records stay in an Arrow table (a
    million-row output must not become a million Python dicts); :meth:`provenance` reads one.
    """

    videos: set[str]
    records: pa.Table
    index: dict[str, int]
    sidecars: dict[str, dict[str, Any]]
    unknown: list[str]

    def provenance(self, key: str) -> dict[str, Any] | None:
        if key in self.index:
            return self.records.slice(self.index[key], 1).to_pylist()[0]
        return self.sidecars.get(key)

    def models(self) -> Counter:
        """Videos per (model, model version)."""
        made = Counter(zip(self.records.column("model").to_pylist(), self.records.column("model_version").to_pylist()))
        made.update((r["model"], r["model_version"]) for r in self.sidecars.values())
        return made


def survey_output(store: Store) -> Existing:
    """One LIST of the output; the view and the sidecars of videos the view does not know."""
    listing = store.list_objects()
    videos = {o.key for o in listing if o.key.endswith(".mp4") and "/" not in o.key}
    sidecar_keys = {o.key for o in listing if o.key.endswith(".json") and "/" not in o.key}
    records, index = RESULT_SCHEMA.empty_table(), {}
    if videos:
        view, _ = current_view(store)
        made = view.filter(pc.is_in(view.column("status"), pa.array([STATUS_OK, STATUS_SKIPPED])))
        keys = [output_key(i) for i in made.column("id").to_pylist()]
        present = [i for i, key in enumerate(keys) if key in videos]
        records = made.take(pa.array(present, pa.int64()))
        index = {keys[i]: n for n, i in enumerate(present)}
    sidecars, unknown = {}, []
    for key in sorted(videos - set(index)):
        sidecar = f"{key.removesuffix('.mp4')}.json"
        rec = read_sidecar(store.get_bytes(sidecar)) if sidecar in sidecar_keys else None
        if rec is None:
            unknown.append(key)
        else:
            sidecars[key] = rec
    return Existing(videos=videos, records=records, index=index, sidecars=sidecars, unknown=unknown)


def check_same_model(existing: Existing, model: str, version: str, output: str) -> None:
    """Refuses to add to an output whose videos another model (or an unknown one) made; one line naming both."""
    others = Counter({made: n for made, n in existing.models().items() if made != (model, version)})
    if others:
        (other_model, other_version), count = others.most_common(1)[0]
        raise ValueError(
            f"output {output!r} holds {count} video(s) made by model {other_model!r} ({other_version}); this run "
            f"uses model {model!r} ({version}): choose another --output, or --overwrite to regenerate this "
            f"manifest's videos with {model!r}"
        )
    if existing.unknown:
        raise ValueError(
            f"output {output!r} holds {len(existing.unknown)} video(s) with no record of the model that made them "
            f"(e.g. {existing.unknown[0]}: no results row and no sidecar): choose another --output, or --overwrite "
            f"to regenerate this manifest's videos"
        )


# -- planning ---------------------------------------------------------------------------------------------------

REQUEST_FIELDS = tuple(f.name for f in fields(VideoRequest))
# The plan: each valid row's request as given (None = the model's default) and its resolved values, for comparing
# with an existing video's record.
PLAN_SCHEMA = pa.schema(
    [("row", pa.int64()), ("id", pa.string()), ("prompt", pa.string()), ("seed", pa.int64()),
     ("negative_prompt", pa.string()), *[(n, pa.int64()) for n in PARAM_COLUMNS],
     ("guidance_scale", pa.float64()), ("resolved_negative_prompt", pa.string()),
     *[(f"resolved_{n}", pa.int64()) for n in PARAM_COLUMNS]]
)  # fmt: skip


@dataclass(kw_only=True)
class Plan:
    """What planning found. ``todo`` is a local Parquet file of the rows still to generate."""

    num_rows: int = 0
    num_invalid: int = 0
    num_duplicate: int = 0
    num_conflict: int = 0
    num_skipped: int = 0
    num_todo: int = 0
    todo: str = ""
    errors_by_field: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class _Sink:
    """Where planning's records go: the run's part writer, or nothing (a dry run); counts and examples either way."""

    def __init__(self, plan: Plan, writer: PartWriter | None) -> None:
        self.plan, self.writer = plan, writer

    def add(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        for rec in records:
            if rec["status"] == STATUS_ERROR:
                self.plan.errors_by_field[rec["error_field"] or "row"] += 1
                if len(self.plan.examples) < DRY_RUN_EXAMPLES:
                    self.plan.examples.append(rec)
        if self.writer is not None:
            self.writer.add(records_table(records))


def _manifest_rows(config: BatchConfig) -> Iterator[list[dict[str, Any]]]:
    dataset = _manifest_dataset(config.manifest, config.endpoint_url)
    for batch in dataset.to_batches(batch_size=PLAN_BATCH_ROWS, use_threads=False):
        yield batch.to_pylist()


def _error(run: dict[str, Any], *, row: int, rid: str | None, values: dict[str, Any], err: Exception) -> dict:
    """An error record: the row's values where they fit their columns (raw values are quoted in the message)."""
    message = str(err) if isinstance(err, FieldError) else f"row cannot be read: {describe(err)}"
    column_values = {k: values.get(k) for k in ("prompt", "seed", "negative_prompt", *PARAM_COLUMNS)}
    return record(**column_values, **run, id=rid, row=row, status=STATUS_ERROR, error=message,
                  error_field=getattr(err, "field", None))  # fmt: skip


def _plan_row(row: int, request: VideoRequest, resolved) -> dict[str, Any]:
    gen = resolved.config
    values = {name: getattr(request, name) for name in REQUEST_FIELDS}
    resolved_values = {f"resolved_{n}": getattr(gen, n) for n in PARAM_COLUMNS}
    return {**values, "row": row, "id": resolved.id, "resolved_negative_prompt": resolved.negative_prompt,
            **resolved_values}  # fmt: skip


def _check_rows(config: BatchConfig, limits: ModelLimits, run: dict, sink: _Sink, plan_path: str, plan: Plan):
    """Pass 1: every row parsed and resolved as an actor would; valid rows to the plan file, the rest to the sink.
    Returns every row's id (for duplicates)."""
    ids: list[str | None] = []
    with pq.ParquetWriter(plan_path, PLAN_SCHEMA) as writer:
        for rows in _manifest_rows(config):
            valid, errors = [], []
            for values in rows:
                row, request = plan.num_rows, None
                plan.num_rows += 1
                try:
                    request = parse_row(values, config.defaults, config.limits)
                    resolved = resolve_request(request, limits=config.limits, model=limits)
                except Exception as err:  # a row's content, whatever it holds, is that row's error
                    rid = request.id if request is not None else request_id(values, config.defaults)
                    ids.append(rid)
                    errors.append(_error(run, row=row, rid=rid, values=values, err=err))
                    continue
                ids.append(request.id)
                valid.append(_plan_row(row, request, resolved))
            plan.num_invalid += len(errors)
            sink.add(errors)
            if valid:
                writer.write_table(pa.Table.from_pylist(valid, schema=PLAN_SCHEMA))
    return ids


def _compare(stored: dict[str, Any], row: dict[str, Any]) -> list[str]:
    """Columns where an existing video's record differs from the row's request (unknown values are not compared)."""
    wanted = {"prompt": row["prompt"], "seed": row["seed"], "negative_prompt": row["resolved_negative_prompt"],
              **{n: row[f"resolved_{n}"] for n in PARAM_COLUMNS}}  # fmt: skip
    return [c for c in REQUEST_COLUMNS if stored.get(c) is not None and stored[c] != wanted[c]]


def _route(config: BatchConfig, row: dict, dups: frozenset[str], existing: Existing, run: dict) -> dict | None:
    """Pass 2 for one valid row: its error or skipped record, or None when it is still to do."""
    rid, key = row["id"], output_key(row["id"])
    error = {**_row_values(row), **run, "id": rid, "row": row["row"], "status": STATUS_ERROR, "error_field": "id"}
    if rid in dups:
        message = (f"id {rid!r} is used by more than one manifest row (or two ids name the same file {key}): give "
                   f"each row its own id")  # fmt: skip
        return record(**error, error=message)
    if config.overwrite or key not in existing.videos:
        return None
    stored = existing.provenance(key) or {}
    differs = _compare(stored, row)
    if differs:
        message = (
            f"id {rid!r}: {key} exists but was made from a different request ({', '.join(differs)} "
            f"differ{'s' if len(differs) == 1 else ''}); --overwrite regenerates it, or give the row a new id"
        )
        return record(**error, error=message)
    # The video's own record (model, version, timing, the run that made it), as this row's record.
    return record(**{**stored, "id": rid, "row": row["row"], "status": STATUS_SKIPPED, "error": None,
                     "error_field": None})  # fmt: skip


def _row_values(row: dict) -> dict[str, Any]:
    return {"prompt": row["prompt"], "seed": row["seed"], "negative_prompt": row["resolved_negative_prompt"],
            **{n: row[f"resolved_{n}"] for n in PARAM_COLUMNS}}  # fmt: skip


def plan_run(
    config: BatchConfig, checked: Preflight, existing: Existing, *, run: dict, workdir: str, writer: PartWriter | None
) -> Plan:
    """Both planning passes over the manifest (streamed): ``<workdir>/todo.parquet`` gets the rows to generate;
    error and skipped records go to ``writer`` (None for a dry run)."""
    start = time.perf_counter()
    plan = Plan(todo=os.path.join(workdir, "todo.parquet"))
    sink = _Sink(plan, writer)
    checked_path = os.path.join(workdir, "valid.parquet")
    ids = _check_rows(config, checked.limits, run, sink, checked_path, plan)
    dups = duplicate_ids(ids)
    del ids
    with pq.ParquetWriter(plan.todo, PLAN_SCHEMA) as todo:
        for batch in pq.ParquetFile(checked_path).iter_batches(batch_size=PLAN_BATCH_ROWS):
            keep, records = [], []
            for row in batch.to_pylist():
                rec = _route(config, row, dups, existing, run)
                if rec is None:
                    keep.append(row)
                    continue
                records.append(rec)
                if rec["status"] == STATUS_SKIPPED:
                    plan.num_skipped += 1
                elif rec["error_field"] == "id" and rec["id"] in dups:
                    plan.num_duplicate += 1
                else:
                    plan.num_conflict += 1
            sink.add(records)
            plan.num_todo += len(keep)
            if keep:
                todo.write_table(pa.Table.from_pylist(keep, schema=PLAN_SCHEMA))
    plan.seconds = time.perf_counter() - start
    return plan


# -- generation (Ray) -------------------------------------------------------------------------------------------


class GenerateAndWrite:
    """Ray Data actor: one :class:`VideoGenerator` (model loaded once); each row's video and its sidecar.

    The sidecar is written before the video: a video never exists without its provenance. A row that fails (its
    content, or a write) is an ``error`` record; the batch goes on. Tests subclass it to inject faults.
    """

    def __init__(self, config: BatchConfig, run: dict[str, str]) -> None:
        self.config, self.run = config, run
        self.generator = VideoGenerator(config.model, limits=config.limits, endpoint_url=config.endpoint_url)
        self.store = Store(config.output, config.endpoint_url)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        requests = [VideoRequest(**{name: row[name] for name in REQUEST_FIELDS}) for row in rows]
        results = self.generator.generate(requests)
        return records_table([self._write(row, result) for row, result in zip(rows, results)])

    def _write(self, row: dict[str, Any], result) -> dict[str, Any]:
        base = {**_row_values(row), **self.run, "id": row["id"], "row": row["row"]}
        if not result.ok:
            return record(**base, status=STATUS_ERROR, error=result.error, error_field=result.error_field)
        key = output_key(row["id"])
        ok = record(**base, uri=self.store.uri(key), bytes=len(result.mp4), status=STATUS_OK, seconds=result.seconds,
                    batch_size=result.batch_size)  # fmt: skip
        try:
            self.store.put_bytes(provenance_key(row["id"]), sidecar_bytes(ok), content_type="application/json")
            self.store.put_bytes(key, result.mp4, content_type="video/mp4")
        except Exception as err:  # storage trouble costs this row its video, not the batch its records
            logger.exception("writing %s failed", self.store.uri(key))
            return record(**base, status=STATUS_ERROR, error=f"writing {self.store.uri(key)} failed: {describe(err)}")
        return ok


@dataclass(kw_only=True)
class Timings:
    """Seconds since the run started when generation results first and last reached the driver."""

    first_result_seconds: float = 0.0
    last_result_seconds: float = 0.0
    first_result_rows: int = 0


def rows_per_block(config: BatchConfig, num_todo: int) -> int:
    """Block size: at most ``config.rows_per_block``, small enough that each actor gets a few blocks, a multiple of
    the batch size."""
    spread = -(-num_todo // (config.concurrency * BLOCKS_PER_ACTOR))
    rows = max(config.batch_size, min(config.rows_per_block, spread))
    return -(-rows // config.batch_size) * config.batch_size


def generate(
    config: BatchConfig, plan: Plan, *, run: dict, writer: PartWriter, start: float, udf: type, progress: bool
) -> Timings:
    """Generates the plan's to-do rows on the connected Ray cluster; records go to ``writer`` as blocks finish."""
    import ray
    from tqdm import tqdm

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts videos, not blocks
    block_rows = rows_per_block(config, plan.num_todo)
    with pq.ParquetFile(plan.todo) as todo:
        refs = [ray.put(pa.Table.from_batches([b])) for b in todo.iter_batches(batch_size=block_rows)]
    logger.info("%d rows to generate in %d blocks of up to %d rows", plan.num_todo, len(refs), block_rows)
    with warnings.catch_warnings():
        # Ray 2.60 takes actor restarts only as ray_remote_args, which it marks deprecated (no named parameter yet).
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        ds = ray.data.from_arrow_refs(refs).map_batches(
            udf,
            fn_constructor_kwargs={"config": config, "run": run},
            batch_size=config.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=config.concurrency),
            num_cpus=config.num_cpus_per_actor,
            num_gpus=config.num_gpus_per_actor,
            max_restarts=config.max_actor_restarts,
            max_task_retries=config.max_actor_restarts,
        )
    timings, counts = Timings(), Counter()
    with tqdm(total=plan.num_todo, unit="video", disable=not progress, desc="generating") as bar:
        for part in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
            elapsed = time.perf_counter() - start
            if not counts:
                timings.first_result_seconds, timings.first_result_rows = elapsed, len(part)
            timings.last_result_seconds = elapsed
            logger.debug("%d records at %.2f s", len(part), elapsed)
            writer.add(part)
            counts.update(part.column("status").to_pylist())
            bar.update(len(part))
            bar.set_postfix(ok=counts[STATUS_OK], failed=counts[STATUS_ERROR])
    return timings


# -- outputs ----------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class BatchSummary:
    """What a run did. ``counts``: this run's records per status; ``totals``: the output's view per status."""

    output: str
    run_id: str
    counts: dict[str, int]
    totals: dict[str, int]
    num_generated: int
    wall_seconds: float
    plan_seconds: float
    timings: Timings
    results_uri: str
    gallery_uri: str | None
    endpoint_url: str | None = None

    def count(self, status: str) -> int:
        return self.counts.get(status, 0)

    @property
    def num_rows(self) -> int:
        return sum(self.counts.values())

    def records(self):
        """This run's records (one per manifest row) as a DataFrame, read back from ``results/<run-id>/``."""
        return run_records(Store(self.output, self.endpoint_url), self.run_id).to_pandas()

    @property
    def videos_per_second(self) -> float:
        return self.count(STATUS_OK) / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def steady_videos_per_second(self) -> float:
        """Rows per second between the first and the last generation result (start-up and model load excluded)."""
        span = self.timings.last_result_seconds - self.timings.first_result_seconds
        return (self.num_generated - self.timings.first_result_rows) / span if span > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.num_rows} rows: {self.count(STATUS_OK)} ok, {self.count(STATUS_ERROR)} error, "
            f"{self.count(STATUS_SKIPPED)} skipped in {self.wall_seconds:.1f} s "
            f"({self.videos_per_second:.2f} videos/s) -> {self.output}"
        )


def _gallery_item(rec: dict[str, Any]) -> GalleryItem:
    rid = rec["id"]
    return GalleryItem(
        id=rid if rid is not None else f"row {rec['row']}",
        prompt=rec["prompt"] if rec["prompt"] is not None else "",
        seed=rec["seed"],
        status=rec["status"],
        video_href=output_key(rid) if rid is not None and rec["status"] != STATUS_ERROR else None,
        params={k: rec[k] for k in ("row", *PARAM_COLUMNS) if rec[k] is not None},
        seconds=rec["seconds"],
        error=rec["error"],
    )


def write_gallery(store: Store, view: pa.Table, summary: RunSummary, *, page_size: int, max_pages: int) -> str:
    """Gallery pages over the view (``index.html`` first); returns the first page's URI."""
    count = min(num_pages(len(view), page_size), max_pages)
    for number in range(1, count + 1):
        first = (number - 1) * page_size
        items = [_gallery_item(r) for r in view.slice(first, page_size).to_pylist()]
        page = Page(number=number, count=count, first_row=first, num_rows=len(view),
                    num_shown=min(len(view), count * page_size))  # fmt: skip
        html_text = render_page(items, summary, page, results_href=RESULTS_NAME)
        store.put_bytes(page_name(number), html_text.encode(), content_type="text/html")
    return store.uri(GALLERY_NAME)


def finish(config: BatchConfig, store: Store, *, run_id: str, counts: dict[str, int], wall: float) -> tuple:
    """Folds every uncovered run into ``results.parquet`` and writes the gallery; (totals, results URI, gallery)."""
    view, runs = current_view(store)
    results_uri = write_view(store, view, runs)
    counted = view.column("status").value_counts()
    totals = dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()))
    gallery = None
    if config.gallery:
        summary = RunSummary(
            title=f"DCM batch run: {os.path.basename(store.root.rstrip('/'))}", model=config.model, wall_seconds=wall,
            num_ok=counts.get(STATUS_OK, 0), num_error=counts.get(STATUS_ERROR, 0),
            num_skipped=counts.get(STATUS_SKIPPED, 0), run_id=run_id, totals=totals,
        )  # fmt: skip
        gallery = write_gallery(store, view, summary, page_size=config.gallery_page_size,
                                max_pages=config.gallery_max_pages)  # fmt: skip
    return totals, results_uri, gallery


# -- the job ----------------------------------------------------------------------------------------------------


def run_batch(
    config: BatchConfig, *, address: str | None = None, progress: bool = True, udf: type = GenerateAndWrite
) -> BatchSummary:
    """The whole job: preflight, plan, generate (Ray only when a row is left to do), view and gallery.

    ``address`` goes to :func:`dcm.cluster.runtime.ray_session` (a connected driver is used as it is). ``udf`` is
    the actor class (a subclass of :class:`GenerateAndWrite`).

    Raises:
        ValueError: one line, before anything is written: a failed preflight check, or an output made by another
            model (unless ``config.overwrite``).
    """
    start = time.perf_counter()
    # 1. Checks that need no Ray, and what the output holds.
    checked = preflight(config)
    store = Store(config.output, config.endpoint_url)
    existing = survey_output(store)
    if not config.overwrite:
        check_same_model(existing, config.model, checked.version, config.output)
    run_id = new_run_id()
    run = {"run_id": run_id, "model": config.model, "model_version": checked.version}
    writer = PartWriter(store=store, run_id=run_id, part_rows=PART_ROWS, part_seconds=config.part_seconds)
    logger.info("run %s: model %s (%s), %d manifest rows -> %s", run_id, config.model, checked.version,
                checked.num_rows, store.root)  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="dcm-batch-") as workdir:
            # 2. Plan: errors and skipped rows are recorded now; only rows still to do reach Ray.
            plan = plan_run(config, checked, existing, run=run, workdir=workdir, writer=writer)
            logger.info("planned in %.1f s: %d to generate, %d skipped (video exists), %d invalid, %d duplicate "
                        "ids, %d conflicting", plan.seconds, plan.num_todo, plan.num_skipped, plan.num_invalid,
                        plan.num_duplicate, plan.num_conflict)  # fmt: skip
            # 3. Generate.
            timings = Timings()
            if plan.num_todo:
                with ray_session(address):
                    timings = generate(config, plan, run=run, writer=writer, start=start, udf=udf,
                                       progress=progress)  # fmt: skip
    finally:
        # 4. The run's last records, also when it fails or is interrupted: the next run folds them into the view.
        writer.flush()
    # 5. The output's view and the gallery.
    wall = time.perf_counter() - start
    totals, results_uri, gallery = finish(config, store, run_id=run_id, counts=writer.counts, wall=wall)
    return BatchSummary(
        output=store.root, run_id=run_id, counts=dict(writer.counts), totals=totals, num_generated=plan.num_todo,
        wall_seconds=wall, plan_seconds=plan.seconds, timings=timings, results_uri=results_uri, gallery_uri=gallery,
        endpoint_url=config.endpoint_url,
    )  # fmt: skip


@dataclass(kw_only=True)
class DryRunReport:
    """What a run would do: the plan's counts, the model's rules, and the first invalid rows."""

    config: BatchConfig
    checked: Preflight
    plan: Plan
    existing_videos: int

    def lines(self) -> list[str]:
        p, c = self.plan, self.config
        valid = p.num_rows - p.num_invalid - p.num_duplicate - p.num_conflict
        fields_text = ", ".join(f"{k} {v}" for k, v in p.errors_by_field.most_common())
        lines = [
            f"manifest {c.manifest}: {p.num_rows} rows, {valid} valid, {p.num_rows - valid} invalid"
            + (f" ({fields_text})" if fields_text else ""),
            f"model {c.model} ({self.checked.version}): {self.checked.limits.summary()}",
            f"plan: {p.num_todo} to generate, {p.num_skipped} skipped (video exists in {c.output}, "
            f"{self.existing_videos} videos there); {c.concurrency} actor(s) x {c.num_gpus_per_actor} GPU, "
            f"batch size {c.batch_size}",
        ]
        for rec in p.examples:
            lines.append(f"  invalid row {rec['row']} (id {rec['id']!r}): {rec['error']}")
        if sum(p.errors_by_field.values()) > len(p.examples):
            lines.append(f"  ... and {sum(p.errors_by_field.values()) - len(p.examples)} more")
        return lines

    @property
    def num_invalid(self) -> int:
        return self.plan.num_invalid + self.plan.num_duplicate + self.plan.num_conflict


def dry_run(config: BatchConfig) -> DryRunReport:
    """Every check of a real run (preflight, each row resolved against the model's limits from its configs,
    duplicates, the output's model), and the plan; no weights are loaded, nothing is written, no Ray."""
    checked = preflight(config)
    store = Store(config.output, config.endpoint_url)
    existing = survey_output(store)
    if not config.overwrite:
        check_same_model(existing, config.model, checked.version, config.output)
    run = {"run_id": "dry-run", "model": config.model, "model_version": checked.version}
    with tempfile.TemporaryDirectory(prefix="dcm-dry-run-") as workdir:
        plan = plan_run(config, checked, existing, run=run, workdir=workdir, writer=None)
    return DryRunReport(config=config, checked=checked, plan=plan, existing_videos=len(existing.videos))
