"""Preflight: a job's model and output are checked before Ray starts, each failure one line naming the location and
the cause: a missing folder or bucket, wrong credentials (a second moto server that enforces IAM auth), an
unreachable endpoint, an output that cannot be written."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dcm.io.model_folder import save_pretrained
from dcm.io.storage import Store
from dcm.preflight import PROBE_PREFIX, check_model, check_writable

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens
SERVER_START_S = 30


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_presets_and_folders_pass(tmp_path):
    assert check_model("tiny-wan").geometry.max_positions == 32
    assert check_model("demo").defaults.num_frames == 17


def test_a_missing_folder_is_named():
    with pytest.raises(ValueError) as info:
        check_model("./no/such/model")
    assert one_line(info).startswith("model './no/such/model' is neither a preset")


@pytest.mark.s3
def test_s3_model_passes_and_a_missing_bucket_or_model_is_named(tiny_wan, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/models/tiny"
    Store(uri).upload_from(save_pretrained(tiny_wan, tmp_path / "m"))
    assert check_model(uri).max_sequence_length == tiny_wan.max_sequence_length
    with pytest.raises(ValueError) as info:
        check_model("s3://no-such-bucket-x/models/tiny")
    assert one_line(info) == "model 's3://no-such-bucket-x/models/tiny': bucket 'no-such-bucket-x' does not exist"
    with pytest.raises(ValueError) as info:
        check_model(f"s3://{s3_bucket}/models/other")
    assert one_line(info) == f"model 's3://{s3_bucket}/models/other' has no model_index.json: not a diffusers/DCM " \
                             "model folder"  # fmt: skip


@pytest.mark.s3
def test_an_unreachable_endpoint_is_named(s3_endpoint):
    for check in (
        lambda: check_model("s3://bucket/model", UNREACHABLE),
        lambda: check_writable("s3://b-b/o", UNREACHABLE),
    ):
        started = time.monotonic()
        with pytest.raises(ValueError, match="cannot reach the S3 endpoint") as info:
            check()
        one_line(info)
        assert time.monotonic() - started < 10


@pytest.fixture(scope="module")
def iam_s3_endpoint():
    """A moto server that checks credentials against its IAM users (it has none): every key is wrong."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto_server = Path(sys.executable).parent / "moto_server"  # installed with moto[server] beside the interpreter
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen([str(moto_server), "-H", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.s3
def test_wrong_credentials_are_named(s3_endpoint, iam_s3_endpoint):
    with pytest.raises(ValueError) as info:
        check_model("s3://bucket/model", iam_s3_endpoint)
    assert one_line(info) == "model 's3://bucket/model': the S3 access key id is not known to the endpoint (wrong " \
                             "credentials)"  # fmt: skip
    with pytest.raises(ValueError, match="wrong credentials") as info:
        check_writable("s3://bucket/run", iam_s3_endpoint)
    one_line(info)


def test_local_outputs(tmp_path):
    check_writable(str(tmp_path / "new" / "run"))
    assert (tmp_path / "new" / "run").is_dir() and not list((tmp_path / "new" / "run").iterdir())  # probe removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError) as info:
        check_writable(str(tmp_path / "file"))
    assert one_line(info) == f"output '{tmp_path / 'file'}' exists and is not a folder"
    with pytest.raises(ValueError) as info:
        check_writable(str(tmp_path / "file" / "run"))
    assert one_line(info) == f"output '{tmp_path / 'file' / 'run'}' is not writable: Not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="is not writable: Permission denied"):
            check_writable(str(tmp_path))
    finally:
        tmp_path.chmod(0o700)


@pytest.mark.s3
def test_s3_outputs(s3_bucket):
    check_writable(f"s3://{s3_bucket}/runs/1")
    assert not [k for k in Store(f"s3://{s3_bucket}").list() if PROBE_PREFIX in k]  # probe deleted
    with pytest.raises(ValueError) as info:
        check_writable("s3://no-such-bucket-y/runs/1")
    assert one_line(info) == "output 's3://no-such-bucket-y/runs/1': bucket 'no-such-bucket-y' does not exist"
