"""The batch job's Ray Data pipeline: Parquet manifest -> generator actors -> MP4s -> results manifest + gallery.

    read_parquet -> repartition -> map_batches(GenerateAndWrite, actor pool) -> driver collects results

Each actor holds one :class:`VideoGenerator` (model loaded once). Rows are validated in the actor (a bad row is an
``error`` result, never a failure), rows whose video already exists are ``skipped`` unless ``overwrite``, and videos
are written atomically at ``<output>/<safe id>.mp4``, so a re-run after a crash writes each remaining row once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

import dcm
from dcm.config import to_dict
from dcm.generation import RequestLimits, VideoGenerator
from dcm.io.storage import Store
from dcm.manifest import JobDefaults, check_columns, output_key, parse_row
from dcm.pages.gallery import GalleryItem, RunSummary, render_gallery
from dcm.presets import DEFAULT_MODEL
from dcm.results import RESULT_SCHEMA, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.parquet"
GALLERY_NAME = "index.html"
# Actors take a fraction of a CPU so Ray Data's read tasks always find one (a known hang on small machines).
DEFAULT_CPUS_PER_ACTOR = 0.5


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    """Everything a batch run needs.

    Args:
        manifest: Parquet file or folder, local or ``s3://``.
        output: local folder or ``s3://bucket/prefix`` for videos, ``results.parquet`` and ``index.html``.
        model: preset, DCM folder, ``s3://`` folder or hub id.
        defaults: job-level values for optional manifest columns.
        concurrency: number of generator actors.
        num_gpus_per_actor / num_cpus_per_actor: resources of one actor (GPU actors: num_gpus_per_actor=1).
        batch_size: rows per actor call; compatible rows in a call share one sampler run.
        overwrite: regenerate rows whose video already exists.
        max_actor_restarts: restarts of a dead actor (its rows are retried as many times).
        endpoint_url: S3-compatible endpoint (else ``AWS_ENDPOINT_URL``).
        gallery: write ``index.html`` next to the results.
        limits: per-row limits (prompt length, frames, size, steps).
        fault_crash_after_rows / fault_marker_dir: FAULT INJECTION for tests: the first actor to finish this many
            rows exits hard once (a marker file in ``fault_marker_dir`` makes it happen only once).
    """

    manifest: str
    output: str
    model: str = DEFAULT_MODEL
    defaults: JobDefaults = field(default_factory=JobDefaults)
    concurrency: int = 1
    num_gpus_per_actor: float = 0.0
    num_cpus_per_actor: float = DEFAULT_CPUS_PER_ACTOR
    batch_size: int = 4
    overwrite: bool = False
    max_actor_restarts: int = 3
    endpoint_url: str | None = None
    gallery: bool = True
    limits: RequestLimits = field(default_factory=RequestLimits)
    fault_crash_after_rows: int | None = None
    fault_marker_dir: str | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_cpus_per_actor <= 0 or self.num_gpus_per_actor < 0:
            raise ValueError(
                f"num_cpus_per_actor must be > 0 and num_gpus_per_actor >= 0, got "
                f"{self.num_cpus_per_actor} and {self.num_gpus_per_actor}"
            )
        if self.max_actor_restarts < 0:
            raise ValueError(f"max_actor_restarts must be >= 0, got {self.max_actor_restarts}")
        if self.fault_crash_after_rows is not None and self.fault_marker_dir is None:
            raise ValueError("fault_crash_after_rows needs fault_marker_dir (so the crash happens once)")


@dataclass(kw_only=True)
class BatchSummary:
    """What a run did; ``results`` is the results manifest as a DataFrame.

    ``first_result_seconds`` / ``first_result_rows``: when the first results reached the driver and how many rows
    they held (actor start and model load are before it), for steady-state throughput.
    """

    output: str
    results: pd.DataFrame
    wall_seconds: float
    first_result_seconds: float = 0.0
    first_result_rows: int = 0
    gallery_uri: str | None = None

    @property
    def steady_videos_per_second(self) -> float:
        """Rows per second after the first results arrived (start-up and model load excluded)."""
        span = self.wall_seconds - self.first_result_seconds
        return (len(self.results) - self.first_result_rows) / span if span > 0 else 0.0

    def count(self, status: str) -> int:
        return int((self.results["status"] == status).sum()) if len(self.results) else 0

    @property
    def videos_per_second(self) -> float:
        return self.count(STATUS_OK) / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{len(self.results)} rows: {self.count(STATUS_OK)} ok, {self.count(STATUS_ERROR)} error, "
            f"{self.count(STATUS_SKIPPED)} skipped in {self.wall_seconds:.1f} s "
            f"({self.videos_per_second:.2f} videos/s) -> {self.output}"
        )


def model_version(generator: VideoGenerator) -> str:
    """Platform version plus a fingerprint of the model's DCM config (changes when the model's structure does)."""
    config = json.dumps(to_dict(generator.pipeline.config), sort_keys=True)
    return f"dcm-{dcm.__version__}+{hashlib.sha256(config.encode()).hexdigest()[:10]}"


class GenerateAndWrite:
    """Ray Data actor: validates rows, skips finished ones, generates the rest and writes their MP4s."""

    def __init__(self, config: BatchConfig, duplicate_ids: frozenset[str] = frozenset()) -> None:
        self.config = config
        self.duplicate_ids = duplicate_ids
        self.generator = VideoGenerator(config.model, limits=config.limits, endpoint_url=config.endpoint_url)
        self.version = model_version(self.generator)
        self.store = Store(config.output, config.endpoint_url)
        self.rows_done = 0

    def _result(self, row: dict, **values) -> dict:
        base = {name: None for name in RESULT_SCHEMA.names}
        base.update({k: row.get(k) for k in ("id", "prompt", "seed", "negative_prompt")})
        base.update(model=self.config.model, model_version=self.version)
        base.update(values)
        return base

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = batch.to_dict("records")
        results: list[dict | None] = [None] * len(rows)
        pending = []
        for i, row in enumerate(rows):
            try:
                request = parse_row(row, self.config.defaults, self.config.limits)
                if request.id in self.duplicate_ids:
                    raise ValueError(f"id {request.id!r} appears more than once in the manifest")
                resolved = self.generator.resolve(request)
            except (ValueError, TypeError) as err:
                results[i] = self._result(row, status=STATUS_ERROR, error=str(err))
                continue
            row = {**row, "id": request.id, "seed": request.seed, "negative_prompt": request.negative_prompt}
            gen = resolved.config
            params = {
                "num_frames": gen.num_frames, "height": gen.height, "width": gen.width,
                "num_inference_steps": gen.num_inference_steps, "fps": gen.fps,
            }  # fmt: skip
            key = output_key(request.id)
            if not self.config.overwrite and self.store.exists(key):
                size = self.store.size(key)
                results[i] = self._result(row, **params, uri=self.store.uri(key), bytes=size, status=STATUS_SKIPPED)
                continue
            pending.append((i, row, params, key, resolved))
        for (i, row, params, key, _), video in zip(pending, self.generator.generate([p[-1] for p in pending])):
            if not video.ok:
                results[i] = self._result(row, **params, status=STATUS_ERROR, error=video.error)
                continue
            uri = self.store.put_bytes(key, video.mp4, content_type="video/mp4")
            results[i] = self._result(
                row, **params, uri=uri, bytes=len(video.mp4), status=STATUS_OK, seconds=video.seconds,
                batch_size=video.batch_size,
            )  # fmt: skip
        self.rows_done += len(rows)
        self._maybe_crash()
        return pd.DataFrame(results, columns=RESULT_SCHEMA.names)

    def _maybe_crash(self) -> None:
        """FAULT INJECTION (tests only): exit hard once, after the videos of this batch were written."""
        cfg = self.config
        if cfg.fault_crash_after_rows is None or self.rows_done < cfg.fault_crash_after_rows:
            return
        marker = os.path.join(cfg.fault_marker_dir, "crashed")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        logger.warning("fault injection: actor exits after %d rows", self.rows_done)
        os._exit(1)


def _manifest_dataset(manifest: str) -> pads.Dataset:
    """Opens the manifest's metadata on the driver, failing fast with a clear message.

    ``s3://`` URIs use pyarrow's S3 filesystem, which honours ``AWS_ENDPOINT_URL`` (MinIO, moto, R2).
    """
    try:
        return pads.dataset(manifest, format="parquet")
    except (FileNotFoundError, OSError, pa.ArrowInvalid) as err:
        raise ValueError(f"manifest {manifest!r} cannot be read as Parquet: {err}") from err


def inspect_manifest(manifest: str) -> tuple[int, frozenset[str]]:
    """(row count, ids that appear more than once) from the manifest's metadata and id column only."""
    dataset = _manifest_dataset(manifest)
    check_columns(dataset.schema.names)
    num_rows = dataset.count_rows()
    if num_rows == 0:
        raise ValueError(f"manifest {manifest!r} has no rows")
    duplicates: frozenset[str] = frozenset()
    if "id" in dataset.schema.names:
        counts = Counter(v for v in dataset.to_table(columns=["id"]).column("id").to_pylist() if v)
        duplicates = frozenset(str(k) for k, n in counts.items() if n > 1)
    return num_rows, duplicates


