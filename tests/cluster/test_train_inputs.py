"""jobs/distill.py before anything starts: ``--plan``, and bad input as one line with exit code 2 (no Ray needed: every
check runs before Ray does)."""

from dataclasses import replace

import pytest

from dcm.cli import run_job
from dcm.cluster.train import prepare_distillation
from dcm.distill.recipes import tiny
from dcm.io.model_folder import load_pipeline
from dcm_demo.synthetic import write_synthetic_dataset
from jobs.distill import main, parse_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    paths = {}
    for teacher in ("tiny-wan", "tiny-hunyuan"):
        paths[teacher] = str(tmp_path_factory.mktemp(teacher) / "data")
        write_synthetic_dataset(
            load_pipeline(teacher), paths[teacher], num_samples=2, num_frames=9, height=32, width=32
        )
    paths["odd-size"] = str(tmp_path_factory.mktemp("odd") / "data")  # 40 x 40 pixels: 5 x 5 latents
    write_synthetic_dataset(load_pipeline("tiny-wan"), paths["odd-size"], num_samples=2, num_frames=9, height=40,
                            width=40)  # fmt: skip
    return paths


def test_plan_prints_the_memory_per_gpu_and_starts_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--recipe", "hunyuanvideo", "--data", str(tmp_path / "not-yet"), "--output", str(out), "--plan"]
    assert main(parse_args(argv)) == 0
    printed = capsys.readouterr().out
    assert (
        "memory plan per GPU: 8 worker(s), strategy fsdp, batch 1, 43200 tokens per sample" in printed
    )  # 45x720x1280
    assert "activations, ckpt off" in printed and "fits in 72.0 GiB usable of a 80 GiB GPU" in printed
    assert main(parse_args([*argv, "--gpu-memory-gb", "40"])) == 0
    assert "does NOT fit in 36.0 GiB usable of a 40 GiB GPU" in capsys.readouterr().out
    assert not out.exists()  # a plan writes nothing


def test_bad_input_is_one_line_and_exit_code_2(data, tmp_path, capsys):
    def fails(argv: list[str], message: str) -> None:
        assert run_job(main, parse_args(argv)) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and error.count("\n") == 1 and message in error, error

    out = ["--output", str(tmp_path / "out")]
    fails(["--recipe", "tiny", "--data", str(tmp_path / "missing"), *out], "is not a DCM training dataset")
    fails(["--recipe", "tiny", "--data", data["tiny-hunyuan"], *out],
          f"data {data['tiny-hunyuan']} holds 'hunyuan' latents, the teacher 'tiny-wan' is 'wan'")  # fmt: skip
    fails(["--recipe", "tiny", "--data", data["odd-size"], *out],
          "data latent shape [16, 3, 5, 5] is not divisible by the patch size (1, 2, 2)")  # fmt: skip
    # the real Wan recipe on a 16 GiB card: its memory plan refuses the run before Ray starts
    fails(["--recipe", "wan2.1-1.3b", "--data", data["tiny-wan"], *out, "--gpu-memory-gb", "16"],
          "usable of gpu_memory_gb=16.0; see `jobs/distill.py --plan`")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_checks_that_need_no_worker(data, tmp_path):
    config = tiny(data=data["tiny-wan"], output="relative/out")
    with pytest.raises(ValueError, match="output 'relative/out' is relative: on a Ray cluster"):
        prepare_distillation(config, on_cluster=True)
    deep = replace(config, output=str(tmp_path / "o"), stages=("detail",))
    deep = replace(deep, detail=replace(deep.detail, feature_stride=3))
    with pytest.raises(ValueError, match="stride must divide the teacher depth 2, got 3"):
        prepare_distillation(deep, on_cluster=False)
    assert prepare_distillation(
        replace(config, output=str(tmp_path / "ok")), on_cluster=False
    ).config.storage_path == (str(tmp_path / "ok" / "checkpoints"))
