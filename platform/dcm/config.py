"""Typed, frozen configuration for DCM: the sigma grid, the detail expert and generation.

Every number the algorithm uses lives here with its source (a section of ``docs/algorithm.md``).
Configs are plain data: they validate themselves in ``__post_init__`` and serialise with :func:`to_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# docs/algorithm.md "Conventions": flow matching with 1000 training timesteps; t = 1000 * sigma.
DEFAULT_NUM_TRAIN_TIMESTEPS = 1000
# docs/algorithm.md "Grid and boundary": the consistency solver walks a 50-point Euler grid ...
DEFAULT_NUM_GRID_STEPS = 50
# ... on the schedule shifted by 17, as in every released training script.
DEFAULT_SHIFT = 17.0
# Schedule fields older dcm_config.json files carry that no longer exist: routing reads the schedule's own fp64 values
# against a boundary midpoint, so the float32 tolerance ``routing_atol`` has nothing left to do.
REMOVED_SCHEDULE_FIELDS = ("routing_atol",)
# Seeds seed one torch.Generator per video: any non-negative 64-bit signed integer.
MAX_SEED = 2**63 - 1


class FieldError(ValueError):
    """A bad value of a named field: ``field`` says which (a 422's ``param``, a results row's error), the message
    names the field, the rule and the value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """The shifted flow-matching sigma grid and the expert boundary (docs/algorithm.md, "Grid and boundary", "Phases").

    Args:
        boundary_index: ``k``. Grid indices ``[k, num_grid_steps)`` belong to the semantic expert,
            ``[0, k)`` to the detail expert. Wan2.1 uses 35, HunyuanVideo 38. ``0`` means one expert over the
            whole grid (the single-expert LCM/PCM-style consistency models DCM is compared with).
        num_train_timesteps: size of the training timestep table (t = sigma * num_train_timesteps).
        num_grid_steps: number of points of the Euler grid the consistency solver walks.
        shift: flow-matching time shift ``S``: sigma -> S*sigma / (1 + (S-1)*sigma).
        num_semantic_phases / num_detail_phases: PCM phases inside each expert's index range.
        zero_terminal: if True, ``sigma_prev[0] = 0`` instead of the reference's ``shifted(1/T)``.
    """

    boundary_index: int
    num_train_timesteps: int = DEFAULT_NUM_TRAIN_TIMESTEPS
    num_grid_steps: int = DEFAULT_NUM_GRID_STEPS
    shift: float = DEFAULT_SHIFT
    num_semantic_phases: int = 1
    num_detail_phases: int = 1
    zero_terminal: bool = False

    def __post_init__(self) -> None:
        if self.num_grid_steps < 2:
            raise ValueError(f"num_grid_steps must be >= 2, got {self.num_grid_steps}")
        if self.num_train_timesteps % self.num_grid_steps != 0:
            raise ValueError(
                f"num_train_timesteps ({self.num_train_timesteps}) must be a multiple of "
                f"num_grid_steps ({self.num_grid_steps})"
            )
        if not 0 <= self.boundary_index < self.num_grid_steps:
            raise ValueError(
                f"boundary_index must lie in [0, {self.num_grid_steps - 1}] for a grid of "
                f"{self.num_grid_steps} points, got {self.boundary_index}"
            )
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        semantic_len = self.num_grid_steps - self.boundary_index
        if not 1 <= self.num_semantic_phases <= semantic_len:
            raise ValueError(
                f"num_semantic_phases must lie in [1, {semantic_len}] (semantic range "
                f"[{self.boundary_index}, {self.num_grid_steps})), got {self.num_semantic_phases}"
            )
        if self.boundary_index > 0 and not 1 <= self.num_detail_phases <= self.boundary_index:
            raise ValueError(
                f"num_detail_phases must lie in [1, {self.boundary_index}] (detail range "
                f"[0, {self.boundary_index})), got {self.num_detail_phases}"
            )


