"""Training data for distillation: precomputed VAE latents and text embeddings, local or on S3, read lazily.

A dataset is a folder (or ``s3://`` prefix)::

    meta.json                       {"family", "num_samples", "latent_shape": [C, F, H, W], "cond_shapes": {...},
                                     "shards": ["shards/00000.safetensors", ...], "shard_sizes": [256, ...],
                                     "source"}
    index.parquet                   one row per sample: shard, row, caption, source (e.g. the video it came from)
    negative.safetensors            conditioning of the empty prompt (batch 1), for the teacher's CFG
    shards/00000.safetensors        "latents" (N, C, F, H, W) float32 + one tensor per conditioning key (N, ...)

Latents are normalised the way the family's pipeline expects (Wan: ``(z - mean) / std``; HunyuanVideo:
``z * scaling_factor``). :class:`DatasetWriter` is the one writer (the synthetic generator and the real-video
preprocessing job both use it). :class:`LatentDataset` reads it back one sample at a time: a local shard is read
with safetensors' ``safe_open`` (only the requested row), an S3 shard is fetched whole into a small LRU cache, so
memory does not grow with the dataset. :class:`EpochSampler` gives each worker its share of an epoch, shuffled
deterministically per seed and epoch, shard by shard so the cache is hit.
"""

from __future__ import annotations

import bisect
import io
import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load, save
from torch import Tensor

from dcm.io.storage import Store

META_NAME = "meta.json"
PROGRESS_NAME = "progress.json"  # shards written so far, so an interrupted writer can resume
INDEX_NAME = "index.parquet"
NEGATIVE_NAME = "negative.safetensors"
LATENTS_KEY = "latents"
NEGATIVE_PREFIX = "negative_"  # the CFG denoiser reads the unconditional tensors under negative_<key>
DEFAULT_SHARD_SIZE = 256
# S3 shards held in memory per reader: the one being read and the next (the sampler walks shard by shard).
DEFAULT_CACHED_SHARDS = 2


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
        import pyarrow as pa  # imported where used: readers of the data (and GPU checks) need no pyarrow
        import pyarrow.parquet as pq

        self._flush()
        if not self._index:
            raise ValueError("no samples were added")
        columns = ("shard", "row", "caption", "source")
        table = pa.table({k: [r[i] for r in self._index] for i, k in enumerate(columns)})
        sink = io.BytesIO()
        pq.write_table(table, sink)
        self.store.put_bytes(INDEX_NAME, sink.getvalue())
        sizes = {name: 0 for name in self._shards}
        for name, *_ in self._index:
            sizes[name] += 1
        meta = {
            "family": self.family,
            "num_samples": len(self._index),
            "latent_shape": self.latent_shape,
            "cond_shapes": self.cond_shapes,
            "shards": self._shards,
            "shard_sizes": [sizes[name] for name in self._shards],
            "source": self.source,
        }
        self.store.put_bytes(META_NAME, json.dumps(meta, indent=2).encode())
        return meta


