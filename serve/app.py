"""The Ray Serve application ``dcm``: few-step video generation over HTTP.

    serve run serve.app:dcm                 # from the repository root; http://127.0.0.1:8000/ (playground), /docs
    serve deploy infra/serve_config.yaml    # the same application with explicit settings

Endpoints: ``POST /v1/videos`` (MP4 bytes, or JSON with a stored video's URI), ``GET /v1/videos/{id}``,
``GET /healthz``, ``GET /readyz``, ``GET /`` (prompt playground), ``GET /docs`` (OpenAPI).
Concurrent compatible requests are grouped by ``@serve.batch`` into one sampler call; over the queue bound clients
get 503 with ``Retry-After``. The generator is the same class the batch job's actors use.
"""

import asyncio
import logging
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.metrics import Histogram

from dcm.generation import ResolvedRequest, VideoGenerator, VideoRequest, VideoResult
from dcm.io.storage import Store, safe_name
from dcm.manifest import output_key, row_id
from dcm.pages.playground import PlaygroundSettings, render_playground
from serve.schemas import (
    LATENCY_BUCKETS_S,
    MAX_BODY_BYTES,
    MP4_MEDIA_TYPE,
    BatchingSettings,
    ServeSettings,
    VideoCreate,
    VideoStored,
    authorized,
    expected_token,
    validation_detail,
)

logger = logging.getLogger("ray.serve")

# Queue bounds: requests beyond max_ongoing + max_queued per replica are refused with 503 and Retry-After.
MAX_ONGOING_REQUESTS = 8
MAX_QUEUED_REQUESTS = 16
RETRY_AFTER_S = 1.0

api = FastAPI(
    title="DCM Platform",
    description="Few-step text-to-video generation with a Dual-Expert Consistency Model.",
    version="0.1.0",
)


def _error(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message}, headers=headers or None)


