"""Recipes of the demo stack: its teachers, the demo model's distillation and ShapesBench's comparison students.

``jobs/distill.py`` lists the distillation recipes beside the core recipes (:data:`dcm.distill.recipes.RECIPES`);
``jobs/train_demo.py --teacher`` picks a teacher recipe. docs/demo-model.md holds the measurements behind them.
"""

from __future__ import annotations

from dataclasses import replace

from dcm.config import ScheduleConfig
from dcm.distill.config import SEMANTIC_STAGE, DistillConfig
from dcm.distill.recipes import tiny
from dcm_demo.training import DemoTeacherConfig

# The demo grid: 64x64, 17 frames (~80 tokens) use the shift the demo teacher trains with; shift 17 is for 480p-720p
# videos. k = 25 puts the expert boundary at sigma[24] = 0.833.
DEMO_SHIFT = 5.0
DEMO_BOUNDARY_INDEX = 25
# The demo model (jobs/train_demo.py): guidance scale 5 as its teacher samples, a LoRA sized for its
# 128-wide transformer, and the step budget of each stage on a 2-core CPU.
DEMO_GUIDANCE_SCALE = 5.0
DEMO_LORA_RANK = 16
DEMO_LORA_ALPHA = 32.0
DEMO_STEPS = 150  # per stage: minutes on a 2-core CPU
DEMO_BATCH_SIZE = 8
DEMO_CHECKPOINT_EVERY = 100
DEMO_LOG_EVERY = 25
# Two detail phases, one per detail step of the 4-step sampler: with one, the LoRA jumps from sigma[k-1] = 0.83
# straight to x0 and loses the colour, which the demo teacher settles between sigma 0.94 and 0.66.
DEMO_DETAIL_PHASES = 2
PCM_PHASES = 4


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
        teacher_guidance_scale=DEMO_GUIDANCE_SCALE,
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
    "demo": demo,
    "demo-no-tcl": demo_no_tcl,
    "demo-no-gan": demo_no_gan,
    "demo-lcm": demo_lcm,
    "demo-pcm": demo_pcm,
}
# ShapesBench's comparison students (jobs/train_demo.py --stage baselines): folder name -> recipe.
DEMO_BASELINES = {"lcm": "demo-lcm", "pcm": "demo-pcm", "no-tcl": "demo-no-tcl", "no-gan": "demo-no-gan"}


def teacher_6k() -> DemoTeacherConfig:
    """The bundled demo model's teacher: 4 layers, width 128, 6000 steps, no EMA, training shift 5."""
    return DemoTeacherConfig(num_steps=6000, ema_decay=0.0, shift=5.0, warmup_steps=0)


def teacher_ema() -> DemoTeacherConfig:
    """A constant learning rate after a short warm-up and an EMA of the weights (which does the annealing), so the
    run can be extended without changing its first steps; more training at middle noise levels (shift 3)."""
    lr = teacher_6k().lr
    return replace(teacher_6k(), num_steps=12_000, lr=lr, min_lr=lr, warmup_steps=200, ema_decay=0.999, shift=3.0)


# Teacher recipes (jobs/train_demo.py --teacher): name -> DemoTeacherConfig.
TEACHER_RECIPES = {"6k": teacher_6k, "ema": teacher_ema}
