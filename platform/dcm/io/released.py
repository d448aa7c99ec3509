"""The authors' released DCM checkpoints (``DCM_WAN/``, ``DCM_HY/``): detect the layout, load it strictly while
streaming, convert it into our folders.

The layout (docs/algorithm.md, "Released checkpoints") is a diffusers pipeline folder whose
``transformer/diffusion_pytorch_model.safetensors`` holds one transformer with PEFT-injected names:

    blocks.0.attn1.to_q.base_layer.weight        # the semantic expert (base weights)
    blocks.0.attn1.to_q.lora_A.lora1.weight      # (r, in)   the detail expert's LoRA, adapter "lora1"
    blocks.0.attn1.to_q.lora_B.lora1.weight      # (out, r)
    condition_embedder_lora.time_proj.weight     # the detail expert's own timestep layers ("*_lora")

Everything about the detail expert is read from the file: the adapter's name and rank (the ``lora_A`` shapes), the
projections it sits on, and which modules have ``*_lora`` copies. Its alpha comes from the folder when the folder says
(a peft ``adapter_config.json`` beside the weights, or diffusers' ``lora_adapter_metadata`` in the file), else from the
authors' scale alpha / r = 2. Weights are read with ``safe_open`` one tensor at a time into a model built on the meta
device, so loading holds one copy of the transformer (26 GB for HunyuanVideo in bf16), in the file's dtype unless asked
otherwise. Pickled weights are refused.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from dcm.config import DCMModelConfig, DetailExpertConfig, to_dict
from dcm.experts import DualExpertTransformer
from dcm.models import family_of, get_family, keep_in_fp32_patterns
from dcm.models.real_size import build_transformer
from dcm.pipeline import DCMPipeline
from dcm.presets import released_config
from dcm.schedule import build_grid

logger = logging.getLogger(__name__)

TRANSFORMER_DIR = "transformer"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = f"{WEIGHTS_NAME}.index.json"
CONFIG_NAME = "dcm_config.json"
DETAIL_DIR = "detail_expert"
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# peft's own adapter file, if a folder carries one beside the weights.
ADAPTER_CONFIG_NAME = "adapter_config.json"
# diffusers' save_lora_weights stores the LoraConfig as JSON under this safetensors metadata key.
LORA_METADATA_KEY = "lora_adapter_metadata"
# The authors' Stage II LoRA is r 128, alpha 256: scale alpha / r = 2. Used only when the folder does not say.
REFERENCE_LORA_SCALE = 2.0
# The reference's add_layer() names the detail expert's copy of ``<module>`` ``<module>_lora``.
DETAIL_MODULE_SUFFIX = "_lora"
BASE_LAYER = ".base_layer."
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.(?P<adapter>[^.]+)\.weight$")
# Keep a shard under this many bytes when writing (diffusers' own default is 10 GB): the converter holds one shard.
MAX_SHARD_BYTES = 5 * 2**30
# How many names an error lists before "and N more".
SHOWN_NAMES = 5
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def _names(names, total: int | None = None) -> str:
    names = sorted(names)
    total = len(names) if total is None else total
    shown = ", ".join(names[:SHOWN_NAMES])
    return f"{shown} and {total - SHOWN_NAMES} more" if total > SHOWN_NAMES else shown


# -- reading ----------------------------------------------------------------------------------------------------------


def weight_files(folder: Path) -> dict[str, Path]:
    """Key -> file of a model subfolder's safetensors weights (one file, or shards with an index).

    Raises:
        ValueError: the folder holds only pickled weights (never unpickled here), or no weights.
    """
    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.exists():
        with safe_open(str(single), framework="pt") as f:
            return dict.fromkeys(f.keys(), single)
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: folder / name for key, name in weight_map.items()}
    pickled = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLED_SUFFIXES)
    if pickled:
        raise ValueError(f"{folder} holds pickled weights {pickled}: refused (unpickling runs code); convert them to "
                         f"{WEIGHTS_NAME}")  # fmt: skip
    found = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else "nothing (no such folder)"
    raise ValueError(f"{folder} has no {WEIGHTS_NAME} (or {INDEX_NAME}); found {found}")


class TensorReader:
    """Reads tensors by key from one or more safetensors files, one tensor at a time (``safe_open``)."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self._stack = ExitStack()
        self._handles = {}

    def __enter__(self) -> TensorReader:
        for path in sorted(set(self.files.values())):
            self._handles[path] = self._stack.enter_context(safe_open(str(path), framework="pt"))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def keys(self) -> list[str]:
        return sorted(self.files)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handles[self.files[key]].get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        return SAFETENSORS_DTYPES[self._handles[self.files[key]].get_slice(key).get_dtype()]

    def nbytes(self, key: str) -> int:
        numel = 1
        for size in self.shape(key):
            numel *= size
        return numel * self.dtype(key).itemsize

    def get(self, key: str) -> Tensor:
        return self._handles[self.files[key]].get_tensor(key)

    def metadata(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for handle in self._handles.values():
            merged |= handle.metadata() or {}
        return merged


# -- the layout -------------------------------------------------------------------------------------------------------


def is_released_layout(folder: str | Path) -> bool:
    """True when ``folder/transformer`` holds a PEFT adapter's keys (``….lora_A.<adapter>.weight``): the released
    layout. Our DCM folders keep the detail expert in ``detail_expert/``, never in ``transformer/``."""
    transformer = Path(folder) / TRANSFORMER_DIR
    if not transformer.is_dir():
        return False
    try:
        keys = weight_files(transformer)
    except ValueError:
        return False
    return any(LORA_KEY.match(key) for key in keys)


@dataclass(frozen=True, kw_only=True)
class ReleasedLayout:
    """What a released transformer file holds, read from its keys, shapes and metadata.

    Args:
        family: ``wan`` or ``hunyuan`` (from ``model_index.json``).
        transformer_config: the ``transformer/config.json`` contents.
        weights: key -> safetensors file.
        adapter_name: the PEFT adapter's name (``lora1`` in the authors' files).
        lora_rank / lora_alpha: the adapter's rank (from the ``lora_A`` shapes) and alpha.
        lora_alpha_source: where the alpha came from (for the log and the error messages).
        lora_modules: module paths that carry the LoRA.
        lora_target_modules: their name suffixes (what peft is given to inject the same set).
        duplicated_modules: modules with a ``*_lora`` copy.
    """

    family: str
    transformer_config: dict
    weights: dict[str, Path]
    adapter_name: str
    lora_rank: int
    lora_alpha: float
    lora_alpha_source: str
    lora_modules: tuple[str, ...]
    lora_target_modules: tuple[str, ...]
    duplicated_modules: tuple[str, ...]

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    def detail_config(self) -> DetailExpertConfig:
        return DetailExpertConfig(
            duplicated_modules=self.duplicated_modules,
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_target_modules=self.lora_target_modules,
            adapter_name=self.adapter_name,
        )

    def model_config(self) -> DCMModelConfig:
        return released_config(self.family, self.detail_config())


def _target_suffix(module: str) -> str:
    """The peft target name of a module path: its last part, or the last two when the last is a list index
    (``attn1.to_out.0`` -> ``to_out.0``)."""
    parts = module.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def inspect_released(folder: str | Path) -> ReleasedLayout:
    """Reads a released folder's layout from its files (no tensor data is read).

    Raises:
        ValueError: naming what does not fit: no or several adapters, a LoRA A without its B, ranks that differ, no
            ``*_lora`` layers, an unsupported pipeline class.
    """
    folder = Path(folder)
    family = family_of(json.loads((folder / "model_index.json").read_text())["_class_name"])
    transformer_dir = folder / TRANSFORMER_DIR
    weights = weight_files(transformer_dir)
    parts: dict[tuple[str, str], str] = {}
    adapters = set()
    for key in weights:
        match = LORA_KEY.match(key)
        if match:
            adapters.add(match["adapter"])
            parts[(match["module"], match["part"])] = key
    if len(adapters) != 1:
        raise ValueError(f"{transformer_dir} must hold exactly one LoRA adapter, found {sorted(adapters)}")
    adapter = adapters.pop()
    modules = sorted({module for module, _ in parts})
    unpaired = [m for m in modules if (m, "A") not in parts or (m, "B") not in parts]
    if unpaired:
        raise ValueError(f"{transformer_dir}: LoRA modules without both lora_A and lora_B: {_names(unpaired)}")
    with TensorReader(weights) as reader:
        ranks = {m: reader.shape(parts[(m, "A")])[0] for m in modules}
        metadata = reader.metadata()
    if len(set(ranks.values())) != 1:
        by_rank = {r: [m for m in modules if ranks[m] == r] for r in sorted(set(ranks.values()))}
        raise ValueError(f"{transformer_dir}: the LoRA rank differs between modules: "
                         f"{ {r: _names(ms) for r, ms in by_rank.items()} }")  # fmt: skip
    rank = ranks[modules[0]]
    alpha, source = _lora_alpha(transformer_dir, metadata, rank)
    heads = {key.split(".", 1)[0] for key in weights}
    duplicated = sorted(h[: -len(DETAIL_MODULE_SUFFIX)] for h in heads if h.endswith(DETAIL_MODULE_SUFFIX))
    if not duplicated:
        raise ValueError(f"{transformer_dir} has a LoRA but no detail-expert layers (top-level "
                         f"'*{DETAIL_MODULE_SUFFIX}' modules): not the released DCM layout")  # fmt: skip
    return ReleasedLayout(
        family=family,
        transformer_config=json.loads((transformer_dir / "config.json").read_text()),
        weights=weights,
        adapter_name=adapter,
        lora_rank=rank,
        lora_alpha=alpha,
        lora_alpha_source=source,
        lora_modules=tuple(modules),
        lora_target_modules=tuple(sorted({_target_suffix(m) for m in modules})),
        duplicated_modules=tuple(duplicated),
    )


def _lora_alpha(transformer_dir: Path, metadata: dict[str, str], rank: int) -> tuple[float, str]:
    """The adapter's alpha and where it was found: peft's adapter_config.json, diffusers' LoRA metadata, or the
    authors' scale."""
    adapter_config = transformer_dir / ADAPTER_CONFIG_NAME
    if adapter_config.exists():
        data = json.loads(adapter_config.read_text())
        if data.get("r", rank) != rank:
            raise ValueError(f"{adapter_config} says r {data['r']} but the weights have rank {rank}")
        return float(data["lora_alpha"]), str(adapter_config)
    if LORA_METADATA_KEY in metadata:
        data = json.loads(metadata[LORA_METADATA_KEY])
        return float(data["lora_alpha"]), f"the {LORA_METADATA_KEY} of {WEIGHTS_NAME}"
    return REFERENCE_LORA_SCALE * rank, f"the authors' alpha / r = {REFERENCE_LORA_SCALE:g} (the folder does not say)"


# -- loading ----------------------------------------------------------------------------------------------------------


def our_name(key: str, duplicated: tuple[str, ...]) -> str:
    """The name of a released key in our :class:`DualExpertTransformer`'s backbone: ``<m>_lora.*`` is the detail
    copy ``<m>.detail.*``, ``<m>.*`` the semantic original ``<m>.semantic.*``; LoRA and base-layer names are peft's
    in both."""
    head, _, rest = key.partition(".")
    if head.endswith(DETAIL_MODULE_SUFFIX) and head[: -len(DETAIL_MODULE_SUFFIX)] in duplicated:
        return f"{head[: -len(DETAIL_MODULE_SUFFIX)]}.detail.{rest}"
    if head in duplicated:
        return f"{head}.semantic.{rest}"
    return key


def check_keys(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], source: str) -> None:
    """Strict key and shape comparison; raises ValueError naming the first few missing, unexpected and mis-shaped."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({_names(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
        if shapes:
            shown = [f"{k}: file {tuple(found[k])} vs model {tuple(expected[k])}" for k in shapes[:SHOWN_NAMES]]
            problems.append(f"{len(shapes)} with other shapes ({'; '.join(shown)})")
        raise ValueError(f"{source} does not fit its transformer config: " + ", ".join(problems))


def load_released_transformer(layout: ReleasedLayout, *, dtype: torch.dtype | None = None) -> DualExpertTransformer:
    """The dual-expert transformer of a released file, loaded strictly and one tensor at a time.

    The model is built on the meta device (no memory), every key and shape is checked against it before any tensor
    is read, then each tensor is read and put in place (``load_state_dict(assign=True)`` on its own module), so memory
    holds one copy of the weights. Tensors keep the file's dtype, or take ``dtype``; the model's float32-kept modules
    (diffusers' ``_keep_in_fp32_modules``) are float32 either way, as ``from_pretrained`` does.
    """
    config = layout.model_config()
    backbone = build_transformer(layout.family, layout.transformer_config, empty=True)
    with init_empty_weights(include_buffers=False):
        model = DualExpertTransformer(backbone, build_grid(config.schedule), layout.detail_config())
    expected = {name: tuple(t.shape) for name, t in backbone.state_dict().items()}
    source = f"{layout.weights[next(iter(layout.weights))].parent}/"
    keep = keep_in_fp32_patterns(backbone)
    with TensorReader(layout.weights) as reader:
        names = {key: our_name(key, layout.duplicated_modules) for key in reader.keys()}
        check_keys(expected, {names[k]: reader.shape(k) for k in reader.keys()}, source)
        for key in reader.keys():
            name = names[key]
            tensor = reader.get(key)
            if keep & set(name.split(".")):
                tensor = tensor.float()
            elif dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            owner, _, leaf = name.rpartition(".")
            backbone.get_submodule(owner).load_state_dict({leaf: tensor}, strict=False, assign=True)
    left = [n for n, p in [*backbone.named_parameters(), *backbone.named_buffers()] if p.device.type == "meta"]
    assert not left, f"parameters left on the meta device after a strict key check: {left[:SHOWN_NAMES]}"
    return model.eval()


def load_released(folder: str | Path, *, dtype: torch.dtype | None = None) -> DCMPipeline:
    """A released folder as a ready :class:`DCMPipeline` with the released schedule and guidance as its defaults."""
    layout = inspect_released(folder)
    logger.info(
        "%s: the authors' released %s layout (adapter %r, rank %d, alpha %g from %s; detail layers %s)",
        folder, layout.family, layout.adapter_name, layout.lora_rank, layout.lora_alpha, layout.lora_alpha_source,
        ", ".join(layout.duplicated_modules),
    )  # fmt: skip
    transformer = load_released_transformer(layout, dtype=dtype)
    kwargs = {"use_safetensors": True} | ({"torch_dtype": dtype} if dtype is not None else {})
    family = get_family(layout.family)
    pipe = family.pipeline_class.from_pretrained(str(folder), transformer=transformer.transformer, **kwargs)
    return DCMPipeline(pipe, layout.model_config(), transformer)


# -- converting -------------------------------------------------------------------------------------------------------


def semantic_tensors(layout: ReleasedLayout, reader: TensorReader) -> Iterator[tuple[str, str | None]]:
    """(stock name, released key) of the semantic expert: the base weights under their plain names."""
    for key in reader.keys():
        head = key.split(".", 1)[0]
        if LORA_KEY.match(key) or head.endswith(DETAIL_MODULE_SUFFIX):
            continue
        yield key.replace(BASE_LAYER, "."), key


def detail_tensors(layout: ReleasedLayout, reader: TensorReader) -> dict[str, Tensor]:
    """The detail expert's own tensors under the names of a DCM folder's ``detail_expert/`` file (LoRA A/B and the
    duplicated modules' copies, as :meth:`DualExpertTransformer.detail_state_dict` names them)."""
    state = {}
    for key in reader.keys():
        head = key.split(".", 1)[0]
        if LORA_KEY.match(key) or head.endswith(DETAIL_MODULE_SUFFIX):
            state[our_name(key, layout.duplicated_modules)] = reader.get(key)
    return state


def merged_detail_tensor(layout: ReleasedLayout, reader: TensorReader, key: str) -> Tensor:
    """One tensor of the detail expert as a stock transformer: a LoRA target's weight ``W + (alpha / r) B A``
    (computed in float32, stored in W's dtype), anything else as it is."""
    module, _, leaf = key.rpartition(".")
    base = module.removesuffix(BASE_LAYER.rstrip("."))
    tensor = reader.get(key)
    if leaf == "weight" and module.endswith(BASE_LAYER.strip(".")) and base in layout.lora_modules:
        lora_a = reader.get(f"{base}.lora_A.{layout.adapter_name}.weight").float()
        lora_b = reader.get(f"{base}.lora_B.{layout.adapter_name}.weight").float()
        tensor = (tensor.float() + layout.lora_scale * (lora_b @ lora_a)).to(tensor.dtype)
    return tensor


def detail_stock_names(layout: ReleasedLayout, reader: TensorReader) -> Iterator[tuple[str, str]]:
    """(stock name, released key) of the detail expert as a plain transformer: the ``*_lora`` copies take the
    originals' names, every other base weight is shared with the semantic expert."""
    for key in reader.keys():
        head, _, rest = key.partition(".")
        if LORA_KEY.match(key) or head in layout.duplicated_modules:
            continue
        if head.endswith(DETAIL_MODULE_SUFFIX):
            yield f"{head[: -len(DETAIL_MODULE_SUFFIX)]}.{rest}", key
        else:
            yield key.replace(BASE_LAYER, "."), key


def write_transformer(
    target: Path,
    names: list[tuple[str, str]],
    load,
    reader: TensorReader,
    config_json: dict,
    *,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> None:
    """Writes a diffusers ``transformer/`` folder: ``config.json`` and the weights, sharded (with an index) above
    ``max_shard_bytes``. Shards are planned from the file header and filled one at a time, so at most one shard is in
    memory.

    Args:
        names: (stock name, released key) pairs in writing order.
        load: ``load(key) -> Tensor``, the tensor stored under the stock name.
    """
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n")
    shards: list[list[tuple[str, str]]] = [[]]
    size = 0
    for name, key in names:
        nbytes = reader.nbytes(key)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, key))
        size += nbytes
    if len(shards) == 1:
        save_file({name: load(key).contiguous() for name, key in shards[0]}, str(target / WEIGHTS_NAME))
        return
    weight_map = {}
    total = 0
    for i, shard in enumerate(shards, start=1):
        file = WEIGHTS_NAME.replace(".safetensors", f"-{i:05d}-of-{len(shards):05d}.safetensors")
        tensors = {name: load(key).contiguous() for name, key in shard}
        save_file(tensors, str(target / file))
        weight_map |= dict.fromkeys(tensors, file)
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (target / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _copy_components(source: Path, output: Path, skip: tuple[str, ...]) -> None:
    """Copies the folder's other components (VAE, text encoders, tokenizers, scheduler) file by file."""
    output.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name in skip:
            continue
        if entry.is_dir():
            shutil.copytree(entry, output / entry.name, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, output / entry.name)


def convert_released(
    source: str | Path,
    output: str | Path,
    *,
    export: str | Path | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> ReleasedLayout:
    """Converts a released folder into our DCM folder (and, for Wan, a stock-diffusers Wan2.2-style export), streaming
    tensor by tensor from the released file; no model is built.

    The DCM folder (:mod:`dcm.io.model_folder`): ``transformer/`` = the semantic expert, ``detail_expert/`` = LoRA and
    timestep layers, ``dcm_config.json`` with the released defaults, the other components copied. The export:
    ``transformer`` = semantic expert, ``transformer_2`` = detail expert with the LoRA merged, ``boundary_ratio`` and a
    flow-matching Euler scheduler with the grid's shift.

    Each folder is written beside its target under a ``.partial`` name and renamed when complete, so a failure leaves
    no half-written model behind; an existing non-empty target is refused, not overwritten.
    """
    source, output = Path(source), Path(output)
    export = Path(export) if export is not None else None
    layout = inspect_released(source)
    config = layout.model_config()
    if export is not None and layout.family != "wan":
        raise ValueError(f"a stock two-expert export exists for the Wan family only, got {layout.family!r}")
    for target in (output, export):
        if target is not None and target.exists() and any(target.iterdir()):
            raise ValueError(f"{target} exists and is not empty: choose a new folder (nothing was written)")
    with TensorReader(layout.weights) as reader:
        semantic = list(semantic_tensors(layout, reader))
        with _partial(output) as folder:
            _copy_components(source, folder, skip=(TRANSFORMER_DIR, CONFIG_NAME, DETAIL_DIR))
            write_transformer(folder / TRANSFORMER_DIR, semantic, reader.get, reader, _stock_config(layout),
                              max_shard_bytes=max_shard_bytes)  # fmt: skip
            _set_model_index(folder, transformer=_stock_class(layout))
            (folder / DETAIL_DIR).mkdir()
            save_file({k: v.contiguous() for k, v in detail_tensors(layout, reader).items()},
                      str(folder / DETAIL_DIR / WEIGHTS_NAME))  # fmt: skip
            (folder / CONFIG_NAME).write_text(json.dumps(to_dict(config), indent=2) + "\n")
        if export is not None:
            with _partial(export) as folder:
                _write_export(layout, reader, semantic, folder, max_shard_bytes=max_shard_bytes)
    return layout


@contextmanager
def _partial(target: Path) -> Iterator[Path]:
    """A fresh ``.<name>.partial`` folder beside ``target``, renamed to ``target`` when the block succeeds and removed
    when it fails."""
    partial = target.parent / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if target.exists():
        target.rmdir()  # empty (checked before writing)
    partial.rename(target)


def _write_export(
    layout: ReleasedLayout, reader: TensorReader, semantic: list, export: Path, *, max_shard_bytes: int
) -> None:
    config = layout.model_config()
    grid = build_grid(config.schedule)
    _copy_components(layout_source(layout), export, skip=(TRANSFORMER_DIR, "scheduler", CONFIG_NAME, DETAIL_DIR))
    write_transformer(export / TRANSFORMER_DIR, semantic, reader.get, reader, _stock_config(layout),
                      max_shard_bytes=max_shard_bytes)  # fmt: skip
    detail = list(detail_stock_names(layout, reader))
    write_transformer(export / "transformer_2", detail, lambda key: merged_detail_tensor(layout, reader, key), reader,
                      _stock_config(layout), max_shard_bytes=max_shard_bytes)  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=grid.config.num_train_timesteps, shift=grid.config.shift
    )
    scheduler.save_pretrained(export / "scheduler")
    stock = _stock_class(layout)
    _set_model_index(export, transformer=stock, transformer_2=stock, scheduler=["diffusers", type(scheduler).__name__],
                     boundary_ratio=grid.boundary_ratio)  # fmt: skip
    # Our loader reads the grid back from here; stock diffusers ignores the file.
    (export / CONFIG_NAME).write_text(json.dumps(to_dict(replace(config, detail=None)), indent=2) + "\n")


def _stock_class(layout: ReleasedLayout) -> list[str]:
    """model_index.json's entry for a stock transformer of the family (the authors' may name their own class)."""
    return ["diffusers", get_family(layout.family).transformer_class.__name__]


def _stock_config(layout: ReleasedLayout) -> dict:
    return layout.transformer_config | {"_class_name": get_family(layout.family).transformer_class.__name__}


def _set_model_index(folder: Path, **entries) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | entries, indent=2) + "\n")


def layout_source(layout: ReleasedLayout) -> Path:
    """The released folder a layout was read from."""
    return next(iter(layout.weights.values())).parent.parent
