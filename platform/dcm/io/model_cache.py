"""Where a model folder named by ``--model`` lives on this machine: local folders as they are, ``s3://`` folders
downloaded once into a cache (``~/.cache/dcm/models``, or ``$DCM_MODEL_CACHE``; keep it on a local disk).

A cache entry is crash-safe and follows its source:

* a download goes into a temporary folder beside the entry (same filesystem) and is renamed into place when every
  object has arrived, so a killed download leaves nothing at the entry's path;
* the completion marker (:data:`MARKER_NAME`), written last, records the source and each object's key, size and
  ETag; an entry is used only while its marker matches the source's current listing, so a changed model at the same
  URI is fetched again;
* loaders on one node take an exclusive ``fcntl.flock`` on the entry's lock file: one downloads, the others wait
  and then find the entry complete;
* when the listing fails (the store is unreachable) a complete entry from earlier is used, with a warning.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dcm.io.storage import ObjectInfo, Store, is_s3, s3_error_cause

logger = logging.getLogger(__name__)

MODEL_CACHE_ENV = "DCM_MODEL_CACHE"
MODEL_INDEX = "model_index.json"
MARKER_NAME = ".dcm-complete.json"
ENTRY_HASH_CHARS = 16
# What ``--model`` names: an s3:// folder, a local folder, or a hub repository id (owner/name).
S3, FOLDER, HUB = "s3", "folder", "hub"
BYTES_PER_MB = 1e6


def default_cache_dir() -> Path:
    return Path(os.environ.get(MODEL_CACHE_ENV, Path.home() / ".cache" / "dcm" / "models"))


def source_kind(source: str) -> str:
    """:data:`S3`, :data:`FOLDER` or :data:`HUB`; raises FileNotFoundError for a path that does not exist."""
    if is_s3(source):
        return S3
    if Path(source).exists():
        return FOLDER
    if "/" in source and not source.startswith((".", "/", "~")) and source.count("/") == 1:
        return HUB
    from dcm.presets import PRESETS  # only for the message: presets import the model families (torch, diffusers)

    raise FileNotFoundError(
        f"model {source!r} is neither a preset ({sorted(PRESETS)}), an existing folder, an s3:// URI "
        f"nor a hub id (owner/name)"
    )


def localise(source: str, endpoint_url: str | None) -> str:
    """An ``s3://`` folder is downloaded into the cache (once per version); anything else is returned as is.

    Raises:
        FileNotFoundError: no such folder, or an ``s3://`` prefix without ``model_index.json``.
        ValueError: the store refused or could not be reached (the message names the source and the cause).
    """
    if source_kind(source) != S3:
        return source
    return str(fetch_folder(Store(source, endpoint_url)))


def cache_entry(source: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder a source is cached in (whether or not it is there yet)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / hashlib.sha256(source.encode()).hexdigest()[:ENTRY_HASH_CHARS]


def fetch_folder(store: Store, cache_dir: str | os.PathLike | None = None) -> Path:
    """Downloads every object under ``store``'s root into its cache entry unless a complete copy of the same
    version is there; returns the entry. Safe against kills and concurrent callers (see the module docstring)."""
    target = cache_entry(store.root, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_name(f"{target.name}.lock")):
        objects = _listing(store, target)
        if objects is None:
            return target  # the store is unreachable; an earlier complete copy is used
        if _read_marker(target) == _marker(store.root, objects):
            return target
        _remove_leftovers(target)
        _download(store, objects, target)
    return target


def _listing(store: Store, target: Path) -> list[ObjectInfo] | None:
    """The source's objects; None when the store cannot be listed but a complete entry exists."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        objects = store.list_objects()
    except (ClientError, BotoCoreError) as err:
        cause = s3_error_cause(err, store.root)
        marker = _read_marker(target)
        if marker is not None and marker.get("source") == store.root:
            logger.warning("cannot list %s (%s); using the copy cached at %s", store.root, cause, target)
            return None
        raise ValueError(f"model {store.root}: {cause}") from err
    if MODEL_INDEX not in {info.key for info in objects}:
        raise FileNotFoundError(f"{store.root} has no {MODEL_INDEX}: not a diffusers/DCM model folder")
    return objects


def _marker(source: str, objects: list[ObjectInfo]) -> dict:
    return {"source": source, "objects": [{"key": o.key, "size": o.size, "etag": o.etag} for o in objects]}


def _read_marker(target: Path) -> dict | None:
    try:
        return json.loads((target / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def _download(store: Store, objects: list[ObjectInfo], target: Path) -> None:
    """Every object into a temporary sibling of ``target``, the marker last, then one rename into place."""
    partial = target.with_name(f".{target.name}.partial-{secrets.token_hex(4)}")
    total = sum(o.size for o in objects)
    logger.info("downloading %s (%d files, %.1f MB) to %s", store.root, len(objects), total / BYTES_PER_MB, target)
    try:
        done = 0
        for info in objects:
            path = partial / store.check_key(info.key)
            path.parent.mkdir(parents=True, exist_ok=True)
            store.download_file(info.key, path)
            if path.stat().st_size != info.size:
                raise OSError(f"{store.uri(info.key)}: got {path.stat().st_size} bytes, the listing says {info.size}")
            done += info.size
            logger.info("  %s (%.1f / %.1f MB)", info.key, done / BYTES_PER_MB, total / BYTES_PER_MB)
        _write_synced(partial / MARKER_NAME, json.dumps(_marker(store.root, objects), indent=1))
        _replace_folder(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _replace_folder(new: Path, target: Path) -> None:
    """``new`` becomes ``target``; an older ``target`` is moved aside first and then deleted (a crash in between
    leaves no ``target``, and the leftover is removed by the next download)."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, target)


def _remove_leftovers(target: Path) -> None:
    """Partial downloads and replaced copies a killed process left (called under the entry's lock)."""
    for path in target.parent.glob(f".{target.name}.*"):
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block; the kernel drops it when the process dies."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process to finish downloading into %s", path.with_suffix(""))
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
