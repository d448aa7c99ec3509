"""Every benchmark script starts from the repository root as the docs run it (``.venv/bin/python bench/x.py``):
its imports resolve without PYTHONPATH tweaks and ``--help`` exits 0 (issue 21: ``bench/serve_latency.py`` once
failed with ``No module named 'serve'``)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(path.name for path in (ROOT / "bench").glob("*.py"))
HELP_TIMEOUT_S = 120


def test_bench_folder_has_scripts():
    assert "generate_speed.py" in SCRIPTS and "gpu_check.py" in SCRIPTS


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_help_from_the_repository_root(script):
    result = subprocess.run([sys.executable, f"bench/{script}", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=HELP_TIMEOUT_S)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
