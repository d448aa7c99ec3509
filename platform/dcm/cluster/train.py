"""Ray Train glue for DCM distillation: the per-worker loop, checkpoints and resume, and the driver.

    run_distillation(config)   # one TorchTrainer per stage: semantic -> <output>/semantic, detail -> <output>/final

Checkpoints (every ``checkpoint_every`` steps and at the end) hold the trainable weights (safetensors), the
optimizer states (``torch.load(weights_only=True)``), the step and the RNG state. A re-submitted run with the same
``run_name`` and ``storage_path`` resumes from its latest checkpoint (Ray Train restores the run's checkpoint list).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dcm.config import GenerationConfig
from dcm.data import LATENTS_KEY, LatentDataset
from dcm.distill.config import DETAIL_STAGE, SEMANTIC_STAGE, DistillConfig
from dcm.distill.consistency import sample_indices
from dcm.distill.discriminator import Discriminator
from dcm.distill.features import TeacherFeatures, check_feature_family, num_taps
from dcm.distill.steps import (
    detail_generator_loss,
    discriminator_loss,
    guided_velocity,
    lerp_ema,
    semantic_loss,
    velocity,
)
from dcm.experts import DETAIL, DualExpertTransformer
from dcm.io.model_folder import load_pipeline, plain_transformer, save_pretrained
from dcm.io.storage import Store
from dcm.io.video import encode_mp4
from dcm.pipeline import DCMPipeline
from dcm.schedule import build_grid

logger = logging.getLogger("dcm.distill")

STAGE_DIRS = {SEMANTIC_STAGE: "semantic", DETAIL_STAGE: "final"}
EXPORT_DIR = "export"
WEIGHTS, DISC_WEIGHTS = "trainable.safetensors", "discriminator.safetensors"
OPTIMIZER, DISC_OPTIMIZER, STATE = "optimizer.pt", "disc_optimizer.pt", "state.json"
VALIDATION_STEPS = 4


@dataclass
class StageModels:
    """What one worker trains in one stage."""

    pipeline: DCMPipeline  # components (text encoder, VAE) and the teacher's pipe, for validation samples
    teacher: nn.Module
    student: nn.Module  # plain transformer (semantic) or DualExpertTransformer (detail)
    trainable: dict[str, nn.Parameter]
    discriminator: Discriminator | None = None
    features: TeacherFeatures | None = None


def stage_input(config: DistillConfig, stage: str) -> str:
    """Where a stage's student starts: the teacher (Stage I) or Stage I's output (Stage II, if it ran)."""
    if stage == DETAIL_STAGE and SEMANTIC_STAGE in config.stages:
        return f"{config.output.rstrip('/')}/{STAGE_DIRS[SEMANTIC_STAGE]}"
    return config.teacher


def build_models(config: DistillConfig, stage: str, device: torch.device) -> StageModels:
    """Loads teacher and student for a stage (every weight outside the trainable set is frozen)."""
    teacher_pipe = load_pipeline(config.teacher)
    teacher = plain_transformer(teacher_pipe).to(device).eval().requires_grad_(False)
    start = plain_transformer(load_pipeline(stage_input(config, stage))) if stage == DETAIL_STAGE else teacher
    student = copy.deepcopy(start).to(device)
    if config.activation_checkpointing:
        student.enable_gradient_checkpointing()
    if stage == SEMANTIC_STAGE:
        student.requires_grad_(True).train()
        trainable = dict(student.named_parameters())
        return StageModels(pipeline=teacher_pipe, teacher=teacher, student=student, trainable=trainable)
    dual = DualExpertTransformer(student, build_grid(config.schedule), config.detail_expert).to(device)
    dual.set_trainable(DETAIL)
    dual.train()
    family = teacher_pipe.config.family
    features = TeacherFeatures(teacher, family, config.detail.feature_stride)
    hidden = teacher.config.num_attention_heads * teacher.config.attention_head_dim
    disc = Discriminator(len(features.indices), hidden, config.detail.discriminator).to(device)
    return StageModels(pipeline=teacher_pipe, teacher=teacher, student=dual, trainable=dict(dual.detail_parameters()),
                       discriminator=disc, features=features)  # fmt: skip


def adamw(params, opt) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)


def check_config(config: DistillConfig) -> None:
    """Everything that can be checked before a worker starts: teacher, data, shapes, k, discriminator stride."""
    teacher_pipe = load_pipeline(config.teacher)
    data = LatentDataset(config.data)
    family = teacher_pipe.config.family
    if data.meta["family"] != family:
        raise ValueError(f"data {config.data} holds {data.meta['family']!r} latents, the teacher is {family!r}")
    latent = data.tensors[LATENTS_KEY].shape[1:]
    channels = plain_transformer(teacher_pipe).config.in_channels
    if latent[0] != channels:
        raise ValueError(f"data latents have {latent[0]} channels, the teacher expects {channels}")
    patch = teacher_pipe.geometry.patch_size
    if any(n % p for n, p in zip(latent[1:], patch)):
        raise ValueError(f"data latent shape {tuple(latent)} is not divisible by the patch size {patch}")
    missing = [k for k in teacher_pipe.family.cond_keys if k not in data.tensors and k != "guidance"]
    if missing:
        raise ValueError(f"data lacks the teacher's conditioning {missing}; it has {data.cond_keys}")
    if len(data) < config.batch_size * config.num_workers:
        raise ValueError(f"data has {len(data)} samples, fewer than batch_size x num_workers")
    if config.schedule.num_grid_steps > config.schedule.num_train_timesteps:
        raise ValueError("num_grid_steps must not exceed num_train_timesteps")
    if DETAIL_STAGE in config.stages:
        check_feature_family(family)
        num_taps(plain_transformer(teacher_pipe), family, config.detail.feature_stride)


# -- checkpoints -------------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, models: StageModels, optimizers: dict, step: int, rng: torch.Generator) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in models.trainable.items()}, str(path / WEIGHTS))
    if models.discriminator is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in models.discriminator.state_dict().items()},
                  str(path / DISC_WEIGHTS))  # fmt: skip
    for name, optimizer in optimizers.items():
        torch.save(optimizer.state_dict(), path / name)
    torch.save({"generator": rng.get_state(), "torch": torch.get_rng_state()}, path / "rng.pt")
    (path / STATE).write_text(json.dumps({"step": step}))


def load_checkpoint(path: Path, models: StageModels, optimizers: dict, rng: torch.Generator) -> int:
    """Restores weights, optimizers and RNG in place; returns the step to continue from."""
    weights = load_file(str(path / WEIGHTS))
    with torch.no_grad():
        for name, param in models.trainable.items():
            param.copy_(weights[name])
    if models.discriminator is not None:
        models.discriminator.load_state_dict(load_file(str(path / DISC_WEIGHTS)))
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(torch.load(path / name, weights_only=True))
    states = torch.load(path / "rng.pt", weights_only=True)
    rng.set_state(states["generator"])
    torch.set_rng_state(states["torch"])
    return json.loads((path / STATE).read_text())["step"]


# -- the worker loop ---------------------------------------------------------------------------------------------


def train_loop_per_worker(loop_config: dict) -> None:
    """One worker of one stage. ``loop_config``: {"config": DistillConfig, "stage": str}."""
    import ray.train
    import ray.train.torch

    config: DistillConfig = loop_config["config"]
    stage: str = loop_config["stage"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.seed + rank)
    rng = torch.Generator().manual_seed(config.seed + rank)  # indices and noise: spec §2.4 seeds seed + rank

    # 1. models, data, optimizers
    models = build_models(config, stage, device)
    stage_cfg = config.semantic if stage == SEMANTIC_STAGE else config.detail
    grid = build_grid(config.schedule)
    lo, hi = grid.semantic_range() if stage == SEMANTIC_STAGE else grid.detail_range()
    data = LatentDataset(config.data)
    negative = {k: v.to(device) for k, v in data.negative.items()}
    latent_frames = data.tensors[LATENTS_KEY].shape[2]
    if stage == SEMANTIC_STAGE and latent_frames <= config.semantic.tcl_stride and rank == 0:
        logger.info("[semantic] Temporal Coherence Loss skipped: %d latent frames, stride %d", latent_frames,
                    config.semantic.tcl_stride)  # fmt: skip
    loader = ray.train.torch.prepare_data_loader(
        torch.utils.data.DataLoader(data, batch_size=config.batch_size, shuffle=True, drop_last=True)
    )
    parallel = {"parallel_strategy": config.strategy} if config.strategy != "ddp" else {}
    student = ray.train.torch.prepare_model(models.student, move_to_device=False, **parallel)
    optimizers = {OPTIMIZER: adamw([p for p in models.trainable.values()], stage_cfg.optimizer)}
    if models.discriminator is not None:
        optimizers[DISC_OPTIMIZER] = adamw(models.discriminator.parameters(), config.detail.disc_optimizer)
    ema = copy.deepcopy(models.student) if stage == SEMANTIC_STAGE and config.semantic.ema_decay else None
    target_model = ema if ema is not None else models.student
    T = config.schedule.num_train_timesteps
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    # 2. resume
    step = resumed_from = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            step = resumed_from = load_checkpoint(Path(path), models, optimizers, rng)
        if rank == 0:
            logger.info("[%s] resumed from checkpoint at step %d", stage, step)

    # 3. loop
    batches = iter(loader)
    epoch, started, last = 0, time.perf_counter(), time.perf_counter()
    while step < stage_cfg.num_steps:
        try:
            batch = next(batches)
        except StopIteration:
            epoch += 1
            if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            batches = iter(loader)
            batch = next(batches)
        if config.fault_fail_at_step is not None and step + 1 == config.fault_fail_at_step:
            raise RuntimeError(f"fault injection: worker {rank} fails at step {step + 1}")
        x0 = batch.pop(LATENTS_KEY).to(device)
        cond = {k: v.to(device) for k, v in batch.items()}
        eps = torch.randn(x0.shape, generator=rng).to(device)
        index = sample_indices(x0.shape[0], lo, hi, rng).to(device)
        with autocast:
            student_v = velocity(student, cond, T)
            target_v = velocity(target_model, cond, T)
            teacher_v = guided_velocity(models.teacher, cond, negative, config.teacher_cfg_weight, T)
            if stage == SEMANTIC_STAGE:
                loss, metrics = semantic_loss(student=student_v, teacher=teacher_v, target=target_v, x0=x0, eps=eps,
                                              index=index, grid=grid, config=config.semantic,
                                              huber_c=config.huber_c)  # fmt: skip
            else:
                adv_index = sample_indices(x0.shape[0], lo, hi, rng).to(device)
                xi = torch.randn(x0.shape, generator=rng).to(device)
                token_grid = models.pipeline.geometry.token_grid(tuple(x0.shape))
                loss, metrics, (fake_tokens, real_tokens) = detail_generator_loss(
                    student=student_v, teacher=teacher_v, target=target_v, features=models.features,
                    discriminator=models.discriminator, cond=cond, x0=x0, eps=eps, index=index, adv_index=adv_index,
                    xi=xi, grid=grid, token_grid=token_grid, config=config.detail, huber_c=config.huber_c,
                )  # fmt: skip
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(
                f"[{stage}] non-finite loss {metrics['loss']} at step {step + 1}; stopping. The last good checkpoint "
                f"(step {step - step % config.checkpoint_every}) is kept in {config.storage_path}/{config.run_name}"
            )
        optimizers[OPTIMIZER].zero_grad(set_to_none=True)
        loss.backward()
        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(list(models.trainable.values()),
                                                                    stage_cfg.optimizer.grad_clip))  # fmt: skip
        optimizers[OPTIMIZER].step()
        if ema is not None:
            lerp_ema(ema, models.student, config.semantic.ema_decay)
        if stage == DETAIL_STAGE:
            optimizers[DISC_OPTIMIZER].zero_grad(set_to_none=True)
            with autocast:
                d_loss = discriminator_loss(models.discriminator, fake_tokens, real_tokens, token_grid)
            d_loss.backward()
            metrics["loss_d"] = d_loss.item()
            metrics["disc_grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
                models.discriminator.parameters(), config.detail.disc_optimizer.grad_clip))  # fmt: skip
            optimizers[DISC_OPTIMIZER].step()
        step += 1
        now = time.perf_counter()
        metrics.update(step=step, lr=stage_cfg.optimizer.lr, steps_per_s=1 / max(now - last, 1e-9), stage=stage,
                       resumed_from=resumed_from)  # fmt: skip
        last = now
        if rank == 0 and (step % config.log_every == 0 or step == stage_cfg.num_steps):
            parts = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and k != "lr")
            logger.info("[%s] step %d/%d %s lr=%.2e", stage, step, stage_cfg.num_steps, parts, stage_cfg.optimizer.lr)
        if rank == 0 and config.validate_every and step % config.validate_every == 0:
            write_validation(config, models, stage, step)
        done = step == stage_cfg.num_steps
        if step % config.checkpoint_every == 0 or done:
            with tempfile.TemporaryDirectory() as tmp:
                if rank == 0:
                    save_checkpoint(Path(tmp), models, optimizers, step, rng)
                ckpt = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
                ray.train.report(metrics, checkpoint=ckpt)
        elif step % config.report_every == 0:
            ray.train.report(metrics)

    # 4. the stage's model folder
    if rank == 0:
        save_stage_output(config, models, stage)
        logger.info("[%s] %d steps in %.1f s on %d worker(s)", stage, step, time.perf_counter() - started, world)


def stage_pipeline(config: DistillConfig, models: StageModels, stage: str) -> DCMPipeline:
    """The student as a DCMPipeline sharing the teacher's text encoder, VAE and tokenizer."""
    base = models.pipeline
    model_config = replace(base.config, schedule=config.schedule, default_generation=student_generation(config, base))
    if stage == SEMANTIC_STAGE:
        student = copy.deepcopy(models.student).eval()
        pipe = base.family.pipeline_class(**{**base.pipe.components, "transformer": student})
        return DCMPipeline(pipe, replace(model_config, detail=None))
    dual = models.student
    pipe = base.family.pipeline_class(**{**base.pipe.components, "transformer": dual.transformer})
    return DCMPipeline(pipe, replace(model_config, detail=config.detail_expert), dual)


