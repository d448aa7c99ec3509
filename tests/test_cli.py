"""``dcm.cli``: every job's parent parser and error handling, on a tiny fake job run as a real process.

Bad input is one line on stderr and exit code 2; ``--debug`` shows the traceback; a bug is never disguised as bad
input; Ctrl-C exits 130 without a traceback; ``--help`` shows each flag's default and the docstring's line breaks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE_JOB = '''
"""A fake job.

    python fake_job.py --steps 3
"""
import os, sys, time
from dcm.cli import job_parser, run_job


def main(args):
    if args.fail == "value":
        raise ValueError("steps must be positive,\\n  got -1")
    if args.fail == "missing":
        open("/no/such/manifest.parquet")
    if args.fail == "bug":
        raise RuntimeError("a bug, not bad input")
    if args.fail == "sleep":
        print("sleeping", flush=True)
        time.sleep(60)
    print("ran", args.steps, os.environ.get("AWS_ENDPOINT_URL"))
    return 0


if __name__ == "__main__":
    parser = job_parser(__doc__, ray=True)
    parser.add_argument("--steps", type=int, default=4, help="sampler steps")
    parser.add_argument("--fail")
    sys.exit(run_job(main, parser.parse_args()))
'''


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("job") / "fake_job.py"
    path.write_text(FAKE_JOB)
    return path


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "platform")}


def run(job: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(job), *args], env=env(), capture_output=True, text=True, timeout=60)


def test_a_run_and_the_s3_endpoint_flag(job):
    result = run(job, "--s3-endpoint-url", "http://127.0.0.1:9000")
    assert result.returncode == 0 and result.stdout == "ran 4 http://127.0.0.1:9000\n"


@pytest.mark.parametrize(
    "fail, line",
    [
        ("value", "error: steps must be positive, got -1"),
        ("missing", "error: [Errno 2] No such file or directory: '/no/such/manifest.parquet'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(job, fail, line):
    result = run(job, "--fail", fail)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == line
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(job):
    result = run(job, "--fail", "value", "--debug")
    assert result.returncode == 1
    assert (
        "Traceback (most recent call last)" in result.stderr and "ValueError: steps must be positive" in result.stderr
    )


def test_a_bug_is_not_disguised_as_bad_input(job):
    result = run(job, "--fail", "bug")
    assert result.returncode == 1 and "RuntimeError: a bug, not bad input" in result.stderr


def test_bad_flags_exit_2_as_argparse_does(job):
    result = run(job, "--steps", "many")
    assert result.returncode == 2 and "invalid int value: 'many'" in result.stderr


def test_help_shows_defaults_and_keeps_the_docstring(job):
    result = run(job, "--help")
    assert result.returncode == 0
    assert "sampler steps (default: 4)" in result.stdout
    assert "\n    python fake_job.py --steps 3\n" in result.stdout  # line breaks kept
    assert "--address" in result.stdout and "--s3-endpoint-url" in result.stdout and "--debug" in result.stdout


def test_ctrl_c_exits_130_without_a_traceback(job):
    process = subprocess.Popen([sys.executable, str(job), "--fail", "sleep"], env=env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert process.stdout.readline() == "sleeping\n"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and stderr.strip() == "interrupted"
