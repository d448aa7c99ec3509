"""Training functions for the demo stack: a tiny ``AutoencoderKLWan`` and a tiny ``WanTransformer3DModel`` teacher.

Both train on clips of :mod:`dcm_demo.world` (pixels in [-1, 1], layout (B, 3, F, H, W)). The teacher learns flow
matching on normalised VAE latents: ``x_sigma = sigma * eps + (1 - sigma) * x0``, target velocity ``eps - x0``, with
shifted-uniform sigmas and caption dropout (so classifier-free guidance works). Pure torch; saving is the job's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch import Tensor

from dcm.config import DEFAULT_NUM_TRAIN_TIMESTEPS
from dcm.distill.consistency import noisy
from dcm.schedule import shift_sigma
from dcm_demo.evaluate import score_video, summarise
from dcm_demo.world import COLOURS, WorldConfig, make_clip


@dataclass(frozen=True, kw_only=True)
class DemoVAEConfig:
    """A small Wan VAE: 4x spatial, 4x temporal compression, 16 latent channels (docs/demo-model.md, "The VAE").

    Training runs in three phases: ``num_steps - long_clip_steps`` steps on short clips cropped around the object,
    ``long_clip_steps`` on two-chunk clips, then ``finetune_steps`` on full-length clips.
    """

    base_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 2)  # 4x spatial: at 8x a CPU-sized VAE drew every shape as a blob
    temporal_downsample: tuple[bool, ...] = (True, True)
    z_dim: int = 16
    num_steps: int = 3000
    batch_size: int = 8
    train_frames: int = 5  # 1 + 4k frames: the causal VAE's first frame plus one chunk of 4, a cheap clip
    crop_size: int | None = 32  # windows around the object: 4x the steps per second, spent where the shapes are
    long_clip_frames: int = 9  # two chunks, so the decoder learns to hand its cache over from one to the next
    long_clip_batch_size: int = 2
    long_clip_steps: int = 500
    finetune_steps: int = 250  # full-length clips: the hand-over learnt up to the last frame
    finetune_batch_size: int = 2
    finetune_lr: float = 3e-4
    finetune_edge_weight: float = 1.0
    edge_weight: float = 1.0  # L1 on image gradients: sharp edges tell a triangle from a circle
    lr: float = 1e-3
    min_lr: float = 1e-4  # end of the cosine decay
    kl_weight: float = 1e-6
    # Hinge keeping colours apart in latent space (:func:`colour_contrast`): without it blue and purple encode nearly
    # alike and the teacher mixes them up.
    colour_contrast_weight: float = 1.0
    colour_contrast_margin: float = 0.25
    object_weight: float = 20.0  # objects cover a few percent of the frame: unweighted L1 paints the background
    object_margin: int = 3  # a weighted ring around the object, or blurry edges swell into blobs
    object_threshold: float = 0.3  # L2 over RGB in [-1, 1] from the frame's background: the object's pixels


@dataclass(frozen=True, kw_only=True)
class DemoTeacherConfig:
    """A small Wan transformer teacher, trained by flow matching on a fixed set of pre-encoded clips
    (docs/demo-model.md, "The teacher", for the runs behind each setting)."""

    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    ffn_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)  # as Wan2.1; (1, 4, 4) left blotches and stray objects
    num_steps: int = 6000
    batch_size: int = 16
    lr: float = 5e-4
    min_lr: float = 5e-5  # end of the cosine decay
    warmup_steps: int = 0
    caption_dropout: float = 0.1  # the empty prompt's share, so classifier-free guidance has something to contrast
    shift: float = 5.0  # of the training noise levels, sigma = shift(u), u uniform; sampling uses the demo grid's
    ema_decay: float = 0.0  # 0: ship the trained weights; else an EMA of them
    # Latent cells of the object (further than `object_threshold` from the frame's median cell, ~11 % of the cells)
    # weigh `1 + object_weight` times in the loss: unweighted, the model is spent on the background.
    object_weight: float = 4.0
    object_threshold: float = 4.0

    def __post_init__(self) -> None:
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.warmup_steps < self.num_steps:
            raise ValueError(f"warmup_steps must be in [0, num_steps={self.num_steps}), got {self.warmup_steps}")


def clip_batch(seeds: range | list[int], world: WorldConfig) -> tuple[Tensor, list[str]]:
    """Pixels (B, 3, F, H, W) in [-1, 1] and captions of the clips with these seeds."""
    clips = [make_clip(s, world) for s in seeds]
    pixels = torch.from_numpy(np.stack([c.frames for c in clips])).float() / 127.5 - 1
    return pixels.permute(0, 4, 1, 2, 3), [c.caption for c in clips]


def object_crops(pixels: Tensor, size: int, *, threshold: float, generator: torch.Generator) -> Tensor:
    """(B, 3, F, H, W) -> (B, 3, F, size, size): per clip, a window holding the object's mean position over the clip,
    shifted at random by up to a quarter window (clamped to the frame) so objects are not always centred."""
    _, _, _, height, width = pixels.shape
    if size > min(height, width):
        raise ValueError(f"crop_size {size} is larger than the {height}x{width} frames")
    mask = object_mask(pixels, threshold=threshold)[:, 0]  # (B, F, H, W)
    crops = []
    for clip, clip_mask in zip(pixels, mask):
        ys, xs = torch.nonzero(clip_mask.any(0), as_tuple=True)
        centre = (ys.float().mean(), xs.float().mean()) if len(ys) else (height / 2, width / 2)
        jitter = (torch.rand(2, generator=generator) - 0.5) * (size / 2)
        top = int((centre[0] + jitter[0] - size / 2).round().clamp(0, height - size))
        left = int((centre[1] + jitter[1] - size / 2).round().clamp(0, width - size))
        crops.append(clip[..., top : top + size, left : left + size])
    return torch.stack(crops)


def build_vae(config: DemoVAEConfig) -> AutoencoderKLWan:
    if len(config.temporal_downsample) != len(config.dim_mult) - 1:
        raise ValueError(f"temporal_downsample needs {len(config.dim_mult) - 1} entries (one per downsampling), "
                         f"got {config.temporal_downsample}")  # fmt: skip
    return AutoencoderKLWan(
        base_dim=config.base_dim, z_dim=config.z_dim, dim_mult=list(config.dim_mult), num_res_blocks=1,
        temperal_downsample=list(config.temporal_downsample),
        scale_factor_temporal=2 ** sum(config.temporal_downsample),
        scale_factor_spatial=2 ** (len(config.dim_mult) - 1),
    )  # fmt: skip


def object_mask(pixels: Tensor, *, threshold: float, margin: int = 0) -> Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> (B, 1, F, H, W) bool: pixels on or within ``margin`` pixels (a square
    neighbourhood) of the object. The background of a frame is the median colour of its border pixels (as
    ShapesBench measures it); an object pixel is further than ``threshold`` from it."""
    border = torch.cat([pixels[..., 0, :], pixels[..., -1, :], pixels[..., :, 0], pixels[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values  # (B, 3, F)
    near = (pixels - background[..., None, None]).norm(dim=1, keepdim=True) > threshold
    if margin:
        near = F.max_pool3d(near.float(), kernel_size=(1, 2 * margin + 1, 2 * margin + 1), stride=1,
                            padding=(0, margin, margin)) > 0  # fmt: skip
    return near


def object_weights(pixels: Tensor, *, weight: float, threshold: float, margin: int = 0) -> Tensor:
    """Per-pixel loss weights ``1 + weight * near_object`` (see :func:`object_mask`): (B, 1, F, H, W)."""
    return 1 + weight * object_mask(pixels, threshold=threshold, margin=margin).to(pixels.dtype)


def recolour_objects(pixels: Tensor, world: WorldConfig, *, threshold: float, generator: torch.Generator) -> Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> the same clips with each object's pixels (:func:`object_mask`) painted in
    another colour of ``world.colours``, drawn at random; a clip's own colour is the palette entry nearest the mean of
    its object pixels."""
    palette = torch.tensor([COLOURS[c] for c in world.colours], dtype=pixels.dtype) / 127.5 - 1  # (K, 3)
    mask = object_mask(pixels, threshold=threshold)  # (B, 1, F, H, W)
    area = mask.sum(dim=(2, 3, 4)).clamp_min(1)
    mean = (pixels * mask).sum(dim=(2, 3, 4)) / area  # (B, 3)
    own = torch.cdist(mean, palette).argmin(dim=1)
    other = (own + torch.randint(1, len(palette), own.shape, generator=generator)) % len(palette)
    return torch.where(mask, palette[other][..., None, None, None], pixels)


def colour_contrast(latents: Tensor, recoloured: Tensor, *, margin: float) -> Tensor:
    """``mean(relu(margin - |z - z'| / |z - roll(z)|))`` over the batch: latents (B, C, F, H, W) of clips and of
    their recoloured versions; the denominator (the distance to the batch's next clip) carries no gradient, so the
    ratio can only grow by moving the colours apart, not by scaling the latent space."""
    flat, flat_recoloured = latents.flatten(1), recoloured.flatten(1)
    colour = (flat - flat_recoloured).norm(dim=1)
    other = (flat - flat.roll(1, dims=0)).norm(dim=1).detach().clamp_min(1e-6)
    return F.relu(margin - colour / other).mean()


def vae_loss(
    vae: AutoencoderKLWan, pixels: Tensor, config: DemoVAEConfig, *, edge_weight: float = 0.0,
    recoloured: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """Object-weighted L1 reconstruction (+ ``edge_weight`` x L1 of the horizontal and vertical image gradients)
    + a small KL term; pixels (B, 3, F, H, W) in [-1, 1]. With ``recoloured`` (the same clips repainted,
    :func:`recolour_objects`) also ``config.colour_contrast_weight`` x :func:`colour_contrast`; they are encoded, not
    decoded.

    The decoder reads the posterior mean: a deterministic autoencoder (sampling the posterior with its learned
    variance left a CPU-sized decoder averaging over latent noise: docs/demo-model.md, "The VAE").
    """
    batch = len(pixels)
    contrast = recoloured is not None and config.colour_contrast_weight > 0
    posterior = vae.encode(torch.cat([pixels, recoloured]) if contrast else pixels).latent_dist
    latents = posterior.mode()
    if contrast:
        loss = config.colour_contrast_weight * colour_contrast(latents[:batch], latents[batch:],
                                                               margin=config.colour_contrast_margin)  # fmt: skip
        latents = latents[:batch]
    else:
        loss = torch.zeros((), dtype=pixels.dtype)
    reconstruction = vae.decode(latents).sample
    weights = object_weights(pixels, weight=config.object_weight, threshold=config.object_threshold,
                             margin=config.object_margin)  # fmt: skip
    l1 = ((reconstruction - pixels).abs() * weights).sum() / (weights.sum() * pixels.shape[1])
    loss = loss + l1 + config.kl_weight * posterior.kl().mean()
    if edge_weight:
        for dim in (-1, -2):
            error = (reconstruction.diff(dim=dim) - pixels.diff(dim=dim)).abs().mean()
            loss = loss + edge_weight * error
    return loss


def train_vae(
    vae: AutoencoderKLWan, config: DemoVAEConfig, world: WorldConfig, *, first_seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:  # fmt: skip
    """Trains on fresh short clips every step (seeds first_seed, first_seed + 1, ...); returns the losses."""
    vae.train()
    short, long = replace(world, num_frames=config.train_frames), replace(world, num_frames=config.long_clip_frames)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.num_steps, eta_min=config.min_lr)
    generator = torch.Generator().manual_seed(first_seed)
    losses = []
    for step in range(config.num_steps):
        is_long = step >= config.num_steps - config.long_clip_steps
        batch = config.long_clip_batch_size if is_long else config.batch_size
        start = first_seed + step * config.batch_size
        pixels, _ = clip_batch(range(start, start + batch), long if is_long else short)
        if config.crop_size is not None and config.crop_size < world.size and not is_long:
            pixels = object_crops(pixels, config.crop_size, threshold=config.object_threshold, generator=generator)
        losses.append(_vae_step(vae, optimizer, schedule, pixels, config, world, config.edge_weight, generator))
        if callback is not None:
            callback(step, losses[-1])
    vae.eval()
    return losses


def _vae_step(
    vae: AutoencoderKLWan, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler,
    pixels: torch.Tensor, config: DemoVAEConfig, world: WorldConfig, edge_weight: float, generator: torch.Generator,
) -> float:  # fmt: skip
    """One optimiser step of both VAE phases on ``pixels`` (the colour hinge's repainted copies drawn here)."""
    recoloured = (recolour_objects(pixels, world, threshold=config.object_threshold, generator=generator)
                  if config.colour_contrast_weight else None)  # fmt: skip
    loss = vae_loss(vae, pixels, config, edge_weight=edge_weight, recoloured=recoloured)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    return loss.item()


def finetune_vae(
    vae: AutoencoderKLWan, config: DemoVAEConfig, world: WorldConfig, *, first_seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:  # fmt: skip
    """The second phase: full-length clips (``world.num_frames``) with the edge term, its own cosine schedule.

    Its clip seeds start after :func:`train_vae`'s (``first_seed + num_steps * batch_size``)."""
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.finetune_lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.finetune_steps,
                                                          eta_min=config.min_lr)  # fmt: skip
    first = first_seed + config.num_steps * config.batch_size
    generator = torch.Generator().manual_seed(first)
    losses = []
    for step in range(config.finetune_steps):
        start = first + step * config.finetune_batch_size
        pixels, _ = clip_batch(range(start, start + config.finetune_batch_size), world)
        losses.append(_vae_step(vae, optimizer, schedule, pixels, config, world, config.finetune_edge_weight,
                                generator))  # fmt: skip
        if callback is not None:
            callback(step, losses[-1])
    vae.eval()
    return losses


# diffusers clamps the posterior's log-variance to [-30, 20]: -30 makes its std ~3e-7, a point mass.
MIN_LOGVAR = -30.0


@torch.no_grad()
def make_deterministic(vae: AutoencoderKLWan) -> None:
    """Sets the posterior's log-variance to its minimum for every input, so ``latent_dist.sample()`` equals the
    mean the decoder was trained on (the log-variance half of ``quant_conv``'s output: weights 0, bias -30)."""
    z_dim = vae.config.z_dim
    vae.quant_conv.weight[z_dim:] = 0
    vae.quant_conv.bias[z_dim:] = MIN_LOGVAR


@torch.no_grad()
def set_latent_stats(vae: AutoencoderKLWan, world: WorldConfig, *, num_clips: int = 64, first_seed: int = 0) -> None:
    """Per-channel latent mean/std written into the VAE config, as Wan pipelines normalise with them."""
    pixels, _ = clip_batch(range(first_seed, first_seed + num_clips), world)
    z = vae.encode(pixels).latent_dist.mean  # (N, C, F, H, W)
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-4)
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())


@torch.no_grad()
def reconstruction_report(vae: AutoencoderKLWan, world: WorldConfig, seeds: range) -> dict[str, float]:
    """ShapesBench of the VAE's reconstructions of these clips (full length): the gate before training a teacher."""
    scores = []
    for seed in seeds:
        pixels, _ = clip_batch([seed], world)
        reconstruction = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
        frames = ((reconstruction[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        scores.append(score_video(frames, make_clip(seed, world).attributes))
    return summarise(scores)


def build_teacher(config: DemoTeacherConfig, *, latent_channels: int, text_dim: int) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=config.patch_size, num_attention_heads=config.num_attention_heads,
        attention_head_dim=config.attention_head_dim, in_channels=latent_channels, out_channels=latent_channels,
        text_dim=text_dim, freq_dim=256, ffn_dim=config.ffn_dim, num_layers=config.num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )  # fmt: skip


def latent_object_weights(x0: Tensor, *, weight: float, threshold: float) -> Tensor:
    """(B, C, F, H, W) latents -> (B, 1, F, H, W) weights ``1 + weight * is_object``; a cell is object when it is
    further than ``threshold`` (L2 over channels) from its frame's median cell."""
    background = x0.flatten(3).median(dim=-1).values[..., None, None]  # (B, C, F, 1, 1)
    distance = (x0 - background).norm(dim=1, keepdim=True)
    return 1 + weight * (distance > threshold).to(x0.dtype)


def flow_matching_loss(
    transformer: WanTransformer3DModel, x0: Tensor, text: Tensor, *, shift: float, generator: torch.Generator,
    object_weight: float = 0.0, object_threshold: float = DemoTeacherConfig.object_threshold,
) -> Tensor:  # fmt: skip
    """MSE between the predicted and the true velocity ``eps - x0`` at shifted-uniform sigmas. x0: (B, C, F, H, W).

    With ``object_weight`` the squared errors are weighted by :func:`latent_object_weights` (a weighted mean)."""
    eps = torch.randn(x0.shape, generator=generator)
    sigma = shift_sigma(torch.rand(x0.shape[0], generator=generator), shift)
    v = transformer(hidden_states=noisy(x0, eps, sigma), timestep=sigma * DEFAULT_NUM_TRAIN_TIMESTEPS,
                    encoder_hidden_states=text, return_dict=False)[0]  # fmt: skip
    if not object_weight:
        return F.mse_loss(v, eps - x0)
    weights = latent_object_weights(x0, weight=object_weight, threshold=object_threshold)
    return ((v - (eps - x0)) ** 2 * weights).sum() / (weights.sum() * x0.shape[1])


def cosine_lr(step: int, *, lr: float, min_lr: float, num_steps: int, warmup_steps: int = 0) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``num_steps`` (SGDR,
    Loshchilov & Hutter 2017, one cycle): a pure function of the step, so a resumed run needs no scheduler state."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, num_steps - warmup_steps))
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class TeacherTrainer:
    """Flow-matching training of a teacher on pre-encoded clips, one :meth:`train_step` at a time, with caption
    dropout (a dropped caption becomes the empty prompt) and an optional EMA of the weights.

    Its whole state (weights, EMA, optimiser moments, step, random generator) goes out through :meth:`state_dict`
    and back through :meth:`load_state_dict`, so a run stopped after any step continues bit for bit.

    Args:
        transformer: the teacher (trained in place).
        latents: (N, C, F, H, W) normalised VAE latents.
        text: (N, L, D) prompt embeddings of their captions; negative: (1, L, D) the empty prompt's.
        config: sizes, steps, learning rate, dropout, shift, EMA, loss weights.
        seed: seeds the generator of batches, caption dropout, noise and sigmas.
    """

    def __init__(
        self, transformer: WanTransformer3DModel, *, latents: Tensor, text: Tensor, negative: Tensor,
        config: DemoTeacherConfig, seed: int = 0,
    ) -> None:  # fmt: skip
        if latents.ndim != 5 or text.shape[0] != latents.shape[0] or negative.shape[1:] != text.shape[1:]:
            raise ValueError(f"need latents (N, C, F, H, W), text (N, L, D) and negative (1, L, D), got "
                             f"{tuple(latents.shape)}, {tuple(text.shape)}, {tuple(negative.shape)}")  # fmt: skip
        self.transformer, self.config = transformer.train(), config
        self.latents, self.text, self.negative = latents, text, negative
        self.optimizer = torch.optim.AdamW(transformer.parameters(), lr=config.lr)
        self.ema = {k: v.detach().clone() for k, v in transformer.state_dict().items()} if config.ema_decay else None
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0

    def train_step(self) -> float:
        """One optimiser step on a random batch; returns its loss."""
        config, batch = self.config, self.config.batch_size
        lr = cosine_lr(self.step, lr=config.lr, min_lr=config.min_lr, num_steps=config.num_steps,
                       warmup_steps=config.warmup_steps)  # fmt: skip
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        rows = torch.randint(0, len(self.latents), (batch,), generator=self.generator)
        drop = torch.rand(batch, generator=self.generator) < config.caption_dropout
        cond = torch.where(drop[:, None, None], self.negative.expand(batch, -1, -1), self.text[rows])
        loss = flow_matching_loss(
            self.transformer, self.latents[rows], cond, shift=config.shift, generator=self.generator,
            object_weight=config.object_weight, object_threshold=config.object_threshold,
        )  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        if self.ema is not None:
            self._update_ema()
        return loss.item()

    @torch.no_grad()
    def _update_ema(self) -> None:
        """``ema += (1 - d) (w - ema)`` with ``d = min(ema_decay, (1 + step) / (10 + step))``: the warm-up keeps the
        average from being dominated by the initial weights early on (as in timm's ModelEmaV2 with warm-up)."""
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for name, value in self.transformer.state_dict().items():
            if value.is_floating_point():
                self.ema[name].lerp_(value, 1 - decay)
            else:
                self.ema[name].copy_(value)

    def final_state_dict(self) -> dict[str, Tensor]:
        """The weights to ship: the EMA when there is one, else the trained weights."""
        return dict(self.ema) if self.ema is not None else self.transformer.state_dict()

    def state_dict(self) -> dict:
        """``{"model", "ema" (or absent), "optimizer", "step", "generator"}``: tensors, numbers and dicts only."""
        state = {"model": self.transformer.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "step": self.step, "generator": self.generator.get_state()}  # fmt: skip
        if self.ema is not None:
            state["ema"] = self.ema
        return state

    def load_state_dict(self, state: dict) -> None:
        if ("ema" in state) != (self.ema is not None):
            raise ValueError(f"checkpoint has ema={'ema' in state} but config.ema_decay={self.config.ema_decay}")
        self.transformer.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema = {k: v.clone() for k, v in state["ema"].items()}
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])


def train_teacher(
    transformer: WanTransformer3DModel, *, latents: Tensor, text: Tensor, negative: Tensor,
    config: DemoTeacherConfig, seed: int = 0, callback: Callable[[int, float], None] | None = None,
) -> list[float]:  # fmt: skip
    """Trains for ``config.num_steps`` in one go (:class:`TeacherTrainer`) and leaves the transformer holding the
    weights to ship (the EMA when there is one), in eval mode; returns the losses."""
    trainer = TeacherTrainer(transformer, latents=latents, text=text, negative=negative, config=config, seed=seed)
    losses = []
    while trainer.step < config.num_steps:
        losses.append(trainer.train_step())
        if callback is not None:
            callback(trainer.step - 1, losses[-1])
    transformer.load_state_dict(trainer.final_state_dict())
    transformer.eval()
    return losses
