"""The Ray Serve application ``dcm``: few-step video generation over HTTP, as OpenAI-compatible video jobs.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 serve run serve.app:dcm     # from the repository root (docs/api.md)
    serve deploy infra/serve_config.yaml                            # the same application with explicit settings

Endpoints (docs/api.md): ``POST /v1/videos`` (a job, answered at once), ``GET /v1/videos``, ``GET /v1/videos/{id}``,
``GET /v1/videos/{id}/content``, ``DELETE /v1/videos/{id}``, ``POST /v1/videos/sync`` (blocks; answers the MP4),
``GET /healthz``, ``GET /readyz``, ``GET /`` (playground), ``GET /docs`` (API reference, works offline).
Jobs live in the configured storage (:mod:`serve.video_jobs`), so any replica answers for any job. Jobs and sync
calls share one ``@serve.batch`` queue: concurrent compatible requests become one sampler call.
"""

import logging
import secrets
import time
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.metrics import Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from dcm.generation import ResolvedRequest, VideoGenerator, VideoResult
from dcm.io.storage import Store, is_s3
from dcm.pages.playground import PlaygroundSettings, render_playground
from serve.api_docs import render_api_docs
from serve.autoscaling import HELD_JOBS_METRIC
from serve.bodies import BodyLimitMiddleware, parse_body
from serve.schemas import (
    LATENCY_BUCKETS_S,
    MAX_BODY_BYTES,
    MP4_MEDIA_TYPE,
    RETRY_AFTER_S,
    ApiError,
    BatchingSettings,
    ErrorResponse,
    ServeSettings,
    VideoCreate,
    VideoDeleted,
    VideoJob,
    VideoList,
    authorized,
    expected_token,
    unexpected_error,
)
from serve.video_jobs import LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT, JobService, JobStore, is_job_id, new_job_id
from serve.video_request import resolve_create

logger = logging.getLogger("ray.serve")

# Serve's own bound on HTTP requests per replica (polls are quick; sync calls hold one for a whole generation).
MAX_ONGOING_REQUESTS = 32
MAX_QUEUED_REQUESTS = 64
POLL_HEADER = "openai-poll-after-ms"
DEFAULT_BATCHING = BatchingSettings()

api = FastAPI(
    title="DCM Platform",
    description="Few-step text-to-video generation with a Dual-Expert Consistency Model, as OpenAI-compatible "
    "video jobs: create a job, poll it, download its MP4.",
    version="0.2.0",
    docs_url=None,  # FastAPI's page loads Swagger UI from a CDN; ours is self-contained (serve/api_docs.py)
    redoc_url=None,
)
# Registered before @serve.ingress(api) takes the app: middleware added later would not be served.
api.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(status_code=err.status, content=err.body(), headers=err.headers)


@api.exception_handler(ApiError)
async def _api_error(request: Request, err: ApiError) -> JSONResponse:
    return _error_response(err)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return _error_response(ApiError(err.status_code, str(err.detail), code=code))


@api.exception_handler(Exception)
async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)  # never leak a trace to clients
    return _error_response(unexpected_error(err))


_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 503)}
_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            kind: {"schema": VideoCreate.model_json_schema()}
            for kind in ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
        },
    }
}


