"""Video requests: what a client or a manifest row asks for, the limits it must keep, and its one resolution into a
validated, immutable :class:`ResolvedRequest` that the generator and the pipeline trust.

Two kinds of limits meet here, each from one place:

* :class:`RequestLimits`, the operator's (prompt length, frames, size, steps, guidance, fps), set per job or endpoint;
* :class:`ModelLimits`, the model's own (frame rule, size multiple and largest size its positional table allows,
  step counts its schedule can make, text tokens, generation defaults), read from a loaded pipeline or from a model
  folder's configs without loading weights (:mod:`dcm.generation.model_limits`).

``--dry-run``, the batch actors and the endpoint all call :func:`resolve_request`; every refusal is a
:class:`dcm.config.FieldError` whose ``field`` names the request field and whose message shows the value.

Prompts longer than the model's text length (``ModelLimits.max_sequence_length`` tokens) are not refused: the text
encoder keeps the first ``max_sequence_length`` tokens, as diffusers' pipelines do. The operator's character limit
(``max_prompt_chars``) is the only length rule, and it applies to the negative prompt too.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Any

from dcm.config import MAX_SEED, FieldError, GenerationConfig, ScheduleConfig
from dcm.geometry import VideoGeometry
from dcm.schedule import build_grid, dcm_sigmas

DEFAULT_MAX_PROMPT_CHARS = 2000
DEFAULT_MAX_NUM_FRAMES = 129
DEFAULT_MAX_SIZE = 1280
DEFAULT_MAX_INFERENCE_STEPS = 8
DEFAULT_MAX_GUIDANCE_SCALE = 20.0
# MP4 frame rates: an MP4 written at 1000 fps or more reads back as 0 fps (measured with the bundled ffmpeg), and
# 2**32 makes ffmpeg refuse to write; 240 is the highest rate displays show, so no operator may allow more.
FPS_CEILING = 240
DEFAULT_MAX_FPS = 120
# Ids name output files, results rows and gallery entries; a longer one is a mistake, not a name.
MAX_ID_CHARS = 256
# An error message shows at most this many characters of a bad value (a 1 MB prompt must not become a 1 MB error).
SHOWN_VALUE_CHARS = 80
# Fields a request may set; None takes the model's default.
GENERATION_FIELDS = ("num_frames", "height", "width", "num_inference_steps", "fps", "guidance_scale")


@dataclass(frozen=True, kw_only=True)
class VideoRequest:
    """One video as asked for. Nothing here is trusted: a manifest row or a request body may hold any type.

    ``None`` fields take the model's generation defaults; ``negative_prompt`` is used only with guidance > 1.
    """

    id: Any
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
    """The operator's limits (the endpoint's settings, the batch job's flags).

    Args:
        max_prompt_chars: longest prompt and negative prompt, in characters.
        max_num_frames / max_size: most frames and largest height or width (the model may allow less).
        max_inference_steps: most sampler steps.
        max_guidance_scale: largest classifier-free guidance weight (1.0 = no guidance).
        min_fps / max_fps: frame rates written into the MP4 (at most :data:`FPS_CEILING`).
    """

    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    max_num_frames: int = DEFAULT_MAX_NUM_FRAMES
    max_size: int = DEFAULT_MAX_SIZE
    max_inference_steps: int = DEFAULT_MAX_INFERENCE_STEPS
    max_guidance_scale: float = DEFAULT_MAX_GUIDANCE_SCALE
    min_fps: int = 1
    max_fps: int = DEFAULT_MAX_FPS

    def __post_init__(self) -> None:
        for name in ("max_prompt_chars", "max_num_frames", "max_size", "max_inference_steps", "min_fps", "max_fps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.min_fps > self.max_fps:
            raise ValueError(f"min_fps ({self.min_fps}) must be <= max_fps ({self.max_fps})")
        if self.max_fps > FPS_CEILING:
            raise ValueError(f"max_fps must be <= {FPS_CEILING} (MP4s at 1000 fps read back as 0), got {self.max_fps}")
        g = self.max_guidance_scale
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not 1.0 <= g < math.inf:
            raise ValueError(f"max_guidance_scale must be a finite number >= 1, got {g!r}")


@dataclass(frozen=True, kw_only=True)
class ModelLimits:
    """What one model can make, from its configs alone.

    Args:
        geometry: frame rule, size multiple and the positional table's limits.
        defaults: the model's stored generation defaults.
        max_sequence_length: text tokens per prompt; the text encoder keeps the first this many (longer prompts
            are truncated, not refused).
        schedule: the DCM grid for a few-step student (step counts are checked against its schedule rule); None
            for a plain teacher, which samples any step count.
    """

    geometry: VideoGeometry
    defaults: GenerationConfig
    max_sequence_length: int
    schedule: ScheduleConfig | None = None

    def summary(self) -> str:
        """One line for ``--dry-run`` and logs: the largest video and the rules a request must keep."""
        g = self.geometry
        frames = f"num_frames {g.scale_factor_temporal}n+1" + (f" <= {g.max_num_frames}" if g.max_num_frames else "")
        size = f"height/width multiples of {g.size_multiple}" + (f" <= {g.max_size}" if g.max_size else "")
        steps = "steps of the DCM schedule" if self.schedule is not None else "any step count (teacher schedule)"
        d = self.defaults
        return (
            f"{frames}, {size}, {steps}; prompts truncated to {self.max_sequence_length} tokens; defaults "
            f"{d.num_frames}x{d.height}x{d.width}, {d.num_inference_steps} steps, {d.fps} fps"
        )


@dataclass(frozen=True, kw_only=True)
class ResolvedRequest:
    """A validated request: the generator and the pipeline use it as it is."""

    id: str
    prompt: str
    seed: int
    negative_prompt: str | None
    config: GenerationConfig


def show(value: Any) -> str:
    """``repr(value)``, cut to :data:`SHOWN_VALUE_CHARS` characters; never raises (for error messages)."""
    try:
        text = repr(value)
    except Exception:  # a hostile object's __repr__ must not replace the error being reported
        text = f"<unprintable {type(value).__name__}>"
    if len(text) > SHOWN_VALUE_CHARS:
        text = f"{text[:SHOWN_VALUE_CHARS]}... ({len(text)} characters)"
    return text


def is_integer(value: Any) -> bool:
    """Python or numpy integers, never booleans (``True`` is an ``int`` to Python, not a seed)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_unicode(text: str) -> bool:
    """False for strings with lone surrogates (JSON ``"\\ud800"``): no tokenizer, file or Parquet takes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(name: str, value: Any, max_chars: int, *, required: bool) -> None:
    """A string of at most ``max_chars`` valid Unicode characters (non-blank when ``required``). Raises FieldError."""
    if value is None and not required:
        return
    if not isinstance(value, str) or (required and not value.strip()):
        rule = "a non-empty string" if required else "a string"
        raise FieldError(name, f"{name} must be {rule}, got {show(value)}")
    if len(value) > max_chars:
        raise FieldError(name, f"{name} must be at most {max_chars} characters, got {len(value)}")
    if not _is_unicode(value):
        raise FieldError(name, f"{name} must be valid Unicode text (it holds a lone surrogate), got {show(value)}")


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if not is_integer(value) or not lo <= value <= hi:
        raise FieldError(name, f"{name} must be an integer in [{lo}, {hi}], got {show(value)}")


def _check_generation(values: Any, limits: RequestLimits, *, note: str = "") -> None:
    """The generation fields of a request or a config against the operator's ranges (None fields are skipped)."""
    ranges = {
        "num_frames": (1, limits.max_num_frames),
        "height": (1, limits.max_size),
        "width": (1, limits.max_size),
        "num_inference_steps": (1, limits.max_inference_steps),
        "fps": (limits.min_fps, limits.max_fps),
    }
    for name, (lo, hi) in ranges.items():
        value = getattr(values, name)
        if value is not None and (not is_integer(value) or not lo <= value <= hi):
            raise FieldError(name, f"{name} must be an integer in [{lo}, {hi}], got {show(value)}{note}")
    g = values.guidance_scale
    if g is not None and (
        isinstance(g, bool) or not isinstance(g, numbers.Real) or not 1.0 <= g <= limits.max_guidance_scale
    ):
        raise FieldError(
            "guidance_scale",
            f"guidance_scale must be a number in [1.0, {limits.max_guidance_scale}], got {show(g)}{note}",
        )