def student_generation(config: DistillConfig, teacher: DCMPipeline) -> GenerationConfig:
    """The teacher's generation defaults (size, frames, fps) with the student's steps and no CFG.

    An explicit sigma list of the teacher's config (a released few-step schedule) is kept when it has
    ``student_steps`` entries; otherwise the student's grid decides the schedule.
    """
    gen = teacher.config.default_generation
    sigmas = gen.sigmas if gen.sigmas is not None and len(gen.sigmas) == config.student_steps else None
    return replace(gen, num_inference_steps=config.student_steps, guidance_scale=1.0, sigmas=sigmas)


def write_validation(config: DistillConfig, models: StageModels, stage: str, step: int) -> None:
    """Rank 0: one validation video of the current student into ``<output>/validation/``."""
    dcm = stage_pipeline(config, models, stage)
    gen = replace(dcm.config.default_generation, num_inference_steps=VALIDATION_STEPS, sigmas=None)
    frames = dcm.generate([config.validation_prompt], seeds=[config.seed], config=gen)
    Store(config.output).put_bytes(f"validation/{stage}-step{step:06d}.mp4", encode_mp4(frames[0], fps=gen.fps))
    models.student.train()


def save_stage_output(config: DistillConfig, models: StageModels, stage: str) -> None:
    """Rank 0: the stage's DCM folder (and, after Stage II for Wan, the stock-diffusers export) into the output."""
    from dcm.io.model_folder import export_diffusers

    dcm = stage_pipeline(config, models, stage)
    with tempfile.TemporaryDirectory() as tmp:
        local = save_pretrained(dcm, Path(tmp) / "model")
        Store(f"{config.output.rstrip('/')}/{STAGE_DIRS[stage]}").upload_from(local)
        if stage == DETAIL_STAGE and dcm.config.family == "wan":
            exported = export_diffusers(dcm, Path(tmp) / EXPORT_DIR)
            Store(f"{config.output.rstrip('/')}/{EXPORT_DIR}").upload_from(exported)


