"""jobs/batch_generate.py as a user meets it: preflight failures are one line and exit code 2 before Ray starts, the
dry run prints the plan, and a re-run of a finished manifest completes in seconds without starting Ray."""

import os
import re
import socket
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dcm.cluster.batch as batch
from dcm.cli import run_job
from dcm.cluster.batch import BatchConfig, run_batch
from dcm.manifest import JobDefaults
from jobs.batch_generate import main, parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["--model", "tiny-wan", "--num-frames", "9", "--height", "32", "--width", "32", "--steps", "2"]
# A preflight failure must not wait for retries or timeouts.
PREFLIGHT_SECONDS = 30
# A re-run with nothing to generate: planning and the view only (no actor, no model). It took 43 s before.
RERUN_JOB_SECONDS = 5


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if the job tries to start or join Ray."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the job started Ray")

    monkeypatch.setattr(batch, "ray_session", forbidden)


@pytest.fixture
def endpoint_env(monkeypatch):
    """run_job exports --s3-endpoint-url as AWS_ENDPOINT_URL; put the session's value back afterwards."""
    if "AWS_ENDPOINT_URL" in os.environ:
        monkeypatch.setenv("AWS_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])
    else:
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@pytest.fixture
def manifest(tmp_path):
    frame = pd.DataFrame({"id": ["red", "bad"], "prompt": ["a red circle", "a blue square"], "num_frames": [9, 10]})
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return str(path)


def cli(argv, capsys):
    """(exit code, stdout, stderr, seconds) of the job's main as ``python jobs/batch_generate.py`` runs it."""
    start = time.perf_counter()
    code = run_job(main, parse_args(argv))
    out = capsys.readouterr()
    return code, out.out, out.err, time.perf_counter() - start


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_error(code, err, seconds, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(n in lines[0] for n in needles), lines[0]
    assert seconds < PREFLIGHT_SECONDS, seconds


def test_missing_model_folder(manifest, tmp_path, capsys, no_ray):
    missing = str(tmp_path / "no-such-model")
    code, _, err, seconds = cli(["--manifest", manifest, "--output", str(tmp_path / "o"), "--model", missing], capsys)
    one_line_error(code, err, seconds, repr(missing))


def test_unwritable_output(manifest, tmp_path, capsys, no_ray):
    (tmp_path / "a-file").write_text("not a folder")
    output = str(tmp_path / "a-file" / "run")
    code, _, err, seconds = cli(["--manifest", manifest, "--output", output, *SMALL], capsys)
    one_line_error(code, err, seconds, "is not writable", output)


def test_unreadable_manifest(tmp_path, capsys, no_ray):
    code, _, err, seconds = cli(["--manifest", str(tmp_path / "nope.parquet"), *SMALL], capsys)
    one_line_error(code, err, seconds, "nope.parquet", "does not exist")
    (tmp_path / "text.parquet").write_text("not parquet")
    code, _, err, seconds = cli(["--manifest", str(tmp_path / "text.parquet"), *SMALL], capsys)
    one_line_error(code, err, seconds, "text.parquet", "cannot be read as Parquet")
    pq.write_table(pa.table({"text": ["no prompt column"]}), tmp_path / "bad.parquet")
    code, _, err, seconds = cli(["--manifest", str(tmp_path / "bad.parquet"), *SMALL], capsys)
    one_line_error(code, err, seconds, "missing required column(s) ['prompt']")


@pytest.mark.s3
def test_missing_bucket(manifest, s3_endpoint, capsys, no_ray, endpoint_env):
    code, _, err, seconds = cli(["--manifest", manifest, "--output", "s3://no-such-bucket/run", *SMALL], capsys)
    one_line_error(code, err, seconds, "no-such-bucket", "does not exist")
    code, _, err, seconds = cli(["--manifest", "s3://no-such-bucket/m.parquet", *SMALL], capsys)
    one_line_error(code, err, seconds, "s3://no-such-bucket/m.parquet", "does not exist")


@pytest.mark.s3
def test_unreachable_endpoint(manifest, s3_endpoint, capsys, no_ray, endpoint_env):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    argv = ["--manifest", manifest, "--output", "s3://some-bucket/run", "--s3-endpoint-url", endpoint, *SMALL]
    code, _, err, seconds = cli(argv, capsys)
    one_line_error(code, err, seconds, "cannot reach the S3 endpoint")


def test_dry_run_prints_the_plan_and_writes_nothing(manifest, tmp_path, capsys, no_ray):
    out = tmp_path / "out"
    code, printed, _, _ = cli(["--manifest", manifest, "--output", str(out), "--dry-run", *SMALL], capsys)
    assert code == 0
    assert "2 rows, 1 valid, 1 invalid (num_frames 1)" in printed and "1 to generate" in printed
    assert "invalid row 1 (id 'bad'): num_frames must be 4*n + 1" in printed
    assert not (out / "results").exists() and not (out / "index.html").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_rerun_of_a_finished_manifest_takes_seconds_and_starts_no_ray(manifest, tmp_path, ray_cluster):
    """Issue 21, item 6: it took 43 s (an actor and a model load) to skip 6 rows."""
    out = tmp_path / "out"
    defaults = JobDefaults(num_frames=9, height=32, width=32, num_inference_steps=2)
    run_batch(BatchConfig(manifest=manifest, output=str(out), model="tiny-wan", defaults=defaults), progress=False)
    command = [sys.executable, "jobs/batch_generate.py", "--manifest", manifest, "--output", str(out), *SMALL]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 rows: 0 ok, 1 error, 1 skipped" in done.stdout
    assert "Ray" not in done.stderr, done.stderr[-2000:]  # no local Ray started, no cluster joined
    job_seconds = float(re.search(r"skipped in ([\d.]+) s", done.stdout).group(1))
    print(f"re-run of a finished manifest: the job {job_seconds:.1f} s, the command {seconds:.1f} s (imports)")
    assert job_seconds < RERUN_JOB_SECONDS
