"""A model's own limits (:class:`ModelLimits`), from a loaded pipeline or from the model's configs alone.

    limits = model_limits_from_source("s3://bucket/models/dcm-wan")   # reads a few small JSON files, no weights
    limits = model_limits(pipeline)                                    # the same, from a loaded DCMPipeline

Both give the same value for the same model (the tests check it for every kind of source), so ``--dry-run`` and a
preflight check refuse exactly what the loaded model would. The configs read are ``model_index.json`` (pipeline
class, components, ``boundary_ratio``), ``dcm_config.json`` when present, ``transformer/config.json`` (or
``transformer_2/config.json``) and ``vae/config.json``. A config file may leave out arguments that have defaults
(older diffusers releases wrote fewer keys); they are filled from the class's signature, as diffusers does. The
authors' released layout (:mod:`dcm.io.released`) is told apart from a plain teacher by the tensor names in its
transformer's safetensors header (or shard index): a few kB, never the weights.
"""

from __future__ import annotations

import inspect
import json
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from dcm.config import DCMModelConfig, DetailExpertConfig, model_config_from_dict
from dcm.generation.requests import ModelLimits
from dcm.io.model_cache import HUB, S3, source_kind
from dcm.io.released import INDEX_NAME, LORA_KEY, WEIGHTS_NAME, is_released_layout
from dcm.io.storage import Store, s3_error_cause
from dcm.models import family_of, get_family
from dcm.presets import PRESETS, released_config
from dcm.schedule import build_grid

MODEL_INDEX = "model_index.json"
DCM_CONFIG = "dcm_config.json"
VAE_CONFIG = "vae/config.json"
# A safetensors file starts with the header's length (little-endian u64), then the JSON header.
SAFETENSORS_LENGTH_BYTES = 8
# safetensors refuses headers above 100 MB; a larger length means the file is not safetensors.
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000


class ModelFiles(Protocol):
    """A model folder's small files, wherever the folder is."""

    def read(self, filename: str) -> dict[str, Any] | None:
        """A JSON file's contents, or None when the file does not exist."""

    def is_released_layout(self) -> bool:
        """True when ``transformer/`` holds the authors' released layout (PEFT adapter keys)."""


def model_limits(pipeline) -> ModelLimits:
    """The loaded model's own limits (geometry, defaults, text length, and the DCM grid when its schedule is the DCM
    rule). ``pipeline`` is a :class:`dcm.pipeline.DCMPipeline`."""
    dcm_schedule = pipeline.is_dual_expert or pipeline.grid.is_single_expert
    return ModelLimits(
        geometry=pipeline.geometry,
        defaults=pipeline.config.default_generation,
        max_sequence_length=pipeline.max_sequence_length,
        schedule=pipeline.config.schedule if dcm_schedule else None,
    )


def model_limits_from_source(model: str, endpoint_url: str | None = None) -> ModelLimits:
    """The limits of ``model`` (preset name, local folder, ``s3://`` folder or hub id) without loading its weights.

    Raises:
        ValueError: naming the model and the cause (no such folder, bucket or file, wrong credentials, unreachable
            endpoint, not a diffusers/DCM folder).
    """
    if model in PRESETS:
        preset = PRESETS[model]
        if preset.build_components is not None:
            return _tiny_preset_limits(model)
        source = str(preset.folder) if preset.folder is not None else preset.hub_id
    else:
        source = model
    try:
        kind = source_kind(source)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from err
    files = {S3: _S3Files, HUB: _HubFiles}.get(kind, _FolderFiles)(model, source, endpoint_url)
    try:
        return limits_from_files(files, name=model)
    except (KeyError, TypeError) as err:  # a config without a key the family needs, or with keys ours do not know
        raise ValueError(
            f"model {model!r}: its configs do not fit its pipeline ({type(err).__name__}: {err})"
        ) from err


