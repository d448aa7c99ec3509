"""What a distillation run checks before any worker starts, from small files only (no weights are loaded).

    inputs = check_inputs(config)               # teacher configs and data meta agree; one-line ValueError otherwise
    plan = plan_run(config, inputs)             # the memory plan at the data's (or the recipe's) video size

The teacher's architecture comes from its ``transformer/config.json``: built in memory for a tiny preset, read from
the repository's copy for the real checkpoints we know (:mod:`dcm.models.real_size`), else from the folder, the
``s3://`` prefix or the hub's local cache.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass

import diffusers
import torch

from dcm.data import LatentDataset
from dcm.distill.config import DETAIL_STAGE, DistillConfig
from dcm.distill.features import check_feature_family, num_taps
from dcm.distill.memory import Architecture, MemoryPlan, architecture, plan_memory
from dcm.io.storage import Store
from dcm.models import family_of, get_family, hunyuan, wan
from dcm.models.real_size import REAL_TRANSFORMERS, real_transformer_config
from dcm.presets import PRESETS

MODEL_INDEX, TRANSFORMER_CONFIG, VAE_CONFIG = "model_index.json", "transformer/config.json", "vae/config.json"
# Text tokens per prompt when no data says otherwise: the families' own defaults.
DEFAULT_TEXT_LEN = {"wan": wan.DEFAULT_MAX_SEQUENCE_LENGTH, "hunyuan": hunyuan.DEFAULT_MAX_SEQUENCE_LENGTH}


@dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    """The teacher's family and configs (what the checks and the plan need)."""

    family: str
    transformer: dict
    vae: dict


@dataclass(frozen=True, kw_only=True)
class RunInputs:
    """The checked inputs of a run: the teacher, the data's meta.json (None when the data does not exist yet, for a
    plan), the latent shape (C, F, H, W) of one sample and the text length."""

    teacher: TeacherConfig
    data_meta: dict | None
    latent_shape: tuple[int, ...]
    text_len: int


def teacher_config(source: str) -> TeacherConfig:
    """The teacher's family, transformer and VAE configs without loading weights.

    Raises:
        ValueError: naming the teacher and what could not be read.
    """
    preset = PRESETS.get(source)
    if preset is not None and preset.build_components is not None:
        parts = preset.build_components()
        return TeacherConfig(family=preset.config.family, transformer=dict(parts["transformer"].config),
                             vae=dict(parts["vae"].config))  # fmt: skip
    real = _real_architecture(source)
    if real is not None:
        family, _ = REAL_TRANSFORMERS[real]
        vae = _family_vae_defaults(family)
        return TeacherConfig(family=family, transformer=real_transformer_config(real), vae=vae)
    if preset is not None:
        source = str(preset.folder) if preset.folder is not None else preset.hub_id
    read = _hub_reader(source) if _looks_like_hub_id(source) else _store_reader(source)
    index = read(MODEL_INDEX)
    family = family_of(str(index.get("_class_name")))
    return TeacherConfig(family=family, transformer=read(TRANSFORMER_CONFIG), vae=read(VAE_CONFIG))


def _real_architecture(source: str) -> str | None:
    """The name of a known real checkpoint a preset name or hub id refers to."""
    for name, preset in PRESETS.items():
        if preset.hub_id is not None and source in (name, preset.hub_id) and name in REAL_TRANSFORMERS:
            return name
    return None


def _family_vae_defaults(family: str) -> dict:
    """The stock VAE class's default config (the real checkpoints' scale factors: 4x temporal, 8x spatial)."""
    cls = {"wan": "AutoencoderKLWan", "hunyuan": "AutoencoderKLHunyuanVideo"}[family]
    params = inspect.signature(getattr(diffusers, cls).__init__).parameters
    return {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}


def _looks_like_hub_id(source: str) -> bool:
    return not Store(source).is_s3 and source.count("/") == 1 and not source.startswith((".", "/"))


def _store_reader(source: str):
    store = Store(source)

    def read(name: str) -> dict:
        if not store.exists(name):
            raise ValueError(f"teacher {source!r} has no {name}: not a diffusers model folder")
        return json.loads(store.get_bytes(name))

    return read


