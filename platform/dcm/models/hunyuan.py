"""HunyuanVideo family: diffusers' ``HunyuanVideoPipeline`` components, prompt encoding, latent scaling.

Real checkpoints load from a diffusers folder or hub id (``hunyuanvideo-community/HunyuanVideo``). HunyuanVideo is
guidance-distilled: it takes an *embedded* guidance value (``guidance * 1000``) instead of real CFG
(docs/algorithm.md, "Conventions").
Tiny models of the same classes build offline (:func:`tiny_hunyuan_components`) with in-code vocabularies.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
)
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, LlamaConfig, LlamaModel, LlamaTokenizer

from dcm.geometry import VideoGeometry

# docs/algorithm.md "Stage II: detail expert": HunyuanVideo's detail expert duplicates the timestep/guidance/
# pooled-text embedder, the AdaLN output norm and the output projection.
DUPLICATED_MODULES = ("time_text_embed", "norm_out", "proj_out")
COND_KEYS = ("encoder_hidden_states", "encoder_attention_mask", "pooled_projections", "guidance")
DEFAULT_MAX_SEQUENCE_LENGTH = 256
# docs/algorithm.md "Inference schedules": the reference samples with embedded guidance 6.0 (x1000 inside the model).
DEFAULT_EMBEDDED_GUIDANCE = 6.0
GUIDANCE_MULTIPLIER = 1000.0
# Tiny tokenizers have no chat template: the prompt is used as it is.
PLAIN_PROMPT_TEMPLATE = {"template": "{}", "crop_start": 0}


@dataclass(frozen=True, kw_only=True)
class TinyHunyuanSpec:
    """Sizes of a tiny HunyuanVideo pipeline (diffusers' test configuration)."""

    num_layers: int = 1
    num_single_layers: int = 1
    num_attention_heads: int = 2
    attention_head_dim: int = 10
    latent_channels: int = 4
    text_dim: int = 16
    pooled_dim: int = 8
    max_sequence_length: int = 16
    shift: float = 7.0


def _char_vocab(prefix: dict[str, int], *, word_end: bool) -> dict[str, int]:
    vocab = dict(prefix)
    for c in string.printable[:95]:
        vocab.setdefault(c, len(vocab))
        if word_end:
            vocab.setdefault(c + "</w>", len(vocab))
    return vocab


def tiny_hunyuan_components(spec: TinyHunyuanSpec | None = None, *, seed: int = 0) -> dict:
    """Randomly initialised tiny ``HunyuanVideoPipeline`` components with character-level in-code tokenizers."""
    spec = spec or TinyHunyuanSpec()
    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        num_attention_heads=spec.num_attention_heads,
        attention_head_dim=spec.attention_head_dim,
        num_layers=spec.num_layers,
        num_single_layers=spec.num_single_layers,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=spec.text_dim,
        pooled_projection_dim=spec.pooled_dim,
        rope_axes_dim=(2, 4, 4),
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=spec.latent_channels,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        act_fn="silu",
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )
    tokenizer = LlamaTokenizer(
        vocab=_char_vocab({"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "▁": 4}, word_end=False),
        merges=[],
        pad_token="<pad>",
    )
    tokenizer_2 = CLIPTokenizer(
        vocab=_char_vocab({"<|startoftext|>": 0, "<|endoftext|>": 1}, word_end=True),
        merges=[],
        pad_token="<|endoftext|>",
    )
    torch.manual_seed(seed)
    text_encoder = LlamaModel(
        LlamaConfig(
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
            hidden_size=spec.text_dim,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
        )
    )
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=spec.pooled_dim,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer_2),
            projection_dim=32,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=spec.shift)
    return dict(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        scheduler=scheduler,
    )


