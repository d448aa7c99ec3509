"""Durable video jobs: their records in the configured storage, and the service each replica runs them with.

Storage layout (``ServeSettings.storage``: a folder or ``s3://bucket/prefix`` every replica shares)::

    jobs/<id>.json     the job record: the public video object, its lease (owner, expiry) and precise times
    videos/<id>.mp4    the video, once completed
    active/<id>        a marker per job not yet completed or failed: what sweeps list, instead of every job
    deleted/<id>       a tombstone: the job was deleted while a replica might still write its record

Leases. The replica that holds a job (queued in its batch queue or generating) renews the job's lease every
``lease_s / 3`` and writes its progress at most every :data:`FLUSH_INTERVAL_S`. Any replica that finds a job whose
lease expired (its sweep every ``sweep_interval_s``, or a poll of that job) takes it up: re-queues it under its own
lease, or fails it with the reason once ``max_attempts`` replicas died holding it. So a job is never in progress
forever: its replica's death is noticed within ``lease_s + sweep_interval_s``.

Storage has no compare-and-swap, so every write of a held job reads the record first (another owner or a missing
record means the job was taken over or deleted: this replica lets go) and checks the tombstone after (a delete that
raced the write removes it again). Two replicas may, rarely, both generate a taken-over job; the video is the same
(same seed and parameters) and the first completion stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from dcm.config import FieldError
from dcm.generation import ResolvedRequest, VideoRequest, VideoResult
from dcm.io.storage import Store
from serve.schemas import MP4_MEDIA_TYPE, TERMINAL_STATUSES, JobError, JobSettings, VideoJob, busy_error
from serve.video_request import format_seconds

logger = logging.getLogger("ray.serve")

ID_PREFIX = "video_"
# Ids sort by creation time: 12 hex digits of Unix milliseconds (until the year 10889), then 20 random ones.
_JOB_ID = re.compile(r"video_[0-9a-f]{32}")
TIME_HEX_DIGITS = 12
RANDOM_ID_BYTES = 10
# Progress writes of a generating job are at most this often (polls see progress within this delay).
FLUSH_INTERVAL_S = 0.25
# Sampler steps take the progress from 0 to this percent; decoding and encoding the rest (100 = completed).
SAMPLING_PERCENT = 90
# A lease is renewed when a third of it has passed: two renewals may fail before it expires.
LEASE_RENEW_FRACTION = 1 / 3
# Tombstones are kept this many leases: by then no replica can still hold the deleted job.
TOMBSTONE_LEASES = 4
# Poll hints (``openai-poll-after-ms``): an eighth of the expected remaining time, within these bounds. The openai
# SDK keeps the first hint for all its polls, so it sees a job done at most an eighth of a job's time after its end.
POLL_FRACTION = 8
MIN_POLL_MS = 10
MAX_POLL_MS = 2000
# Expected create-to-done time before this replica has finished any job.
DEFAULT_EXPECTED_S = 1.0
# Weight of the newest job in the running estimate of create-to-done time.
EXPECTED_EMA_WEIGHT = 0.2
LIST_DEFAULT_LIMIT = 20
LIST_MAX_LIMIT = 100


def new_job_id(now: float) -> str:
    """A fresh id that sorts after every id made earlier (to the millisecond)."""
    return f"{ID_PREFIX}{int(now * 1000):0{TIME_HEX_DIGITS}x}{secrets.token_hex(RANDOM_ID_BYTES)}"


def is_job_id(text: str) -> bool:
    return _JOB_ID.fullmatch(text) is not None


class JobRecord(BaseModel):
    """What storage keeps of a job: the public object, the lease, and times to the microsecond."""

    video: VideoJob
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    created: float
    started: float | None = None

    @property
    def pending(self) -> bool:
        return self.video.status not in TERMINAL_STATUSES

    def lease_expired(self, now: float) -> bool:
        return self.pending and (self.lease_expires_at is None or self.lease_expires_at <= now)


def _missing(err: Exception) -> bool:
    """True for "no such object" from a local folder or S3 (botocore's ClientError carries the code)."""
    if isinstance(err, FileNotFoundError):
        return True
    code = getattr(err, "response", {}).get("Error", {}).get("Code")
    return code in ("NoSuchKey", "404", "NotFound")


@dataclass
class JobStore:
    """Job records, videos, markers and tombstones in one :class:`Store` (blocking calls: run them in a thread)."""

    store: Store

    def _get(self, key: str) -> bytes | None:
        try:
            return self.store.get_bytes(key)
        except Exception as err:
            if _missing(err):
                return None
            raise

    def get(self, job_id: str) -> JobRecord | None:
        data = self._get(f"jobs/{job_id}.json")
        return None if data is None else JobRecord.model_validate_json(data)

    def put(self, record: JobRecord) -> None:
        data = record.model_dump_json().encode()
        self.store.put_bytes(f"jobs/{record.video.id}.json", data, content_type="application/json")

    def job_ids(self) -> list[str]:
        """Every job's id, oldest first."""
        names = (key.removeprefix("jobs/").removesuffix(".json") for key in self.store.list("jobs"))
        return sorted(name for name in names if is_job_id(name))

    def put_video(self, job_id: str, mp4: bytes) -> None:
        self.store.put_bytes(f"videos/{job_id}.mp4", mp4, content_type=MP4_MEDIA_TYPE)

    def get_video(self, job_id: str) -> bytes | None:
        return self._get(f"videos/{job_id}.mp4")

    def mark_active(self, job_id: str) -> None:
        self.store.put_bytes(f"active/{job_id}", b"")

    def clear_active(self, job_id: str) -> None:
        self.store.delete(f"active/{job_id}")

    def active_ids(self) -> list[str]:
        return [key.removeprefix("active/") for key in self.store.list("active") if is_job_id(key[len("active/") :])]

    def is_deleted(self, job_id: str) -> bool:
        return self.store.exists(f"deleted/{job_id}")

    def remove(self, job_id: str, *, tombstone: bool, now: float) -> None:
        """Deletes a job's record, video and marker; the tombstone first, so a racing writer sees it."""
        if tombstone:
            self.store.put_bytes(f"deleted/{job_id}", json.dumps({"deleted_at": now}).encode())
        for key in (f"jobs/{job_id}.json", f"videos/{job_id}.mp4", f"active/{job_id}"):
            self.store.delete(key)

    def purge_tombstones(self, older_than: float) -> None:
        for key in self.store.list("deleted"):
            data = self._get(key)
            if data is None or json.loads(data).get("deleted_at", 0.0) < older_than:
                self.store.delete(key)


@dataclass(eq=False)
class HeldJob:
    """A job this replica holds. ``progress`` is written from the generator's thread, everything else in the loop."""

    record: JobRecord
    request: ResolvedRequest
    status: Literal["queued", "in_progress"] = "queued"
    progress: int = 0
    started: float | None = None
    dirty: bool = False
    cancelled: bool = False
    renewed_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task | None = None


# The batch queue's entry point: a held job's request in, its result out (None when the batch dropped it).
Submit = Callable[[ResolvedRequest], Awaitable["VideoResult | None"]]


class JobService:
    """The jobs one replica holds, their leases, and the sweep that takes up jobs of dead replicas.

    Args:
        store: where jobs live (shared by all replicas).
        settings: queue bound, lease, sweep interval, attempts.
        model: the served model's id (the jobs' ``model``).
        owner: this replica's lease-owner id (unique per replica process).
        resolve: validates a request against the endpoint's limits (raises FieldError).
        submit: puts a request into the replica's batch queue and returns its result.
        clock: Unix time in seconds.
    """

    def __init__(
        self,
        *,
        store: JobStore,
        settings: JobSettings,
        model: str,
        owner: str,
        resolve: Callable[[VideoRequest], ResolvedRequest],
        submit: Submit,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.settings, self.model, self.owner = store, settings, model, owner
        self.resolve, self.submit, self.clock = resolve, submit, clock
        self.held: dict[str, HeldJob] = {}
        self.sync_calls = 0
        self.expected_s = DEFAULT_EXPECTED_S
        self._loops: list[asyncio.Task] = []

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the lease-renewal and sweep loops on the running event loop."""
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._flush_loop()), loop.create_task(self._sweep_loop())]

    async def stop(self, *, release: bool = True) -> None:
        """Stops the loops; with ``release``, expires the leases of held jobs so another replica takes them now."""
        for task in self._loops:
            task.cancel()
        self._loops = []
        if release:
            for held in list(self.held.values()):
                async with held.lock:  # not between a write's read and its put: a completed job stays completed
                    if held.cancelled or not held.record.pending:
                        continue
                    held.cancelled = True
                    expired = held.record.model_copy(update={"lease_expires_at": self.clock()})
                    with contextlib.suppress(Exception):  # best effort: the lease expires on its own anyway
                        await asyncio.to_thread(self.store.put, expired)

    @property
    def load(self) -> int:
        """Jobs and sync calls this replica holds (jobs deleted while queued no longer count)."""
        return sum(not held.cancelled for held in self.held.values()) + self.sync_calls

    @contextlib.asynccontextmanager
    async def reserve(self) -> AsyncIterator[None]:
        """A place in this replica's queue for a blocking (sync) call; raises ApiError 503 when full."""
        if self.load >= self.settings.max_jobs:
            raise busy_error(f"this replica holds {self.settings.max_jobs} jobs; retry shortly")
        self.sync_calls += 1
        try:
            yield
        finally:
            self.sync_calls -= 1

    # -- create, read, delete ---------------------------------------------------------------------------------

    async def create(self, request: ResolvedRequest) -> JobRecord:
        """Stores a new queued job (durably, before answering) and queues it here. Raises ApiError 503 when full."""
        if self.load >= self.settings.max_jobs:
            raise busy_error(f"this replica holds {self.settings.max_jobs} jobs; retry shortly")
        now = self.clock()
        c = request.config
        video = VideoJob(
            id=request.id, model=self.model, status="queued", progress=0, created_at=int(now),
            size=f"{c.width}x{c.height}", seconds=format_seconds(c.num_frames, c.fps), prompt=request.prompt,
            negative_prompt=request.negative_prompt, seed=request.seed, num_frames=c.num_frames, height=c.height,
            width=c.width, fps=c.fps, num_inference_steps=c.num_inference_steps, guidance_scale=c.guidance_scale,
        )  # fmt: skip
        record = JobRecord(video=video, lease_owner=self.owner, lease_expires_at=now + self.settings.lease_s,
                           created=now)  # fmt: skip
        held = HeldJob(record=record, request=request, renewed_at=now)
        self.held[video.id] = held  # counted from here: concurrent creates cannot overfill the queue
        # Queued while it is being stored (the batch wait overlaps the writes); answered only once it is stored.
        held.task = asyncio.get_running_loop().create_task(self._run(held))
        try:
            await asyncio.gather(asyncio.to_thread(self.store.put, record),
                                 asyncio.to_thread(self.store.mark_active, video.id))  # fmt: skip
        except BaseException:
            held.cancelled = True  # never answered as created: the batch drops it, nothing is written for it
            raise
        return record

    async def retrieve(self, job_id: str) -> JobRecord | None:
        """The stored job; a job whose lease expired is taken up (or failed) first."""
        record = await asyncio.to_thread(self.store.get, job_id)
        if record is not None and job_id not in self.held and record.lease_expired(self.clock()):
            record = await self._take_over(record)
        return record

    async def video(self, job_id: str) -> bytes | None:
        return await asyncio.to_thread(self.store.get_video, job_id)

    async def delete(self, job_id: str) -> bool:
        """Removes a job and its video; a job still queued here is dropped before it generates. False if unknown."""
        record = await asyncio.to_thread(self.store.get, job_id)
        if record is None:
            return False
        held = self.held.get(job_id)
        if held is not None:
            held.cancelled = True
        await asyncio.to_thread(self.store.remove, job_id, tombstone=record.pending, now=self.clock())
        return True

    async def list(
        self, *, order: Literal["asc", "desc"], after: str | None, limit: int
    ) -> tuple[list[VideoJob], bool]:
        """One page of jobs in creation order (``desc``: newest first) after the job ``after``; (jobs, has_more)."""
        ids = await asyncio.to_thread(self.store.job_ids)
        if order == "desc":
            ids.reverse()
        if after is not None:
            ids = [i for i in ids if (i < after if order == "desc" else i > after)]
        page: list[VideoJob] = []
        while ids and len(page) <= limit:  # one more than asked, to know whether there is more
            chunk, ids = ids[: limit + 1 - len(page)], ids[limit + 1 - len(page) :]
            records = await asyncio.gather(*(asyncio.to_thread(self.store.get, i) for i in chunk))
            page.extend(r.video for r in records if r is not None)  # deleted between listing and reading
        return page[:limit], len(page) > limit

    def poll_after_ms(self, record: JobRecord) -> int:
        """When to poll a pending job again: 1 / POLL_FRACTION of its expected remaining time (of a typical job's
        time once overdue), in [MIN_POLL_MS, MAX_POLL_MS]."""
        remaining = self.expected_s - (self.clock() - record.created)
        if remaining <= 0:
            remaining = self.expected_s
        return int(min(MAX_POLL_MS, max(MIN_POLL_MS, 1000 * remaining / POLL_FRACTION)))

    # -- the batch queue's side ----------------------------------------------------------------------------------

    async def run_batch(
        self, generate: Callable[..., list[VideoResult]], requests: list[ResolvedRequest]
    ) -> list[VideoResult | None]:
        """The body of the replica's ``@serve.batch`` method: one ``generate(requests, on_step=...)`` call (in a
        thread) for the batch's jobs and sync calls; None for jobs deleted or taken over while they waited."""
        wanted = [self.begin(r.id) for r in requests]
        kept = [r for r, keep in zip(requests, wanted) if keep]
        results = iter(await asyncio.to_thread(generate, kept, on_step=self.on_step) if kept else [])
        return [next(results) if keep else None for keep in wanted]

    def begin(self, request_id: str) -> bool:
        """Called as a batch starts: False for a job dropped (deleted, taken over) while queued."""
        held = self.held.get(request_id)
        if held is None:
            return True  # a sync call, not a job
        if held.cancelled:
            return False
        held.status, held.started, held.dirty = "in_progress", self.clock(), True
        return True

    def on_step(self, ids: list[str], step: int, total: int) -> None:
        """The generator's step callback (its thread): progress for the loop to write."""
        for request_id in ids:
            held = self.held.get(request_id)
            if held is not None:
                held.progress = min(SAMPLING_PERCENT, SAMPLING_PERCENT * step // total)
                held.dirty = True

    async def _run(self, held: HeldJob) -> None:
        job_id = held.record.video.id
        try:
            try:
                result = await self.submit(held.request)
            except Exception as err:  # the batch queue failed as a whole; the job fails with the reason
                logger.exception("job %s: generation failed", job_id)
                result = VideoResult(id=job_id, error=f"generation failed: {type(err).__name__}: {err}")
            if result is not None and not held.cancelled:
                await self._finish(held, result)
        except Exception:  # storage down: the lease lapses and another replica (or this one) takes the job up
            logger.exception("job %s: could not store its result; its lease will lapse", job_id)
        finally:
            self.held.pop(job_id, None)

    async def _finish(self, held: HeldJob, result: VideoResult) -> None:
        now = self.clock()
        video = held.record.video
        started = held.started if held.started is not None else now
        update = {"completed_at": int(now), "batch_size": result.batch_size or None,
                  "queue_seconds": round(started - held.record.created, 4)}  # fmt: skip
        if result.ok:
            update |= {"status": "completed", "progress": 100, "generation_seconds": round(result.seconds, 4)}
            self.expected_s += EXPECTED_EMA_WEIGHT * ((now - held.record.created) - self.expected_s)
        else:
            code = "invalid_value" if result.error_field else "generation_failed"
            error = JobError(code=code, message=result.error, param=result.error_field)
            update |= {"status": "failed", "error": error}
        record = held.record.model_copy(update={"video": video.model_copy(update=update), "lease_owner": None,
                                                "lease_expires_at": None, "started": started})  # fmt: skip
        if await self._write(held, record, mp4=result.mp4):
            await asyncio.to_thread(self.store.clear_active, video.id)
            logger.info("job %s %s: %dx%dx%d, %d steps, batch %s, queued %.3f s, generated %.3f s", video.id,
                        record.video.status, video.num_frames, video.height, video.width, video.num_inference_steps,
                        result.batch_size, update["queue_seconds"], result.seconds)  # fmt: skip

    # -- leases ---------------------------------------------------------------------------------------------------

    async def _write(self, held: HeldJob, record: JobRecord, *, mp4: bytes | None = None) -> bool:
        """Writes a held job's record (and its video) if this replica still owns the job; otherwise lets go of the
        job (False)."""
        job_id = record.video.id
        async with held.lock:
            if held.cancelled:
                return False
            current = await asyncio.to_thread(self.store.get, job_id)
            if current is None or current.lease_owner != self.owner:
                logger.info("job %s was deleted or taken over; letting go", job_id)
                held.cancelled = True
                return False
            if mp4 is not None:
                await asyncio.to_thread(self.store.put_video, job_id, mp4)
            await asyncio.to_thread(self.store.put, record)
            if await asyncio.to_thread(self.store.is_deleted, job_id):  # deleted while we wrote: undo our writes
                await asyncio.to_thread(self.store.remove, job_id, tombstone=False, now=self.clock())
                held.cancelled = True
                return False
            held.record = record
            return True

    async def flush(self) -> None:
        """Writes the progress of held jobs that moved and renews leases that are due."""
        now = self.clock()
        renew_after = self.settings.lease_s * LEASE_RENEW_FRACTION
        for held in list(self.held.values()):
            if held.cancelled or not (held.dirty or now - held.renewed_at >= renew_after):
                continue
            held.dirty = False
            video = held.record.video.model_copy(update={"status": held.status, "progress": held.progress})
            record = held.record.model_copy(update={"video": video, "started": held.started,
                                                    "lease_expires_at": now + self.settings.lease_s})  # fmt: skip
            try:
                if await self._write(held, record):
                    held.renewed_at = now
            except Exception:
                logger.exception("job %s: lease renewal failed", record.video.id)

    async def sweep(self) -> None:
        """Takes up (or fails) jobs whose lease expired; drops markers of finished jobs; purges old tombstones."""
        now = self.clock()
        for job_id in await asyncio.to_thread(self.store.active_ids):
            if job_id in self.held:
                continue
            record = await asyncio.to_thread(self.store.get, job_id)
            if record is None or not record.pending:
                await asyncio.to_thread(self.store.clear_active, job_id)
            elif record.lease_expired(now):
                await self._take_over(record)
        await asyncio.to_thread(self.store.purge_tombstones, now - TOMBSTONE_LEASES * self.settings.lease_s)

    async def _take_over(self, record: JobRecord) -> JobRecord:
        """Re-queues a job whose lease expired under this replica's lease, or fails it (attempts used up, or its
        request no longer valid here). Returns the record as it now stands."""
        now, video = self.clock(), record.video
        if video.id in self.held:  # a poll and the sweep both found it: one take-over is enough
            return record
        if video.attempts >= self.settings.max_attempts:
            message = (f"the replica generating this job stopped {video.attempts} times (lease expired at "
                       f"{record.lease_expires_at:.0f}); not retried")  # fmt: skip
            return await self._fail_orphan(record, JobError(code="replica_lost", message=message))
        request = VideoRequest(
            id=video.id, prompt=video.prompt, seed=video.seed, negative_prompt=video.negative_prompt,
            num_frames=video.num_frames, height=video.height, width=video.width, fps=video.fps,
            num_inference_steps=video.num_inference_steps, guidance_scale=video.guidance_scale,
        )  # fmt: skip
        try:
            resolved = self.resolve(request)
        except FieldError as err:  # the endpoint's limits changed since the job was created
            return await self._fail_orphan(record, JobError(code="invalid_value", message=str(err), param=err.field))
        if self.load >= self.settings.max_jobs:
            return record  # full here: the next sweep (of this or another replica) takes it
        attempts = video.attempts + 1
        taken = record.model_copy(update={
            "video": video.model_copy(update={"status": "queued", "progress": 0, "attempts": attempts}),
            "lease_owner": self.owner, "lease_expires_at": now + self.settings.lease_s, "started": None,
        })  # fmt: skip
        await asyncio.to_thread(self.store.put, taken)
        if await asyncio.to_thread(self.store.is_deleted, video.id):
            await asyncio.to_thread(self.store.remove, video.id, tombstone=False, now=now)
            return record
        if video.id in self.held:
            return taken
        logger.warning("job %s: lease of %s expired; taken up (attempt %d)", video.id, record.lease_owner, attempts)
        held = HeldJob(record=taken, request=resolved, renewed_at=now)
        self.held[video.id] = held
        held.task = asyncio.get_running_loop().create_task(self._run(held))
        return taken

    async def _fail_orphan(self, record: JobRecord, error: JobError) -> JobRecord:
        now = self.clock()
        video = record.video.model_copy(update={"status": "failed", "error": error, "completed_at": int(now)})
        failed = record.model_copy(update={"video": video, "lease_owner": None, "lease_expires_at": None})
        logger.warning("job %s failed: %s", video.id, error.message)
        await asyncio.to_thread(self.store.put, failed)
        await asyncio.to_thread(self.store.clear_active, video.id)
        if await asyncio.to_thread(self.store.is_deleted, video.id):
            await asyncio.to_thread(self.store.remove, video.id, tombstone=False, now=now)
        return failed

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.flush()

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # storage unreachable: try again next time
                logger.exception("job sweep failed")
            await asyncio.sleep(self.settings.sweep_interval_s)
