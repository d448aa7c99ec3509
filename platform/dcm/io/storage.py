"""Object storage over one interface: local folders and ``s3://bucket/prefix`` URIs (AWS, MinIO, R2, ...).

S3-compatible endpoints are selected with the standard ``AWS_ENDPOINT_URL`` environment variable (boto3 reads it)
or an explicit ``endpoint_url``. Writes are atomic: a local file is written beside its final name and renamed; an
S3 object becomes visible only when its upload completes. boto3's own retry mode does backoff on S3 errors.
Local files are created readable by everyone the process umask allows (0644 under the usual umask 022), so a web
server or a team share can serve a run's gallery and videos.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

S3_SCHEME = "s3://"
# boto3 "standard" retry mode: exponential backoff with jitter on throttling and 5xx errors.
S3_MAX_ATTEMPTS = 5
# Connect timeout of S3 calls: an unreachable endpoint fails in seconds, not after botocore's default 60 s per try.
S3_CONNECT_TIMEOUT_S = 10
_SAFE_CHARS = re.compile(r"[^a-z0-9._-]")
MAX_NAME_CHARS = 128
NAME_HASH_CHARS = 10
# New local files: read-write for the owner, readable by others, minus what the process umask removes.
FILE_MODE = 0o666


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
    """A file/object name that cannot escape its prefix and cannot collide with another id's name.

    Only ``[a-z0-9._-]``, no leading dot. A name that had to change (other characters, upper case, too long) gets a
    hash of the original appended, so two different ids never share a name, also on case-insensitive stores
    (``Clip`` and ``clip`` map to ``clip-<hash>`` and ``clip``). The same id always gives the same name.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    cleaned = _SAFE_CHARS.sub("_", name.lower()).lstrip(".")[:MAX_NAME_CHARS] or "_"
    if cleaned != name:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:NAME_HASH_CHARS]
        cleaned = f"{cleaned}-{digest}"
    return cleaned


@dataclass(frozen=True, kw_only=True)
class ObjectInfo:
    """One object of a listing: key relative to the store's root, size in bytes, and the ETag (None locally)."""

    key: str
    size: int
    etag: str | None


def s3_client(endpoint_url: str | None = None, *, max_attempts: int = S3_MAX_ATTEMPTS):
    """A boto3 S3 client; ``endpoint_url`` defaults to ``AWS_ENDPOINT_URL`` (boto3 reads it itself)."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        s3={"addressing_style": "path"},
        connect_timeout=S3_CONNECT_TIMEOUT_S,
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


def s3_error_cause(err: Exception, uri: str) -> str | None:
    """One line saying why an S3 call on ``uri`` failed (missing bucket, credentials, endpoint), or None when
    ``err`` is not an S3/botocore error."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    bucket = split_s3(uri)[0] if is_s3(uri) else uri
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        message = err.response.get("Error", {}).get("Message", "")
        causes = {
            "NoSuchBucket": f"bucket {bucket!r} does not exist",
            "InvalidAccessKeyId": "the S3 access key id is not known to the endpoint (wrong credentials)",
            "SignatureDoesNotMatch": "the S3 secret key does not match the access key id (wrong credentials)",
            "AccessDenied": "access denied (check the credentials and the bucket policy)",
            "403": "access denied (check the credentials and the bucket policy)",
            "NoSuchKey": f"{uri} does not exist",
            "404": f"{uri} does not exist",
        }
        return causes.get(code, f"S3 error {code}: {message}".strip())
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return "no S3 credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or an instance role)"
    if isinstance(err, (EndpointConnectionError, ConnectionError)):
        return f"cannot reach the S3 endpoint ({err})"
    return None


