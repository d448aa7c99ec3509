"""Durable jobs without Ray: two or three "replicas" (JobService instances) over one storage folder, a real tiny
generator, and a clock the tests move, so lease expiry is exact and instant.

    .venv/bin/python -m pytest -q tests/endpoint/test_video_jobs.py

The batch queue is the test's own :class:`ManualQueue` (``@serve.batch`` runs only inside a deployment): jobs wait
in it until the test drains it through ``JobService.run_batch``, the function the deployment's batch method calls.
A replica "dies" by stopping its loops without releasing its leases and never draining its queue.
"""

import asyncio
import time

import pytest

from dcm.generation import VideoGenerator
from dcm.io.storage import Store
from dcm.io.video import decode_mp4
from serve.schemas import ApiError, JobSettings, unexpected_error
from serve.video_jobs import (
    DEFAULT_EXPECTED_S,
    MIN_POLL_MS,
    POLL_FRACTION,
    SAMPLING_PERCENT,
    JobService,
    JobStore,
    new_job_id,
)
from serve.video_request import resolve_create

SMALL = {"num_frames": 9, "height": 32, "width": 32}
LEASE_S = 10.0


@pytest.fixture(scope="module")
def generator():
    return VideoGenerator("tiny-wan", device="cpu")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ManualQueue:
    """Holds submitted requests until :meth:`drain` runs them as one batch."""

    def __init__(self) -> None:
        self.pending = []

    async def submit(self, request):
        future = asyncio.get_running_loop().create_future()
        self.pending.append((request, future))
        return await future

    async def drain(self, service: JobService, generate) -> list[str]:
        """Runs every waiting request in one batch; returns the ids the generator was given."""
        await asyncio.sleep(0.01)  # the jobs' tasks submit their requests
        batch, self.pending = self.pending, []
        given = []

        def recording(requests, on_step):
            given.extend(r.id for r in requests)
            return generate(requests, on_step=on_step)

        results = await service.run_batch(recording, [r for r, _ in batch])
        for (_, future), result in zip(batch, results):
            future.set_result(result)
        await asyncio.sleep(0.05)  # let the jobs' tasks store their results
        for _ in range(100):
            if not service.held:
                break
            await asyncio.sleep(0.05)
        return given


def replica(root, owner, clock, generator, **settings) -> tuple[JobService, ManualQueue]:
    queue = ManualQueue()
    service = JobService(
        store=JobStore(Store(str(root))), settings=JobSettings(lease_s=LEASE_S, **settings), model="tiny-wan",
        owner=owner, resolve=generator.resolve, submit=queue.submit, clock=clock,
    )  # fmt: skip
    return service, queue


async def create(service: JobService, generator, prompt="a red circle", **fields):
    _, resolved = resolve_create({"prompt": prompt, **SMALL, **fields}, job_id=new_job_id(service.clock()),
                                 served_model="tiny-wan", generator=generator)  # fmt: skip
    service.clock.advance(0.002)  # distinct, ordered ids
    return await service.create(resolved)


async def die(service: JobService) -> None:
    """A replica process ending without a goodbye: nothing it held is released."""
    await service.stop(release=False)
    for held in service.held.values():
        held.task.cancel()
    service.held.clear()