def limits_from_files(files: ModelFiles, *, name: str) -> ModelLimits:
    """Limits from a model folder's small files, interpreted the way the folder loader interprets them."""
    index = files.read(MODEL_INDEX)
    if index is None:
        raise ValueError(f"model {name!r} has no {MODEL_INDEX}: not a diffusers/DCM model folder")
    family_name = family_of(str(index.get("_class_name")))
    family = get_family(family_name)
    if files.is_released_layout():
        # The detail expert's shape does not change what the model can make; the family's released config does.
        detail = DetailExpertConfig(duplicated_modules=family.duplicated_modules)
        config, dcm_schedule = released_config(family_name, detail), True
    else:
        two = _has_component(index, "transformer_2")
        config, dcm_schedule = folder_model_config(family_name, index, files.read(DCM_CONFIG), two_transformers=two)
    transformer_file = f"{'transformer' if _has_component(index, 'transformer') else 'transformer_2'}/config.json"
    transformer_config = _full_config(family.transformer_class, _require(files, transformer_file, name))
    vae_config = _full_config(_diffusers_class(index, "vae", name), _require(files, VAE_CONFIG, name))
    return ModelLimits(
        geometry=family.geometry_from_configs(transformer_config, vae_config),
        defaults=config.default_generation,
        max_sequence_length=config.max_sequence_length,
        schedule=config.schedule if dcm_schedule else None,
    )


def folder_model_config(
    family: str, index: dict[str, Any], dcm_config: dict[str, Any] | None, *, two_transformers: bool
) -> tuple[DCMModelConfig, bool]:
    """(the folder's DCM config, whether it samples with the DCM schedule), as :mod:`dcm.io.model_folder` loads it.

    * two transformers (a Wan2.2-style folder, e.g. our export): routed by sigma; the boundary comes from
      ``dcm_config.json``, else from ``boundary_ratio`` (the grid index whose boundary is closest to it);
    * no ``dcm_config.json``: a plain teacher with its family's paper config (the teacher schedule);
    * ``dcm_config.json`` with a detail expert (or a single-expert grid): the DCM schedule.
    """
    if two_transformers:
        if dcm_config is not None:
            return model_config_from_dict(dcm_config), True
        base = _teacher_config(family)
        ratio = index.get("boundary_ratio")
        if ratio is None:
            raise ValueError(f"a {family} folder with transformer_2 needs boundary_ratio in {MODEL_INDEX}, got None")
        k = min(
            range(1, base.schedule.num_grid_steps),
            key=lambda i: abs(build_grid(replace(base.schedule, boundary_index=i)).boundary_ratio - ratio),
        )
        return replace(base, schedule=replace(base.schedule, boundary_index=k), detail=None), True
    config = _teacher_config(family) if dcm_config is None else model_config_from_dict(dcm_config)
    if config.family != family:
        raise ValueError(f"{DCM_CONFIG} says family {config.family!r} but the pipeline is a {family!r} pipeline")
    dual = dcm_config is not None and config.detail is not None
    return config, dual or config.schedule.boundary_index == 0


def _teacher_config(family: str) -> DCMModelConfig:
    """The paper's config for a real teacher of this family (from the real-checkpoint preset)."""
    for preset in PRESETS.values():
        if preset.hub_id is not None and preset.config.family == family:
            return preset.config
    raise ValueError(f"no preset for family {family!r}")


def _tiny_preset_limits(name: str) -> ModelLimits:
    """A tiny preset exists only as a builder: its (random, kB-sized) components are built for their configs."""
    preset = PRESETS[name]
    family = get_family(preset.config.family)
    components = preset.build_components()
    geometry = family.geometry_from_configs(components["transformer"].config, components["vae"].config)
    return ModelLimits(
        geometry=geometry,
        defaults=preset.config.default_generation,
        max_sequence_length=preset.config.max_sequence_length,
        schedule=preset.config.schedule,  # loaded with a detail expert: the DCM schedule
    )


def _has_component(index: dict[str, Any], name: str) -> bool:
    value = index.get(name)
    return isinstance(value, list) and len(value) == 2 and all(v is not None for v in value)