def _hub_reader(repo_id: str):
    from huggingface_hub import hf_hub_download

    def read(name: str) -> dict:
        try:
            with open(hf_hub_download(repo_id, name)) as f:
                return json.load(f)
        except Exception as err:  # any hub failure (offline, missing file, auth) is "cannot read", in one line
            raise ValueError(f"teacher {repo_id!r}: cannot read {name} from the hub or its cache ({err})") from err

    return read


def check_inputs(config: DistillConfig, *, require_data: bool = True) -> RunInputs:
    """Everything that can be checked before a worker starts: teacher, data, shapes, the discriminator's stride.

    Args:
        require_data: False for a plan, which falls back to the recipe's video size when the data does not exist.
    Raises:
        ValueError / FileNotFoundError: one line naming the field and the value.
    """
    teacher = teacher_config(config.teacher)
    fam = get_family(teacher.family)
    geometry = fam.geometry_from_configs(teacher.transformer, teacher.vae)
    meta = None
    if require_data or Store(config.data).exists("meta.json"):
        data = LatentDataset(config.data)
        meta = data.meta
        _check_data(config, teacher, geometry, data)
        latent_shape = data.latent_shape
        text_len = data.meta["cond_shapes"]["encoder_hidden_states"][0]
    else:
        video = config.video
        latent_shape = geometry.latent_shape(num_frames=video.num_frames, height=video.height, width=video.width)
        text_len = DEFAULT_TEXT_LEN[teacher.family]
    if config.schedule.num_grid_steps > config.schedule.num_train_timesteps:
        raise ValueError("num_grid_steps must not exceed num_train_timesteps")
    if DETAIL_STAGE in config.stages:
        check_feature_family(teacher.family)
        with torch.device("meta"):
            transformer = fam.transformer_class.from_config(_config_only(teacher.transformer))
        num_taps(transformer, teacher.family, config.detail.feature_stride)
    return RunInputs(teacher=teacher, data_meta=meta, latent_shape=tuple(latent_shape), text_len=text_len)


def _check_data(config: DistillConfig, teacher: TeacherConfig, geometry, data: LatentDataset) -> None:
    family = data.meta["family"]
    if family != teacher.family:
        raise ValueError(
            f"data {config.data} holds {family!r} latents, the teacher {config.teacher!r} is {teacher.family!r}"
        )
    shape = data.latent_shape
    if shape[0] != geometry.latent_channels:
        raise ValueError(
            f"data latent shape {list(shape)} has {shape[0]} channels, the teacher expects {geometry.latent_channels}"
        )
    if any(n % p for n, p in zip(shape[1:], geometry.patch_size)):
        raise ValueError(f"data latent shape {list(shape)} is not divisible by the patch size {geometry.patch_size}")
    grid = geometry.token_grid(shape)
    if geometry.max_positions is not None and max(grid) > geometry.max_positions:
        raise ValueError(f"data latent shape {list(shape)} gives a token grid {grid} beyond the teacher's positional "
                         f"table ({geometry.max_positions} per axis)")  # fmt: skip
    missing = [k for k in get_family(teacher.family).cond_keys if k not in data.cond_keys]
    if missing:
        raise ValueError(f"data {config.data} lacks the teacher's conditioning {missing}; it has {data.cond_keys}")
    if len(data) < config.batch_size * config.num_workers:
        raise ValueError(f"data has {len(data)} samples, fewer than batch_size x num_workers = "
                         f"{config.batch_size} x {config.num_workers}")  # fmt: skip


def _config_only(transformer_config: dict) -> dict:
    return {k: v for k, v in transformer_config.items() if not k.startswith("_")}


def run_architecture(config: DistillConfig, inputs: RunInputs) -> Architecture:
    return architecture(
        inputs.teacher.family, inputs.teacher.transformer, detail_expert=config.detail_expert,
        boundary_index=config.schedule.boundary_index, discriminator=config.detail.discriminator,
        feature_stride=config.detail.feature_stride,
    )  # fmt: skip


def plan_run(config: DistillConfig, inputs: RunInputs) -> MemoryPlan:
    """The run's memory plan per worker (GPU when ``use_gpu``)."""
    return plan_memory(
        config, run_architecture(config, inputs), latent_shape=inputs.latent_shape, text_len=inputs.text_len,
        device_type="cuda" if config.use_gpu else "cpu",
    )  # fmt: skip
