"""The endpoint's settings, its request and response models, its error shape and auth (all testable without Ray).

The models follow OpenAI's video-jobs API (``/v1/videos``), which the ``openai`` SDKs, SGLang, vLLM-Omni and API
gateways speak; our own generation fields ride along as extra body fields and extra job fields.
"""

from __future__ import annotations

import hmac
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dcm.generation import RequestLimits
from dcm.presets import DEFAULT_MODEL

MP4_MEDIA_TYPE = "video/mp4"
# Request bodies above this size get 413 (a request is a small form; prompts are capped far below this).
MAX_BODY_BYTES = 16 * 1024
# Generation-latency histogram buckets (seconds): tiny CPU models take ~0.1 s, real GPU models tens of seconds.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Seconds a client is told to wait (Retry-After) when the job queue or Serve's request queue is full.
RETRY_AFTER_S = 1

JobStatus = Literal["queued", "in_progress", "completed", "failed"]
TERMINAL_STATUSES = ("completed", "failed")


@dataclass(frozen=True, kw_only=True)
class JobSettings:
    """How a replica holds video jobs (``args.jobs`` in ``serve_config.yaml``).

    Args:
        max_jobs: jobs one replica holds at once (queued and in progress, sync calls included); past it, creating
            a job answers 503 with ``Retry-After``.
        lease_s: a replica renews the lease of each job it holds every ``lease_s / 3``; a job whose lease is
            ``lease_s`` old (its replica died) is taken up by the next replica that sees it.
        sweep_interval_s: how often each replica looks for such jobs (a poll of the job also triggers the look),
            so a dead replica's job is running again within ``lease_s + sweep_interval_s``.
        max_attempts: a job whose replica died (or stopped) this many times is failed with the reason instead of
            retried.
    """

    max_jobs: int = 16
    lease_s: float = 30.0
    sweep_interval_s: float = 5.0
    max_attempts: int = 3

    def __post_init__(self) -> None:
        for name in ("max_jobs", "max_attempts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"jobs.{name} must be a positive integer, got {value!r}")
        for name in ("lease_s", "sweep_interval_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"jobs.{name} must be a positive number of seconds, got {value!r}")

    @property
    def recovery_bound_s(self) -> float:
        """Longest time a job of a dead replica waits before another replica takes it up."""
        return self.lease_s + self.sweep_interval_s


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """Deployment arguments (``serve run serve.app:dcm`` uses the defaults; ``serve_config.yaml`` can override).

    Args:
        model: preset, DCM folder, ``s3://`` folder or hub id.
        storage: where jobs and their videos live (local folder or ``s3://bucket/prefix``), shared by all replicas.
        auth_token_env: name of the environment variable holding the bearer token; auth is on iff it is set.
        limits: request limits (prompt length, frames, size, steps).
        jobs: job queue bound, lease and recovery.
        device: ``cuda`` / ``cpu`` / None (CUDA when available).
    """

    model: str = DEFAULT_MODEL
    storage: str = "outputs/serve"
    auth_token_env: str = "DCM_API_TOKEN"
    limits: RequestLimits = field(default_factory=RequestLimits)
    jobs: JobSettings = field(default_factory=JobSettings)
    device: str | None = None

    @classmethod
    def from_dict(cls, data: dict | None) -> ServeSettings:
        data = dict(data or {})
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown serve settings {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        for name, kind in (("limits", RequestLimits), ("jobs", JobSettings)):
            if name in data:
                known = set(kind.__dataclass_fields__)
                extra = set(data[name]) - known
                if extra:
                    raise ValueError(f"unknown {name} settings {sorted(extra)}; known: {sorted(known)}")
                data[name] = kind(**data[name])
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class BatchingSettings:
    """Runtime knobs (``user_config``, applied by ``reconfigure`` without restarting replicas)."""

    max_batch_size: int = 4
    batch_wait_timeout_s: float = 0.01

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")


# -- requests ---------------------------------------------------------------------------------------------------


class VideoCreate(BaseModel):
    """``POST /v1/videos`` (and ``/v1/videos/sync``) body, JSON or form fields.

    OpenAI's fields (``prompt``, ``model``, ``seconds``, ``size``) plus ours; unset fields take the model's defaults.
    ``seconds`` and ``num_frames`` are two ways to ask for a length (give one); ``size`` and ``width``/``height``
    two ways to ask for a size.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="the text prompt")
    model: str | None = Field(default=None, description="the served model's id (the only one accepted)")
    seconds: str | int | float | None = Field(
        default=None,
        description='clip length, e.g. "4": seconds x fps frames, rounded to the nearest frame count 4n + 1',
    )
    size: str | None = Field(default=None, description='"WIDTHxHEIGHT", e.g. "64x64"')
    seed: int | None = Field(default=None, description="same seed and parameters give the same video (default 0)")
    negative_prompt: str | None = Field(default=None, description="used only with guidance_scale > 1")
    num_inference_steps: int | None = Field(default=None, description="sampler steps (the model's schedule decides)")
    num_frames: int | None = Field(default=None, description="4n + 1 frames (instead of seconds)")
    height: int | None = Field(default=None, description="pixels (with width, instead of size)")
    width: int | None = Field(default=None, description="pixels (with height, instead of size)")
    fps: int | None = Field(default=None, description="frame rate written into the MP4")
    guidance_scale: float | None = Field(default=None, description="classifier-free guidance; 1 = none")


INT_FIELDS = ("seed", "num_inference_steps", "num_frames", "height", "width", "fps")
FLOAT_FIELDS = ("guidance_scale",)


# -- responses --------------------------------------------------------------------------------------------------


class JobError(BaseModel):
    """Why a job failed."""

    code: str
    message: str
    param: str | None = None


class VideoJob(BaseModel):
    """A video job: OpenAI's ``video`` object plus the parameters it was generated with."""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: JobStatus
    progress: int = Field(ge=0, le=100, description="percent done; 100 once completed")
    created_at: int = Field(description="Unix seconds")
    completed_at: int | None = Field(default=None, description="Unix seconds, once completed or failed")
    expires_at: int | None = Field(default=None, description="always null: videos are kept until deleted")
    error: JobError | None = None
    size: str = Field(description='"WIDTHxHEIGHT"')
    seconds: str = Field(description="the clip's length: num_frames / fps, in seconds")
    prompt: str
    # Ours (extra fields are ignored by OpenAI clients).
    negative_prompt: str | None = None
    seed: int
    num_frames: int
    height: int
    width: int
    fps: int
    num_inference_steps: int
    guidance_scale: float
    batch_size: int | None = Field(default=None, description="videos generated in the same sampler call")
    attempts: int = Field(default=1, description="1, plus 1 per replica that died or stopped holding the job")
    queue_seconds: float | None = Field(default=None, description="from creation to the sampler starting")
    generation_seconds: float | None = Field(default=None, description="sampler, decoding and encoding, per video")


class VideoList(BaseModel):
    """``GET /v1/videos``: one page, newest first unless ``order=asc``."""

    object: Literal["list"] = "list"
    data: list[VideoJob]
    has_more: bool
    first_id: str | None
    last_id: str | None


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error: OpenAI's shape, so the SDKs raise their typed exceptions with ``param`` and ``code``."""

    error: ErrorDetail


class ApiError(Exception):
    """An HTTP error in OpenAI's shape. ``param`` names the request field at fault (None when no field is)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        type: str = "invalid_request_error",  # noqa: A002 - the wire name
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = headers

    def body(self) -> dict:
        return ErrorResponse(error=self.detail).model_dump()


def unexpected_error(err: Exception) -> ApiError:
    """The answer to an exception no route expected: 503 when the job storage failed (S3 or the local disk), which
    a retry may get past, else 500. Neither names the cause (a bucket, a path): the replica's log has it."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(err, (OSError, BotoCoreError, ClientError)):
        return ApiError(503, "the job storage is unavailable; retry shortly", code="storage_unavailable",
                        type="server_error", headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
    return ApiError(500, "internal error", code="internal_error", type="server_error")


def busy_error(message: str) -> ApiError:
    return ApiError(503, message, code="server_busy", type="server_error",
                    headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip


# -- auth -------------------------------------------------------------------------------------------------------


def expected_token(settings: ServeSettings) -> str | None:
    token = os.environ.get(settings.auth_token_env)
    return token or None


def authorized(header: str | None, token: str | None) -> bool:
    """Bearer-token check in constant time; always true when auth is off (no token configured)."""
    if token is None:
        return True
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header.removeprefix("Bearer ").encode(), token.encode())
