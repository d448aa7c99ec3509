"""One training step of each stage, as pure functions of models and tensors (spec §3.2 and §4.8 pseudo-code)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dcm.distill.adversarial import discriminator_hinge, feature_matching, generator_hinge, renoise
from dcm.distill.config import DetailStageConfig, SemanticStageConfig
from dcm.distill.consistency import Velocity, consistency_pair, pseudo_huber
from dcm.distill.discriminator import Discriminator
from dcm.distill.features import TeacherFeatures
from dcm.distill.temporal import temporal_coherence_loss
from dcm.schedule import SigmaGrid


def velocity(model: nn.Module, cond: dict[str, Tensor], num_train_timesteps: int) -> Velocity:
    """``v(x, sigma)`` of a diffusers-style transformer (or DualExpertTransformer) under fixed conditioning."""

    def v(x: Tensor, sigma: Tensor) -> Tensor:
        return model(hidden_states=x, timestep=sigma * num_train_timesteps, return_dict=False, **cond)[0]

    return v


def guided_velocity(
    model: nn.Module, cond: dict[str, Tensor], negative: dict[str, Tensor], weight: float, num_train_timesteps: int
) -> Velocity:
    """Teacher velocity with real CFG, ``v_c + w (v_c - v_u)`` (spec §2.3); ``w = 0`` is the conditional velocity.

    ``negative`` holds the empty-prompt conditioning with batch 1; it is broadcast to the batch.
    """
    if weight == 0:
        return velocity(model, cond, num_train_timesteps)

    def v(x: Tensor, sigma: Tensor) -> Tensor:
        batch = x.shape[0]
        uncond = {k: negative[k].expand(batch, *negative[k].shape[1:]) for k in cond}
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        out = model(hidden_states=torch.cat([x, x]), timestep=torch.cat([sigma, sigma]) * num_train_timesteps,
                    return_dict=False, **both)[0]  # fmt: skip
        v_u, v_c = out.chunk(2)
        return v_c + weight * (v_c - v_u)

    return v


def semantic_loss(
    *, student: Velocity, teacher: Velocity, target: Velocity, x0: Tensor, eps: Tensor, index: Tensor,
    grid: SigmaGrid, config: SemanticStageConfig, huber_c: float,
) -> tuple[Tensor, dict[str, float]]:  # fmt: skip
    """Stage I: ``pseudo_huber(x_hat, x_tilde) + w_tc * TCL(x_hat, x_tilde)`` (spec §3.1-3.2)."""
    x_hat, x_tilde, _ = consistency_pair(
        student=student, teacher=teacher, target=target, x0=x0, eps=eps, index=index, grid=grid
    )
    l_cd = pseudo_huber(x_hat, x_tilde, huber_c)
    l_tc = temporal_coherence_loss(x_hat, x_tilde, config.tcl_stride)
    loss = l_cd if l_tc is None else l_cd + config.tcl_weight * l_tc
    metrics = {"loss": loss.item(), "loss_cd": l_cd.item()}
    if l_tc is not None:
        metrics["loss_tc"] = l_tc.item()
    return loss, metrics


def detail_generator_loss(
    *, student: Velocity, teacher: Velocity, target: Velocity, features: TeacherFeatures,
    discriminator: Discriminator, cond: dict[str, Tensor], x0: Tensor, eps: Tensor, index: Tensor,
    adv_index: Tensor, xi: Tensor, grid: SigmaGrid, token_grid: tuple[int, int, int], config: DetailStageConfig,
    huber_c: float,
) -> tuple[Tensor, dict[str, float], tuple[list[Tensor], list[Tensor]]]:  # fmt: skip
    """Stage II generator objective (spec §4.3-4.6).

    ``L_G = huber + adv_weight * (hinge_factor * hinge_G(D(F_fake)) + lambda_FM * MSE(R_fake, R_real))``, where F are
    the frozen teacher's tapped tokens of the re-noised prediction (fake) and target (real) and R their read-outs.
    Gradients flow through the frozen teacher into the student. Returns the loss, metrics and the detached
    (fake, real) tokens the discriminator step reuses (spec §8 item 15).
    """
    x_hat, x_tilde, sigma_end = consistency_pair(
        student=student, teacher=teacher, target=target, x0=x0, eps=eps, index=index, grid=grid
    )
    l_cd = pseudo_huber(x_hat, x_tilde, huber_c)
    sigma_a = grid.sigma_prev.to(x0.device)[adv_index].to(x0.dtype)
    fake = renoise(x_hat, xi, sigma_a, sigma_end)
    real = renoise(x_tilde, xi, sigma_a, sigma_end)
    t_adv = sigma_a * grid.config.num_train_timesteps
    fake_tokens, fake_readouts = features(fake, t_adv, cond)
    with torch.no_grad():
        real_tokens, real_readouts = features(real, t_adv, cond)
    discriminator.requires_grad_(False)
    try:
        l_hinge = generator_hinge(discriminator(fake_tokens, token_grid), config.hinge_factor)
    finally:
        discriminator.requires_grad_(True)
    l_fm = feature_matching(fake_readouts, real_readouts)
    loss = l_cd + config.adv_weight * (l_hinge + config.fm_weight * l_fm)
    metrics = {"loss": loss.item(), "loss_cd": l_cd.item(), "loss_g_hinge": l_hinge.item(), "loss_fm": l_fm.item()}
    return loss, metrics, ([t.detach() for t in fake_tokens], real_tokens)


def discriminator_loss(
    discriminator: Discriminator,
    fake_tokens: list[Tensor],
    real_tokens: list[Tensor],
    token_grid: tuple[int, int, int],
) -> Tensor:
    """Stage II discriminator hinge on the (detached) features of the generator step (spec §4.6)."""
    return discriminator_hinge(discriminator(fake_tokens, token_grid), discriminator(real_tokens, token_grid))


def lerp_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``p_ema <- decay * p_ema + (1 - decay) * p``, called after the optimizer step (spec §8 item 12)."""
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.lerp_(p, 1 - decay)