@dataclass(frozen=True, kw_only=True)
class DetailExpertConfig:
    """The detail expert: a LoRA on the attention projections plus trainable copies of timestep layers
    (docs/algorithm.md, "Stage II: detail expert").

    Args:
        lora_rank / lora_alpha: LoRA rank and alpha (scaling alpha / rank); reference r=128, alpha=256.
        lora_target_modules: module-name suffixes that get LoRA (peft matching rules).
        duplicated_modules: attribute paths on the transformer whose trainable copies the detail expert uses
            (Wan: condition_embedder, proj_out; HunyuanVideo: time_text_embed, norm_out, proj_out).
        adapter_name: the peft adapter name (the authors' released checkpoints call it ``lora1``).
    """

    duplicated_modules: tuple[str, ...]
    lora_rank: int = 128
    lora_alpha: float = 256.0
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    adapter_name: str = "detail"

    def __post_init__(self) -> None:
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not self.lora_target_modules:
            raise ValueError("lora_target_modules must name at least one module, got ()")
        if not self.duplicated_modules:
            raise ValueError("duplicated_modules must name at least one module, got ()")


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    """Per-request generation settings with the defaults the batch job and the endpoint use.

    Args:
        num_frames: output frames; must be ``scale_factor_temporal * n + 1``.
        height / width: output size in pixels; multiples of ``vae_scale_factor_spatial * patch_size``.
        num_inference_steps: sampler steps when ``sigmas`` is not given (uses :func:`dcm.schedule.dcm_sigmas`).
        guidance_scale: real classifier-free guidance weight; 1.0 disables CFG (one forward per step).
        fps: frame rate written into the MP4.
        sigmas: an explicit descending sigma list (the final 0 is appended by the sampler).
    """

    num_frames: int = 17
    height: int = 64
    width: int = 64
    num_inference_steps: int = 4
    guidance_scale: float = 1.0
    fps: int = 8
    sigmas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("num_frames", "height", "width", "num_inference_steps", "fps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FieldError(name, f"{name} must be a positive integer, got {value!r}")
        if not self.guidance_scale >= 1.0:  # also refuses NaN
            raise FieldError(
                "guidance_scale", f"guidance_scale must be >= 1.0 (1.0 = no CFG), got {self.guidance_scale}"
            )
        if self.sigmas is not None:
            s = list(self.sigmas)
            if not s or any(not 0.0 < x <= 1.0 for x in s) or any(a <= b for a, b in zip(s, s[1:])):
                raise FieldError("sigmas", f"sigmas must be strictly decreasing values in (0, 1], got {s}")


@dataclass(frozen=True, kw_only=True)
class DCMModelConfig:
    """What a DCM model folder records besides the diffusers components (written to ``dcm_config.json``).

    Args:
        family: model family key (``wan`` or ``hunyuan``).
        schedule: the grid and expert boundary the model was distilled with.
        detail: the detail expert's structure, or None for a model without a detail expert (a plain teacher).
        default_generation: generation defaults stored with the model (schedule, size, fps).
        max_sequence_length: text tokens per prompt; prompts are padded to it, so a prompt's embedding does not
            depend on its batch-mates (Wan's default 512, HunyuanVideo's 256).
    """

    family: str
    schedule: ScheduleConfig
    max_sequence_length: int
    detail: DetailExpertConfig | None = None
    default_generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        if self.family not in ("wan", "hunyuan"):
            raise ValueError(f"family must be 'wan' or 'hunyuan', got {self.family!r}")
        if self.max_sequence_length < 1:
            raise ValueError(f"max_sequence_length must be >= 1, got {self.max_sequence_length}")


def to_dict(config: Any) -> dict[str, Any]:
    """Serialise a (nested) config dataclass to JSON-ready builtins (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def model_config_from_dict(data: dict[str, Any]) -> DCMModelConfig:
    """Inverse of ``to_dict(DCMModelConfig)``; unknown keys raise so a newer file is not silently misread."""
    data = dict(data)
    schedule_data = {k: v for k, v in data.pop("schedule").items() if k not in REMOVED_SCHEDULE_FIELDS}
    schedule = ScheduleConfig(**schedule_data)
    detail_data = data.pop("detail", None)
    detail = None
    if detail_data is not None:
        detail_data = dict(detail_data)
        for key in ("lora_target_modules", "duplicated_modules"):
            detail_data[key] = tuple(detail_data[key])
        detail = DetailExpertConfig(**detail_data)
    gen_data = dict(data.pop("default_generation", {}))
    if gen_data.get("sigmas") is not None:
        gen_data["sigmas"] = tuple(gen_data["sigmas"])
    return DCMModelConfig(schedule=schedule, detail=detail, default_generation=GenerationConfig(**gen_data), **data)