@dataclass
class Store:
    """A folder or S3 prefix; keys are ``/``-separated paths relative to it.

    Args:
        root: a local path or ``s3://bucket/prefix``.
        endpoint_url: S3 endpoint override (MinIO, moto, R2); ignored for local roots.
    """

    root: str
    endpoint_url: str | None = None
    max_attempts: int = S3_MAX_ATTEMPTS

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
            self._client = s3_client(self.endpoint_url, max_attempts=self.max_attempts)
        return self._client

    def check_key(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"storage key must be a relative path without '.', '..' or empty parts, got {key!r}")
        return key

    def _s3_key(self, key: str) -> tuple[str, str]:
        bucket, prefix = split_s3(self.root)
        return bucket, f"{prefix}/{key}" if prefix else key

    def uri(self, key: str) -> str:
        """Full location of ``key``: an ``s3://`` URI or an absolute local path."""
        self.check_key(key)
        return f"{self.root}/{key}" if self.is_s3 else str(Path(self.root, key).resolve())

    # -- operations -------------------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> str:
        """Writes atomically and returns the URI."""
        self.check_key(key)
        if self.is_s3:
            bucket, obj = self._s3_key(key)
            self.client.put_object(Bucket=bucket, Key=obj, Body=data, ContentType=content_type)
            return self.uri(key)
        path = Path(self.root, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Not tempfile.mkstemp: it creates 0600 files. os.open with FILE_MODE lets the umask decide, as open() does.
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.partial")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self.uri(key)

    def get_bytes(self, key: str, *, byte_range: tuple[int, int] | None = None) -> bytes:
        """The object's bytes, or only bytes ``first..last`` (inclusive, as HTTP ranges) of it: a file header
        without its body. A range past the end gives what there is."""
        self.check_key(key)
        if self.is_s3:
            bucket, obj = self._s3_key(key)
            extra = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
            return self.client.get_object(Bucket=bucket, Key=obj, **extra)["Body"].read()
        if byte_range is None:
            return Path(self.root, key).read_bytes()
        with open(Path(self.root, key), "rb") as f:
            f.seek(byte_range[0])
            return f.read(byte_range[1] - byte_range[0] + 1)

    def exists(self, key: str) -> bool:
        self.check_key(key)
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
        self.check_key(key)
        if self.is_s3:
            bucket, obj = self._s3_key(key)
            return int(self.client.head_object(Bucket=bucket, Key=obj)["ContentLength"])
        return Path(self.root, key).stat().st_size

    def list(self, prefix: str = "") -> list[str]:
        """All keys under ``prefix`` (recursive), sorted; temporary ``.partial`` files are not listed."""
        return [info.key for info in self.list_objects(prefix)]

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        """Keys, sizes and ETags under ``prefix`` (recursive), sorted by key; S3 folder markers (``a/``) and local
        ``.partial`` files are left out."""
        if self.is_s3:
            bucket, root_key = split_s3(self.root)
            full = "/".join(p for p in (root_key, prefix.strip("/")) if p)
            full += "/" if full else ""  # a folder: s3://b/model must not list s3://b/model-old/...
            infos = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=full):
                for item in page.get("Contents", []):
                    key = item["Key"][len(root_key) :].lstrip("/") if root_key else item["Key"]
                    if key and not key.endswith("/"):
                        infos.append(ObjectInfo(key=key, size=int(item["Size"]), etag=item.get("ETag")))
            return sorted(infos, key=lambda info: info.key)
        base = Path(self.root)
        if not base.exists():
            return []
        paths = (p for p in base.joinpath(prefix).rglob("*") if p.is_file() and not p.name.endswith(".partial"))
        infos = [ObjectInfo(key=str(p.relative_to(base)).replace(os.sep, "/"), size=p.stat().st_size, etag=None)
                 for p in paths]  # fmt: skip
        return sorted(infos, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        """Removes ``key``; a missing key is not an error."""
        self.check_key(key)
        if self.is_s3:
            bucket, obj = self._s3_key(key)
            self.client.delete_object(Bucket=bucket, Key=obj)
        else:
            Path(self.root, key).unlink(missing_ok=True)

    def download_file(self, key: str, target: str | os.PathLike) -> None:
        """Copies one object to the local file ``target`` (its folder must exist)."""
        self.check_key(key)
        if self.is_s3:
            bucket, obj = self._s3_key(key)
            self.client.download_file(bucket, obj, str(target))
        else:
            Path(target).write_bytes(self.get_bytes(key))

    def download_to(self, local_dir: str | os.PathLike) -> Path:
        """Copies every object under the root into ``local_dir``; a key with ``..`` or an absolute path is refused,
        so a hostile bucket cannot write outside ``local_dir``."""
        local = Path(local_dir)
        for key in self.list():
            target = local / self.check_key(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            self.download_file(key, target)
        return local

    def upload_from(self, local_dir: str | os.PathLike) -> None:
        """Copies a local folder tree under the root (e.g. a trained model folder to S3)."""
        local = Path(local_dir)
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            self.put_bytes(str(path.relative_to(local)).replace(os.sep, "/"), path.read_bytes())