def test_a_job_goes_queued_in_progress_completed_with_progress_and_its_video(tmp_path, generator):
    async def main():
        clock = Clock()
        a, queue = replica(tmp_path, "a", clock, generator)
        record = await create(a, generator, seed=4)
        job_id = record.video.id
        stored = JobStore(Store(str(tmp_path))).get(job_id)  # durable before create returns
        assert stored.video.status == "queued" and stored.video.progress == 0 and stored.lease_owner == "a"
        assert stored.video.size == "32x32" and stored.video.seconds == "1.125" and stored.video.seed == 4
        seen = []

        def generate(requests, on_step):
            def step(ids, i, total):
                on_step(ids, i, total)
                seen.append((a.held[job_id].status, a.held[job_id].progress))

            return generator.generate(requests, on_step=step)

        await queue.drain(a, generate)
        assert [s for s, _ in seen] == ["in_progress"] * 4
        assert [p for _, p in seen] == [SAMPLING_PERCENT * i // 4 for i in range(1, 5)]
        done = await a.retrieve(job_id)
        video = done.video
        assert (video.status, video.progress, video.batch_size, video.attempts) == ("completed", 100, 1, 1)
        assert video.completed_at >= video.created_at and video.queue_seconds >= 0 and video.generation_seconds > 0
        assert decode_mp4(await a.video(job_id)).frames.shape == (9, 32, 32, 3)
        assert a.store.active_ids() == [] and done.lease_owner is None

    asyncio.run(main())


def test_progress_is_written_and_leases_renewed_by_flush(tmp_path, generator):
    async def main():
        clock = Clock()
        a, _ = replica(tmp_path, "a", clock, generator)
        record = await create(a, generator)
        job_id = record.video.id
        first_lease = a.store.get(job_id).lease_expires_at
        a.begin(job_id)
        a.on_step([job_id], 2, 4)
        await a.flush()
        stored = a.store.get(job_id)
        assert (stored.video.status, stored.video.progress) == ("in_progress", SAMPLING_PERCENT // 2)
        assert stored.started is not None
        clock.advance(LEASE_S / 2)  # past a third of the lease: renewed though nothing moved
        await a.flush()
        assert a.store.get(job_id).lease_expires_at == pytest.approx(first_lease + LEASE_S / 2)

    asyncio.run(main())


def test_delete_cancels_a_queued_job_and_removes_everything(tmp_path, generator):
    async def main():
        clock = Clock()
        a, queue = replica(tmp_path, "a", clock, generator)
        keep, drop = (await create(a, generator, seed=1)).video.id, (await create(a, generator, seed=2)).video.id
        assert await a.delete(drop) and not await a.delete(drop)
        given = await queue.drain(a, generator.generate)
        assert given == [keep]  # the deleted job never reached the sampler
        assert await a.retrieve(drop) is None and await a.video(drop) is None
        assert (await a.retrieve(keep)).video.status == "completed"
        assert set(a.store.store.list("")) == {f"jobs/{keep}.json", f"videos/{keep}.mp4", f"deleted/{drop}"}

    asyncio.run(main())


def test_a_job_deleted_by_another_replica_while_generating_stays_deleted(tmp_path, generator):
    async def main():
        clock = Clock()
        a, queue = replica(tmp_path, "a", clock, generator)
        b, _ = replica(tmp_path, "b", clock, generator)
        job_id = (await create(a, generator)).video.id
        loop = asyncio.get_running_loop()

        def generate(requests, on_step):
            # Another replica deletes the job mid-generation (from this thread, on the loop).
            assert asyncio.run_coroutine_threadsafe(b.delete(job_id), loop).result(timeout=30)
            return generator.generate(requests, on_step=on_step)

        await queue.drain(a, generate)
        assert a.store.get(job_id) is None and a.store.get_video(job_id) is None and a.store.active_ids() == []

    asyncio.run(main())


def test_a_dead_replicas_job_is_taken_up_once_its_lease_expires(tmp_path, generator):
    async def main():
        clock = Clock()
        a, _ = replica(tmp_path, "a", clock, generator)
        b, b_queue = replica(tmp_path, "b", clock, generator)
        job_id = (await create(a, generator, seed=9)).video.id
        a.begin(job_id)
        a.on_step([job_id], 1, 4)
        await a.flush()
        await die(a)  # mid-job
        clock.advance(LEASE_S - 1)
        await b.sweep()
        assert b.store.get(job_id).lease_owner == "a" and not b.held  # lease still valid
        clock.advance(1.5)
        await b.sweep()
        taken = b.store.get(job_id)
        assert (taken.lease_owner, taken.video.status, taken.video.attempts) == ("b", "queued", 2)
        await b_queue.drain(b, generator.generate)
        done = (await b.retrieve(job_id)).video
        assert (done.status, done.attempts, done.seed) == ("completed", 2, 9)
        assert decode_mp4(await b.video(job_id)).frames.shape == (9, 32, 32, 3)

    asyncio.run(main())


def test_a_poll_takes_up_an_expired_job_and_the_attempts_run_out_into_a_failure(tmp_path, generator):
    async def main():
        clock = Clock()
        a, _ = replica(tmp_path, "a", clock, generator, max_attempts=2)
        b, _ = replica(tmp_path, "b", clock, generator, max_attempts=2)
        c, _ = replica(tmp_path, "c", clock, generator, max_attempts=2)
        job_id = (await create(a, generator)).video.id
        await die(a)
        clock.advance(LEASE_S + 1)
        polled = await b.retrieve(job_id)  # a poll, not a sweep, notices the expired lease
        assert (polled.lease_owner, polled.video.attempts) == ("b", 2)
        await die(b)
        clock.advance(LEASE_S + 1)
        failed = (await c.retrieve(job_id)).video
        assert failed.status == "failed" and failed.error.code == "replica_lost"
        assert "stopped 2 times" in failed.error.message and failed.completed_at is not None
        assert c.store.active_ids() == [] and not c.held

    asyncio.run(main())


def test_a_replica_lets_go_of_a_job_taken_over_while_it_was_slow(tmp_path, generator):
    async def main():
        clock = Clock()
        a, a_queue = replica(tmp_path, "a", clock, generator)
        b, b_queue = replica(tmp_path, "b", clock, generator)
        job_id = (await create(a, generator)).video.id
        clock.advance(LEASE_S + 1)  # a stalled past its lease; b takes the job
        await b.sweep()
        await a.flush()  # a notices at its next write and lets go
        assert not await a_queue.drain(a, generator.generate)
        await b_queue.drain(b, generator.generate)
        assert (await b.retrieve(job_id)).video.status == "completed" and a.store.get(job_id).lease_owner is None

    asyncio.run(main())


def test_a_request_that_fails_in_the_sampler_fails_its_job_and_its_batch_mates_complete(tmp_path):
    class PoisonedPipeline:
        """Wraps the real pipeline; a prompt containing "poison" makes the sampler raise."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def generate(self, prompts, **kwargs):
            if any("poison" in p for p in prompts):
                raise RuntimeError("the sampler choked on a poisoned prompt")
            return self.inner.generate(prompts, **kwargs)

    async def main():
        poisoned = VideoGenerator("tiny-wan", device="cpu")
        poisoned.pipeline = PoisonedPipeline(poisoned.pipeline)
        clock = Clock()
        a, queue = replica(tmp_path, "a", clock, poisoned)
        ids = [(await create(a, poisoned, prompt=p)).video.id for p in ("a red circle", "poison", "a blue square")]
        await queue.drain(a, poisoned.generate)
        jobs = [(await a.retrieve(i)).video for i in ids]
        assert [j.status for j in jobs] == ["completed", "failed", "completed"]
        assert jobs[1].error.code == "generation_failed" and "poisoned prompt" in jobs[1].error.message
        for job in (jobs[0], jobs[2]):
            assert decode_mp4(await a.video(job.id)).frames.shape[0] == 9

    asyncio.run(main())


def test_the_queue_bound_answers_503_with_retry_after(tmp_path, generator):
    async def main():
        clock = Clock()
        a, _ = replica(tmp_path, "a", clock, generator, max_jobs=2)
        await create(a, generator)
        async with a.reserve():  # a sync call takes the second place
            with pytest.raises(ApiError) as full:
                await create(a, generator)
        assert full.value.status == 503 and full.value.headers["Retry-After"]
        await create(a, generator)
        with pytest.raises(ApiError):
            async with a.reserve():
                pass
        assert a.load == 2
        await die(a)

    asyncio.run(main())


def test_list_pages_newest_first_and_oldest_first(tmp_path, generator):
    async def main():
        clock = Clock()
        a, _ = replica(tmp_path, "a", clock, generator)
        ids = [(await create(a, generator, seed=i)).video.id for i in range(5)]
        page, more = await a.list(order="desc", after=None, limit=2)
        assert [j.id for j in page] == ids[::-1][:2] and more
        page, more = await a.list(order="desc", after=page[-1].id, limit=2)
        assert [j.id for j in page] == ids[::-1][2:4] and more
        page, more = await a.list(order="desc", after=page[-1].id, limit=2)
        assert [j.id for j in page] == ids[:1] and not more
        page, more = await a.list(order="asc", after=ids[2], limit=10)
        assert [j.id for j in page] == ids[3:] and not more
        await a.delete(ids[1])
        page, _ = await a.list(order="asc", after=None, limit=10)
        assert [j.id for j in page] == [ids[0], *ids[2:]]
        await die(a)

    asyncio.run(main())


def test_poll_hint_is_a_fraction_of_the_expected_remaining_time(tmp_path, generator):
    async def main():
        clock = Clock()
        a, queue = replica(tmp_path, "a", clock, generator)
        record = await create(a, generator)
        assert a.poll_after_ms(record) == pytest.approx(1000 * DEFAULT_EXPECTED_S / POLL_FRACTION, abs=5)
        clock.advance(DEFAULT_EXPECTED_S / 2)
        assert a.poll_after_ms(record) == pytest.approx(1000 * DEFAULT_EXPECTED_S / 2 / POLL_FRACTION, abs=5)
        clock.advance(100 * DEFAULT_EXPECTED_S)  # long overdue: polled at a fraction of a typical job's time
        assert a.poll_after_ms(record) == pytest.approx(1000 * DEFAULT_EXPECTED_S / POLL_FRACTION, abs=5)
        assert a.poll_after_ms(record) >= MIN_POLL_MS
        await queue.drain(a, generator.generate)
        assert a.expected_s > DEFAULT_EXPECTED_S  # learned from the (slow, by the fake clock) job

    asyncio.run(main())


@pytest.mark.s3
def test_a_storage_failure_is_a_503_that_names_no_bucket(s3_endpoint, generator):
    async def main():
        service = JobService(
            store=JobStore(Store("s3://no-such-bucket-here/jobs")), settings=JobSettings(), model="tiny-wan",
            owner="a", resolve=generator.resolve, submit=ManualQueue().submit, clock=Clock(),
        )  # fmt: skip
        with pytest.raises(Exception) as info:
            await create(service, generator)
        assert service.load == 0  # the job that could not be stored takes no place in the queue
        return unexpected_error(info.value)

    answer = asyncio.run(main())
    assert answer.status == 503 and answer.detail.code == "storage_unavailable" and answer.headers["Retry-After"]
    assert "no-such-bucket" not in answer.detail.message
    assert unexpected_error(KeyError("a bug")).status == 500


def test_a_replica_stopping_gracefully_hands_its_jobs_over_at_once(tmp_path, generator):
    async def main():
        clock = Clock()
        a, _ = replica(tmp_path, "a", clock, generator)
        b, b_queue = replica(tmp_path, "b", clock, generator)
        job_id = (await create(a, generator)).video.id
        await a.stop(release=True)  # what the deployment's __del__ does on scale-down or redeploy
        await b.sweep()  # no lease to wait for
        assert (b.store.get(job_id).lease_owner, b.store.get(job_id).video.attempts) == ("b", 2)
        await b_queue.drain(b, generator.generate)
        assert (await b.retrieve(job_id)).video.status == "completed"

    asyncio.run(main())
