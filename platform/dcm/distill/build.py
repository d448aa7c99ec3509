"""One stage's models on one worker (no Ray): load, freeze, wrap, optimizers; and the stage's output pipeline.

    models, optimizers, base = build_stage(config, stage, device)    # every worker
    dcm = output_pipeline(config, stage, base, consolidated_state(models))   # rank 0, at the end

The teacher is frozen in eval mode; the Stage I student is a copy of it with every weight trained; the Stage II
student is Stage I's output (or the teacher) with a detail expert whose LoRA and duplicated layers alone are trained.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from dcm.config import GenerationConfig
from dcm.distill.config import DDP, DETAIL_STAGE, SEMANTIC_STAGE, DistillConfig
from dcm.distill.discriminator import Discriminator
from dcm.distill.features import TappedTeacher
from dcm.distill.parallel import build_optimizer, parallelize, replicate
from dcm.distill.steps import Optimizers, StageModels
from dcm.experts import DETAIL, DualExpertTransformer
from dcm.io.model_folder import load_pipeline, plain_transformer
from dcm.pipeline import DCMPipeline
from dcm.sampling import TransformerDenoiser
from dcm.schedule import build_grid

STAGE_DIRS = {SEMANTIC_STAGE: "semantic", DETAIL_STAGE: "final"}


def stage_input(config: DistillConfig, stage: str) -> str:
    """Where a stage's student starts: the teacher (Stage I), or Stage I's output for Stage II when the run's stages
    include Stage I (a Stage II run alone starts from the teacher)."""
    if stage == DETAIL_STAGE and SEMANTIC_STAGE in config.stages:
        return f"{config.output.rstrip('/')}/{STAGE_DIRS[SEMANTIC_STAGE]}"
    return config.teacher


def teacher_dtype(config: DistillConfig, device: torch.device) -> torch.dtype:
    """bf16 for a replicated teacher on a GPU (half the memory; it is never trained); fp32 otherwise (FSDP keeps fp32
    shards and gathers them in bf16 on a GPU)."""
    return torch.bfloat16 if device.type == "cuda" and config.strategy == DDP else torch.float32


def student_module(
    config: DistillConfig, stage: str, teacher: DCMPipeline | None = None
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The unwrapped student of a stage and the diffusers transformer inside it (the same module in Stage I).

    Args:
        teacher: the loaded teacher (fp32, not yet hooked or wrapped); when the stage starts from the teacher its
            transformer is copied instead of loading the whole pipeline a second time.
    """
    source = stage_input(config, stage)
    if teacher is not None and source == config.teacher:
        transformer = copy.deepcopy(plain_transformer(teacher))
    else:
        transformer = plain_transformer(load_pipeline(source))
    if stage == SEMANTIC_STAGE:
        return transformer.requires_grad_(True).train(), transformer
    dual = DualExpertTransformer(transformer, build_grid(config.schedule), config.detail_expert)
    dual.set_trainable(DETAIL)
    return dual.train(), transformer


def build_stage(
    config: DistillConfig, stage: str, device: torch.device, *, base: DCMPipeline | None = None
) -> tuple[StageModels, Optimizers, DCMPipeline]:
    """Loads, freezes, wraps (activation checkpointing, FSDP2 or DDP) and builds the optimizers of one stage.

    Args:
        base: the teacher's pipeline, fp32 on the CPU, if the caller loaded it already (it becomes the teacher).
    Returns:
        (models, optimizers, base): ``base`` is the teacher's pipeline, whose text encoder, VAE and tokenizer the
        validation samples and the output folders use (its transformer is the teacher the models hold).
    """
    # 1. teacher (frozen) and the pipeline components; the student is copied before the teacher gets hooks
    base = base if base is not None else load_pipeline(config.teacher)
    student, student_transformer = student_module(config, stage, base)
    dtype = teacher_dtype(config, device)
    teacher_transformer = plain_transformer(load_pipeline(config.teacher, dtype=dtype) if dtype != torch.float32
                                            else base)  # fmt: skip
    teacher_transformer.eval().requires_grad_(False)
    family = base.config.family
    num_train_timesteps = config.schedule.num_train_timesteps
    denoiser = TransformerDenoiser(teacher_transformer, num_train_timesteps, base.family.cond_keys)
    stride = config.detail.feature_stride if stage == DETAIL_STAGE else None
    teacher = TappedTeacher(denoiser, family, stride)

    # 2. activation checkpointing and the strategy; only then the optimizer (over the sharded parameters)
    student, teacher = parallelize(
        student, student_transformer, teacher, teacher_transformer, strategy=config.strategy, device=device,
        activation_checkpointing=config.activation_checkpointing,
    )  # fmt: skip
    optimizers = Optimizers(generator=build_optimizer(student, config.stage_config(stage).optimizer))

    # 3. Stage II's discriminator: one, replicated (its gradients averaged across workers)
    discriminator = None
    if stage == DETAIL_STAGE:
        hidden = teacher_transformer.config.num_attention_heads * teacher_transformer.config.attention_head_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the same initial weights on every worker (DDP also broadcasts rank 0's)
            discriminator = Discriminator(len(teacher.indices), hidden, config.detail.discriminator)
        discriminator = replicate(discriminator.train(), device)
        optimizers.discriminator = build_optimizer(discriminator, config.detail.disc_optimizer)
    models = StageModels(
        stage=stage, student=student, teacher=teacher, grid=build_grid(config.schedule), geometry=base.geometry,
        cond_keys=base.family.cond_keys, discriminator=discriminator,
    )  # fmt: skip
    return models, optimizers, base


def output_pipeline(
    config: DistillConfig, stage: str, base: DCMPipeline, state: dict[str, torch.Tensor]
) -> DCMPipeline:
    """The stage's result as a DCMPipeline (unsharded, on the CPU) sharing the teacher's text encoder, VAE and
    tokenizer: the stage's input loaded afresh, then the consolidated ``state``
    (:func:`dcm.distill.checkpoint.consolidated_state`) loaded into it."""
    student, transformer = student_module(config, stage)
    student.load_state_dict(state, strict=True)
    student.eval()
    model_config = replace(
        base.config, schedule=config.schedule, default_generation=student_generation(config, base),
        detail=config.detail_expert if stage == DETAIL_STAGE else None,
    )  # fmt: skip
    pipe = base.family.pipeline_class(**{**base.pipe.components, "transformer": transformer})
    return DCMPipeline(pipe, model_config, student if stage == DETAIL_STAGE else None)


def student_generation(config: DistillConfig, teacher: DCMPipeline) -> GenerationConfig:
    """The teacher's generation defaults (size, frames, fps) with the student's steps and no CFG.

    An explicit sigma list of the teacher's config (a released few-step schedule) is kept when it has
    ``student_steps`` entries; otherwise the student's grid decides the schedule.
    """
    gen = teacher.config.default_generation
    sigmas = gen.sigmas if gen.sigmas is not None and len(gen.sigmas) == config.student_steps else None
    return replace(gen, num_inference_steps=config.student_steps, guidance_scale=1.0, sigmas=sigmas)
