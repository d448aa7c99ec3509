"""jobs/generate.py, jobs/make_manifest.py and jobs/preprocess.py on bad input: one line, exit code 2, no traceback
(issue 21, item 8); generate.py applies the model's own checks before loading it, then writes readable MP4s."""

import os
import stat
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

import dcm.cluster.preprocess
from dcm.cli import run_job
from dcm.io.video import read_mp4
from jobs import generate, make_manifest, preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli(job, argv, capsys):
    code = run_job(job.main, job.parse_args(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(n in lines[0] for n in needles), err


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if generate.py loads a model: its checks must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the request was checked")

    monkeypatch.setattr(generate, "VideoGenerator", forbidden)


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--num-frames", "10"], ["num_frames must be 4*n + 1", "got 10"]),
        (["--height", "36"], ["height must be a multiple of 16, got 36"]),
        (["--width", "1024"], ["width must be <= 512"]),  # tiny-wan's positional table
        (["--steps", "50"], ["num_inference_steps", "50"]),
        (["--seed", "-1"], ["seed", "-1"]),
    ],
)
def test_generate_refuses_bad_requests_before_loading(flags, needles, tmp_path, capsys, no_model_load):
    argv = ["--prompt", "a red circle", "--model", "tiny-wan", "--output", str(tmp_path), *flags]
    code, _, err = cli(generate, argv, capsys)
    one_line(code, err, *needles)


def test_generate_unknown_model(tmp_path, capsys, no_model_load):
    code, _, err = cli(generate, ["--prompt", "p", "--model", "no-such-model", "--output", str(tmp_path)], capsys)
    one_line(code, err, "'no-such-model'", "preset")


def test_generate_writes_readable_videos(tmp_path, capsys):
    argv = ["--prompt", "a red circle", "--prompt", "a blue square", "--model", "tiny-wan", "--output", str(tmp_path),
            "--num-frames", "9", "--height", "32", "--width", "32", "--steps", "2"]  # fmt: skip
    code, _, err = cli(generate, argv, capsys)
    assert code == 0, err
    for name in ("000.mp4", "001.mp4"):
        assert read_mp4(tmp_path / name).frames.shape == (9, 32, 32, 3)
        assert (tmp_path / name).stat().st_mode & stat.S_IROTH


@pytest.mark.slow
def test_generate_command_line_prints_no_traceback(tmp_path):
    command = [sys.executable, "jobs/generate.py", "--prompt", "p", "--model", "tiny-wan", "--num-frames", "10",
               "--output", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: num_frames must be 4*n + 1")
    debug = subprocess.run([*command, "--debug"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr  # --debug shows where it came from


def test_make_manifest(tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("# a comment\na red circle\n\na blue square\n")
    code, out, _ = cli(make_manifest, [str(tmp_path / "prompts.txt"), str(tmp_path / "m.parquet"), "--seed", "5"],
                       capsys)  # fmt: skip
    assert code == 0 and "wrote 2 rows" in out
    table = pq.read_table(tmp_path / "m.parquet").to_pydict()
    assert table == {"id": ["0", "1"], "prompt": ["a red circle", "a blue square"], "seed": [5, 6]}
    code, _, err = cli(make_manifest, [str(tmp_path / "missing.txt"), str(tmp_path / "m.parquet")], capsys)
    one_line(code, err, "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    code, _, err = cli(make_manifest, [str(tmp_path / "empty.txt"), str(tmp_path / "m.parquet")], capsys)
    one_line(code, err, "no prompts found")


def test_preprocess_bad_clip_settings_fail_before_ray(tmp_path, capsys, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the job started Ray")

    monkeypatch.setattr(preprocess, "ray_session", forbidden)
    monkeypatch.setattr(dcm.cluster.preprocess, "run_preprocess", forbidden)
    base = ["--videos", str(tmp_path), "--captions", str(tmp_path / "c.json"), "--output", str(tmp_path / "o")]
    code, _, err = cli(preprocess, [*base, "--fps", "0"], capsys)
    one_line(code, err, "fps must be > 0, got 0.0")
    code, _, err = cli(preprocess, [*base, "--height", "-8"], capsys)
    one_line(code, err, "height must be a positive integer, got -8")