class LatentDataset(torch.utils.data.Dataset):
    """Reads a dataset written by :class:`DatasetWriter`, one sample at a time.

    Each item is ``{"latents": (C, F, H, W), <cond key>: (...), ...}``. :attr:`negative` holds the empty-prompt
    conditioning (batch 1) and :attr:`meta` the dataset's meta.json. Only meta.json, the negative prompt and the
    shard sizes are read up front.

    Args:
        root: local folder or ``s3://`` prefix.
        max_cached_shards: S3 shards kept in memory (local shards are read row by row and never cached whole).
    """

    def __init__(
        self, root: str, *, endpoint_url: str | None = None, max_cached_shards: int = DEFAULT_CACHED_SHARDS
    ) -> None:
        if max_cached_shards < 1:
            raise ValueError(f"max_cached_shards must be >= 1, got {max_cached_shards}")
        self.root = root
        self.store = Store(root, endpoint_url)
        if not self.store.exists(META_NAME):
            raise FileNotFoundError(f"{root} is not a DCM training dataset: no {META_NAME}")
        self.meta = json.loads(self.store.get_bytes(META_NAME))
        self.negative = load(self.store.get_bytes(NEGATIVE_NAME))
        self.shard_sizes = self.meta.get("shard_sizes") or self._sizes_from_index()
        if sum(self.shard_sizes) != self.meta["num_samples"]:
            raise ValueError(f"{root}: meta says {self.meta['num_samples']} samples, shards hold "
                             f"{sum(self.shard_sizes)}")  # fmt: skip
        self._starts = [sum(self.shard_sizes[:i]) for i in range(len(self.shard_sizes))]
        self._max_cached = max_cached_shards
        self._cache: OrderedDict[str, dict[str, Tensor]] = OrderedDict()

    def _sizes_from_index(self) -> list[int]:
        """Datasets written before meta.json had ``shard_sizes``: count rows per shard in the index."""
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(self.store.get_bytes(INDEX_NAME)), columns=["shard"])
        names = table.column("shard").to_pylist()
        return [names.count(name) for name in self.meta["shards"]]

    def __len__(self) -> int:
        return self.meta["num_samples"]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(C, F, H, W) of every sample."""
        return tuple(self.meta["latent_shape"])

    @property
    def cond_keys(self) -> list[str]:
        return list(self.meta["cond_shapes"])

    def locate(self, i: int) -> tuple[int, int]:
        """Sample index -> (shard number, row in the shard)."""
        if not 0 <= i < len(self):
            raise IndexError(f"sample index {i} out of range for {len(self)} samples")
        shard = bisect.bisect_right(self._starts, i) - 1
        return shard, i - self._starts[shard]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        shard, row = self.locate(i)
        name = self.meta["shards"][shard]
        if not self.store.is_s3:
            with safe_open(str(Path(self.store.root, name)), framework="pt") as f:
                return {key: f.get_slice(key)[row : row + 1][0] for key in f.keys()}
        return {k: v[row] for k, v in self._shard(name).items()}

    def _shard(self, name: str) -> dict[str, Tensor]:
        if name in self._cache:
            self._cache.move_to_end(name)
        else:
            self._cache[name] = load(self.store.get_bytes(name))
            while len(self._cache) > self._max_cached:
                self._cache.popitem(last=False)
        return self._cache[name]

    @cached_property
    def tensors(self) -> dict[str, Tensor]:
        """Every sample in memory, ``{key: (N, ...)}``: for small sets only (tests, the demo teacher's training);
        distillation streams items instead."""
        shards = [load(self.store.get_bytes(name)) for name in self.meta["shards"]]
        return {k: torch.cat([s[k] for s in shards]) for k in shards[0]}


class EpochSampler(torch.utils.data.Sampler[int]):
    """One worker's sample indices for one epoch, deterministic per ``(seed, epoch)``.

    The epoch's order visits the shards in a seeded random order and, inside each shard, its rows in a seeded random
    order (so a reader holds one shard at a time). The order is cut into ``num_replicas`` contiguous parts of
    ``len(dataset) // num_replicas`` samples; part ``rank`` is this worker's. ``set_epoch(epoch, start)`` selects the
    epoch and skips its first ``start`` indices (a resumed run continues mid-epoch).

    Args:
        shard_sizes: samples per shard, in shard order.
        rank / num_replicas: this worker and the number of workers.
        seed: the run's seed; every worker must pass the same one.
        shuffle: False keeps the written order (each worker still gets its own part).
    """

    def __init__(
        self, shard_sizes: Sequence[int], *, rank: int, num_replicas: int, seed: int, shuffle: bool = True
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, {num_replicas}), got {rank}")
        self.shard_sizes = list(shard_sizes)
        self.rank, self.num_replicas, self.seed, self.shuffle = rank, num_replicas, seed, shuffle
        self.per_replica = sum(self.shard_sizes) // num_replicas
        if self.per_replica == 0:
            raise ValueError(f"{sum(self.shard_sizes)} samples cannot be split across {num_replicas} workers")
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.per_replica:
            raise ValueError(f"start must lie in [0, {self.per_replica}], got {start}")
        self.epoch, self.start = epoch, start

    def epoch_order(self) -> list[int]:
        """The whole epoch's order (all workers), before it is cut into parts."""
        starts = [sum(self.shard_sizes[:i]) for i in range(len(self.shard_sizes))]
        if not self.shuffle:
            return list(range(sum(self.shard_sizes)))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = []
        for shard in torch.randperm(len(self.shard_sizes), generator=generator).tolist():
            rows = torch.randperm(self.shard_sizes[shard], generator=generator)
            order.extend((starts[shard] + rows).tolist())
        return order

    def __iter__(self) -> Iterator[int]:
        lo = self.rank * self.per_replica
        yield from self.epoch_order()[lo + self.start : lo + self.per_replica]

    def __len__(self) -> int:
        return self.per_replica - self.start


def with_negative(batch: dict[str, Tensor], negative: dict[str, Tensor]) -> dict[str, Tensor]:
    """Adds the empty-prompt conditioning, broadcast to the batch, under ``negative_<key>`` (what
    :class:`dcm.sampling.CFGDenoiser` reads). batch: ``{"latents": (B, ...), key: (B, ...)}``; negative: (1, ...)."""
    batch_size = batch[LATENTS_KEY].shape[0]
    extra = {f"{NEGATIVE_PREFIX}{k}": v.expand(batch_size, *v.shape[1:]) for k, v in negative.items()}
    return batch | extra
