"""Training functions for the demo stack: a tiny ``AutoencoderKLWan`` and a tiny ``WanTransformer3DModel`` teacher.

Both train on clips of :mod:`dcm.shapes.world` (pixels in [-1, 1], layout (B, 3, F, H, W)). The teacher learns flow
matching on normalised VAE latents: ``x_sigma = sigma * eps + (1 - sigma) * x0``, target velocity ``eps - x0``, with
shifted-uniform sigmas and caption dropout (so classifier-free guidance works). Pure torch; saving is the job's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch import Tensor

from dcm.distill.consistency import noisy
from dcm.schedule import shift_sigma
from dcm.shapes.world import WorldConfig, make_clip


@dataclass(frozen=True, kw_only=True)
class DemoVAEConfig:
    """A small Wan VAE (8x spatial, 4x temporal compression like the real one)."""

    base_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 2, 2)
    z_dim: int = 16
    num_steps: int = 1500
    batch_size: int = 4
    lr: float = 1e-3
    kl_weight: float = 1e-6


@dataclass(frozen=True, kw_only=True)
class DemoTeacherConfig:
    """A small Wan transformer teacher."""

    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    ffn_dim: int = 256
    num_steps: int = 3000
    batch_size: int = 8
    lr: float = 5e-4
    caption_dropout: float = 0.1
    shift: float = 5.0


def clip_batch(seeds: range | list[int], world: WorldConfig) -> tuple[Tensor, list[str]]:
    """Pixels (B, 3, F, H, W) in [-1, 1] and captions of the clips with these seeds."""
    clips = [make_clip(s, world) for s in seeds]
    pixels = torch.from_numpy(np.stack([c.frames for c in clips])).float() / 127.5 - 1
    return pixels.permute(0, 4, 1, 2, 3), [c.caption for c in clips]


def build_vae(config: DemoVAEConfig) -> AutoencoderKLWan:
    return AutoencoderKLWan(
        base_dim=config.base_dim, z_dim=config.z_dim, dim_mult=list(config.dim_mult), num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )  # fmt: skip


def vae_loss(vae: AutoencoderKLWan, pixels: Tensor, kl_weight: float) -> Tensor:
    """L1 reconstruction + a small KL term; pixels (B, 3, F, H, W) in [-1, 1]."""
    posterior = vae.encode(pixels).latent_dist
    reconstruction = vae.decode(posterior.sample()).sample
    return (reconstruction - pixels).abs().mean() + kl_weight * posterior.kl().mean()


def train_vae(
    vae: AutoencoderKLWan, config: DemoVAEConfig, world: WorldConfig, *, first_seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:  # fmt: skip
    """Trains on fresh clips every step (seeds first_seed, first_seed + 1, ...); returns the losses."""
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr)
    losses = []
    for step in range(config.num_steps):
        start = first_seed + step * config.batch_size
        pixels, _ = clip_batch(range(start, start + config.batch_size), world)
        loss = vae_loss(vae, pixels, config.kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1])
    vae.eval()
    return losses


@torch.no_grad()
def set_latent_stats(vae: AutoencoderKLWan, world: WorldConfig, *, num_clips: int = 64, first_seed: int = 0) -> None:
    """Per-channel latent mean/std written into the VAE config, as Wan pipelines normalise with them."""
    pixels, _ = clip_batch(range(first_seed, first_seed + num_clips), world)
    z = vae.encode(pixels).latent_dist.mean  # (N, C, F, H, W)
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-4)
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())


def build_teacher(config: DemoTeacherConfig, *, latent_channels: int, text_dim: int) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=config.num_attention_heads,
        attention_head_dim=config.attention_head_dim, in_channels=latent_channels, out_channels=latent_channels,
        text_dim=text_dim, freq_dim=256, ffn_dim=config.ffn_dim, num_layers=config.num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )  # fmt: skip


def flow_matching_loss(
    transformer: WanTransformer3DModel, x0: Tensor, text: Tensor, *, shift: float, generator: torch.Generator
) -> Tensor:
    """MSE between the predicted and the true velocity ``eps - x0`` at shifted-uniform sigmas. x0: (B, C, F, H, W)."""
    eps = torch.randn(x0.shape, generator=generator)
    sigma = shift_sigma(torch.rand(x0.shape[0], generator=generator), shift)
    v = transformer(hidden_states=noisy(x0, eps, sigma), timestep=sigma * 1000, encoder_hidden_states=text,
                    return_dict=False)[0]  # fmt: skip
    return F.mse_loss(v, eps - x0)


def train_teacher(
    transformer: WanTransformer3DModel, *, encode_latents: Callable[[Tensor], Tensor],
    encode_text: Callable[[list[str]], Tensor], config: DemoTeacherConfig, world: WorldConfig,
    first_seed: int = 0, callback: Callable[[int, float], None] | None = None,
) -> list[float]:  # fmt: skip
    """Flow-matching training with caption dropout (a dropped caption becomes the empty prompt)."""
    transformer.train()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(first_seed)
    losses = []
    for step in range(config.num_steps):
        start = first_seed + step * config.batch_size
        pixels, captions = clip_batch(range(start, start + config.batch_size), world)
        drop = torch.rand(len(captions), generator=generator) < config.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        with torch.no_grad():
            x0, text = encode_latents(pixels), encode_text(captions)
        loss = flow_matching_loss(transformer, x0, text, shift=config.shift, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1])
    transformer.eval()
    return losses
