"""Training functions for the demo stack: a tiny ``AutoencoderKLWan`` and a tiny ``WanTransformer3DModel`` teacher.

Both train on clips of :mod:`dcm_demo.world` (pixels in [-1, 1], layout (B, 3, F, H, W)). The teacher learns flow
matching on normalised VAE latents: ``x_sigma = sigma * eps + (1 - sigma) * x0``, target velocity ``eps - x0``, with
shifted-uniform sigmas and caption dropout (so classifier-free guidance works). Pure torch; saving is the job's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch import Tensor

from dcm.distill.consistency import noisy
from dcm.schedule import shift_sigma
from dcm_demo.evaluate import score_video, summarise
from dcm_demo.world import COLOURS, WorldConfig, make_clip


@dataclass(frozen=True, kw_only=True)
class DemoVAEConfig:
    """A small Wan VAE: 4x spatial, 4x temporal compression, 16 latent channels.

    The real Wan VAE compresses 8x in space; a CPU-sized one trained for minutes did not (measured: 8x with
    ``dim_mult (1, 2, 2, 2)``, 1500 steps, rendered every shape as a blob and drifted colours). At 4x an object of
    11-19 pixels spans 3-5 latent cells.
    """

    base_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 2)
    temporal_downsample: tuple[bool, ...] = (True, True)
    z_dim: int = 16
    num_steps: int = 3000
    batch_size: int = 8
    # Training clips are short (1 + 4k frames: the causal VAE's first frame plus k chunks of 4), which costs a
    # fraction of a full clip; the chunked encoder/decoder then runs on clips of any 1 + 4k length. The last
    # `long_clip_steps` steps use two-chunk clips (at a smaller batch) so the decoder also learns the hand-over of
    # its cache from one chunk to the next (measured: trained on 5-frame clips only, colours drift after frame 5).
    train_frames: int = 5
    # Short-clip steps train on `crop_size` x `crop_size` windows around the object (the VAE is convolutional): a
    # quarter of the pixels of a 64x64 frame, so four times the steps per second, spent where the shapes are.
    # None (or frames no larger than it) trains on whole frames.
    crop_size: int | None = 32
    long_clip_frames: int = 9
    long_clip_batch_size: int = 2
    long_clip_steps: int = 500
    # Then a fine-tune on full-length clips (all chunks, so the cache hand-over is learnt to the last frame) with an
    # extra L1 term on image gradients that sharpens edges (triangle vs circle). Measured before it: frames 9-17
    # of a 17-frame reconstruction lost their colours, and triangles came out as drops.
    finetune_steps: int = 250
    finetune_batch_size: int = 2
    finetune_lr: float = 3e-4
    finetune_edge_weight: float = 1.0
    # L1 on image gradients in the first phase too (the fine-tune has its own weight).
    edge_weight: float = 1.0
    lr: float = 1e-3
    min_lr: float = 1e-4  # end of the cosine decay
    kl_weight: float = 1e-6
    # Gaussian noise of this std added to the posterior mean before decoding (0 turns it off), so that the decoder
    # must tell colours apart through the noise. Without it (and without the colour hinge below) the encoder puts
    # colours of similar brightness almost on top of each other (blue~purple at 0.12 of the latent distance to
    # another layout, dcm_demo.geometry) and the teacher mixes them up. Measured with 0.1 (the means' std is ~0.4):
    # the full VAE stage's held-out reconstructions 100 / 87.5 / 100 % colour / shape / direction (vs 96.9 / 81.2 /
    # 100); on 16 clips red~green 0.20, blue~purple 0.21, green~blue 0.39, red~yellow 0.42 (vs 0.17, 0.12, 0.19,
    # 0.87: more even, the closest pair not much further apart); its 6000-step teacher (50 steps, CFG 5), 96
    # validation prompts: colour 85.4 % (vs 81.2), shape 38.5 % (vs 52.1), direction 95.8 % (vs 94.8). Off: the
    # colour hinge below separates the colours further for the same shape cost.
    latent_noise: float = 0.0
    # Hinge on colour: every training clip is also encoded with its object repainted in another palette colour, and
    # the loss adds `colour_contrast_weight * relu(colour_contrast_margin - d_colour / d_other)`, d_colour the latent
    # distance between the two versions and d_other (no gradient) the distance from the clip to the next clip of the
    # batch. It asks the encoder to keep colours apart, which plain reconstruction does not (see `latent_noise`); the
    # decoder is untouched. Measured on the full `vae` stage, then a 6000-step teacher on it (50 steps, CFG 5, 96
    # validation prompts; without the hinge: closest pair blue~purple 0.12, reconstructions 96.9 / 81.2 / 100 %
    # colour / shape / direction, teacher 81.2 / 52.1 / 94.8 %):
    # - margin 0.5: closest pair red~white 0.77 (blue~purple 1.08), reconstructions 100 / 84.4 / 100, but colour then
    #   outweighs layout in the latents and the teacher falls to 71.9 / 19.8 / 71.9 (late-appearing blobs);
    # - margin 0.25: closest pair green~purple 0.47, reconstructions 100 / 87.5 / 100, teacher 89.6 / 37.5 / 97.9
    #   (jitter 1.48 px vs 2.23): colour and motion gained, shape lost, as with `latent_noise`. The default: its DCM-4
    #   draws the prompted colour in 90.6 % of the validation videos (60.4 % on the VAE without the hinge).
    colour_contrast_weight: float = 1.0
    colour_contrast_margin: float = 0.25
    # Objects cover a few percent of the frame: without extra weight on their pixels the L1 loss is minimised by
    # painting the background (measured: 0% ShapesBench on reconstructions of a plain-L1 VAE after 600 steps).
    object_weight: float = 20.0
    # ... and on a ring of this many pixels around them: weighting the object pixels alone makes a blurry edge
    # cheaper painted in the object's colour than in the background's, so reconstructions swell into blobs
    # (measured: squares and triangles decoded with the fill ratio of a disc, ShapesBench shape 37 %).
    object_margin: int = 3
    # A pixel counts as object when its colour is this far (L2 over RGB in [-1, 1]) from its frame's background.
    object_threshold: float = 0.3


@dataclass(frozen=True, kw_only=True)
class DemoTeacherConfig:
    """A small Wan transformer teacher, trained on a fixed set of pre-encoded clips.

    Patch (1, 2, 2) as in Wan2.1: each token carries 64 latent values for a width of 128. Measured with patch
    (1, 4, 4) (256 values per token, 80 tokens, 0.15 s/step here): 8000 steps ended at a flow-matching loss of ~0.75
    and its 50-step samples scored 50 % colour / 38 % direction on 8 ShapesBench prompts (blotches, stray objects);
    with (1, 2, 2) (320 tokens, 0.24 s/step alone on 2 cores) the loss was below 0.5 after 500 steps.
    """

    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    ffn_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_steps: int = 6000
    batch_size: int = 16
    lr: float = 5e-4
    min_lr: float = 5e-5  # end of the cosine decay
    caption_dropout: float = 0.1
    shift: float = 5.0
    # The loss weighs latent cells that belong to the object `1 + object_weight` times (0 turns it off): the
    # object covers ~10 % of the cells, and an unweighted loss spends the model on the background. A cell is
    # object when its latent (normalised units) is further than `object_threshold` (L2 over channels) from the
    # frame's median cell; 4 marks ~11 % of the cells of the demo data.
    object_weight: float = 4.0
    object_threshold: float = 4.0


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

    The decoder reads the posterior mean (a deterministic autoencoder, as the platform encodes with ``mode()``
    for generation targets anyway) plus ``config.latent_noise``: sampling the posterior with its learned variance
    during a CPU-sized training run left the decoder averaging over latent noise (measured: blurry blobs and lost
    colours after 1500 steps).
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
    if config.latent_noise:
        latents = latents + config.latent_noise * torch.randn_like(latents)
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
        recoloured = (recolour_objects(pixels, world, threshold=config.object_threshold, generator=generator)
                      if config.colour_contrast_weight else None)  # fmt: skip
        loss = vae_loss(vae, pixels, config, edge_weight=config.edge_weight, recoloured=recoloured)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1])
    vae.eval()
    return losses


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
        recoloured = (recolour_objects(pixels, world, threshold=config.object_threshold, generator=generator)
                      if config.colour_contrast_weight else None)  # fmt: skip
        loss = vae_loss(vae, pixels, config, edge_weight=config.finetune_edge_weight, recoloured=recoloured)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
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
    v = transformer(hidden_states=noisy(x0, eps, sigma), timestep=sigma * 1000, encoder_hidden_states=text,
                    return_dict=False)[0]  # fmt: skip
    if not object_weight:
        return F.mse_loss(v, eps - x0)
    weights = latent_object_weights(x0, weight=object_weight, threshold=object_threshold)
    return ((v - (eps - x0)) ** 2 * weights).sum() / (weights.sum() * x0.shape[1])


def train_teacher(
    transformer: WanTransformer3DModel, *, latents: Tensor, text: Tensor, negative: Tensor,
    config: DemoTeacherConfig, seed: int = 0, callback: Callable[[int, float], None] | None = None,
) -> list[float]:  # fmt: skip
    """Flow-matching training on pre-encoded clips with caption dropout (a dropped caption becomes the empty prompt).

    Args:
        latents: (N, C, F, H, W) normalised VAE latents.
        text: (N, L, D) prompt embeddings of their captions; negative: (1, L, D) the empty prompt's.
    """
    transformer.train()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.num_steps, eta_min=config.min_lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(config.num_steps):
        rows = torch.randint(0, len(latents), (config.batch_size,), generator=generator)
        drop = torch.rand(config.batch_size, generator=generator) < config.caption_dropout
        cond = torch.where(drop[:, None, None], negative.expand(config.batch_size, -1, -1), text[rows])
        loss = flow_matching_loss(
            transformer, latents[rows], cond, shift=config.shift, generator=generator,
            object_weight=config.object_weight, object_threshold=config.object_threshold,
        )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1])
    transformer.eval()
    return losses
