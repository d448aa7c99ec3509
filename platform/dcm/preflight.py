"""Checks a job runs before it starts Ray or loads a model: the model can be read and the output can be written.

    limits = check_model(args.model, endpoint_url)     # the model's own limits, from its configs (no weights)
    check_writable(args.output, endpoint_url)          # local: creatable and writable; s3: bucket + put/delete

Each failure is one ``ValueError`` naming the location and the cause (no such folder, missing bucket, wrong
credentials, unreachable endpoint, read-only folder), which ``dcm.cli.run_job`` prints as one line with exit code 2,
instead of a traceback from inside an actor minutes later.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from dcm.generation.model_limits import model_limits_from_source
from dcm.generation.requests import ModelLimits
from dcm.io.storage import Store, is_s3, s3_error_cause, split_s3

# A preflight answers quickly: one retry, not the five a long job's uploads get.
PREFLIGHT_ATTEMPTS = 2
PROBE_PREFIX = ".dcm-preflight-"


def check_model(model: str, endpoint_url: str | None = None) -> ModelLimits:
    """The model's limits when its configs can be read (preset, folder, ``s3://`` folder or hub id).

    Raises:
        ValueError: one line naming the model and the cause.
    """
    try:
        return model_limits_from_source(model, endpoint_url)
    except OSError as err:  # a config file that exists but cannot be read (permissions, I/O)
        raise ValueError(f"model {model!r} cannot be read: {type(err).__name__}: {err}") from err


def check_writable(output: str, endpoint_url: str | None = None) -> None:
    """Local: the folder exists or can be created, and a file can be written and removed in it. ``s3://``: the bucket
    exists and a probe object can be put and deleted under the prefix.

    Raises:
        ValueError: one line naming the output and the cause.
    """
    probe = f"{PROBE_PREFIX}{secrets.token_hex(6)}"
    if is_s3(output):
        _check_s3_writable(output, endpoint_url, probe)
        return
    path = Path(output).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"output {output!r} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        store = Store(str(path))
        store.put_bytes(probe, b"")
        store.delete(probe)
    except OSError as err:
        raise ValueError(f"output {output!r} is not writable: {err.strerror or err}") from err


def _check_s3_writable(output: str, endpoint_url: str | None, probe: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _ = split_s3(output)
    store = Store(output, endpoint_url, max_attempts=PREFLIGHT_ATTEMPTS)
    try:
        # A listing, not head_bucket: a HEAD answer has no body, so a 403 would not say which credential is wrong.
        store.client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except (ClientError, BotoCoreError) as err:
        raise ValueError(f"output {output!r}: {s3_error_cause(err, output) or err}") from err
    try:
        store.put_bytes(probe, b"", content_type="text/plain")
        store.delete(probe)
    except (ClientError, BotoCoreError) as err:
        raise ValueError(f"output {output!r} is not writable: {s3_error_cause(err, output) or err}") from err
