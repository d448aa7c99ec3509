"""Distillation recipes of the demo stack: the bundled demo model and ShapesBench's comparison students.

``jobs/distill.py`` lists them beside the core recipes (:data:`dcm.distill.recipes.RECIPES`).
"""

from __future__ import annotations

from dataclasses import replace

from dcm.config import ScheduleConfig
from dcm.distill.config import SEMANTIC_STAGE, DistillConfig
from dcm.distill.recipes import tiny

# The demo grid: 64x64, 17 frames (~80 tokens) use the shift the demo teacher trains with; shift 17 is for 480p-720p
# videos. k = 25 puts the expert boundary at sigma[24] = 0.833.
DEMO_SHIFT = 5.0
DEMO_BOUNDARY_INDEX = 25
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
    "demo": demo,
    "demo-no-tcl": demo_no_tcl,
    "demo-no-gan": demo_no_gan,
    "demo-lcm": demo_lcm,
    "demo-pcm": demo_pcm,
}
# ShapesBench's comparison students (jobs/train_demo.py --stage baselines): folder name -> recipe.
DEMO_BASELINES = {"lcm": "demo-lcm", "pcm": "demo-pcm", "no-tcl": "demo-no-tcl", "no-gan": "demo-no-gan"}