# -- the driver --------------------------------------------------------------------------------------------------


def run_distillation(config: DistillConfig) -> dict[str, dict]:
    """Runs the configured stages one after the other on the connected Ray cluster; returns final metrics per stage."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = absolute_paths(config)
    check_config(config)
    results = {}
    for stage in config.stages:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": config, "stage": stage},
            scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
            run_config=RunConfig(
                name=f"{config.run_name}-{stage}",
                storage_path=config.storage_path,
                failure_config=FailureConfig(max_failures=config.max_failures),
            ),
        )
        result = trainer.fit()
        results[stage] = dict(result.metrics or {})
        logger.info("[%s] finished: %s", stage, results[stage])
    return results


def _storage_path(path: str) -> str:
    return path if Store(path).is_s3 else os.path.abspath(path)


def absolute_paths(config: DistillConfig) -> DistillConfig:
    """Local paths resolved on the driver: Ray Train workers run in their own working directory."""

    def fix(path: str) -> str:
        return os.path.abspath(path) if not Store(path).is_s3 and os.path.exists(path) else path

    output = config.output if Store(config.output).is_s3 else os.path.abspath(config.output)
    return replace(config, teacher=fix(config.teacher), data=fix(config.data), output=output,
                   storage_path=_storage_path(config.storage_path))  # fmt: skip