@serve.deployment(
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    max_queued_requests=MAX_QUEUED_REQUESTS,
    backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
    ray_actor_options={"num_cpus": 0.5, "num_gpus": 0},
    user_config=asdict(DEFAULT_BATCHING),
)
@serve.ingress(api)
class VideoGen:
    """One replica: a loaded generator, its batching queue, and the jobs it holds."""

    def __init__(self, settings: dict | None = None) -> None:
        self.settings = ServeSettings.from_dict(settings)
        if not is_s3(self.settings.storage):
            logger.warning("jobs are stored in the local folder %s: replicas on other nodes cannot see them (use an "
                           "s3:// storage with more than one node)", self.settings.storage)  # fmt: skip
        self.generator = VideoGenerator(self.settings.model, device=self.settings.device, limits=self.settings.limits)
        self.batching = DEFAULT_BATCHING
        self.latency = Histogram(
            "dcm_generation_seconds",
            description="Seconds to generate (and encode) one batch of videos.",
            boundaries=list(LATENCY_BUCKETS_S),
        )
        # The lease owner: this replica process (a restarted replica is a new owner).
        owner = f"{serve.get_replica_context().replica_id.unique_id}-{secrets.token_hex(4)}"
        self.jobs = JobService(
            store=JobStore(Store(self.settings.storage)), settings=self.settings.jobs, model=self.settings.model,
            owner=owner, resolve=self.generator.resolve, submit=self._submit,
        )  # fmt: skip
        self.jobs.start()  # the constructor runs on the replica's event loop

    async def __del__(self) -> None:
        """Graceful shutdown: hand held jobs to the other replicas at once instead of after their lease."""
        await self.jobs.stop(release=True)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """What :func:`serve.autoscaling.held_jobs_policy` scales on: the jobs this replica holds."""
        return {HELD_JOBS_METRIC: float(self.jobs.load)}

    def reconfigure(self, user_config: dict) -> None:
        """Runtime knobs from ``user_config``: batch size and wait (no replica restart)."""
        self.batching = BatchingSettings(**user_config)
        self._generate_batch.set_max_batch_size(self.batching.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(self.batching.batch_wait_timeout_s)

    # -- the work -----------------------------------------------------------------------------------------

    async def _submit(self, request: ResolvedRequest) -> VideoResult | None:
        """Into the batch queue. A request this replica holds alone skips the batch wait: no other request is
        here to join it, so waiting would only add the wait to its latency (the queue reads the wait when a batch
        starts)."""
        alone = self.jobs.load <= 1
        self._generate_batch.set_batch_wait_timeout_s(0.0 if alone else self.batching.batch_wait_timeout_s)
        return await self._generate_batch(request)

    @serve.batch(
        max_batch_size=DEFAULT_BATCHING.max_batch_size, batch_wait_timeout_s=DEFAULT_BATCHING.batch_wait_timeout_s
    )
    async def _generate_batch(self, requests: list[ResolvedRequest]) -> list[VideoResult | None]:
        """One sampler call per compatible group; None for jobs deleted while they waited."""
        started = time.perf_counter()
        results = await self.jobs.run_batch(self.generator.generate, requests)
        self.latency.observe(time.perf_counter() - started)
        return results

    # -- HTTP ---------------------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        """Bearer auth, checked before anything of the request is read or validated."""
        if not authorized(request.headers.get("authorization"), expected_token(self.settings)):
            raise ApiError(401, "missing or invalid bearer token (Authorization: Bearer <token>)",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    async def _resolve_body(self, request: Request, request_id: str) -> ResolvedRequest:
        fields = parse_body(await request.body(), request.headers.get("content-type"))
        _, resolved = resolve_create(fields, job_id=request_id, served_model=self.settings.model,
                                     generator=self.generator)  # fmt: skip
        return resolved

    async def _record(self, video_id: str):
        record = await self.jobs.retrieve(video_id) if is_job_id(video_id) else None
        if record is None:
            raise ApiError(404, f"no video job with id {video_id[:80]!r}", code="not_found", param="video_id")
        return record

    @api.post("/v1/videos", response_model=VideoJob, responses=_ERRORS, openapi_extra=_CREATE_BODY)
    async def create_video(self, request: Request) -> JSONResponse:
        """Creates a video job and answers at once with it (``status: queued``); poll it, then download it."""
        self._authorize(request)
        resolved = await self._resolve_body(request, new_job_id(time.time()))
        record = await self.jobs.create(resolved)
        headers = {POLL_HEADER: str(self.jobs.poll_after_ms(record))}
        return JSONResponse(content=record.video.model_dump(), headers=headers)

    @api.get("/v1/videos", response_model=VideoList, responses=_ERRORS)
    async def list_videos(
        self, request: Request, limit: str | None = None, after: str | None = None, order: str | None = None
    ) -> JSONResponse:
        """Jobs, newest first (``order=asc``: oldest first); ``limit`` 1-100 (20), ``after`` a job id to page on."""
        self._authorize(request)
        count = LIST_DEFAULT_LIMIT
        if limit is not None:
            if not limit.strip().isdigit() or not 1 <= int(limit) <= LIST_MAX_LIMIT:
                raise ApiError(400, f"limit must be an integer in [1, {LIST_MAX_LIMIT}], got {limit[:40]!r}",
                               code="invalid_value", param="limit")  # fmt: skip
            count = int(limit)
        if order not in (None, "asc", "desc"):
            raise ApiError(400, f"order must be 'asc' or 'desc', got {order[:40]!r}", code="invalid_value",
                           param="order")  # fmt: skip
        if after is not None and not is_job_id(after):
            raise ApiError(400, f"after must be a video job id, got {after[:80]!r}", code="invalid_value",
                           param="after")  # fmt: skip
        data, has_more = await self.jobs.list(order=order or "desc", after=after, limit=count)
        page = VideoList(data=data, has_more=has_more, first_id=data[0].id if data else None,
                         last_id=data[-1].id if data else None)  # fmt: skip
        return JSONResponse(content=page.model_dump())

    @api.get("/v1/videos/{video_id}", response_model=VideoJob, responses=_ERRORS)
    async def retrieve_video(self, video_id: str, request: Request) -> JSONResponse:
        """The job: ``queued`` -> ``in_progress`` -> ``completed`` or ``failed``; while pending, the
        ``openai-poll-after-ms`` header says when to ask again."""
        self._authorize(request)
        record = await self._record(video_id)
        headers = {POLL_HEADER: str(self.jobs.poll_after_ms(record))} if record.pending else None
        return JSONResponse(content=record.video.model_dump(), headers=headers)

    @api.get(
        "/v1/videos/{video_id}/content",
        responses={200: {"content": {MP4_MEDIA_TYPE: {}}}, **_ERRORS, 409: {"model": ErrorResponse}},
    )
    async def download_video(self, video_id: str, request: Request, variant: str | None = None) -> Response:
        """The MP4 of a completed job (409 before that)."""
        self._authorize(request)
        if variant not in (None, "video"):
            raise ApiError(400, f"only variant=video is available, got {variant[:40]!r}", code="invalid_value",
                           param="variant")  # fmt: skip
        record = await self._record(video_id)
        video = record.video
        if video.status != "completed":
            reason = f": {video.error.message}" if video.error else f" ({video.progress}% done)"
            raise ApiError(409, f"video {video_id} is {video.status}{reason}; its content exists once completed",
                           code="video_not_ready", headers={"x-should-retry": "false"})  # fmt: skip
        data = await self.jobs.video(video_id)
        if data is None:  # deleted between the two reads
            raise ApiError(404, f"no video job with id {video_id!r}", code="not_found", param="video_id")
        return Response(content=data, media_type=MP4_MEDIA_TYPE)

    @api.delete("/v1/videos/{video_id}", response_model=VideoDeleted, responses=_ERRORS)
    async def delete_video(self, video_id: str, request: Request) -> JSONResponse:
        """Removes the job and its video; a queued job is cancelled."""
        self._authorize(request)
        if not is_job_id(video_id) or not await self.jobs.delete(video_id):
            raise ApiError(404, f"no video job with id {video_id[:80]!r}", code="not_found", param="video_id")
        return JSONResponse(content=VideoDeleted(id=video_id).model_dump())

    @api.post(
        "/v1/videos/sync",
        responses={200: {"content": {MP4_MEDIA_TYPE: {}}}, **_ERRORS, 500: {"model": ErrorResponse}},
        openapi_extra=_CREATE_BODY,
    )
    async def create_video_sync(self, request: Request) -> Response:
        """Generates one video and answers its MP4 (blocks until done): for quick use with curl."""
        self._authorize(request)
        resolved = await self._resolve_body(request, f"sync_{secrets.token_hex(8)}")
        async with self.jobs.reserve():
            result = await self._submit(resolved)
        if not result.ok:
            status = 422 if result.error_field else 500
            raise ApiError(status, result.error, code="invalid_value" if result.error_field else "generation_failed",
                           param=result.error_field)  # fmt: skip
        c = resolved.config
        headers = {"X-DCM-Batch-Size": str(result.batch_size), "X-DCM-Generation-Seconds": f"{result.seconds:.4f}",
                   "X-DCM-Size": f"{c.width}x{c.height}", "X-DCM-Num-Frames": str(c.num_frames)}  # fmt: skip
        return Response(content=result.mp4, media_type=MP4_MEDIA_TYPE, headers=headers)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """Liveness: the replica answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> dict:
        """Readiness: the replica answers once its model is loaded (Serve routes to it only then)."""
        return {"status": "ready", "model": self.settings.model, "jobs_held": self.jobs.load,
                "max_jobs": self.settings.jobs.max_jobs}  # fmt: skip

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground(self) -> HTMLResponse:
        """The prompt playground page (it uses the jobs API)."""
        limits, model = self.settings.limits, self.generator.model_limits
        defaults, geometry = model.defaults, model.geometry
        page = render_playground(
            PlaygroundSettings(
                title="DCM playground", model=self.settings.model, default_num_frames=defaults.num_frames,
                default_height=defaults.height, default_width=defaults.width,
                default_steps=defaults.num_inference_steps,
                max_num_frames=min(limits.max_num_frames, geometry.max_num_frames or limits.max_num_frames),
                max_size=min(limits.max_size, geometry.max_size or limits.max_size),
                max_steps=limits.max_inference_steps, frame_multiple=geometry.scale_factor_temporal,
                size_multiple=geometry.size_multiple, auth_required=expected_token(self.settings) is not None,
                max_prompt_chars=limits.max_prompt_chars,
            )
        )  # fmt: skip
        return HTMLResponse(page)

    @api.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def api_docs(self) -> HTMLResponse:
        """The API reference, rendered from ``openapi.json`` with no asset from the internet."""
        return HTMLResponse(render_api_docs(title=api.title, openapi_url="openapi.json"))


def app_builder(args: dict) -> serve.Application:
    """``serve run serve.app:app_builder model=...`` / ``serve_config.yaml`` ``args``: settings from arguments."""
    return VideoGen.bind(ServeSettings.from_dict(args).to_dict())


dcm = VideoGen.bind(ServeSettings().to_dict())
