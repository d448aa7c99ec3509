"""One training step per stage: the unit the Ray loop and the tests both call (pure torch: no Ray, no I/O).

    metrics = semantic_train_step(models, optimizers, batch, rng, config=config)   # Stage I
    metrics = detail_train_step(models, optimizers, batch, rng, config=config)     # Stage II

A step draws its noise and grid indices from ``rng``, computes the stage's objective under bf16 autocast on a GPU,
back-propagates, clips the gradient norm and steps AdamW; Stage II then takes the discriminator's step on the
generator step's detached teacher features. The models may be plain modules (one process), DDP-wrapped or sharded
with FSDP2 (:mod:`dcm.distill.parallel`): the step is the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dcm.data import LATENTS_KEY
from dcm.distill.adversarial import (
    discriminator_hinge,
    feature_matching,
    generator_hinge,
    renoise,
    renoise_indices,
)
from dcm.distill.config import (
    DETAIL_STAGE,
    SEMANTIC_STAGE,
    DetailStageConfig,
    DistillConfig,
    SemanticStageConfig,
)
from dcm.distill.consistency import consistency_pair, pseudo_huber, sample_indices
from dcm.distill.discriminator import Discriminator
from dcm.distill.features import TappedTeacher
from dcm.distill.parallel import unwrap
from dcm.distill.temporal import temporal_coherence_loss
from dcm.experts import DETAIL
from dcm.geometry import VideoGeometry
from dcm.sampling import CFGDenoiser, Cond, Denoiser, TransformerDenoiser
from dcm.schedule import SigmaGrid


@dataclass
class StageModels:
    """What one worker trains in one stage.

    Attributes:
        stage: ``semantic`` or ``detail``.
        student: the trained transformer (Stage I) or :class:`dcm.experts.DualExpertTransformer` (Stage II), as the
            step calls it: plain, DDP-wrapped or FSDP-sharded.
        teacher: the frozen teacher with its feature taps (sharded under FSDP).
        discriminator: Stage II's discriminator as the discriminator step calls it (DDP-wrapped when there are
            several workers, so its gradients are averaged); None in Stage I.
        grid: the sigma grid (expert ranges, phase ends).
        geometry: latent <-> token geometry (the discriminator's token grid).
        cond_keys: the transformer's conditioning inputs.
    """

    stage: str
    student: nn.Module
    teacher: TappedTeacher
    grid: SigmaGrid
    geometry: VideoGeometry
    cond_keys: tuple[str, ...]
    discriminator: nn.Module | None = None

    def student_denoiser(self) -> TransformerDenoiser:
        return TransformerDenoiser(self.student, self.grid.config.num_train_timesteps, self.cond_keys)


@dataclass
class Optimizers:
    """The student's AdamW and, in Stage II, the discriminator's."""

    generator: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer | None = None


# -- objectives --------------------------------------------------------------------------------------------------


def semantic_loss(
    *, student: Denoiser, teacher: Denoiser, x0: Tensor, eps: Tensor, index: Tensor, cond: Cond, grid: SigmaGrid,
    config: SemanticStageConfig, huber_c: float,
) -> tuple[Tensor, dict[str, float]]:  # fmt: skip
    """Stage I: ``pseudo_huber(x_hat, x_tilde) + w_tc * TCL(x_hat, x_tilde)`` (docs/algorithm.md, "Stage I: semantic
    expert"); the student under no_grad is its own target. x0, eps: (B, C, F, H, W); index: (B,)."""
    x_hat, x_tilde, _ = consistency_pair(
        student=student, teacher=teacher, target=student, x0=x0, eps=eps, index=index, grid=grid, cond=cond
    )
    l_cd = pseudo_huber(x_hat, x_tilde, huber_c)
    l_tc = temporal_coherence_loss(x_hat, x_tilde, config.tcl_stride)
    loss = l_cd if l_tc is None else l_cd + config.tcl_weight * l_tc
    metrics = {"loss": loss.item(), "loss_cd": l_cd.item()}
    if l_tc is not None:
        metrics["loss_tc"] = l_tc.item()
    return loss, metrics


def detail_generator_loss(
    *, student: Denoiser, teacher: Denoiser, features: TappedTeacher, discriminator: Discriminator, x0: Tensor,
    eps: Tensor, index: Tensor, adv_index: Tensor, xi: Tensor, cond: Cond, grid: SigmaGrid,
    token_grid: tuple[int, int, int], config: DetailStageConfig, huber_c: float,
) -> tuple[Tensor, dict[str, float], tuple[list[Tensor], list[Tensor]]]:  # fmt: skip
    """Stage II generator objective (docs/algorithm.md, "Stage II: detail expert" and "Discriminator").

    ``L_G = huber + adv_weight * (hinge_factor * hinge_G(D(F_fake)) + lambda_FM * MSE(R_fake, R_real))``, where F are
    the frozen teacher's tapped tokens of the re-noised prediction (fake) and target (real) and R their read-outs.
    Gradients flow through the frozen teacher into the student. Returns the loss, metrics and the detached
    (fake, real) tokens the discriminator step reuses.

    Args:
        x0, eps, xi: (B, C, F, H, W) latents, noise, re-noising noise; index, adv_index: (B,) grid indices.
    """
    x_hat, x_tilde, sigma_end = consistency_pair(
        student=student, teacher=teacher, target=student, x0=x0, eps=eps, index=index, grid=grid, cond=cond
    )
    l_cd = pseudo_huber(x_hat, x_tilde, huber_c)
    sigma_a = grid.sigma_prev.to(x0.device)[adv_index].to(x0.dtype)  # (B,)
    fake = renoise(x_hat, xi, sigma_a, sigma_end)
    real = renoise(x_tilde, xi, sigma_a, sigma_end)
    _, fake_tokens, fake_readouts = features(fake, sigma_a, cond, taps=True)
    with torch.no_grad():
        _, real_tokens, real_readouts = features(real, sigma_a, cond, taps=True)
    discriminator.requires_grad_(False)  # the hinge trains the student here, not the discriminator
    try:
        l_hinge = generator_hinge(discriminator(fake_tokens, token_grid), config.hinge_factor)
    finally:
        discriminator.requires_grad_(True)
    l_fm = feature_matching(fake_readouts, real_readouts)
    loss = l_cd + config.adv_weight * (l_hinge + config.fm_weight * l_fm)
    metrics = {"loss": loss.item(), "loss_cd": l_cd.item(), "loss_g_hinge": l_hinge.item(), "loss_fm": l_fm.item()}
    return loss, metrics, ([t.detach() for t in fake_tokens], real_tokens)


def discriminator_loss(
    discriminator: nn.Module, fake_tokens: list[Tensor], real_tokens: list[Tensor], token_grid: tuple[int, int, int]
) -> Tensor:
    """Stage II discriminator hinge on the (detached) tokens of the generator step.

    Fake and real go through the discriminator as one batch (one forward, as DDP expects; GroupNorm is per sample,
    so the logits are those of two separate calls). Tokens: one (B, L, D) tensor per head.
    """
    batch = fake_tokens[0].shape[0]
    logits = discriminator([torch.cat([f, r]) for f, r in zip(fake_tokens, real_tokens)], token_grid)
    rows = batch * token_grid[0]  # logits are (2 * B * F', 1, H', W'): the fake half first
    return discriminator_hinge([lg[:rows] for lg in logits], [lg[rows:] for lg in logits])


# -- steps -------------------------------------------------------------------------------------------------------


def semantic_train_step(
    models: StageModels, optimizers: Optimizers, batch: dict[str, Tensor], rng: torch.Generator, *,
    config: DistillConfig,
) -> dict[str, float]:  # fmt: skip
    """One Stage I step: consistency + TCL on the high-noise range, backward, clip, AdamW.

    Args:
        batch: ``{"latents": (B, C, F, H, W), <cond>: (B, ...), "negative_<cond>": (B, ...)}`` on the device.
        rng: the worker's CPU generator for noise and indices (checkpointed with the run).
    Returns:
        ``loss``, ``loss_cd``, ``loss_tc`` (when the clip has more latent frames than the TCL stride), ``grad_norm``.
    """
    # 1. noise and grid indices
    x0, cond = split_batch(batch)
    lo, hi = models.grid.semantic_range()
    eps = torch.randn(x0.shape, generator=rng).to(x0.device)
    index = sample_indices(x0.shape[0], lo, hi, rng).to(x0.device)

    # 2. objective
    with autocast(x0.device):
        loss, metrics = semantic_loss(
            student=models.student_denoiser(), teacher=CFGDenoiser(models.teacher, config.teacher_guidance_scale),
            x0=x0, eps=eps, index=index, cond=cond, grid=models.grid, config=config.semantic,
            huber_c=config.huber_c,
        )  # fmt: skip
    check_finite(loss, metrics)

    # 3. update
    optimizers.generator.zero_grad(set_to_none=True)
    loss.backward()
    metrics["grad_norm"] = clip_grad_norm(optimizers.generator, config.semantic.optimizer.grad_clip)
    optimizers.generator.step()
    return metrics


def detail_train_step(
    models: StageModels, optimizers: Optimizers, batch: dict[str, Tensor], rng: torch.Generator, *,
    config: DistillConfig,
) -> dict[str, float]:  # fmt: skip
    """One Stage II step: the detail expert's consistency + GAN + feature-matching step, then the discriminator's.

    Args:
        batch: as for :func:`semantic_train_step`.
        rng: the worker's CPU generator for noise and indices.
    Returns:
        ``loss``, ``loss_cd``, ``loss_g_hinge``, ``loss_fm``, ``grad_norm``, ``loss_d``, ``disc_grad_norm``.
    """
    # 1. noise, grid indices, and re-noising indices inside each sample's own detail phase
    x0, cond = split_batch(batch)
    lo, hi = models.grid.detail_range()
    eps = torch.randn(x0.shape, generator=rng).to(x0.device)
    index = sample_indices(x0.shape[0], lo, hi, rng).to(x0.device)
    adv_index = renoise_indices(index.cpu(), models.grid, rng).to(x0.device)
    xi = torch.randn(x0.shape, generator=rng).to(x0.device)
    token_grid = models.geometry.token_grid(tuple(x0.shape))

    # 2. generator: the detail expert is held through forward *and* backward, because activation checkpointing
    # recomputes each block in the backward pass and the recompute must run the expert the forward ran.
    with unwrap(models.student).expert(DETAIL):
        with autocast(x0.device):
            loss, metrics, (fake_tokens, real_tokens) = detail_generator_loss(
                student=models.student_denoiser(),
                teacher=CFGDenoiser(models.teacher, config.teacher_guidance_scale), features=models.teacher,
                discriminator=unwrap(models.discriminator), x0=x0, eps=eps, index=index, adv_index=adv_index, xi=xi,
                cond=cond, grid=models.grid, token_grid=token_grid, config=config.detail, huber_c=config.huber_c,
            )  # fmt: skip
        check_finite(loss, metrics)
        optimizers.generator.zero_grad(set_to_none=True)
        loss.backward()
    metrics["grad_norm"] = clip_grad_norm(optimizers.generator, config.detail.optimizer.grad_clip)
    optimizers.generator.step()

    # 3. discriminator, on the generator step's detached features
    with autocast(x0.device):
        d_loss = discriminator_loss(models.discriminator, fake_tokens, real_tokens, token_grid)
    optimizers.discriminator.zero_grad(set_to_none=True)
    d_loss.backward()
    metrics["loss_d"] = d_loss.item()
    metrics["disc_grad_norm"] = clip_grad_norm(optimizers.discriminator, config.detail.disc_optimizer.grad_clip)
    optimizers.discriminator.step()
    return metrics


TRAIN_STEPS = {SEMANTIC_STAGE: semantic_train_step, DETAIL_STAGE: detail_train_step}


# -- helpers -----------------------------------------------------------------------------------------------------


def split_batch(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """``(x0 (B, C, F, H, W) float32, cond)``: latents enter in fp32, the denoisers cast the transformer input."""
    x0 = batch[LATENTS_KEY]
    if x0.ndim != 5 or x0.dtype != torch.float32:
        raise ValueError(f"latents must be float32 (B, C, F, H, W), got {x0.dtype} {tuple(x0.shape)}")
    return x0, {k: v for k, v in batch.items() if k != LATENTS_KEY}


def autocast(device: torch.device):
    """bf16 autocast on a GPU (the reference's precision); fp32 on a CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def check_finite(loss: Tensor, metrics: dict[str, float]) -> None:
    """Stops before a non-finite loss reaches the weights (the last checkpoint stays good)."""
    if not math.isfinite(metrics["loss"]):
        shown = {k: round(v, 6) for k, v in metrics.items()}
        raise FloatingPointError(f"non-finite loss {loss.item()} ({shown}); stopping before the update")


def clip_grad_norm(optimizer: torch.optim.Optimizer, max_norm: float) -> float:
    """Clips the gradients of the optimizer's parameters to ``max_norm``; returns the total norm before clipping.

    Works on sharded (DTensor) gradients too: their norm is reduced across the workers.
    """
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP: the global norm
        norm = norm.full_tensor()
    return float(norm)
