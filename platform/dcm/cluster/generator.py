"""``VideoGenerator``: the one generator class behind the batch job's Ray Data actors and the Serve replicas.

It loads a model once, validates requests (errors name the field and the value), groups compatible requests
(same frames, size, steps, guidance) into one sampler call, and returns MP4 bytes per request. It imports no Ray:
the batch job and the Serve app wrap it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dcm.config import GenerationConfig
from dcm.io.model_folder import load_pipeline
from dcm.io.video import encode_mp4
from dcm.pipeline import DEFAULT_MAX_PROMPT_CHARS, MAX_SEED

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class VideoRequest:
    """One video to make. ``None`` fields take the model's generation defaults."""

    id: str
    prompt: str
    seed: int
    negative_prompt: str | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    fps: int | None = None
    guidance_scale: float | None = None


@dataclass(kw_only=True)
class VideoResult:
    """The outcome for one request: MP4 bytes, or an error message naming the bad field."""

    id: str
    mp4: bytes | None = None
    error: str | None = None
    seconds: float = 0.0
    batch_size: int = 0
    config: GenerationConfig | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, kw_only=True)
class GeneratorLimits:
    """Request limits (the endpoint exposes them in its config)."""

    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    max_num_frames: int = 129
    max_size: int = 1280
    max_inference_steps: int = 8
    max_guidance_scale: float = 20.0


class VideoGenerator:
    """Loads a model once and turns batches of :class:`VideoRequest` into MP4s.

    Args:
        model: preset name, local or ``s3://`` DCM/diffusers folder, or hub id (see :func:`load_pipeline`).
        device: ``cuda``, ``cpu`` or None (CUDA when available).
        dtype: ``bfloat16`` on GPU by default, ``float32`` on CPU.
        limits: request limits.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        limits: GeneratorLimits | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        start = time.perf_counter()
        self.model_id = model
        self.pipeline = load_pipeline(model, device=device, dtype=dtype, endpoint_url=endpoint_url)
        self.limits = limits or GeneratorLimits()
        self.load_seconds = time.perf_counter() - start
        logger.info("loaded model %s on %s (%s) in %.2f s", model, device, dtype, self.load_seconds)

    @property
    def defaults(self) -> GenerationConfig:
        return self.pipeline.config.default_generation

    def resolve(self, request: VideoRequest) -> GenerationConfig:
        """The request's generation config with defaults filled in; raises ValueError naming a bad field."""
        check_request(request, self.limits)
        changes = {
            name: getattr(request, name)
            for name in ("num_frames", "height", "width", "num_inference_steps", "fps", "guidance_scale")
            if getattr(request, name) is not None
        }
        if "num_inference_steps" in changes:
            changes["sigmas"] = None  # an explicit step count replaces the model's stored sigma list
        config = self.pipeline.with_defaults(**changes)
        self.pipeline.geometry.validate(num_frames=config.num_frames, height=config.height, width=config.width)
        if config.sigmas is None and self.pipeline.is_dual_expert:
            self.pipeline.sigmas(config)  # raises for step counts the DCM schedule cannot make
        return config

    def generate(self, requests: Sequence[VideoRequest]) -> list[VideoResult]:
        """Generates every valid request; invalid ones come back with ``error`` set. Order is preserved."""
        results: dict[str, VideoResult] = {}
        groups: dict[GenerationConfig, list[VideoRequest]] = defaultdict(list)
        for request in requests:
            try:
                groups[self.resolve(request)].append(request)
            except (ValueError, TypeError) as err:
                results[request.id] = VideoResult(id=request.id, error=str(err))
        for config, group in groups.items():
            for result in self._generate_group(config, group):
                results[result.id] = result
        return [results[r.id] for r in requests]

    def _generate_group(self, config: GenerationConfig, group: list[VideoRequest]) -> list[VideoResult]:
        start = time.perf_counter()
        negatives = None
        if config.guidance_scale > 1.0:
            negatives = [r.negative_prompt or "" for r in group]
        frames = self.pipeline.generate(
            [r.prompt for r in group], seeds=[r.seed for r in group], config=config, negative_prompts=negatives
        )
        videos = [encode_mp4(f, fps=config.fps) for f in frames]
        per_video = (time.perf_counter() - start) / len(group)
        logger.info(
            "generated %d video(s) %dx%dx%d in %d steps, %.3f s each",
            len(group),
            config.num_frames,
            config.height,
            config.width,
            config.num_inference_steps,
            per_video,
        )
        return [
            VideoResult(id=r.id, mp4=v, seconds=per_video, batch_size=len(group), config=config)
            for r, v in zip(group, videos)
        ]


def check_request(request: VideoRequest, limits: GeneratorLimits) -> None:
    """Type and range checks that need no model; raises ValueError naming the field and the value."""
    prompt = request.prompt
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    if len(prompt) > limits.max_prompt_chars:
        raise ValueError(f"prompt must be at most {limits.max_prompt_chars} characters, got {len(prompt)}")
    if request.negative_prompt is not None and not isinstance(request.negative_prompt, str):
        raise ValueError(f"negative_prompt must be a string, got {request.negative_prompt!r}")
    seed = request.seed
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    bounds = {
        "num_frames": limits.max_num_frames,
        "height": limits.max_size,
        "width": limits.max_size,
        "num_inference_steps": limits.max_inference_steps,
        "fps": None,
    }
    for name, upper in bounds.items():
        value = getattr(request, name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if upper is not None and value > upper:
            raise ValueError(f"{name} must be <= {upper}, got {value}")
    g = request.guidance_scale
    if g is not None and (
        not isinstance(g, (int, float)) or isinstance(g, bool) or not 1.0 <= g <= limits.max_guidance_scale
    ):
        raise ValueError(f"guidance_scale must be a number in [1.0, {limits.max_guidance_scale}], got {g!r}")
