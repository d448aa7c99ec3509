"""The real checkpoints' transformer architectures, kept in the repository, and builders of them without a download.

``configs/*.json`` are the published ``transformer/config.json`` files of Wan-AI/Wan2.1-T2V-1.3B-Diffusers and
hunyuanvideo-community/HunyuanVideo. Built from them, a transformer has the real size and the real code path with
random weights (benchmarks, GPU checks) or no weights at all (parameters on the meta device: parameter counts, and the
empty model a checkpoint streams into).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan
from torch import nn

from dcm.models import get_family, wan

CONFIG_DIR = Path(__file__).parent / "configs"
# A small random text encoder with Wan's 4096-wide output (the real UMT5-XXL has 5.7B parameters): one layer,
# narrow attention and feed-forward.
SMALL_WAN_TEXT = dict(text_dim=4096, text_layers=1, text_kv_dim=64, text_ff_dim=256)
# Architecture name -> (family, config file).
REAL_TRANSFORMERS = {
    "wan2.1-t2v-1.3b": ("wan", "wan2.1-t2v-1.3b.json"),
    "hunyuanvideo": ("hunyuan", "hunyuanvideo.json"),
}


def real_transformer_config(name: str) -> dict:
    """The published transformer config of ``name`` (a key of ``REAL_TRANSFORMERS``), as a dict."""
    if name not in REAL_TRANSFORMERS:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(REAL_TRANSFORMERS)}")
    return json.loads((CONFIG_DIR / REAL_TRANSFORMERS[name][1]).read_text())


def build_transformer(
    family: str, config: dict, *, empty: bool = False, device: str | torch.device = "cpu"
) -> nn.Module:
    """A family's diffusers transformer from a config dict.

    Args:
        family: ``wan`` or ``hunyuan``.
        config: the ``transformer/config.json`` contents.
        empty: parameters on the meta device (no memory; for counting, or for loading weights into with
            ``load_state_dict(assign=True)``). Buffers are real even then: the rotary tables are not in any checkpoint.
        device: where random weights are initialised (ignored when ``empty``).
    """
    cls = get_family(family).transformer_class
    if empty:
        with init_empty_weights(include_buffers=False):
            return cls.from_config(config)
    with torch.device(device):
        return cls.from_config(config)


def build_real_transformer(name: str, *, empty: bool = False, device: str | torch.device = "cpu") -> nn.Module:
    """The real-size transformer ``name`` with random weights (float32) or none (``empty``)."""
    config = real_transformer_config(name)
    return build_transformer(REAL_TRANSFORMERS[name][0], config, empty=empty, device=device)


def real_size_wan_components(*, real_vae: bool = False, seed: int = 0, device: str | torch.device = "cpu") -> dict:
    """``WanPipeline`` components around the real-size Wan2.1-T2V-1.3B transformer with random float32 weights.

    The text encoder is a small random UMT5 with Wan's 4096-wide output (:data:`SMALL_WAN_TEXT`); the VAE is the real
    Wan2.1 VAE architecture with random weights (``real_vae``, 127M parameters) or the tiny preset's. For cost
    measurements, not for pictures.
    """
    components = wan.tiny_wan_components(wan.TinyWanSpec(**SMALL_WAN_TEXT), seed=seed)
    torch.manual_seed(seed)
    components["transformer"] = build_real_transformer("wan2.1-t2v-1.3b", device=device)
    if real_vae:
        with torch.device(device):
            components["vae"] = AutoencoderKLWan()  # diffusers' defaults are the Wan2.1 VAE's architecture
    return components
