"""bench/gpu_check.py runs here at a tiny size (--smoke), in a process where Ray, imageio and boto3 are absent, as on
the GPU machine: every check writes its JSON, the dual expert routes as the schedule says, and none of those packages
is imported on the way."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the GPU machine does not have. boto3 is installed here and accelerate (used by diffusers and peft) imports it
# whenever it is installed; marking these absent (None in sys.modules: find_spec says "not installed", import fails)
# makes this process look like that machine, and shows the check imports none of them itself.
ABSENT = ("ray", "imageio", "imageio_ffmpeg", "boto3")
RUNNER = textwrap.dedent("""
    import json, runpy, sys
    absent = sys.argv[1].split(",")
    for name in absent:
        sys.modules[name] = None
    sys.argv = ["bench/gpu_check.py", "--out", sys.argv[2], "--smoke"]
    try:
        runpy.run_path("bench/gpu_check.py", run_name="__main__")
    except SystemExit as exit:
        code = exit.code
    print(json.dumps({"exit": code, "imported": [n for n in absent if sys.modules.get(n) is not None]}))
""")


@pytest.mark.slow
def test_smoke_run_writes_every_check_without_ray_imageio_or_boto3(tmp_path):
    out = tmp_path / "gpu-check"
    result = subprocess.run([sys.executable, "-c", RUNNER, ",".join(ABSENT), str(out)], cwd=ROOT, capture_output=True,
                            text=True, env={"PYTHONPATH": str(ROOT / "platform"), "PATH": "/usr/bin:/bin"},
                            timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads(result.stdout.strip().splitlines()[-1])
    assert status["imported"] == [], status
    files = {p.name for p in out.iterdir()}
    assert files == {"environment.json", "wan_dcm_vs_teacher.json", "stage_two_step.json", "summary.json"}
    summary = json.loads((out / "summary.json").read_text())
    assert status["exit"] == (0 if all(entry["ok"] for entry in summary.values()) else 1), (status, summary)
    assert summary["environment"]["ok"] and summary["wan_dcm_vs_teacher"]["ok"], summary
    wan = json.loads((out / "wan_dcm_vs_teacher.json").read_text())
    assert wan["routing_ok"] is True
    assert wan["dcm_4_steps"]["experts"] == ["semantic", "semantic", "detail", "detail"]
    assert wan["dcm_released_6_steps"]["experts"] == ["semantic"] * 3 + ["detail"] * 3
    assert wan["teacher_50_steps_cfg"]["nfe"] == 100 and wan["dcm_4_steps"]["nfe"] == 4
    assert wan["dcm_4_steps"]["latents_dtype"] == "torch.float32"  # bf16 model, float32 loop
    assert wan["dcm_4_steps"]["frames_shape"] == [1, 9, 32, 32, 3]
    assert wan["speedup_end_to_end"] > 0 and wan["dcm_4_steps"]["peak_memory_gib"] is None  # no GPU here
    # The Stage II check belongs to bench/gpu_check_train.py: here only that it ran (figures or its error recorded),
    # or that its absence was.
    train = json.loads((out / "stage_two_step.json").read_text())
    if (ROOT / "bench" / "gpu_check_train.py").exists():
        assert "skipped" not in train and ("error" in train) != train["ok"], train
    else:
        assert train["ok"] and "gpu_check_train.py is not there" in train["skipped"]
