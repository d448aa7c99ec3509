"""Model families: one module per diffusers pipeline family (``wan.py``, ``hunyuan.py``).

A family adapter tells the platform how to encode prompts, decode latents and which modules the detail expert
duplicates; everything else (sampler, experts, jobs) is family-agnostic.
"""

from __future__ import annotations

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
