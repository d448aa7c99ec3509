"""Named distillation recipes: functions returning a DistillConfig with the paper's defaults (spec §9).

To vary a run, write a function that calls a recipe and replaces fields; the CLI overrides a few run-level fields.
"""

from __future__ import annotations

from dataclasses import replace

from dcm.config import DetailExpertConfig, ScheduleConfig
from dcm.distill.config import (
    DISC_BETAS,
    SEMANTIC_STAGE,
    DetailStageConfig,
    DistillConfig,
    OptimizerConfig,
    SemanticStageConfig,
)
from dcm.distill.discriminator import DiscriminatorConfig
from dcm.models import hunyuan, wan
from dcm.presets import (
    DEMO_BOUNDARY_INDEX,
    DEMO_SHIFT,
    HUNYUAN_BOUNDARY_INDEX,
    TINY_LORA_ALPHA,
    TINY_LORA_RANK,
    WAN_BOUNDARY_INDEX,
)

# Tiny models on a CPU learn in tens of steps, not thousands: larger learning rates than the paper's 1e-6 / 5e-6.
TINY_SEMANTIC_LR = 1e-4
TINY_DETAIL_LR = 1e-4
# The discriminator keeps the paper's 2:1 learning-rate ratio to the detail expert (1e-5 : 5e-6), scaled like the
# generator's learning rate.
TINY_DISC_LR = 2 * TINY_DETAIL_LR
TINY_DISC_HIDDEN = 64
TINY_DISC_GROUPS = 8
# The demo model (jobs/train_demo.py): CFG 5 as its teacher samples (w = guidance - 1), a LoRA sized for its
# 128-wide transformer, and the step budget of each stage on a 2-core CPU.
DEMO_CFG_WEIGHT = 4.0
DEMO_LORA_RANK = 16
DEMO_LORA_ALPHA = 32.0
DEMO_STEPS = 150  # per stage; stage I ~2.1 steps/s, stage II ~1.3 steps/s at batch 8 on 2 cores (outputs/demo6 logs)
DEMO_BATCH_SIZE = 8
DEMO_CHECKPOINT_EVERY = 100
DEMO_LOG_EVERY = 25
# Two detail phases, one per detail step of the 4-step sampler: with one phase the LoRA must jump from
# sigma[k-1] = 0.83 straight to x0 and loses the prompted colour, which this teacher settles between sigma 0.94 and
# 0.66 (README, "The demo grid"; with two phases and TINY_DISC_LR, DCM-4 colour 41 -> 60 % on validation prompts).
DEMO_DETAIL_PHASES = 2
PCM_PHASES = 4


def wan_2_1_1_3b(*, teacher: str = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", data: str, output: str) -> DistillConfig:
    """Wan2.1-T2V-1.3B (spec §9): k = 35, CFG 5, 1000 + 1000 steps, batch 1, LoRA r128/a256, lambda_FM 10."""
    return DistillConfig(
        teacher=teacher,
        data=data,
        output=output,
        schedule=ScheduleConfig(boundary_index=WAN_BOUNDARY_INDEX),
        detail_expert=DetailExpertConfig(duplicated_modules=wan.DUPLICATED_MODULES),
        semantic=SemanticStageConfig(num_steps=1000),
        detail=DetailStageConfig(num_steps=1000, fm_weight=10.0),
        teacher_cfg_weight=5.0,
        batch_size=1,
        use_gpu=True,
        activation_checkpointing=True,
        checkpoint_every=100,
        validate_every=200,
        run_name="wan2.1-1.3b-dcm",
    )


def hunyuanvideo(*, teacher: str = "hunyuanvideo-community/HunyuanVideo", data: str, output: str) -> DistillConfig:
    """HunyuanVideo (spec §9): k = 38, embedded guidance (no real CFG), 1500 + 1000 steps, lambda_FM 1, FSDP."""
    return DistillConfig(
        teacher=teacher,
        data=data,
        output=output,
        schedule=ScheduleConfig(boundary_index=HUNYUAN_BOUNDARY_INDEX),
        detail_expert=DetailExpertConfig(duplicated_modules=hunyuan.DUPLICATED_MODULES),
        semantic=SemanticStageConfig(num_steps=1500),
        detail=DetailStageConfig(num_steps=1000, fm_weight=1.0),
        teacher_cfg_weight=0.0,
        batch_size=1,
        num_workers=8,
        use_gpu=True,
        strategy="fsdp",
        activation_checkpointing=True,
        checkpoint_every=100,
        validate_every=200,
        run_name="hunyuanvideo-dcm",
    )


def tiny(*, teacher: str = "tiny-wan", data: str, output: str) -> DistillConfig:
    """The tiny Wan preset on a CPU: the Wan recipe with few steps, larger learning rates and small heads."""
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
        batch_size=2,
        use_gpu=False,
        activation_checkpointing=False,
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
        teacher_cfg_weight=base.teacher_cfg_weight,
        run_name="tiny-hunyuan-dcm",
    )


