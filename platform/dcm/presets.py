"""Named model presets: the real checkpoints we support and tiny offline models of the same diffusers classes.

A preset is data: where the weights come from (a hub id, or a builder for tiny random components) and the
``DCMModelConfig`` the paper uses for that family (docs/algorithm.md, "Defaults"). Building a tiny preset touches no
file or network. :func:`released_config` is the config of the authors' released checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dcm.config import DCMModelConfig, DetailExpertConfig, GenerationConfig, ScheduleConfig
from dcm.models import hunyuan, wan
from dcm.schedule import HUNYUAN_4STEP_SIGMAS, WAN_6STEP_SIGMAS

# docs/algorithm.md "Defaults": the expert boundary index k on the 50-point, shift-17 grid.
WAN_BOUNDARY_INDEX = 35
HUNYUAN_BOUNDARY_INDEX = 38
# Tiny presets use a small LoRA so the detail expert stays a few kB.
TINY_LORA_RANK = 4
TINY_LORA_ALPHA = 8.0
# The model the batch job and the endpoint use when none is given: the bundled demo model.
DEFAULT_MODEL = "demo"
# Package data (pyproject: dcm/assets/**): the demo model's DCM folder and its stock-diffusers export.
ASSETS = Path(__file__).parent / "assets"
DEMO_FOLDER = ASSETS / "demo-model"
DEMO_EXPORT_FOLDER = ASSETS / "demo-model-export"


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A named model source.

    Args:
        name: the preset key users pass as ``--model``.
        config: the DCM config (family, grid, detail expert, generation defaults).
        hub_id: diffusers repository id for real weights; None for tiny presets.
        folder: a model folder shipped with the package (the demo model); None otherwise.
        build_components: builder of random tiny components (offline); None for real checkpoints.
        description: one line for ``--help`` and README.
    """

    name: str
    config: DCMModelConfig
    description: str
    hub_id: str | None = None
    folder: Path | None = None
    build_components: Callable[[], dict] | None = None


# Each family's expert boundary, by family key.
BOUNDARY_INDEX = {"wan": WAN_BOUNDARY_INDEX, "hunyuan": HUNYUAN_BOUNDARY_INDEX}


def _config(
    family: str, *, max_sequence_length: int, detail: DetailExpertConfig, generation: GenerationConfig
) -> DCMModelConfig:
    return DCMModelConfig(
        family=family,
        schedule=ScheduleConfig(boundary_index=BOUNDARY_INDEX[family]),
        max_sequence_length=max_sequence_length,
        detail=detail,
        default_generation=generation,
    )


PRESETS: dict[str, Preset] = {
    "tiny-wan": Preset(
        name="tiny-wan",
        description="random tiny Wan (28k-param transformer), built offline; for tests and smoke runs",
        config=_config(
            "wan",
            max_sequence_length=wan.TinyWanSpec().max_sequence_length,
            detail=DetailExpertConfig(
                duplicated_modules=wan.DUPLICATED_MODULES, lora_rank=TINY_LORA_RANK, lora_alpha=TINY_LORA_ALPHA
            ),
            generation=GenerationConfig(num_frames=17, height=64, width=64, num_inference_steps=4, fps=8),
        ),
        build_components=wan.tiny_wan_components,
    ),
    "demo": Preset(
        name="demo",
        description="the bundled demo model: DCM distilled from a teacher trained here on the shapes world "
        "(64x64, 17 frames; prompts like 'a small red circle moving left slowly')",
        folder=DEMO_FOLDER,
        config=_config(
            "wan",
            max_sequence_length=16,  # dcm_demo.text.MAX_SEQUENCE_LENGTH; the folder's dcm_config.json is what loads
            detail=DetailExpertConfig(duplicated_modules=wan.DUPLICATED_MODULES),
            generation=GenerationConfig(num_frames=17, height=64, width=64, num_inference_steps=4, fps=8),
        ),
    ),
    "tiny-hunyuan": Preset(
        name="tiny-hunyuan",
        description="random tiny HunyuanVideo (diffusers test size), built offline; for tests",
        config=_config(
            "hunyuan",
            max_sequence_length=hunyuan.TinyHunyuanSpec().max_sequence_length,
            detail=DetailExpertConfig(
                duplicated_modules=hunyuan.DUPLICATED_MODULES, lora_rank=TINY_LORA_RANK, lora_alpha=TINY_LORA_ALPHA
            ),
            generation=GenerationConfig(num_frames=9, height=32, width=32, num_inference_steps=4, fps=8),
        ),
        build_components=hunyuan.tiny_hunyuan_components,
    ),
    "wan2.1-t2v-1.3b": Preset(
        name="wan2.1-t2v-1.3b",
        description="Wan2.1 T2V 1.3B teacher (Wan-AI/Wan2.1-T2V-1.3B-Diffusers), 480x832, 81 frames",
        hub_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        config=_config(
            "wan",
            max_sequence_length=wan.DEFAULT_MAX_SEQUENCE_LENGTH,
            detail=DetailExpertConfig(duplicated_modules=wan.DUPLICATED_MODULES),
            generation=GenerationConfig(num_frames=81, height=480, width=832, num_inference_steps=4, fps=16),
        ),
    ),
    "hunyuanvideo": Preset(
        name="hunyuanvideo",
        description="HunyuanVideo 13B teacher (hunyuanvideo-community/HunyuanVideo), 720x1280, 29 frames",
        hub_id="hunyuanvideo-community/HunyuanVideo",
        config=_config(
            "hunyuan",
            max_sequence_length=hunyuan.DEFAULT_MAX_SEQUENCE_LENGTH,
            detail=DetailExpertConfig(duplicated_modules=hunyuan.DUPLICATED_MODULES),
            generation=GenerationConfig(
                num_frames=29, height=720, width=1280, num_inference_steps=4, fps=24, sigmas=HUNYUAN_4STEP_SIGMAS
            ),
        ),
    ),
}


# docs/algorithm.md "Inference schedules" and "Defaults": how the authors' inference scripts run each released model
# (Wan: guidance 1, no CFG; HunyuanVideo: embedded guidance 6, the family's default, and no real CFG).
RELEASED_GENERATION = {
    "wan": GenerationConfig(num_frames=81, height=480, width=832, num_inference_steps=len(WAN_6STEP_SIGMAS), fps=16,
                            sigmas=WAN_6STEP_SIGMAS),
    "hunyuan": GenerationConfig(num_frames=29, height=720, width=1280, num_inference_steps=len(HUNYUAN_4STEP_SIGMAS),
                                fps=24, sigmas=HUNYUAN_4STEP_SIGMAS),
}  # fmt: skip
MAX_SEQUENCE_LENGTH = {"wan": wan.DEFAULT_MAX_SEQUENCE_LENGTH, "hunyuan": hunyuan.DEFAULT_MAX_SEQUENCE_LENGTH}


def released_config(family: str, detail: DetailExpertConfig) -> DCMModelConfig:
    """The DCM config of one of the authors' released checkpoints: the family's grid and boundary, the detail expert
    as the checkpoint holds it, and the released sigma list and guidance as generation defaults."""
    return _config(family, max_sequence_length=MAX_SEQUENCE_LENGTH[family], detail=detail,
                   generation=RELEASED_GENERATION[family])  # fmt: skip


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name]
