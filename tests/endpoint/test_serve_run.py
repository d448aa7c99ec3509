"""``serve run`` as docs/api.md documents it listens on 127.0.0.1 only, apart from the Serve replica's gRPC port.

    .venv/bin/python -m pytest -q tests/endpoint/test_serve_run.py

The documented command runs in a subprocess with its own local Ray and Ray's defaults (token authentication on);
then every listening socket of its process tree (Ray's GCS, raylet, dashboard, workers, the Serve proxy and the
replica) is listed with psutil. The one allowed exception is the replica's internal gRPC server, which Ray binds to
all interfaces unconditionally (token authentication guards it).
"""

import contextlib
import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
COMMAND = re.compile(r"^(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 serve run serve\.app:dcm)$", re.M)
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")  # the last: IPv4 loopback on a dual-stack socket
# Starting Ray, Serve and the demo model on a shared 2-core machine.
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def listeners(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process title, address, port) of every listening TCP socket and bound UDP socket."""
    found = []
    for process in processes:
        try:
            title = " ".join(process.cmdline())[:80]
            for conn in process.net_connections(kind="inet"):
                if conn.laddr and (conn.status == psutil.CONN_LISTEN or conn.status == psutil.CONN_NONE):
                    found.append((title, conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def healthy_port(found: list[tuple[str, str, int]]) -> int | None:
    """The port of the Serve proxy once the application answers ``/healthz``."""
    for title, ip, port in found:
        if title.startswith("ray::ProxyActor") and ip in LOOPBACK:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                    if json.loads(response.read()) == {"status": "ok"}:
                        return port
            except (OSError, ValueError, http.client.HTTPException):  # one of Ray's own ports, not HTTP
                continue
    return None


def test_serve_run_as_documented_listens_on_loopback_only(tmp_path):
    documented = COMMAND.search((ROOT / "docs" / "api.md").read_text())
    assert documented, "docs/api.md must give the serve command this test runs"
    assignment, *argv = shlex.split(documented.group(1))
    name, _, value = assignment.partition("=")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}  # Ray's defaults
    env[name] = value
    env["RAY_ADDRESS"] = "local"  # its own Ray, not the test session's nor one `ray start` left on this machine
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    started: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        port = None
        while port is None:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(2)
            processes = tree(process.pid)
            started.update({p.pid: p for p in processes})
            port = healthy_port(listeners(processes))
        processes = tree(process.pid)
        started.update({p.pid: p for p in processes})
        found = listeners(processes)
        exposed = [entry for entry in found if entry[1] not in LOOPBACK]
        replica = [entry for entry in exposed if entry[0].startswith("ray::ServeReplica:default:VideoGen")]
        assert len(replica) == 1, found  # the replica's gRPC server, bound by Ray to every interface
        assert exposed == replica, f"listening beyond loopback: {[e for e in exposed if e not in replica]}"
        assert len(found) > 5  # Ray's own servers were seen, all on loopback
        assert "Token authentication is enabled" in (tmp_path / "serve.log").read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own (a failed start)
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
        time.sleep(2)
        for leftover in started.values():  # only processes this test started
            try:
                if leftover.is_running() and leftover.status() != psutil.STATUS_ZOMBIE:
                    leftover.kill()
            except psutil.NoSuchProcess:
                pass
        log.close()
