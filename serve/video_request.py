"""From a create body to a resolved generation request: types, OpenAI's ``seconds`` and ``size``, and errors that
name the request field at fault (taken from the error's own field, never parsed from its message).

    fields = parse_body(body, content_type)                          # serve.bodies
    create, resolved = resolve_create(fields, job_id=..., served_model=..., generator=...)

``seconds`` becomes a frame count: ``seconds x fps`` rounded to the nearest count the model makes (``4n + 1`` for Wan
and HunyuanVideo), so ``"4"`` at 16 fps gives 65 frames (4.06 s). Status codes: 400 for a malformed request (wrong
type, unknown or repeated field, unparseable ``size``), 422 for a well-formed value this model or this endpoint
cannot make (``num_frames`` not ``4n + 1``, a size off the model's grid, too many steps).
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import ValidationError

from dcm.config import FieldError
from dcm.generation import RequestLimits, ResolvedRequest, VideoGenerator, VideoRequest
from dcm.geometry import VideoGeometry
from serve.schemas import ApiError, VideoCreate

_SIZE = re.compile(r"\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*")
# A grid with at most this many sizes per side is listed value by value in errors; a larger one as a range.
MAX_LISTED_SIDES = 8
# Digits after the point in a job's ``seconds`` ("1.125" for 9 frames at 8 fps).
SECONDS_DECIMALS = 3


def format_seconds(num_frames: int, fps: int) -> str:
    """The clip length as OpenAI's ``seconds`` string."""
    return f"{num_frames / fps:.{SECONDS_DECIMALS}f}".rstrip("0").rstrip(".")


def frames_for_seconds(seconds: float, fps: int, frame_multiple: int) -> int:
    """``seconds x fps`` rounded to the nearest ``frame_multiple * n + 1`` frames (at least 1)."""
    n = math.floor((seconds * fps - 1) / frame_multiple + 0.5)
    return frame_multiple * max(n, 0) + 1


def size_rule(geometry: VideoGeometry, limits: RequestLimits, default: tuple[int, int]) -> str:
    """What sizes this endpoint makes, for error messages."""
    step = geometry.size_multiple
    largest = min(limits.max_size, geometry.max_size or limits.max_size)
    sides = list(range(step, largest + 1, step))
    if len(sides) <= MAX_LISTED_SIDES:
        allowed = f"width and height each one of {', '.join(map(str, sides))}"
    else:
        allowed = f"width and height each a multiple of {step} from {step} to {largest}"
    return f"{allowed} (default {default[0]}x{default[1]})"


def _validation_error(err: ValidationError) -> ApiError:
    """The first pydantic error as a 400 whose ``param`` is the error's own field (its ``loc``)."""
    first = err.errors(include_input=False, include_url=False)[0]
    loc = [str(p) for p in first["loc"]]
    field = loc[0] if loc else None
    kind = first["type"]
    if kind == "missing":
        message, code = f"{field} is required", "missing_required_parameter"
    elif kind == "extra_forbidden":
        known = ", ".join(VideoCreate.model_fields)
        message, code = f"unknown field {field!r}; known fields: {known}", "unknown_parameter"
    else:
        expected = {"seconds": 'a string such as "4"'}.get(field, first["msg"].lower())
        message, code = f"{field}: {expected}", "invalid_type"
    return ApiError(400, message, code=code, param=field)


def _parse_seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds):
        raise ApiError(400, f'seconds must be a number of seconds such as "4", got {str(value)[:40]!r}',
                       code="invalid_type", param="seconds")  # fmt: skip
    if seconds <= 0:
        raise ApiError(422, f"seconds must be positive, got {value!r}", code="invalid_value", param="seconds")
    return seconds


def _parse_size(size: str) -> tuple[int, int]:
    match = _SIZE.fullmatch(size)
    if match is None:
        raise ApiError(400, f'size must be "WIDTHxHEIGHT" such as "64x64", got {size[:40]!r}', code="invalid_type",
                       param="size")  # fmt: skip
    return int(match.group(1)), int(match.group(2))


def _conflict(first: str, second: str) -> ApiError:
    return ApiError(400, f"give {first} or {second}, not both", code="invalid_value", param=first)


def to_video_request(body: VideoCreate, *, job_id: str, generator: VideoGenerator) -> VideoRequest:
    """The generation request a create body asks for (``seconds`` and ``size`` translated). Raises ApiError."""
    geometry, defaults = generator.model_limits.geometry, generator.model_limits.defaults
    fields = body.model_dump(exclude={"model", "seconds", "size"}, exclude_none=True)
    if body.seconds is not None:
        if body.num_frames is not None:
            raise _conflict("seconds", "num_frames")
        fps = body.fps if body.fps is not None else defaults.fps
        fields["num_frames"] = frames_for_seconds(_parse_seconds(body.seconds), fps, geometry.scale_factor_temporal)
    if body.size is not None:
        if body.width is not None or body.height is not None:
            raise _conflict("size", "width/height")
        fields["width"], fields["height"] = _parse_size(body.size)
    return VideoRequest(id=job_id, **fields)


def _field_error(err: FieldError, body: VideoCreate, request: VideoRequest, generator: VideoGenerator) -> ApiError:
    """A 422 naming the field the client sent (``seconds``/``size`` when the frames/size came from them)."""
    defaults, geometry = generator.model_limits.defaults, generator.model_limits.geometry
    if err.field in ("height", "width") and body.size is not None:
        rule = size_rule(geometry, generator.limits, (defaults.width, defaults.height))
        message = f"size {body.size!r} is not a size this model makes: {rule}; {err}"
        return ApiError(422, message, code="invalid_value", param="size")
    if err.field == "num_frames" and body.seconds is not None:
        fps = request.fps if request.fps is not None else defaults.fps
        longest = min(generator.limits.max_num_frames, geometry.max_num_frames or generator.limits.max_num_frames)
        message = (f"seconds {body.seconds!r} at {fps} fps gives {request.num_frames} frames; this model makes at "
                   f"most {longest} frames ({format_seconds(longest, fps)} s at {fps} fps): {err}")  # fmt: skip
        return ApiError(422, message, code="invalid_value", param="seconds")
    return ApiError(422, str(err), code="invalid_value", param=err.field)


def resolve_create(
    fields: dict[str, Any], *, job_id: str, served_model: str, generator: VideoGenerator
) -> tuple[VideoCreate, ResolvedRequest]:
    """Validates a create body and resolves it against the operator's and the model's limits.

    Args:
        fields: the parsed body (:func:`serve.bodies.parse_body`: form fields are converted to numbers there, so
            validation is strict for both: ``"9"`` in JSON is not an integer).
        job_id: the new job's id (the request's id).
        served_model: the one model id this endpoint accepts in ``model``.

    Raises:
        ApiError: 400 for a malformed body, 422 for a value this endpoint cannot make; ``param`` names the field.
    """
    try:
        body = VideoCreate.model_validate(fields, strict=True)
    except ValidationError as err:
        raise _validation_error(err) from err
    if body.model is not None and body.model != served_model:
        raise ApiError(400, f"this endpoint serves model {served_model!r}, got {body.model[:80]!r}",
                       code="model_not_found", param="model")  # fmt: skip
    request = to_video_request(body, job_id=job_id, generator=generator)
    try:
        return body, generator.resolve(request)
    except FieldError as err:
        raise _field_error(err, body, request, generator) from err
