"""A job's local Ray listens on loopback only, even when the shell did not export the loopback setting.

The job runs as a real process with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` removed from its environment; while it
runs, every listening socket of its process tree (driver, GCS, raylet, workers) is listed with psutil.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dcm.cluster.runtime import LOOPBACK_ENV

ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.2
JOB_TIMEOUT_S = 300


def child_env() -> dict[str, str]:
    """The test session's environment without the loopback setting and without a Ray address."""
    env = {k: v for k, v in os.environ.items() if k not in LOOPBACK_ENV and k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "platform"), str(ROOT)])
    return env


def listeners(pid: int) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket and bound UDP socket of ``pid`` and its
    descendants, now."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for process in processes:
        try:
            name = process.name()
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        for c in connections:
            if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr):
                found.add((name, c.laddr.ip, c.laddr.port))
    return found


def watch(process: subprocess.Popen, timeout: float) -> set[tuple[str, str, int]]:
    """Every listener seen while ``process`` runs."""
    seen: set[tuple[str, str, int]] = set()
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        seen |= listeners(process.pid)
        time.sleep(POLL_S)
    if process.poll() is None:
        process.kill()
    process.wait()
    return seen


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback, which Python 3.11 does not say
    return (mapped or ip).is_loopback


def exposed(seen: set[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    return sorted(s for s in seen if not is_loopback(s[1]))


def test_probe_sees_a_grandchild_listening_on_all_interfaces():
    """The probe itself can fail: a grandchild bound to 0.0.0.0 is found through the process tree."""
    grandchild = "import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(); time.sleep(3)"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"
    process = subprocess.Popen([sys.executable, "-c", code])
    seen = watch(process, timeout=10)
    assert [ip for _, ip, _ in exposed(seen)] == ["0.0.0.0"]


@pytest.mark.slow
def test_batch_job_listens_on_loopback_only(tmp_path):
    manifest = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": ["a red circle", "a blue square", "green"]}), manifest)
    command = [
        sys.executable, "jobs/batch_generate.py", "--manifest", str(manifest), "--output", str(tmp_path / "out"),
        "--model", "tiny-wan", "--num-frames", "9", "--height", "32", "--width", "32", "--no-gallery",
    ]  # fmt: skip
    log = tmp_path / "job.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        seen = watch(process, timeout=JOB_TIMEOUT_S)
    assert process.returncode == 0, log.read_text()[-3000:]
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 3
    names = {name for name, _, _ in seen}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), names  # Ray was watched
    assert exposed(seen) == [], f"listeners off loopback: {exposed(seen)}"


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_init_ray_refuses_a_local_ray_after_ray_was_imported_without_loopback():
    result = run_python(
        """
        import ray
        from dcm.cluster.runtime import init_ray
        try:
            init_ray(num_cpus=1)
        except RuntimeError as err:
            print("refused:", err)
        print("initialized:", ray.is_initialized())
        """,
        child_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused: ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in result.stdout
    assert "initialized: False" in result.stdout


@pytest.mark.slow
def test_ray_session_sets_loopback_before_importing_ray():
    """With no setting in the shell, a session's node is 127.0.0.1 and its workers see the setting."""
    result = run_python(
        """
        from dcm.cluster.runtime import ray_session
        with ray_session(num_cpus=1) as ray:
            remote = ray.remote(lambda: __import__("os").environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"))
            print("node:", ray.util.get_node_ip_address(), "worker env:", ray.get(remote.remote()))
        print("after:", ray.is_initialized())
        """,
        child_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "node: 127.0.0.1 worker env: 0" in result.stdout and "after: False" in result.stdout
