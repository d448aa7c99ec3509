"""The endpoint's schemas: settings, request/response models, auth and error mapping (testable without Ray)."""

from __future__ import annotations

import hmac
import os
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dcm.generation import RequestLimits
from dcm.presets import DEFAULT_MODEL

MP4_MEDIA_TYPE = "video/mp4"
# Request bodies above this size get 413 (a request is a small JSON object; prompts are capped far below this).
MAX_BODY_BYTES = 16 * 1024
# Generation-latency histogram buckets (seconds): tiny CPU models take ~0.1 s, real GPU models tens of seconds.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """Deployment arguments (``serve run serve.app:dcm`` uses the defaults; ``serve_config.yaml`` can override).

    Args:
        model: preset, DCM folder, ``s3://`` folder or hub id.
        storage: where ``response=url`` stores videos (local folder or ``s3://bucket/prefix``).
        auth_token_env: name of the environment variable holding the bearer token; auth is on iff it is set.
        limits: request limits (prompt length, frames, size, steps).
        device: ``cuda`` / ``cpu`` / None (CUDA when available).
    """

    model: str = DEFAULT_MODEL
    storage: str = "outputs/serve"
    auth_token_env: str = "DCM_API_TOKEN"
    limits: RequestLimits = field(default_factory=RequestLimits)
    device: str | None = None

    @classmethod
    def from_dict(cls, data: dict | None) -> ServeSettings:
        data = dict(data or {})
        if "limits" in data:
            data["limits"] = RequestLimits(**data["limits"])
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown serve settings {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class BatchingSettings:
    """Runtime knobs (``user_config``, applied by ``reconfigure`` without restarting replicas)."""

    max_batch_size: int = 4
    batch_wait_timeout_s: float = 0.05

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")


class VideoCreate(BaseModel):
    """``POST /v1/videos`` body. Unset fields take the model's defaults; the seed defaults to 0."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(description="the text prompt")
    negative_prompt: str | None = Field(default=None, description="used only with guidance > 1")
    seed: int = Field(default=0, ge=0, description="same seed and parameters give the same video")
    num_frames: int | None = Field(default=None, description="4n + 1")
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    fps: int | None = None
    response: Literal["mp4", "url"] = Field(default="mp4", description="mp4: the bytes; url: store and return JSON")


class VideoStored(BaseModel):
    """Response of ``response=url``."""

    id: str
    uri: str
    url: str
    seed: int
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    batch_size: int
    queue_seconds: float
    generation_seconds: float


def field_of(message: str) -> str:
    """The field a generator/geometry error names (messages start with it, e.g. ``num_frames must be ...``)."""
    name = message.split(" ", 1)[0]
    return name if name in VideoCreate.model_fields else "body"


def validation_detail(message: str) -> list[dict]:
    """A FastAPI-style 422 ``detail`` list for one of our ValueErrors."""
    return [{"loc": ["body", field_of(message)], "msg": message, "type": "value_error"}]


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
