"""Training data for distillation: precomputed VAE latents and text embeddings, local or on S3.

A dataset is a folder (or ``s3://`` prefix)::

    meta.json                       {"family", "num_samples", "latent_shape": [C, F, H, W], "cond_shapes": {...},
                                     "shards": ["shards/00000.safetensors", ...], "source"}
    index.parquet                   one row per sample: shard, row, caption, source (e.g. the video it came from)
    negative.safetensors            conditioning of the empty prompt (batch 1), for the teacher's CFG
    shards/00000.safetensors        "latents" (N, C, F, H, W) float32 + one tensor per conditioning key (N, ...)

Latents are normalised the way the family's pipeline expects (Wan: ``(z - mean) / std``; HunyuanVideo:
``z * scaling_factor``). :class:`DatasetWriter` is the one writer (the synthetic generator below and the real-video
preprocessing job both use it); :class:`LatentDataset` reads it back as a torch dataset.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load, save
from torch import Tensor

from dcm.io.storage import Store

META_NAME = "meta.json"
PROGRESS_NAME = "progress.json"  # shards written so far, so an interrupted writer can resume
INDEX_NAME = "index.parquet"
NEGATIVE_NAME = "negative.safetensors"
LATENTS_KEY = "latents"
DEFAULT_SHARD_SIZE = 256


class DatasetWriter:
    """Appends samples and writes shards of ``shard_size``; :meth:`close` writes the index and meta.

    Args:
        root: local folder or ``s3://`` prefix.
        family: model family the latents belong to.
        negative: conditioning of the empty prompt (each tensor with batch 1).
        shard_size: samples per shard.
    """

    def __init__(
        self,
        root: str,
        *,
        family: str,
        negative: dict[str, Tensor],
        shard_size: int = DEFAULT_SHARD_SIZE,
        endpoint_url: str | None = None,
        source: str = "",
        resume: bool = False,
    ) -> None:
        self.store = Store(root, endpoint_url)
        self.family = family
        self.shard_size = shard_size
        self.source = source
        self.latent_shape: list[int] | None = None
        self.cond_shapes: dict[str, list[int]] = {k: list(v.shape[1:]) for k, v in negative.items()}
        self.store.put_bytes(NEGATIVE_NAME, save({k: v.detach().cpu().contiguous() for k, v in negative.items()}))
        self._pending: list[tuple[Tensor, dict[str, Tensor], str, str]] = []
        self._shards: list[str] = []
        self._index: list[tuple[str, int, str, str]] = []
        if resume and self.store.exists(PROGRESS_NAME):
            progress = json.loads(self.store.get_bytes(PROGRESS_NAME))
            self._shards, self._index = progress["shards"], [tuple(r) for r in progress["index"]]
            self.latent_shape = progress["latent_shape"]

    @property
    def sources_written(self) -> set[str]:
        """Sources of the samples in finished shards: what a resumed job skips."""
        return {row[3] for row in self._index}

    def add(
        self, latents: Tensor, cond: dict[str, Tensor], captions: Sequence[str], sources: Sequence[str] | None = None
    ) -> None:
        """latents: (B, C, F, H, W); cond: tensors (B, ...); captions, sources: B strings (sources: captions)."""
        sources = list(captions) if sources is None else list(sources)
        if latents.ndim != 5 or latents.shape[0] != len(captions):
            raise ValueError(f"latents must be (B, C, F, H, W) with B = {len(captions)}, got {tuple(latents.shape)}")
        shape = list(latents.shape[1:])
        if self.latent_shape is None:
            self.latent_shape = shape
        elif shape != self.latent_shape:
            raise ValueError(f"every sample must have latent shape {self.latent_shape}, got {shape}")
        if set(cond) != set(self.cond_shapes):
            raise ValueError(f"conditioning keys must be {sorted(self.cond_shapes)}, got {sorted(cond)}")
        for key, value in cond.items():
            if list(value.shape[1:]) != self.cond_shapes[key] or value.shape[0] != len(captions):
                raise ValueError(
                    f"{key} must have shape (B={len(captions)}, {self.cond_shapes[key]}), got {tuple(value.shape)}"
                )
        for i, caption in enumerate(captions):
            sample = {k: v[i].detach().cpu() for k, v in cond.items()}
            self._pending.append((latents[i].detach().cpu(), sample, caption, sources[i]))
            if len(self._pending) == self.shard_size:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"shards/{len(self._shards):05d}.safetensors"
        tensors = {LATENTS_KEY: torch.stack([p[0] for p in self._pending]).float().contiguous()}
        for key in self.cond_shapes:
            tensors[key] = torch.stack([p[1][key] for p in self._pending]).contiguous()
        self.store.put_bytes(name, save(tensors))
        self._index.extend((name, row, p[2], p[3]) for row, p in enumerate(self._pending))
        self._shards.append(name)
        self._pending = []
        progress = {"shards": self._shards, "index": self._index, "latent_shape": self.latent_shape}
        self.store.put_bytes(PROGRESS_NAME, json.dumps(progress).encode())

    def close(self) -> dict:
        """Writes the last shard, the index and meta.json (last, so a reader never sees a half-written dataset)."""
        self._flush()
        if not self._index:
            raise ValueError("no samples were added")
        columns = ("shard", "row", "caption", "source")
        table = pa.table({k: [r[i] for r in self._index] for i, k in enumerate(columns)})
        sink = io.BytesIO()
        pq.write_table(table, sink)
        self.store.put_bytes(INDEX_NAME, sink.getvalue())
        meta = {
            "family": self.family,
            "num_samples": len(self._index),
            "latent_shape": self.latent_shape,
            "cond_shapes": self.cond_shapes,
            "shards": self._shards,
            "source": self.source,
        }
        self.store.put_bytes(META_NAME, json.dumps(meta, indent=2).encode())
        return meta


class LatentDataset(torch.utils.data.Dataset):
    """Reads a dataset written by :class:`DatasetWriter` (all shards held in memory: distillation sets are small).

    Each item is ``{"latents": (C, F, H, W), <cond key>: (...), ...}``; :attr:`negative` holds the empty-prompt
    conditioning (batch 1) and :attr:`meta` the dataset's meta.json.
    """

    def __init__(self, root: str, *, endpoint_url: str | None = None) -> None:
        store = Store(root, endpoint_url)
        if not store.exists(META_NAME):
            raise FileNotFoundError(f"{root} is not a DCM training dataset: no {META_NAME}")
        self.meta = json.loads(store.get_bytes(META_NAME))
        self.negative = load(store.get_bytes(NEGATIVE_NAME))
        shards = [load(store.get_bytes(name)) for name in self.meta["shards"]]
        self.tensors = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
        if len(self.tensors[LATENTS_KEY]) != self.meta["num_samples"]:
            raise ValueError(f"{root}: meta says {self.meta['num_samples']} samples, shards hold "
                             f"{len(self.tensors[LATENTS_KEY])}")  # fmt: skip

    def __len__(self) -> int:
        return self.meta["num_samples"]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    @property
    def cond_keys(self) -> list[str]:
        return [k for k in self.tensors if k != LATENTS_KEY]