def dry_run(config: BatchConfig) -> pd.DataFrame:
    """Validates every row without a model (types and limits; geometry is checked again by the actors)."""
    table = _manifest_dataset(config.manifest).to_table()
    check_columns(table.schema.names)
    rows = table.to_pandas().to_dict("records")
    report = []
    for row in rows:
        try:
            request = parse_row(row, config.defaults, config.limits)
            report.append({"id": request.id, "prompt": request.prompt, "status": "valid", "error": None})
        except (ValueError, TypeError) as err:
            report.append(
                {"id": row.get("id"), "prompt": row.get("prompt"), "status": STATUS_ERROR, "error": str(err)}
            )
    return pd.DataFrame(report)


def _write_outputs(config: BatchConfig, results: pd.DataFrame, wall: float) -> str | None:
    store = Store(config.output, config.endpoint_url)
    table = pa.Table.from_pandas(results, schema=RESULT_SCHEMA, preserve_index=False)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    store.put_bytes(RESULTS_NAME, sink.getvalue(), content_type="application/vnd.apache.parquet")
    if not config.gallery:
        return None
    items = [
        GalleryItem(
            id=str(r["id"]), prompt=str(r["prompt"]), seed=None if pd.isna(r["seed"]) else int(r["seed"]),
            status=r["status"], video_href=output_key(str(r["id"])) if r["status"] != STATUS_ERROR else None,
            params={k: int(r[k]) for k in ("num_frames", "height", "width", "num_inference_steps", "fps")
                    if not pd.isna(r[k])},
            seconds=None if pd.isna(r["seconds"]) else float(r["seconds"]),
            error=None if pd.isna(r["error"]) else str(r["error"]),
        )
        for r in results.to_dict("records")
    ]  # fmt: skip
    counts = results["status"].value_counts()
    summary = RunSummary(
        title=f"DCM batch run: {os.path.basename(config.output.rstrip('/'))}", model=config.model, wall_seconds=wall,
        num_ok=int(counts.get(STATUS_OK, 0)), num_error=int(counts.get(STATUS_ERROR, 0)),
        num_skipped=int(counts.get(STATUS_SKIPPED, 0)),
    )  # fmt: skip
    return store.put_bytes(GALLERY_NAME, render_gallery(items, summary).encode(), content_type="text/html")


