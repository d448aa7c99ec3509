"""Model families: one module per diffusers pipeline family (``wan.py``, ``hunyuan.py``).

A family adapter tells the platform how to encode prompts, decode latents and which modules the detail expert
duplicates; everything else (sampler, experts, jobs) is family-agnostic.
"""

from __future__ import annotations

import torch
from torch import nn

from dcm.models.hunyuan import HunyuanFamily
from dcm.models.wan import WanFamily

FAMILIES = {"wan": WanFamily, "hunyuan": HunyuanFamily}


def get_family(name: str) -> WanFamily | HunyuanFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]()


def family_of(pipeline_class_name: str) -> str:
    """Family key from a diffusers ``model_index.json`` ``_class_name``."""
    for name, family in FAMILIES.items():
        if family.pipeline_class.__name__ == pipeline_class_name:
            return name
    raise ValueError(
        f"unsupported pipeline class {pipeline_class_name!r}; supported: "
        f"{[f.pipeline_class.__name__ for f in FAMILIES.values()]}"
    )


def keep_in_fp32_patterns(module: nn.Module) -> set[str]:
    """Module names the diffusers / transformers classes inside ``module`` keep in float32 (their
    ``_keep_in_fp32_modules``: Wan's time embedder, norms and ``scale_shift_table``, T5's ``wo``)."""
    patterns: set[str] = set()
    for sub in module.modules():
        patterns.update(getattr(type(sub), "_keep_in_fp32_modules", None) or ())
    return patterns


def cast_model(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Casts floating parameters and buffers to ``dtype`` in place, leaving the float32-kept modules as they are.

    What diffusers' ``from_pretrained(torch_dtype=...)`` does at load time; a plain ``module.to(dtype)`` would also
    cast the modules the model's authors keep in float32 (diffusers warns about exactly that).
    """
    keep = keep_in_fp32_patterns(module)
    for owner_name, owner in module.named_modules():
        owner_parts = set(owner_name.split(".")) if owner_name else set()
        for name, param in owner.named_parameters(recurse=False):
            if param.is_floating_point() and not keep & (owner_parts | {name}):
                param.data = param.data.to(dtype)
        for name, buffer in owner.named_buffers(recurse=False):
            if buffer is not None and buffer.is_floating_point() and not keep & (owner_parts | {name}):
                setattr(owner, name, buffer.to(dtype))  # nn.Module keeps the buffer's persistence flag
    return module
