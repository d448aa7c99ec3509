"""Wan2.1 / Wan2.2 family: diffusers' ``WanPipeline`` components, prompt encoding, latent (de)normalisation.

Real checkpoints load from a diffusers folder or hub id (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``). Tiny models of the
same classes are built from config (:func:`tiny_wan_components`) so every code path runs offline on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from torch import Tensor
from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

from dcm.geometry import VideoGeometry

# docs/algorithm.md "Stage II: detail expert": the detail expert duplicates Wan's timestep/text embedder and its output
# projection. ``norm_out`` has no parameters and ``scale_shift_table`` stays shared, as in the reference.
DUPLICATED_MODULES = ("condition_embedder", "proj_out")
COND_KEYS = ("encoder_hidden_states",)
# Wan's own default text length (WanPipeline.__call__ max_sequence_length); tiny presets use less.
DEFAULT_MAX_SEQUENCE_LENGTH = 512


@dataclass(frozen=True, kw_only=True)
class TinyWanSpec:
    """Sizes of a tiny Wan pipeline (env notes: a 28k-parameter transformer runs a 4-step video in ~0.1 s)."""

    num_layers: int = 2
    num_attention_heads: int = 2
    attention_head_dim: int = 12
    ffn_dim: int = 32
    text_dim: int = 32
    text_layers: int = 2
    # Attention and feed-forward widths of the text encoder; None: text_dim // 2 and 2 * text_dim. A wide text_dim
    # (Wan's real 4096) with narrow inner widths keeps the encoder small.
    text_kv_dim: int | None = None
    text_ff_dim: int | None = None
    vae_base_dim: int = 3
    latent_channels: int = 16
    rope_max_seq_len: int = 32
    max_sequence_length: int = 32
    shift: float = 5.0


def tiny_wan_components(spec: TinyWanSpec | None = None, *, seed: int = 0) -> dict:
    """Randomly initialised tiny ``WanPipeline`` components, built offline from config.

    Returns:
        dict with transformer, vae, text_encoder (UMT5), tokenizer (ByT5, no vocab file) and scheduler.
    """
    spec = spec or TinyWanSpec()
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=spec.num_attention_heads,
        attention_head_dim=spec.attention_head_dim,
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        text_dim=spec.text_dim,
        freq_dim=256,
        ffn_dim=spec.ffn_dim,
        num_layers=spec.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=spec.rope_max_seq_len,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=spec.vae_base_dim,
        z_dim=spec.latent_channels,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    tokenizer = ByT5Tokenizer()
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=spec.text_dim,
            d_kv=spec.text_kv_dim or spec.text_dim // 2,
            d_ff=spec.text_ff_dim or 2 * spec.text_dim,
            num_layers=spec.text_layers,
            num_heads=2,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=spec.shift)
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


class WanFamily:
    """Family adapter for ``WanPipeline``: what the platform needs to know about Wan models."""

    name = "wan"
    pipeline_class = WanPipeline
    transformer_class = WanTransformer3DModel
    duplicated_modules = DUPLICATED_MODULES
    cond_keys = COND_KEYS
    transformer_names = ("transformer", "transformer_2")

    def geometry(self, pipe: WanPipeline) -> VideoGeometry:
        transformer = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
        return self.geometry_from_configs(transformer.config, pipe.vae.config)

    @staticmethod
    def geometry_from_configs(transformer_config, vae_config) -> VideoGeometry:
        """From the ``transformer/config.json`` and ``vae/config.json`` contents (dicts or diffusers configs)."""
        return VideoGeometry(
            scale_factor_temporal=vae_config["scale_factor_temporal"],
            scale_factor_spatial=vae_config["scale_factor_spatial"],
            patch_size=tuple(transformer_config["patch_size"]),
            latent_channels=transformer_config["in_channels"],
            max_positions=transformer_config["rope_max_seq_len"],  # WanRotaryPosEmbed's table length per axis
        )

    def encode_prompts(self, pipe: WanPipeline, prompts: list[str], *, max_sequence_length: int) -> dict[str, Tensor]:
        """UMT5 embeddings padded to ``max_sequence_length`` (fixed, so a prompt's embedding is batch-independent).

        Returns:
            ``{"encoder_hidden_states": (B, L, D_text)}``.
        """
        embeds, _ = pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length, device=pipe.device
        )
        return {"encoder_hidden_states": embeds}

    @torch.no_grad()
    def decode_latents(self, pipe: WanPipeline, latents: Tensor) -> Tensor:
        """(B, C, F, H, W) normalised latents -> (B, F', H', W', 3) float video in [0, 1] (as WanPipeline decodes)."""
        latents = latents.to(pipe.vae.dtype)
        mean, std = latent_stats(pipe.vae, latents)
        video = pipe.vae.decode(latents * std + mean, return_dict=False)[0]  # (B, 3, F', H', W') in [-1, 1]
        return (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)

    @torch.no_grad()
    def encode_video(self, pipe: WanPipeline, video: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """(B, F', H', W', 3) float video in [0, 1] -> (B, C, F, H, W) normalised latents ``(z - mean) / std``."""
        pixels = video.permute(0, 4, 1, 2, 3).to(pipe.vae.dtype) * 2 - 1
        z = pipe.vae.encode(pixels).latent_dist.sample(generator)
        mean, std = latent_stats(pipe.vae, z)
        return (z - mean) / std


def latent_stats(vae: AutoencoderKLWan, like: Tensor) -> tuple[Tensor, Tensor]:
    """The VAE config's per-channel ``latents_mean`` / ``latents_std``, each (1, C, 1, 1, 1) on ``like``'s device and
    dtype: Wan latents are normalised as ``(z - mean) / std``."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(like.device, like.dtype)
    std = torch.tensor(vae.config.latents_std).view(shape).to(like.device, like.dtype)
    return mean, std


def tapped_blocks(transformer: WanTransformer3DModel) -> torch.nn.ModuleList:
    """The blocks whose outputs the Stage II discriminator reads (all 30 in Wan2.1-1.3B; docs/algorithm.md,
    "Stage II: detail expert")."""
    return transformer.blocks


def timestep_embedder(transformer: WanTransformer3DModel) -> torch.nn.Module:
    """The module whose first output is ``temb`` (B, D), used by the output head."""
    return transformer.condition_embedder


def readout(transformer: WanTransformer3DModel, hidden: Tensor, temb: Tensor, latent_shape: tuple[int, ...]) -> Tensor:
    """The teacher's output head applied to intermediate tokens (the "read-outs" of docs/algorithm.md, "Stage II:
    detail expert").

    Follows the output stage of ``WanTransformer3DModel.forward`` (diffusers 0.42): AdaLN from
    ``scale_shift_table + temb``, ``norm_out``, ``proj_out``, unpatchify.

    Args:
        hidden: (B, L, D) tokens after a block. temb: (B, D). latent_shape: (B, C, F, H, W) of the model input.
    Returns:
        (B, C_out, F, H, W).
    """
    batch, _, frames, height, width = latent_shape
    p_t, p_h, p_w = transformer.config.patch_size
    shift, scale = (transformer.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)  # (B, 1, D)
    x = (transformer.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
    x = transformer.proj_out(x)  # (B, L, p_t * p_h * p_w * C_out)
    x = x.reshape(batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C_out, F', p_t, H', p_h, W', p_w)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