def run_batch(config: BatchConfig, *, progress: bool = True) -> BatchSummary:
    """Runs the whole job on the connected Ray cluster (call :func:`dcm.cluster.runtime.init_ray` first)."""
    import ray
    from tqdm import tqdm

    num_rows, duplicates = inspect_manifest(config.manifest)
    start = time.perf_counter()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours below counts videos, not blocks
    num_blocks = max(1, min(num_rows, -(-num_rows // config.batch_size)))
    ds = ray.data.read_parquet(config.manifest)
    ds = ds.repartition(num_blocks).map_batches(
        GenerateAndWrite,
        fn_constructor_kwargs={"config": config, "duplicate_ids": duplicates},
        batch_size=config.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=config.concurrency),
        num_cpus=config.num_cpus_per_actor,
        num_gpus=config.num_gpus_per_actor,
        max_restarts=config.max_actor_restarts,
        max_task_retries=config.max_actor_restarts,
    )
    parts, counts, first = [], Counter(), (0.0, 0)
    with tqdm(total=num_rows, unit="video", disable=not progress, desc="generating") as bar:
        for part in ds.iter_batches(batch_size=None, batch_format="pandas"):
            if not parts:
                first = (time.perf_counter() - start, len(part))
            parts.append(part)
            counts.update(part["status"])
            bar.update(len(part))
            elapsed = time.perf_counter() - start
            bar.set_postfix(ok=counts[STATUS_OK], failed=counts[STATUS_ERROR], skipped=counts[STATUS_SKIPPED],
                            videos_per_s=f"{counts[STATUS_OK] / elapsed:.2f}")  # fmt: skip
    results = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=RESULT_SCHEMA.names)
    wall = time.perf_counter() - start
    gallery = _write_outputs(config, results, wall)
    return BatchSummary(
        output=Store(config.output).root, results=results, wall_seconds=wall, first_result_seconds=first[0],
        first_result_rows=first[1], gallery_uri=gallery,
    )  # fmt: skip
