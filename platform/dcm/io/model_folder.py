"""DCM model folders: load, save, and export to a folder stock diffusers runs with no code of ours.

A **DCM folder** is a diffusers pipeline folder whose ``transformer/`` is the semantic expert, plus

    dcm_config.json                                  # DCMModelConfig: family, grid, detail expert, defaults
    detail_expert/diffusion_pytorch_model.safetensors  # LoRA A/B + the duplicated timestep layers

Stock ``WanPipeline.from_pretrained`` loads such a folder as the semantic expert alone. An **export**
(:func:`export_diffusers`) is a Wan2.2-style folder: ``transformer`` = semantic expert, ``transformer_2`` = detail
expert with the LoRA merged, ``boundary_ratio`` from the boundary, and an Euler flow-matching scheduler.
:func:`load_pipeline` also loads plain diffusers pipelines (teachers) and the authors' released layout
(:mod:`dcm.io.released`), each told apart by its files.

Weights are read with safetensors only (diffusers' ``use_safetensors=True``); nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file, save_file

from dcm.config import DCMModelConfig, model_config_from_dict, to_dict
from dcm.experts import DETAIL, SEMANTIC, DualExpertTransformer, TwoTransformerRouter
from dcm.io.model_cache import localise
from dcm.io.released import PICKLED_SUFFIXES, is_released_layout, load_released
from dcm.models import family_of, get_family
from dcm.pipeline import DCMPipeline
from dcm.presets import PRESETS, get_preset
from dcm.schedule import build_grid

logger = logging.getLogger(__name__)

CONFIG_NAME = "dcm_config.json"
DETAIL_DIR = "detail_expert"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def load_pipeline(
    source: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    endpoint_url: str | None = None,
) -> DCMPipeline:
    """Loads a model by preset name, local folder, ``s3://`` folder or diffusers hub id.

    * a tiny preset (``tiny-wan``, ``tiny-hunyuan``) is built in memory, with a fresh detail expert;
    * ``demo`` is the DCM folder shipped inside the package (trained by jobs/train_demo.py);
    * a DCM folder gives the dual-expert student;
    * a folder in the authors' released layout (``DCM_WAN/``, ``DCM_HY/``) gives their dual-expert model with the
      released sigma list and guidance as defaults (:mod:`dcm.io.released`);
    * a Wan2.2-style two-transformer folder (our export) gives the two experts routed by sigma;
    * a plain diffusers folder or hub id (a teacher, e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``) gives a plain model
      whose DCM config comes from the matching preset (for distillation) and which samples with the teacher schedule.

    ``dtype`` casts as diffusers' ``torch_dtype`` does (float32-kept modules stay float32); None keeps the files'
    dtypes. Raises ValueError naming what was found when a folder is none of these, holds pickled weights, or misses
    weights its config needs.
    """
    if source in PRESETS and PRESETS[source].build_components is not None:
        preset = get_preset(source)
        dcm = DCMPipeline.from_components(preset.build_components(), preset.config, with_detail=True)
        if dtype not in (None, torch.float32):
            dcm.to(dtype=dtype)
    else:
        if source in PRESETS:
            preset = PRESETS[source]
            source = str(preset.folder) if preset.folder is not None else preset.hub_id
        local = localise(source, endpoint_url)
        dcm = _load_folder(local, dtype=dtype)  # diffusers keeps its fp32-sensitive modules in fp32
    if device is not None:
        dcm.to(device)
    return dcm


def _load_folder(path: str, *, dtype: torch.dtype | None) -> DCMPipeline:
    if Path(path).exists():  # else a hub id: diffusers resolves it
        _check_model_folder(Path(path))
        if is_released_layout(path):
            return load_released(path, dtype=dtype)
    kwargs = {"use_safetensors": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
    _check_loaded(pipe, path)
    family = family_of(type(pipe).__name__)
    config_path = Path(path, CONFIG_NAME)
    if getattr(pipe, "transformer_2", None) is not None:
        return _two_transformer_pipeline(pipe, family, config_path)
    if not config_path.exists():
        config = _teacher_config(family)
        logger.info("%s has no %s: loaded as a plain %s teacher", path, CONFIG_NAME, family)
        return DCMPipeline(pipe, config)
    config = model_config_from_dict(json.loads(config_path.read_text()))
    if config.family != family:
        raise ValueError(f"{config_path} says family {config.family!r} but the pipeline is a {family!r} pipeline")
    if config.detail is None:
        return DCMPipeline(pipe, config)
    transformer = DualExpertTransformer(pipe.transformer, build_grid(config.schedule), config.detail)
    state = load_file(str(Path(path, DETAIL_DIR, WEIGHTS_NAME)))
    transformer.load_detail_state_dict(state)  # copied into the injected layers, which keep the backbone's dtypes
    return DCMPipeline(pipe, config, transformer)


def _check_model_folder(root: Path) -> None:
    """A local folder must be a diffusers pipeline (a DCM folder, an export and the released layout all are), with
    safetensors weights; else one error naming what is there."""
    if not root.is_dir():
        raise NotADirectoryError(f"model {str(root)!r} is a file, not a model folder")
    index = root / "model_index.json"
    if not index.exists():
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
        raise ValueError(
            f"{root} is not a model folder: a DCM folder, a diffusers pipeline and the authors' released layout all "
            f"have model_index.json; found {found[:10] if found else 'an empty folder'}"
        )
    components = [name for name, value in json.loads(index.read_text()).items() if isinstance(value, list)]
    for name in components:
        folder = root / name
        if not folder.is_dir():
            continue
        files = [p for p in folder.iterdir() if p.is_file()]
        pickled = sorted(p.name for p in files if p.suffix in PICKLED_SUFFIXES)
        if pickled and not any(p.name.endswith(".safetensors") or p.name.endswith(".safetensors.index.json")
                               for p in files):  # fmt: skip
            raise ValueError(f"{folder} holds pickled weights {pickled}: refused (unpickling runs code); convert them "
                             f"to safetensors")  # fmt: skip


def _check_loaded(pipe, path: str) -> None:
    """No parameter may be left on the meta device: diffusers leaves weights a file lacks unloaded, and the model would
    fail only at its first forward."""
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        empty = [n for n, p in component.named_parameters() if p.device.type == "meta"]
        if empty:
            raise ValueError(f"{path}/{name}: {len(empty)} weights are missing from the files (e.g. {empty[:5]}); "
                             f"the folder does not fit its config")  # fmt: skip


def _two_transformer_pipeline(pipe, family: str, config_path: Path) -> DCMPipeline:
    """A Wan2.2-style folder (e.g. our export): route by sigma between ``transformer`` and ``transformer_2``.

    The boundary comes from ``dcm_config.json`` when present (an export of ours), else from the folder's own
    ``boundary_ratio``: the grid index ``k`` whose boundary midpoint is closest to it.
    """
    if config_path.exists():
        config = model_config_from_dict(json.loads(config_path.read_text()))
    else:
        base = _teacher_config(family)
        ratio = pipe.config.boundary_ratio
        if ratio is None:
            raise ValueError(f"{config_path.parent} has transformer_2 but no boundary_ratio in model_index.json")
        k = min(
            range(1, base.schedule.num_grid_steps),
            key=lambda i: abs(build_grid(replace(base.schedule, boundary_index=i)).boundary_ratio - ratio),
        )
        config = replace(base, schedule=replace(base.schedule, boundary_index=k), detail=None)
    router = TwoTransformerRouter(pipe.transformer, pipe.transformer_2, build_grid(config.schedule))
    return DCMPipeline(pipe, config, router)


def _teacher_config(family: str) -> DCMModelConfig:
    """The paper's config for a real teacher of this family (from the real-checkpoint preset)."""
    for preset in PRESETS.values():
        if preset.hub_id is not None and preset.config.family == family:
            return preset.config
    raise ValueError(f"no preset for family {family!r}")