def _diffusers_class(index: dict[str, Any], component: str, name: str) -> type:
    import diffusers

    library, class_name = (index.get(component) or [None, None])[:2]
    cls = getattr(diffusers, str(class_name), None) if library == "diffusers" else None
    if not isinstance(cls, type) or not hasattr(cls, "load_config"):
        raise ValueError(
            f"model {name!r}: {MODEL_INDEX} names {component} {[library, class_name]}, not a diffusers class"
        )
    return cls


def _full_config(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The config a loaded component would have: the class's defaults overlaid by the file (as register_to_config)."""
    params = inspect.signature(cls.__init__).parameters
    defaults = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
    return defaults | {k: v for k, v in data.items() if not k.startswith("_")}


def _require(files: ModelFiles, filename: str, name: str) -> dict[str, Any]:
    data = files.read(filename)
    if data is None:
        raise ValueError(f"model {name!r} has no {filename}")
    return data


def _parse(text: bytes | str, filename: str, name: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"model {name!r}: {filename} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"model {name!r}: {filename} must hold a JSON object, got {type(data).__name__}")
    return data


def _has_lora_keys(keys: list[str]) -> bool:
    return any(LORA_KEY.match(key) for key in keys)


class _FolderFiles:
    def __init__(self, name: str, folder: str, endpoint_url: str | None) -> None:
        if not Path(folder).is_dir():
            raise ValueError(f"model {name!r}: {folder} is not a folder")
        self.name, self.folder = name, folder

    def read(self, filename: str) -> dict[str, Any] | None:
        path = Path(self.folder, filename)
        return _parse(path.read_bytes(), filename, self.name) if path.is_file() else None

    def is_released_layout(self) -> bool:
        return is_released_layout(self.folder)


class _S3Files:
    """Reads single small objects; the released-layout check reads a shard index or one safetensors header."""

    def __init__(self, name: str, uri: str, endpoint_url: str | None) -> None:
        self.name, self.store = name, Store(uri, endpoint_url)

    def _get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.store.get_bytes(key, byte_range=byte_range)
        except (ClientError, BotoCoreError) as err:
            code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404"):
                return None
            raise ValueError(f"model {self.name!r}: {s3_error_cause(err, self.store.uri(key))}") from err

    def read(self, filename: str) -> dict[str, Any] | None:
        data = self._get(filename)
        return None if data is None else _parse(data, filename, self.name)

    def is_released_layout(self) -> bool:
        index = self.read(f"transformer/{INDEX_NAME}")
        if index is not None:
            return _has_lora_keys(list(index.get("weight_map", {})))
        key = f"transformer/{WEIGHTS_NAME}"
        head = self._get(key, (0, SAFETENSORS_LENGTH_BYTES - 1))
        if head is None or len(head) < SAFETENSORS_LENGTH_BYTES:
            return False
        (length,) = struct.unpack("<Q", head)
        if not 0 < length <= MAX_SAFETENSORS_HEADER_BYTES:
            return False
        header = self._get(key, (SAFETENSORS_LENGTH_BYTES, SAFETENSORS_LENGTH_BYTES + length - 1))
        return _has_lora_keys(list(_parse(header or b"{}", key, self.name)))


class _HubFiles:
    """Hub repositories: as the loader treats them (diffusers resolves them; no released-layout check)."""

    def __init__(self, name: str, repo_id: str, endpoint_url: str | None) -> None:
        self.name, self.repo_id = name, repo_id

    def read(self, filename: str) -> dict[str, Any] | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

        where = f"{self.repo_id}/{filename}"
        try:
            path = hf_hub_download(self.repo_id, filename)
        except (EntryNotFoundError, LocalEntryNotFoundError) as err:
            if filename == MODEL_INDEX:
                raise ValueError(
                    f"model {self.name!r}: cannot read {where} from the hub or its local cache ({_first_line(err)})"
                ) from err
            return None  # optional files (dcm_config.json) are absent from plain diffusers repositories
        except (HfHubHTTPError, OSError, ValueError) as err:
            raise ValueError(f"model {self.name!r}: cannot read {where} from the hub ({_first_line(err)})") from err
        return _parse(Path(path).read_bytes(), filename, self.name)

    def is_released_layout(self) -> bool:
        return False


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"
