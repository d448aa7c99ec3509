"""Object storage over one interface: local folders and ``s3://bucket/prefix`` URIs (AWS, MinIO, R2, ...).

S3-compatible endpoints are selected with the standard ``AWS_ENDPOINT_URL`` environment variable (boto3 reads it)
or an explicit ``endpoint_url``. Writes are atomic: a local file is written beside its final name and renamed; an
S3 object becomes visible only when its upload completes. boto3's own retry mode does backoff on S3 errors.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

S3_SCHEME = "s3://"
# boto3 "standard" retry mode: exponential backoff with jitter on throttling and 5xx errors.
S3_MAX_ATTEMPTS = 5
_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
MAX_NAME_CHARS = 128


def is_s3(uri: str) -> bool:
    return str(uri).startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ("bucket", "a/b")."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if len(bucket) < 3:
        raise ValueError(f"S3 bucket names have at least 3 characters, got {bucket!r} in {uri!r}")
    return bucket, key.strip("/")


def safe_name(name: str) -> str:
    """A file/object name that cannot escape its prefix: ``[A-Za-z0-9._-]`` only, no leading dot.

    Names that had to change get a short hash of the original appended, so two different ids never collide.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    cleaned = _SAFE_CHARS.sub("_", name).lstrip(".")[:MAX_NAME_CHARS] or "_"
    if cleaned != name:
        cleaned = f"{cleaned}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"
    return cleaned


def s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client; ``endpoint_url`` defaults to ``AWS_ENDPOINT_URL`` (boto3 reads it itself)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"}, s3={"addressing_style": "path"})
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


@dataclass
class Store:
    """A folder or S3 prefix; keys are ``/``-separated paths relative to it.

    Args:
        root: a local path or ``s3://bucket/prefix``.
        endpoint_url: S3 endpoint override (MinIO, moto, R2); ignored for local roots.
    """

    root: str
    endpoint_url: str | None = None

    def __post_init__(self) -> None:
        # Local roots are made absolute where the Store is created (Ray workers may run in another directory).
        self.root = str(self.root).rstrip("/") if is_s3(self.root) else str(Path(self.root).expanduser().absolute())
        self._client = None

    # -- helpers ----------------------------------------------------------------------------------------------

    @property
    def is_s3(self) -> bool:
        return is_s3(self.root)

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client(self.endpoint_url)
        return self._client

    def _check_key(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"storage key must be a relative path without '.', '..' or empty parts, got {key!r}")
        return key

    def _s3_key(self, key: str) -> tuple[str, str]:
        bucket, prefix = split_s3(self.root)
        return bucket, f"{prefix}/{key}" if prefix else key

    def uri(self, key: str) -> str:
        """Full location of ``key``: an ``s3://`` URI or an absolute local path."""
        self._check_key(key)
        return f"{self.root}/{key}" if self.is_s3 else str(Path(self.root, key).resolve())

    # -- operations -------------------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> str:
        """Writes atomically and returns the URI."""
        self._check_key(key)
        if self.is_s3:
            bucket, obj = self._s3_key(key)
            self.client.put_object(Bucket=bucket, Key=obj, Body=data, ContentType=content_type)
            return self.uri(key)
        path = Path(self.root, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        self._check_key(key)
        if self.is_s3:
            bucket, obj = self._s3_key(key)
            return self.client.get_object(Bucket=bucket, Key=obj)["Body"].read()
        return Path(self.root, key).read_bytes()

    def exists(self, key: str) -> bool:
        self._check_key(key)
        if self.is_s3:
            from botocore.exceptions import ClientError

            bucket, obj = self._s3_key(key)
            try:
                self.client.head_object(Bucket=bucket, Key=obj)
                return True
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return Path(self.root, key).is_file()

    def size(self, key: str) -> int:
        self._check_key(key)
        if self.is_s3:
            bucket, obj = self._s3_key(key)
            return int(self.client.head_object(Bucket=bucket, Key=obj)["ContentLength"])
        return Path(self.root, key).stat().st_size

    def list(self, prefix: str = "") -> list[str]:
        """All keys under ``prefix`` (recursive), sorted; temporary ``.partial`` files are not listed."""
        if self.is_s3:
            bucket, root_key = split_s3(self.root)
            full = "/".join(p for p in (root_key, prefix.strip("/")) if p)
            keys = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=full):
                for item in page.get("Contents", []):
                    keys.append(item["Key"][len(root_key) :].lstrip("/") if root_key else item["Key"])
            return sorted(keys)
        base = Path(self.root)
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(base)).replace(os.sep, "/")
            for p in base.joinpath(prefix).rglob("*")
            if p.is_file() and not p.name.endswith(".partial")
        )

    def download_to(self, local_dir: str | os.PathLike) -> Path:
        """Copies every object under the root into ``local_dir`` (for loading model folders from S3)."""
        local = Path(local_dir)
        for key in self.list():
            target = local / key
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.is_s3:
                bucket, obj = self._s3_key(key)
                self.client.download_file(bucket, obj, str(target))
            else:
                target.write_bytes(self.get_bytes(key))
        return local

    def upload_from(self, local_dir: str | os.PathLike) -> None:
        """Copies a local folder tree under the root (e.g. a trained model folder to S3)."""
        local = Path(local_dir)
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            self.put_bytes(str(path.relative_to(local)).replace(os.sep, "/"), path.read_bytes())
