"""Video requests: what a client or a manifest row asks for, the limits it must keep, and its one resolution into a
validated, immutable :class:`ResolvedRequest` that the generator and the pipeline trust.

Two kinds of limits meet here, each from one place:

* :class:`RequestLimits`, the operator's (prompt length, frames, size, steps, guidance, fps), set per job or endpoint;
* :class:`ModelLimits`, the model's own (frame rule, size multiple and largest size its positional table allows,
  step counts its schedule can make, generation defaults), read from a loaded pipeline or from a model folder's
  configs without loading weights (:mod:`dcm.generation.model_limits`).

``--dry-run``, the batch actors and the endpoint all call :func:`resolve_request`; every refusal is a
:class:`dcm.config.FieldError` whose ``field`` names the request field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from dcm.config import MAX_SEED, FieldError, GenerationConfig, ScheduleConfig
from dcm.geometry import VideoGeometry
from dcm.schedule import build_grid, dcm_sigmas

DEFAULT_MAX_PROMPT_CHARS = 2000
# Fields a request may set; None takes the model's default.
GENERATION_FIELDS = ("num_frames", "height", "width", "num_inference_steps", "fps", "guidance_scale")


@dataclass(frozen=True, kw_only=True)
class VideoRequest:
    """One video as asked for. Nothing here is trusted: a manifest row or a request body may hold any type.

    ``None`` fields take the model's generation defaults; ``negative_prompt`` is used only with guidance > 1.
    """

    id: str
    prompt: Any
    seed: Any = 0
    negative_prompt: Any = None
    num_frames: Any = None
    height: Any = None
    width: Any = None
    num_inference_steps: Any = None
    fps: Any = None
    guidance_scale: Any = None


@dataclass(frozen=True, kw_only=True)
class RequestLimits:
    """The operator's limits (the endpoint's settings, the batch job's flags)."""

    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    max_num_frames: int = 129
    max_size: int = 1280
    max_inference_steps: int = 8
    max_guidance_scale: float = 20.0
    # MP4 frame rates players and ffmpeg accept as written (1000 fps and more reads back as 0).
    min_fps: int = 1
    max_fps: int = 120

    def __post_init__(self) -> None:
        for name in ("max_prompt_chars", "max_num_frames", "max_size", "max_inference_steps", "min_fps", "max_fps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.min_fps > self.max_fps:
            raise ValueError(f"min_fps ({self.min_fps}) must be <= max_fps ({self.max_fps})")
        if not 1.0 <= self.max_guidance_scale < math.inf:
            raise ValueError(f"max_guidance_scale must be a finite number >= 1, got {self.max_guidance_scale}")


@dataclass(frozen=True, kw_only=True)
class ModelLimits:
    """What one model can make, from its configs alone.

    Args:
        geometry: frame rule, size multiple and the positional table's limits.
        defaults: the model's stored generation defaults.
        schedule: the DCM grid for a few-step student (step counts are checked against its schedule rule); None
            for a plain teacher, which samples any step count.
    """

    geometry: VideoGeometry
    defaults: GenerationConfig
    schedule: ScheduleConfig | None = None


@dataclass(frozen=True, kw_only=True)
class ResolvedRequest:
    """A validated request: the generator and the pipeline use it as it is."""

    id: str
    prompt: str
    seed: int
    negative_prompt: str | None
    config: GenerationConfig


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_text(name: str, value: Any, limits: RequestLimits, *, required: bool) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or (required and not value.strip()):
        raise FieldError(name, f"{name} must be a non-empty string, got {value!r}" if required
                         else f"{name} must be a string, got {value!r}")  # fmt: skip
    if len(value) > limits.max_prompt_chars:
        raise FieldError(name, f"{name} must be at most {limits.max_prompt_chars} characters, got {len(value)}")


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if not _is_int(value) or not lo <= value <= hi:
        raise FieldError(name, f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def check_request(request: VideoRequest, limits: RequestLimits) -> None:
    """The checks that need no model: types, ranges and the operator's limits. Raises FieldError."""
    _check_text("prompt", request.prompt, limits, required=True)
    _check_text("negative_prompt", request.negative_prompt, limits, required=False)
    _check_int("seed", request.seed, 0, MAX_SEED)
    upper = {
        "num_frames": (1, limits.max_num_frames),
        "height": (1, limits.max_size),
        "width": (1, limits.max_size),
        "num_inference_steps": (1, limits.max_inference_steps),
        "fps": (limits.min_fps, limits.max_fps),
    }
    for name, (lo, hi) in upper.items():
        value = getattr(request, name)
        if value is not None:
            _check_int(name, value, lo, hi)
    g = request.guidance_scale
    if g is not None and (
        isinstance(g, bool) or not isinstance(g, (int, float)) or not 1.0 <= g <= limits.max_guidance_scale
    ):
        raise FieldError("guidance_scale", f"guidance_scale must be a number in [1.0, {limits.max_guidance_scale}], "
                         f"got {g!r}")  # fmt: skip


def resolve_request(request: VideoRequest, *, limits: RequestLimits, model: ModelLimits) -> ResolvedRequest:
    """The request with the model's defaults filled in, checked against the operator's and the model's limits.

    Raises:
        FieldError: naming the first bad field, its rule and its value.
    """
    check_request(request, limits)
    changes = {name: getattr(request, name) for name in GENERATION_FIELDS if getattr(request, name) is not None}
    if "num_inference_steps" in changes:
        changes["sigmas"] = None  # an explicit step count replaces the model's stored sigma list
    config = replace(model.defaults, **changes)
    model.geometry.validate(num_frames=config.num_frames, height=config.height, width=config.width)
    if model.schedule is not None and config.sigmas is None:
        try:
            dcm_sigmas(config.num_inference_steps, build_grid(model.schedule))
        except ValueError as err:
            raise FieldError("num_inference_steps", str(err)) from err
    return ResolvedRequest(
        id=request.id,
        prompt=request.prompt,
        seed=request.seed,
        negative_prompt=request.negative_prompt if config.guidance_scale > 1.0 else None,
        config=config,
    )