def demo(*, teacher: str, data: str, output: str) -> DistillConfig:
    """The bundled demo model (jobs/train_demo.py): the tiny recipe on the demo grid with CFG 5 and a larger LoRA."""
    base = tiny(teacher=teacher, data=data, output=output)
    return replace(
        base,
        schedule=ScheduleConfig(
            boundary_index=DEMO_BOUNDARY_INDEX, shift=DEMO_SHIFT, num_detail_phases=DEMO_DETAIL_PHASES
        ),
        detail_expert=replace(base.detail_expert, lora_rank=DEMO_LORA_RANK, lora_alpha=DEMO_LORA_ALPHA),
        semantic=replace(base.semantic, num_steps=DEMO_STEPS),
        detail=replace(base.detail, num_steps=DEMO_STEPS),
        teacher_cfg_weight=DEMO_CFG_WEIGHT,
        batch_size=DEMO_BATCH_SIZE,
        checkpoint_every=DEMO_CHECKPOINT_EVERY,
        log_every=DEMO_LOG_EVERY,
        run_name="demo-dcm",
    )


def demo_no_tcl(*, teacher: str, data: str, output: str) -> DistillConfig:
    """Ablation: the demo recipe without the Temporal Coherence Loss in Stage I."""
    base = demo(teacher=teacher, data=data, output=output)
    return replace(base, semantic=replace(base.semantic, tcl_weight=0.0), run_name="demo-no-tcl")


def demo_no_gan(*, teacher: str, data: str, output: str) -> DistillConfig:
    """Ablation: the demo recipe without the GAN hinge and feature-matching terms in Stage II."""
    base = demo(teacher=teacher, data=data, output=output)
    return replace(base, detail=replace(base.detail, adv_weight=0.0), run_name="demo-no-gan")


def demo_single_expert(*, teacher: str, data: str, output: str, num_phases: int, run_name: str) -> DistillConfig:
    """A single-expert consistency baseline: one fully fine-tuned model over the whole grid (k = 0), pseudo-Huber
    consistency to the end of its phase, no TCL, no GAN; its step budget is the two DCM stages' together. It has no
    detail range, so the demo's detail-phase count is reset to 1 (its stored config reads as a single-expert one)."""
    base = demo(teacher=teacher, data=data, output=output)
    return replace(
        base,
        stages=(SEMANTIC_STAGE,),
        schedule=replace(base.schedule, boundary_index=0, num_semantic_phases=num_phases, num_detail_phases=1),
        semantic=replace(base.semantic, num_steps=base.semantic.num_steps + base.detail.num_steps, tcl_weight=0.0),
        run_name=run_name,
    )


def demo_lcm(*, teacher: str, data: str, output: str) -> DistillConfig:
    """LCM-style baseline (Luo et al. 2023): one phase, every grid point maps to ~x0."""
    return demo_single_expert(teacher=teacher, data=data, output=output, num_phases=1, run_name="demo-lcm")


def demo_pcm(*, teacher: str, data: str, output: str) -> DistillConfig:
    """PCM-style baseline (Wang et al. 2024): 4 phases, one per sampler step."""
    return demo_single_expert(teacher=teacher, data=data, output=output, num_phases=PCM_PHASES, run_name="demo-pcm")


def with_budget(config: DistillConfig, semantic_steps: int, detail_steps: int) -> DistillConfig:
    """Sets the step counts; a single-stage (single-expert) run gets both budgets, as in the recipes above."""
    if config.stages == (SEMANTIC_STAGE,):
        return replace(config, semantic=replace(config.semantic, num_steps=semantic_steps + detail_steps))
    return replace(config, semantic=replace(config.semantic, num_steps=semantic_steps),
                   detail=replace(config.detail, num_steps=detail_steps))  # fmt: skip


RECIPES = {
    "wan2.1-1.3b": wan_2_1_1_3b,
    "hunyuanvideo": hunyuanvideo,
    "tiny": tiny,
    "tiny-hunyuan": tiny_hunyuan,
    "demo": demo,
    "demo-no-tcl": demo_no_tcl,
    "demo-no-gan": demo_no_gan,
    "demo-lcm": demo_lcm,
    "demo-pcm": demo_pcm,
}
# ShapesBench's comparison students (jobs/train_demo.py --stage baselines): folder name -> recipe.
DEMO_BASELINES = {"lcm": "demo-lcm", "pcm": "demo-pcm", "no-tcl": "demo-no-tcl", "no-gan": "demo-no-gan"}
