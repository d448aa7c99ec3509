"""Named distillation recipes: functions returning a DistillConfig with the paper's defaults (docs/algorithm.md,
"Stage I: semantic expert" and "Stage II: detail expert").

To vary a run, write a function that calls a recipe and replaces fields; the CLI overrides a few run-level fields
(teacher, data, output, stages, steps, workers, strategy, storage path, run name, seed).
"""

from __future__ import annotations

from dataclasses import replace

from dcm.config import DetailExpertConfig, ScheduleConfig
from dcm.distill.config import (
    DISC_BETAS,
    FSDP,
    DetailStageConfig,
    DistillConfig,
    OptimizerConfig,
    SemanticStageConfig,
    TrainingVideo,
)
from dcm.distill.discriminator import DiscriminatorConfig
from dcm.models import hunyuan, wan
from dcm.presets import HUNYUAN_BOUNDARY_INDEX, TINY_LORA_ALPHA, TINY_LORA_RANK, WAN_BOUNDARY_INDEX

# Tiny models on a CPU learn in tens of steps, not thousands: larger learning rates than the paper's 1e-6 / 5e-6.
TINY_SEMANTIC_LR = 1e-4
TINY_DETAIL_LR = 1e-4
# The discriminator keeps the paper's 2:1 learning-rate ratio to the detail expert (1e-5 : 5e-6), scaled like the
# generator's learning rate.
TINY_DISC_LR = 2 * TINY_DETAIL_LR
TINY_DISC_HIDDEN = 64
TINY_DISC_GROUPS = 8
# The reference's training videos: Wan 81 frames at 480x832; the teacher's CFG w = 5 is guidance scale g = w + 1.
WAN_VIDEO = TrainingVideo(num_frames=81, height=480, width=832)
WAN_GUIDANCE_SCALE = 6.0
# HunyuanVideo is guidance-distilled (embedded guidance inside the model): no real CFG on its targets. The reference
# trains 720x1280 with sequence parallelism over 4 GPUs; without it, 45 frames (12 latent frames) is the largest
# 720p clip the memory plan fits on 8 x 80 GB with FSDP and checkpointing (docs/distillation.md, "Memory plan").
HUNYUAN_VIDEO = TrainingVideo(num_frames=45, height=720, width=1280)
HUNYUAN_GUIDANCE_SCALE = 1.0
HUNYUAN_NUM_WORKERS = 8
# Tiny presets train on 9-frame 32x32 clips (the test data's size).
TINY_VIDEO = TrainingVideo(num_frames=9, height=32, width=32)


def wan_2_1_1_3b(*, teacher: str = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", data: str, output: str) -> DistillConfig:
    """Wan2.1-T2V-1.3B: k = 35, guidance scale 6, 1000 + 1000 steps, batch 1, LoRA r128/a256, lambda_FM 10."""
    return DistillConfig(
        teacher=teacher,
        data=data,
        output=output,
        schedule=ScheduleConfig(boundary_index=WAN_BOUNDARY_INDEX),
        detail_expert=DetailExpertConfig(duplicated_modules=wan.DUPLICATED_MODULES),
        semantic=SemanticStageConfig(num_steps=1000),
        detail=DetailStageConfig(num_steps=1000, fm_weight=10.0),
        teacher_guidance_scale=WAN_GUIDANCE_SCALE,
        video=WAN_VIDEO,
        batch_size=1,
        use_gpu=True,
        activation_checkpointing=True,
        checkpoint_every=100,
        validate_every=200,
        run_name="wan2.1-1.3b-dcm",
    )


def hunyuanvideo(*, teacher: str = "hunyuanvideo-community/HunyuanVideo", data: str, output: str) -> DistillConfig:
    """HunyuanVideo: k = 38, embedded guidance (no real CFG), 1500 + 1000 steps, lambda_FM 1, FSDP on 8 GPUs."""
    return DistillConfig(
        teacher=teacher,
        data=data,
        output=output,
        schedule=ScheduleConfig(boundary_index=HUNYUAN_BOUNDARY_INDEX),
        detail_expert=DetailExpertConfig(duplicated_modules=hunyuan.DUPLICATED_MODULES),
        semantic=SemanticStageConfig(num_steps=1500),
        detail=DetailStageConfig(num_steps=1000, fm_weight=1.0),
        teacher_guidance_scale=HUNYUAN_GUIDANCE_SCALE,
        video=HUNYUAN_VIDEO,
        batch_size=1,
        num_workers=HUNYUAN_NUM_WORKERS,
        use_gpu=True,
        strategy=FSDP,
        activation_checkpointing=True,
        checkpoint_every=100,
        validate_every=200,
        run_name="hunyuanvideo-dcm",
    )


def tiny(*, teacher: str = "tiny-wan", data: str, output: str) -> DistillConfig:
    """The tiny Wan preset on a CPU: the Wan recipe with few steps, larger learning rates and small heads (activation
    checkpointing stays on, as in the real recipes, so CI runs that code path)."""
    base = wan_2_1_1_3b(teacher=teacher, data=data, output=output)
    return replace(
        base,
        detail_expert=DetailExpertConfig(
            duplicated_modules=wan.DUPLICATED_MODULES, lora_rank=TINY_LORA_RANK, lora_alpha=TINY_LORA_ALPHA
        ),
        semantic=SemanticStageConfig(num_steps=20, optimizer=OptimizerConfig(lr=TINY_SEMANTIC_LR)),
        detail=DetailStageConfig(
            num_steps=20,
            optimizer=OptimizerConfig(lr=TINY_DETAIL_LR),
            disc_optimizer=OptimizerConfig(lr=TINY_DISC_LR, betas=DISC_BETAS),
            discriminator=DiscriminatorConfig(hidden=TINY_DISC_HIDDEN, groups=TINY_DISC_GROUPS),
            feature_stride=1,
        ),
        video=TINY_VIDEO,
        batch_size=2,
        use_gpu=False,
        checkpoint_every=10,
        validate_every=0,
        run_name="tiny-dcm",
    )


def tiny_hunyuan(*, teacher: str = "tiny-hunyuan", data: str, output: str) -> DistillConfig:
    """The tiny HunyuanVideo preset on a CPU: the HunyuanVideo recipe (embedded guidance) at tiny scale."""
    base = hunyuanvideo(teacher=teacher, data=data, output=output)
    small = tiny(teacher=teacher, data=data, output=output)
    return replace(
        small,
        schedule=base.schedule,
        detail_expert=replace(base.detail_expert, lora_rank=TINY_LORA_RANK, lora_alpha=TINY_LORA_ALPHA),
        detail=replace(small.detail, fm_weight=base.detail.fm_weight),
        teacher_guidance_scale=base.teacher_guidance_scale,
        run_name="tiny-hunyuan-dcm",
    )


RECIPES = {
    "wan2.1-1.3b": wan_2_1_1_3b,
    "hunyuanvideo": hunyuanvideo,
    "tiny": tiny,
    "tiny-hunyuan": tiny_hunyuan,
}