def plain_transformer(dcm: DCMPipeline, expert: str = SEMANTIC):
    """A stock diffusers transformer holding one expert of ``dcm`` (its transformer itself when it is plain)."""
    if isinstance(dcm.transformer, DualExpertTransformer):
        return _plain_transformer(dcm, expert)
    if isinstance(dcm.transformer, TwoTransformerRouter):
        return dcm.transformer.detail if expert == DETAIL else dcm.transformer.semantic
    return dcm.transformer


def _plain_transformer(dcm: DCMPipeline, expert: str):
    """A stock diffusers transformer holding one expert's weights.

    Built on the CPU, not the meta device: non-persistent buffers (rotary tables) are not in the state dict.
    """
    family = get_family(dcm.config.family)
    state = dcm.transformer.expert_state_dict(expert)
    model = family.transformer_class.from_config(dcm.transformer.transformer.config)
    model.load_state_dict(state, strict=True)
    return model.to(dcm.dtype).eval()


def _components(dcm: DCMPipeline, **overrides) -> dict:
    components = {k: v for k, v in dcm.pipe.components.items()} | overrides
    return components


def save_pretrained(dcm: DCMPipeline, path: str | os.PathLike) -> Path:
    """Writes a DCM folder (see module docstring); returns its path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    family = get_family(dcm.config.family)
    if isinstance(dcm.transformer, DualExpertTransformer):
        semantic = _plain_transformer(dcm, SEMANTIC)
        family.pipeline_class(**_components(dcm, transformer=semantic)).save_pretrained(path, safe_serialization=True)
        (path / DETAIL_DIR).mkdir(exist_ok=True)
        detail = {k: v.contiguous() for k, v in dcm.transformer.detail_state_dict().items()}
        save_file(detail, str(path / DETAIL_DIR / WEIGHTS_NAME))
    else:
        dcm.pipe.save_pretrained(path, safe_serialization=True)
    (path / CONFIG_NAME).write_text(json.dumps(to_dict(dcm.config), indent=2) + "\n")
    return path


def export_diffusers(dcm: DCMPipeline, path: str | os.PathLike) -> Path:
    """Writes a Wan2.2-style folder that stock ``diffusers.WanPipeline.from_pretrained`` loads and runs.

    ``transformer`` (t >= boundary_ratio * T) is the semantic expert and ``transformer_2`` the detail expert with
    the LoRA merged. The scheduler is an Euler flow-matching scheduler with the grid's shift, so the stock loop
    takes the same Euler steps as our sampler; run it with ``guidance_scale=1.0`` and few steps.
    """
    if dcm.config.family != "wan":
        raise ValueError(f"stock two-expert export exists for the Wan family only, got {dcm.config.family!r}")
    if not isinstance(dcm.transformer, DualExpertTransformer):
        raise ValueError(
            "export needs a dual-expert model (one backbone with a detail expert), "
            f"got {type(dcm.transformer).__name__}"
        )
    path = Path(path)
    grid = dcm.grid
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=grid.config.num_train_timesteps, shift=grid.config.shift
    )
    pipe = get_family("wan").pipeline_class(
        **_components(
            dcm,
            transformer=_plain_transformer(dcm, SEMANTIC),
            transformer_2=_plain_transformer(dcm, DETAIL),
            scheduler=scheduler,
        ),
        boundary_ratio=grid.boundary_ratio,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    # Our loader reads the grid back from here; stock diffusers ignores the file.
    (path / CONFIG_NAME).write_text(json.dumps(to_dict(replace(dcm.config, detail=None)), indent=2) + "\n")
    return path