def check_request(request: VideoRequest, limits: RequestLimits) -> None:
    """The checks that need no model: types, ranges and the operator's limits. Raises FieldError."""
    check_text("id", request.id, MAX_ID_CHARS, required=True)
    check_text("prompt", request.prompt, limits.max_prompt_chars, required=True)
    check_text("negative_prompt", request.negative_prompt, limits.max_prompt_chars, required=False)
    _check_int("seed", request.seed, 0, MAX_SEED)
    _check_generation(request, limits)


def _check_model(config: GenerationConfig, model: ModelLimits) -> None:
    """The model's own limits: its frame rule, size multiple, positional table and schedule. Raises FieldError."""
    model.geometry.validate(num_frames=config.num_frames, height=config.height, width=config.width)
    if model.schedule is not None and config.sigmas is None:
        try:
            dcm_sigmas(config.num_inference_steps, build_grid(model.schedule))
        except ValueError as err:
            steps = config.num_inference_steps
            message = f"num_inference_steps {steps} is not a step count this model's DCM schedule makes: {err}"
            raise FieldError("num_inference_steps", message) from err


def resolve_request(request: VideoRequest, *, limits: RequestLimits, model: ModelLimits) -> ResolvedRequest:
    """The request with the model's defaults filled in, checked against the operator's and the model's limits.

    Raises:
        FieldError: naming the first bad field, its rule and its value.
    """
    check_request(request, limits)
    changes: dict[str, Any] = {}
    for name in GENERATION_FIELDS:
        value = getattr(request, name)
        if value is not None:  # numpy scalars become Python numbers: the config is plain data
            changes[name] = float(value) if name == "guidance_scale" else int(value)
    if "num_inference_steps" in changes:
        changes["sigmas"] = None  # an explicit step count replaces the model's stored sigma list
    config = replace(model.defaults, **changes)
    # The model's defaults must keep the operator's limits too (a 33-frame endpoint serving an 81-frame model).
    _check_generation(config, limits, note=" (the model's default)")
    _check_model(config, model)
    return ResolvedRequest(
        id=request.id,
        prompt=request.prompt,
        seed=int(request.seed),
        negative_prompt=request.negative_prompt if config.guidance_scale > 1.0 else None,
        config=config,
    )
