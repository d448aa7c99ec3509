"""The real architectures without a download: Wan2.1-T2V-1.3B and HunyuanVideo (13B) built from the published configs
kept in the repository, their parameter counts against the arithmetic, and (slow) the real-size Wan dual expert run on
a tiny video on this CPU."""

from __future__ import annotations

import math
import os

import pytest
import torch
from accelerate import init_empty_weights

from dcm.config import DetailExpertConfig, ScheduleConfig
from dcm.experts import DETAIL, SEMANTIC, DualExpertTransformer, record_experts
from dcm.models import hunyuan, wan
from dcm.models.real_size import build_real_transformer, real_transformer_config
from dcm.sampling import TransformerDenoiser
from dcm.schedule import build_grid, dcm_sigmas

# The paper's detail expert (docs/algorithm.md, "Stage II: detail expert").
PAPER_LORA_RANK, PAPER_LORA_ALPHA = 128, 256.0
# Parameter counts (docs/models.md): transformer, LoRA, the detail expert's duplicated layers.
EXPECTED = {
    "wan2.1-t2v-1.3b": (1_418_996_800, 94_371_840, 25_672_768),
    "hunyuanvideo": (12_821_012_544, 163_577_856, 51_339_328),
}
# Timestep sinusoid width of both families' embedders (diffusers' Timesteps(num_channels=256)).
TIMESTEP_CHANNELS = 256
# RAM the slow test needs: fp32 Wan2.1-1.3B (5.7 GB) + the detail expert + activations, with room to spare.
REAL_WAN_RAM_BYTES = 9 * 2**30


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def wan_counts(c: dict, rank: int) -> tuple[int, int, int]:
    """Wan: (transformer, LoRA on to_q/k/v/out.0 of both attentions, condition_embedder + proj_out)."""
    d, ffn, p = c["num_attention_heads"] * c["attention_head_dim"], c["ffn_dim"], math.prod(c["patch_size"])
    condition = (linear(c["freq_dim"], d) + linear(d, d)  # time_embedder
                 + linear(d, 6 * d)  # time_proj: the blocks' six modulation vectors
                 + linear(c["text_dim"], d) + linear(d, d))  # text_embedder  # fmt: skip
    attention = 4 * linear(d, d) + 2 * d  # q, k, v, out + RMS norms of q and k across heads
    block = 2 * attention + 2 * d + linear(d, ffn) + linear(ffn, d) + 6 * d  # attn1, attn2, norm2, ffn, modulation
    proj_out = linear(d, c["out_channels"] * p)
    total = linear(c["in_channels"] * p, d) + condition + c["num_layers"] * block + proj_out + 2 * d
    lora = c["num_layers"] * 8 * rank * (d + d)  # 8 projections d -> d per block
    return total, lora, condition + proj_out


def hunyuan_counts(c: dict, rank: int) -> tuple[int, int, int]:
    """HunyuanVideo: (transformer, LoRA where peft's suffix match puts it, time_text_embed + norm_out + proj_out)."""
    d, hd, p = c["num_attention_heads"] * c["attention_head_dim"], c["attention_head_dim"], c["patch_size"] ** 2
    mlp, text, pooled = int(d * c["mlp_ratio"]), c["text_embed_dim"], c["pooled_projection_dim"]
    timestep = linear(TIMESTEP_CHANNELS, d) + linear(d, d)
    refiner_block = 2 * (2 * d) + 4 * linear(d, d) + linear(d, mlp) + linear(mlp, d) + linear(d, 2 * d)
    refiner_embed = timestep + linear(text, d) + linear(d, d) + linear(text, d)  # time_text_embed, proj_in
    token_refiner = refiner_embed + c["num_refiner_layers"] * refiner_block
    time_text_embed = timestep * (2 if c["guidance_embeds"] else 1) + linear(pooled, d) + linear(d, d)
    dual_block = (2 * linear(d, 6 * d) + 8 * linear(d, d) + 4 * hd  # two AdaLN-zero, 8 projections, 4 q/k norms
                  + 2 * (linear(d, mlp) + linear(mlp, d)))  # image and text feed-forwards  # fmt: skip
    single_block = linear(d, 3 * d) + 3 * linear(d, d) + 2 * hd + linear(d, mlp) + linear(d + mlp, d)
    norm_out, proj_out = linear(d, 2 * d), linear(d, p * c["patch_size_t"] * c["out_channels"])
    total = (linear(c["in_channels"] * p * c["patch_size_t"], d) + token_refiner + time_text_embed
             + c["num_layers"] * dual_block + c["num_single_layers"] * single_block + norm_out + proj_out)  # fmt: skip
    # LoRA targets (d -> d each): refiner q/k/v/out, dual-stream image q/k/v/out, single-stream q/k/v.
    targets = 4 * c["num_refiner_layers"] + 4 * c["num_layers"] + 3 * c["num_single_layers"]
    return total, targets * rank * (d + d), time_text_embed + norm_out + proj_out