# Registered before @serve.ingress(api) takes the app: middleware added later would not be served.
@api.middleware("http")
async def limit_body_size(request: Request, call_next):
    """413 for bodies over the limit, before FastAPI reads them."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return _error(413, f"request body must be at most {MAX_BODY_BYTES} bytes")
    return await call_next(request)


@dataclass
class Pending:
    """A request waiting in the batch queue."""

    request: ResolvedRequest
    arrived: float


@serve.deployment(
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    max_queued_requests=MAX_QUEUED_REQUESTS,
    backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
    ray_actor_options={"num_cpus": 0.5, "num_gpus": 0},
    user_config={"max_batch_size": 4, "batch_wait_timeout_s": 0.05},
)
@serve.ingress(api)
class VideoGen:
    """One replica: a loaded generator, a batching queue, storage for ``response=url``."""

    def __init__(self, settings: dict | None = None) -> None:
        self.ready = False
        self.settings = ServeSettings.from_dict(settings)
        self.generator = VideoGenerator(self.settings.model, device=self.settings.device, limits=self.settings.limits)
        self.store = Store(self.settings.storage)
        self.latency = Histogram(
            "dcm_generation_seconds",
            description="Seconds to generate (and encode) one batch of videos.",
            boundaries=list(LATENCY_BUCKETS_S),
        )
        self.ready = True

    def reconfigure(self, user_config: dict) -> None:
        """Runtime knobs from ``user_config``: batch size and wait (no replica restart)."""
        batching = BatchingSettings(**user_config)
        self._generate_batch.set_max_batch_size(batching.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    # -- the work -----------------------------------------------------------------------------------------

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def _generate_batch(self, items: list[Pending]) -> list[tuple[VideoResult, float]]:
        started = time.perf_counter()
        results = await asyncio.to_thread(self.generator.generate, [item.request for item in items])
        self.latency.observe(time.perf_counter() - started)
        return [(result, started - item.arrived) for item, result in zip(items, results)]

    async def generate(self, request: ResolvedRequest) -> tuple[VideoResult, float]:
        """One video through the batching queue: (result, seconds spent queued)."""
        return await self._generate_batch(Pending(request=request, arrived=time.perf_counter()))

    # -- HTTP ---------------------------------------------------------------------------------------------

    def _unauthorized(self, request: Request) -> JSONResponse | None:
        if authorized(request.headers.get("authorization"), expected_token(self.settings)):
            return None
        return _error(401, "missing or invalid bearer token", **{"WWW-Authenticate": "Bearer"})

    @api.post("/v1/videos", responses={200: {"content": {MP4_MEDIA_TYPE: {}}}, 422: {}, 401: {}, 503: {}})
    async def create_video(self, body: VideoCreate, request: Request):
        """Generates one video: MP4 bytes (``response=mp4``) or JSON with the stored video (``response=url``)."""
        if (denied := self._unauthorized(request)) is not None:
            return denied
        params = body.model_dump(exclude={"response"})
        video_id = row_id(params)
        vr = VideoRequest(id=video_id, **params)
        try:
            resolved = self.generator.resolve(vr)
        except (ValueError, TypeError) as err:
            return JSONResponse(status_code=422, content={"detail": validation_detail(str(err))})
        config = resolved.config
        try:
            result, queued = await self.generate(resolved)
        except Exception:  # never leak a stack trace to a client; the replica log has it
            logger.exception("generation failed for %s", video_id)
            return _error(500, "generation failed")
        if not result.ok:
            return JSONResponse(status_code=422, content={"detail": validation_detail(result.error)})
        logger.info(
            "video id=%s shape=%dx%dx%d steps=%d batch=%d queue=%.3fs gen=%.3fs",
            video_id, config.num_frames, config.height, config.width, config.num_inference_steps,
            result.batch_size, queued, result.seconds,
        )  # fmt: skip
        headers = {
            "X-DCM-Video-Id": video_id,
            "X-DCM-Batch-Size": str(result.batch_size),
            "X-DCM-Queue-Seconds": f"{queued:.4f}",
            "X-DCM-Generation-Seconds": f"{result.seconds:.4f}",
        }
        if body.response == "mp4":
            return Response(content=result.mp4, media_type=MP4_MEDIA_TYPE, headers=headers)
        key = output_key(video_id)
        uri = await asyncio.to_thread(self.store.put_bytes, key, result.mp4, content_type=MP4_MEDIA_TYPE)
        stored = VideoStored(
            id=video_id, uri=uri, url=str(request.url_for("get_video", video_id=video_id)), seed=vr.seed,
            num_frames=config.num_frames, height=config.height, width=config.width,
            num_inference_steps=config.num_inference_steps, batch_size=result.batch_size,
            queue_seconds=queued, generation_seconds=result.seconds,
        )  # fmt: skip
        return JSONResponse(content=stored.model_dump(), headers=headers)

    @api.get("/v1/videos/{video_id}", name="get_video", responses={200: {"content": {MP4_MEDIA_TYPE: {}}}})
    async def get_video(self, video_id: str, request: Request):
        """A video stored by ``response=url``."""
        if (denied := self._unauthorized(request)) is not None:
            return denied
        if safe_name(video_id) != video_id:
            return _error(404, f"no video with id {video_id!r}")
        key = output_key(video_id)
        if not await asyncio.to_thread(self.store.exists, key):
            return _error(404, f"no video with id {video_id!r}")
        data = await asyncio.to_thread(self.store.get_bytes, key)
        return Response(content=data, media_type=MP4_MEDIA_TYPE)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """Liveness: the replica answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self):
        """Readiness: the model is loaded."""
        if not self.ready:
            return _error(503, "model not loaded", **{"Retry-After": str(int(RETRY_AFTER_S))})
        return {"status": "ready", "model": self.settings.model}

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground(self) -> HTMLResponse:
        """The prompt playground page."""
        defaults, geometry, limits = self.generator.defaults, self.generator.pipeline.geometry, self.settings.limits
        page = render_playground(
            PlaygroundSettings(
                title="DCM playground", model=self.settings.model, default_num_frames=defaults.num_frames,
                default_height=defaults.height, default_width=defaults.width,
                default_steps=defaults.num_inference_steps, max_num_frames=limits.max_num_frames,
                max_size=limits.max_size, max_steps=limits.max_inference_steps,
                frame_multiple=geometry.scale_factor_temporal, size_multiple=geometry.size_multiple,
                auth_required=expected_token(self.settings) is not None, max_prompt_chars=limits.max_prompt_chars,
            )
        )  # fmt: skip
        return HTMLResponse(page)


def app_builder(args: dict) -> serve.Application:
    """``serve run serve.app:app_builder model=...`` / ``serve_config.yaml`` ``args``: settings from arguments."""
    return VideoGen.bind(ServeSettings.from_dict(args).to_dict())


dcm = VideoGen.bind(ServeSettings().to_dict())
