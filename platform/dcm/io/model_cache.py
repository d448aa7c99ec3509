"""Where a model folder named by ``--model`` lives on this machine: local folders as they are, ``s3://`` folders
downloaded once into a cache (``~/.cache/dcm/models``, or ``$DCM_MODEL_CACHE``)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from dcm.io.storage import Store, is_s3
from dcm.presets import PRESETS

logger = logging.getLogger(__name__)

MODEL_CACHE_ENV = "DCM_MODEL_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(MODEL_CACHE_ENV, Path.home() / ".cache" / "dcm" / "models"))


def localise(source: str, endpoint_url: str | None) -> str:
    """An s3:// folder is downloaded once into the cache; anything else is returned as is."""
    if not is_s3(source):
        if not Path(source).exists() and ("/" not in source or source.startswith((".", "/"))):
            raise FileNotFoundError(
                f"model {source!r} is neither a preset ({sorted(PRESETS)}), an existing folder, an s3:// URI "
                f"nor a hub id (owner/name)"
            )
        return source
    target = default_cache_dir() / hashlib.sha256(source.encode()).hexdigest()[:16]
    if not (target / "model_index.json").exists():
        logger.info("downloading %s to %s", source, target)
        Store(source, endpoint_url).download_to(target)
        if not (target / "model_index.json").exists():
            raise FileNotFoundError(f"{source} has no model_index.json: not a diffusers/DCM model folder")
    return str(target)