class HunyuanFamily:
    """Family adapter for ``HunyuanVideoPipeline``."""

    name = "hunyuan"
    pipeline_class = HunyuanVideoPipeline
    transformer_class = HunyuanVideoTransformer3DModel
    duplicated_modules = DUPLICATED_MODULES
    cond_keys = COND_KEYS
    transformer_names = ("transformer",)

    def __init__(self, embedded_guidance: float = DEFAULT_EMBEDDED_GUIDANCE, prompt_template: dict | None = None):
        self.embedded_guidance = embedded_guidance
        self.prompt_template = prompt_template

    def geometry(self, pipe: HunyuanVideoPipeline) -> VideoGeometry:
        return self.geometry_from_configs(pipe.transformer.config, pipe.vae.config)

    @staticmethod
    def geometry_from_configs(transformer_config, vae_config) -> VideoGeometry:
        """From the ``transformer/config.json`` and ``vae/config.json`` contents; HunyuanVideo's rotary embedding is
        computed for any grid, so the model sets no size limit."""
        cfg = transformer_config
        return VideoGeometry(
            scale_factor_temporal=vae_config["temporal_compression_ratio"],
            scale_factor_spatial=vae_config["spatial_compression_ratio"],
            patch_size=(cfg["patch_size_t"], cfg["patch_size"], cfg["patch_size"]),
            latent_channels=cfg["in_channels"],
        )

    def _template(self, pipe: HunyuanVideoPipeline) -> dict:
        if self.prompt_template is not None:
            return self.prompt_template
        # The real Llama-3 tokenizer knows the chat template's header tokens; in-code tiny vocabularies do not.
        knows_template = "<|start_header_id|>" in pipe.tokenizer.get_vocab()
        return DEFAULT_PROMPT_TEMPLATE if knows_template else PLAIN_PROMPT_TEMPLATE

    def encode_prompts(
        self, pipe: HunyuanVideoPipeline, prompts: list[str], *, max_sequence_length: int
    ) -> dict[str, Tensor]:
        """Llama hidden states, CLIP pooled embedding and the embedded guidance.

        Returns:
            ``encoder_hidden_states`` (B, L, D), ``encoder_attention_mask`` (B, L), ``pooled_projections`` (B, P),
            ``guidance`` (B,) = embedded guidance * 1000.
        """
        embeds, pooled, mask = pipe.encode_prompt(
            prompts,
            prompts,
            prompt_template=self._template(pipe),
            max_sequence_length=max_sequence_length,
            device=pipe.device,
        )
        guidance = torch.full((len(prompts),), self.embedded_guidance * GUIDANCE_MULTIPLIER, dtype=embeds.dtype)
        return {
            "encoder_hidden_states": embeds,
            "encoder_attention_mask": mask,
            "pooled_projections": pooled,
            "guidance": guidance.to(embeds.device),
        }

    @torch.no_grad()
    def decode_latents(self, pipe: HunyuanVideoPipeline, latents: Tensor) -> Tensor:
        """(B, C, F, H, W) scaled latents -> (B, F', H', W', 3) float video in [0, 1]."""
        video = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)

    @torch.no_grad()
    def encode_video(
        self, pipe: HunyuanVideoPipeline, video: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, F', H', W', 3) in [0, 1] -> (B, C, F, H, W) latents times the VAE scaling factor ("Conventions")."""
        pixels = video.permute(0, 4, 1, 2, 3).to(pipe.vae.dtype) * 2 - 1
        return pipe.vae.encode(pixels).latent_dist.sample(generator) * pipe.vae.config.scaling_factor


def tapped_blocks(transformer: HunyuanVideoTransformer3DModel) -> torch.nn.ModuleList:
    """The single-stream blocks the Stage II discriminator reads (40 in HunyuanVideo; docs/algorithm.md, "Stage II:
    detail expert")."""
    return transformer.single_transformer_blocks


def timestep_embedder(transformer: HunyuanVideoTransformer3DModel) -> torch.nn.Module:
    """The module whose first output is ``temb`` (B, D)."""
    return transformer.time_text_embed


def readout(
    transformer: HunyuanVideoTransformer3DModel, hidden: Tensor, temb: Tensor, latent_shape: tuple[int, ...]
) -> Tensor:
    """The teacher's output head on intermediate latent tokens (the "read-outs" of docs/algorithm.md,
    "Stage II: detail expert").

    Follows the output stage of ``HunyuanVideoTransformer3DModel.forward`` (diffusers 0.42): ``norm_out(hidden, temb)``
    (AdaLN-continuous), ``proj_out``, unpatchify.

    Args:
        hidden: (B, L, D) latent tokens after a single-stream block. temb: (B, D). latent_shape: (B, C, F, H, W).
    Returns:
        (B, C_out, F, H, W).
    """
    batch, _, frames, height, width = latent_shape
    p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
    x = transformer.proj_out(transformer.norm_out(hidden, temb))  # (B, L, p_t * p * p * C_out)
    x = x.reshape(batch, frames // p_t, height // p, width // p, -1, p_t, p, p)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # (B, C_out, F', p_t, H', p, W', p)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