@pytest.mark.parametrize(
    "name, counts, duplicated",
    [("wan2.1-t2v-1.3b", wan_counts, wan.DUPLICATED_MODULES),
     ("hunyuanvideo", hunyuan_counts, hunyuan.DUPLICATED_MODULES)],
)  # fmt: skip
def test_real_architectures_have_the_arithmetic_parameter_counts(name, counts, duplicated):
    transformer = build_real_transformer(name, empty=True)
    assert {p.device.type for p in transformer.parameters()} == {"meta"}  # nothing allocated
    total = sum(p.numel() for p in transformer.parameters())
    config = DetailExpertConfig(duplicated_modules=duplicated, lora_rank=PAPER_LORA_RANK, lora_alpha=PAPER_LORA_ALPHA)
    with init_empty_weights(include_buffers=False):
        dual = DualExpertTransformer(transformer, build_grid(ScheduleConfig(boundary_index=35)), config)
    lora = sum(p.numel() for _, p in dual.lora_parameters())
    extra = sum(p.numel() for _, p in dual.detail_parameters()) - lora
    arithmetic = counts(real_transformer_config(name), PAPER_LORA_RANK)
    assert (total, lora, extra) == arithmetic == EXPECTED[name]


def test_released_file_sizes_match_the_counts():
    """docs/algorithm.md, "Released checkpoints": Wan 6.16 GB in fp32, HunyuanVideo 26.1 GB in bf16."""
    wan_bytes = 4 * sum(EXPECTED["wan2.1-t2v-1.3b"])
    hy_bytes = 2 * sum(EXPECTED["hunyuanvideo"])
    assert round(wan_bytes / 1e9, 2) == 6.16 and round(hy_bytes / 1e9, 1) == 26.1


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="unknown architecture 'wan-14b'; known"):
        real_transformer_config("wan-14b")


def available_ram() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@torch.no_grad()
def test_real_size_wan_dual_expert_runs_on_a_tiny_video():
    """Wan2.1-1.3B with random weights in fp32 (5.7 GB) as a dual expert on a 5 x 64 x 64 video: every step of the
    4-step DCM schedule goes to its expert and keeps the latent shape."""
    if available_ram() < REAL_WAN_RAM_BYTES:
        pytest.skip(f"needs {REAL_WAN_RAM_BYTES / 2**30:.0f} GiB of free RAM for fp32 Wan2.1-1.3B, "
                    f"{available_ram() / 2**30:.1f} GiB free")  # fmt: skip
    torch.manual_seed(0)
    transformer = build_real_transformer("wan2.1-t2v-1.3b").eval()
    assert sum(p.numel() for p in transformer.parameters()) == EXPECTED["wan2.1-t2v-1.3b"][0]
    grid = build_grid(ScheduleConfig(boundary_index=35))
    config = DetailExpertConfig(duplicated_modules=wan.DUPLICATED_MODULES, lora_rank=PAPER_LORA_RANK,
                                lora_alpha=PAPER_LORA_ALPHA)  # fmt: skip
    dual = DualExpertTransformer(transformer, grid, config)
    with torch.no_grad():
        for _, p in dual.lora_parameters():  # a trained-like LoRA, so the experts differ
            if "lora_B" in _:
                p.normal_(std=1e-3)
    denoiser = TransformerDenoiser(dual, grid.config.num_train_timesteps, wan.COND_KEYS)
    x = torch.randn(1, 16, 2, 8, 8)  # 5 frames x 64 x 64 through the Wan VAE's (4, 8, 8) compression
    cond = {"encoder_hidden_states": torch.randn(1, 16, real_transformer_config("wan2.1-t2v-1.3b")["text_dim"])}
    sigmas = dcm_sigmas(4, grid)
    outputs = []
    with record_experts(dual) as calls:
        for sigma in sigmas:
            outputs.append(denoiser(x, torch.tensor([sigma], dtype=torch.float64), cond))
    assert calls == [SEMANTIC, SEMANTIC, DETAIL, DETAIL]
    assert all(v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all() for v in outputs)
    with dual.expert(SEMANTIC):
        semantic_at_detail_level = denoiser.transformer.transformer(
            hidden_states=x, timestep=torch.tensor([sigmas[2] * 1000]), return_dict=False, **cond
        )[0]
    assert (semantic_at_detail_level - outputs[2]).abs().max() > 0  # the detail step ran the detail expert
