"""``VideoGenerator``: the one generator class behind the batch job's Ray Data actors and the Serve replicas.

It loads a model once, resolves requests against the operator's and the model's limits (:mod:`.requests`), groups
compatible requests (same frames, size, steps, guidance) into one sampler call, and returns MP4 bytes per request.
A failure while generating or encoding a group is retried request by request, so a request that fails alone becomes
an error result and its batch-mates still get their videos. It imports no Ray: the batch job and the endpoint wrap it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dcm.config import FieldError, GenerationConfig
from dcm.generation.model_limits import model_limits
from dcm.generation.requests import RequestLimits, ResolvedRequest, VideoRequest, resolve_request, show
from dcm.io.model_folder import load_pipeline
from dcm.io.video import encode_mp4

logger = logging.getLogger(__name__)

# Called after each sampler step of a group: (ids of the group's requests, steps done, steps in all).
StepCallback = Callable[[list[str], int, int], None]
# An error result quotes at most this much of the exception's message (tracebacks go to the log).
ERROR_MESSAGE_CHARS = 300


@dataclass(kw_only=True)
class VideoResult:
    """The outcome for one request: MP4 bytes, or an error naming the cause (``error_field`` when a field is bad)."""

    id: str
    mp4: bytes | None = None
    error: str | None = None
    error_field: str | None = None
    seconds: float = 0.0
    batch_size: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def describe(err: BaseException) -> str:
    """``Type: first line of the message``, cut to :data:`ERROR_MESSAGE_CHARS` characters."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text if len(text) <= ERROR_MESSAGE_CHARS else f"{text[:ERROR_MESSAGE_CHARS]}..."


class VideoGenerator:
    """Loads a model once and turns requests into MP4s.

    Args:
        model: preset name, local or ``s3://`` model folder, or hub id (see :func:`load_pipeline`).
        device: ``cuda``, ``cpu`` or None (CUDA when available).
        dtype: ``bfloat16`` on GPU by default, ``float32`` on CPU.
        limits: the operator's request limits.
        endpoint_url: S3-compatible endpoint for an ``s3://`` model.

    :meth:`sample` (one sampler call per group) and :meth:`encode` (one MP4 per request) are the two steps a
    request can fail in; a subclass may wrap them (to meter or to inject faults) without touching the isolation.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        limits: RequestLimits | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        start = time.perf_counter()
        self.model_id = model
        self.pipeline = load_pipeline(model, device=device, dtype=dtype, endpoint_url=endpoint_url)
        self.limits = limits or RequestLimits()
        self.model_limits = model_limits(self.pipeline)
        logger.info("loaded model %s on %s (%s) in %.2f s", model, device, dtype, time.perf_counter() - start)

    @property
    def defaults(self) -> GenerationConfig:
        return self.pipeline.config.default_generation

    def resolve(self, request: VideoRequest) -> ResolvedRequest:
        """Validates a request and fills in the model's defaults; raises FieldError naming a bad field."""
        return resolve_request(request, limits=self.limits, model=self.model_limits)

    def generate(
        self, requests: Sequence[VideoRequest | ResolvedRequest], *, on_step: StepCallback | None = None
    ) -> list[VideoResult]:
        """One result per request, in order; never raises for a request's content.

        Invalid requests come back with ``error`` and ``error_field``; compatible valid ones (same frames, size,
        steps, guidance, fps) share one sampler call; a request that fails alone comes back with ``error`` while
        the rest of its group still gets videos. ``ResolvedRequest`` items are trusted as they are.
        """
        results: dict[int, VideoResult] = {}
        groups: dict[GenerationConfig, list[tuple[int, ResolvedRequest]]] = defaultdict(list)
        for i, request in enumerate(requests):
            try:
                resolved = request if isinstance(request, ResolvedRequest) else self.resolve(request)
            except FieldError as err:
                results[i] = VideoResult(id=_result_id(request), error=str(err), error_field=err.field)
                continue
            except Exception as err:  # a validation bug must not cost the other requests their videos
                logger.exception("resolving request %s failed", _result_id(request))
                results[i] = VideoResult(id=_result_id(request), error=f"invalid request: {describe(err)}")
                continue
            groups[resolved.config].append((i, resolved))
        for config, group in groups.items():
            for (i, _), result in zip(group, self._generate_isolated(config, [r for _, r in group], on_step)):
                results[i] = result
        return [results[i] for i in range(len(requests))]

    def sample(
        self, config: GenerationConfig, group: list[ResolvedRequest], on_step: StepCallback | None = None
    ) -> np.ndarray:
        """One sampler call for requests sharing ``config``: (B, F, H, W, 3) uint8 frames, one video per request."""
        callback = None
        if on_step is not None:
            ids = [r.id for r in group]
            total = config.num_inference_steps if config.sigmas is None else len(config.sigmas)

            def callback(info: dict) -> None:
                on_step(ids, info["i"] + 1, total)

        negatives = [r.negative_prompt or "" for r in group] if config.guidance_scale > 1.0 else None
        return self.pipeline.generate(
            [r.prompt for r in group], seeds=[r.seed for r in group], config=config, negative_prompts=negatives,
            callback=callback,
        )  # fmt: skip

    def encode(self, request: ResolvedRequest, frames: np.ndarray) -> bytes:
        """(F, H, W, 3) uint8 frames of one request -> MP4 bytes at the request's fps."""
        return encode_mp4(frames, fps=request.config.fps)

    def _generate_isolated(
        self, config: GenerationConfig, group: list[ResolvedRequest], on_step: StepCallback | None
    ) -> list[VideoResult]:
        """The group in one sampler call; if that fails, each request alone, so only the failing one errs."""
        try:
            return self._generate_group(config, group, on_step)
        except Exception as err:  # a request's content must never cost its batch-mates their videos
            if len(group) == 1:
                logger.exception("generation failed for %s", group[0].id)
                return [VideoResult(id=group[0].id, error=f"generation failed: {describe(err)}")]
            logger.warning("a group of %d failed (%s); retrying one by one", len(group), describe(err))
        return [self._generate_isolated(config, [request], on_step)[0] for request in group]

    def _generate_group(
        self, config: GenerationConfig, group: list[ResolvedRequest], on_step: StepCallback | None
    ) -> list[VideoResult]:
        """Samples the group (an exception here fails the group), then encodes each video on its own."""
        start = time.perf_counter()
        frames = self.sample(config, group, on_step)
        sampling = (time.perf_counter() - start) / len(group)
        results = []
        for request, video in zip(group, frames):
            encode_start = time.perf_counter()
            try:
                mp4 = self.encode(request, video)
            except Exception as err:  # one video's encoder failure is that request's error, not its group's
                logger.exception("encoding failed for %s", request.id)
                results.append(VideoResult(id=request.id, error=f"encoding failed: {describe(err)}"))
                continue
            seconds = sampling + time.perf_counter() - encode_start
            results.append(VideoResult(id=request.id, mp4=mp4, seconds=seconds, batch_size=len(group)))
        logger.info(
            "generated %d video(s) %dx%dx%d in %d steps in %.3f s",
            len(group), config.num_frames, config.height, config.width, config.num_inference_steps,
            time.perf_counter() - start,
        )  # fmt: skip
        return results


def _result_id(request: VideoRequest | ResolvedRequest) -> str:
    """The id a result carries: the request's own when it is a string, else its shown value."""
    return request.id if isinstance(request.id, str) else show(request.id)
