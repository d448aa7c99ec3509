"""scripts/local_cluster.sh as README.md and docs/cluster.md use it: a loopback-only Ray head with token
authentication, the batch job through ``ray job submit`` and through ``--address``, the distillation job through
``ray job submit``, the endpoint through ``serve run --address``, and a stop that leaves no process behind.

Issue 21, item 1: ``ray job submit`` against a plain ``ray start --head`` failed with "Missing authentication token",
and ``--address`` retried an invalid token for 38 s. The head runs in a temporary HOME and TMPDIR on free ports, so it
cannot clash with the session's Ray or a developer's own.
"""

import ipaddress
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAY = os.path.join(ROOT, ".venv", "bin", "ray")
SMALL = ["--model", "tiny-wan", "--num-frames", "9", "--height", "32", "--width", "32", "--steps", "2"]
JOB_TIMEOUT_S = 300
SERVE_START_TIMEOUT_S = 300
SERVE_PORT = 8000  # Serve's default HTTP port: `serve run` with an import path has no flag for it
# Variables the test session sets for its own Ray; a user's shell has none of them.
SESSION_ONLY = ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS")
NOT_RUNNING = 3  # local_cluster.sh status: the LSB code for "not running"


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback  # ::ffff:127.0.0.1 too


def run(command, env, timeout=JOB_TIMEOUT_S):
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def session_processes(head_pid: int) -> list[psutil.Process]:
    """The head and everything it started: setsid made the head's pid their session id."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == head_pid:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def serve_answers(process: subprocess.Popen) -> bool:
    """Waits until the endpoint that ``serve run`` deploys answers ``/healthz``; False if the command ends first."""
    deadline = time.monotonic() + SERVE_START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{SERVE_PORT}/healthz", timeout=5) as response:
                return response.status == 200
        except OSError:
            time.sleep(2)
    return False


def test_local_cluster_for_job_submit_and_address(tmp_path):
    state = tempfile.mkdtemp(prefix="dcmlc", dir="/tmp")  # short: Ray's socket paths must fit in 107 characters
    gcs, dashboard, client, agent = free_ports(4)
    env = {k: v for k, v in os.environ.items() if k not in SESSION_ONLY}
    env.update(HOME=os.path.join(state, "home"), TMPDIR=state, DCM_RAY_PORT=str(gcs),
               DCM_RAY_DASHBOARD_PORT=str(dashboard), DCM_RAY_CLIENT_PORT=str(client), DCM_RAY_AGENT_PORT=str(agent),
               DCM_RAY_NUM_CPUS="4")  # fmt: skip
    script = ["bash", "scripts/local_cluster.sh"]
    pd.DataFrame({"id": ["red", "blue"], "prompt": ["a red circle", "a blue square"]}).to_parquet(
        tmp_path / "m.parquet"
    )
    manifest = str(tmp_path / "m.parquet")
    head_pid, processes = None, []
    try:
        started = run([*script, "start"], env)
        assert started.returncode == 0, started.stdout + started.stderr
        head_pid = int(open(os.path.join(state, f"dcm-cluster-{os.getuid()}", "head.pid")).read())
        token = os.path.join(state, "home", ".ray", "auth_token")
        assert stat.S_IMODE(os.stat(token).st_mode) == 0o600  # only its owner may run code on the cluster

        processes = session_processes(head_pid)
        listening = [c for p in processes for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert listening and all(is_loopback(c.laddr.ip) for c in listening), listening

        url = f"http://127.0.0.1:{dashboard}"
        refused = run([RAY, "job", "submit", "--address", url, "--", "python", "-c", "print(1)"], env)
        assert refused.returncode != 0 and "authentication token" in refused.stdout + refused.stderr

        exports = run([*script, "env"], env).stdout
        client_env = {**env, **dict(shlex.split(line)[1].split("=", 1) for line in exports.splitlines())}
        submitted = run([RAY, "job", "submit", "--address", url, "--working-dir", ".", "--", "python",
                         "jobs/batch_generate.py", "--manifest", manifest, "--output", str(tmp_path / "submitted"),
                         *SMALL], client_env)  # fmt: skip
        assert submitted.returncode == 0 and "succeeded" in submitted.stdout, submitted.stdout[-3000:]
        assert "2 rows: 2 ok" in submitted.stdout
        assert pq.read_table(tmp_path / "submitted" / "results.parquet").column("status").to_pylist() == ["ok", "ok"]

        direct = run([sys.executable, "jobs/batch_generate.py", "--address", f"127.0.0.1:{gcs}", "--manifest",
                      manifest, "--output", str(tmp_path / "direct"), *SMALL], client_env)  # fmt: skip
        assert direct.returncode == 0, direct.stderr[-3000:]
        assert "2 rows: 2 ok" in direct.stdout and "connecting to Ray at 127.0.0.1" in direct.stderr

        # README.md's cluster commands: the tiny distillation submitted without --address (the env names the job API).
        from dcm.io.model_folder import load_pipeline
        from dcm_demo.synthetic import write_synthetic_dataset

        data = tmp_path / "tiny-data"
        write_synthetic_dataset(load_pipeline("tiny-wan"), str(data), num_samples=4, num_frames=9, height=32, width=32)
        distilled = run([RAY, "job", "submit", "--working-dir", ".", "--", "python", "jobs/distill.py", "--recipe",
                         "tiny", "--data", str(data), "--output", str(tmp_path / "tiny-dcm"), "--semantic-steps", "2",
                         "--detail-steps", "2"], client_env)  # fmt: skip
        assert distilled.returncode == 0 and "succeeded" in distilled.stdout, distilled.stdout[-3000:]
        assert (tmp_path / "tiny-dcm" / "final" / "dcm_config.json").is_file()

        serve_log = open(tmp_path / "serve.log", "w")
        served = subprocess.Popen([os.path.join(ROOT, ".venv", "bin", "serve"), "run", "--address", f"127.0.0.1:{gcs}",
                                   "serve.app:dcm"], cwd=ROOT, env=client_env, stdout=serve_log,
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            assert serve_answers(served), (tmp_path / "serve.log").read_text()[-3000:]
            processes = session_processes(head_pid)
            titles = [" ".join(p.cmdline()) for p in processes if p.is_running()]
            assert any(title.startswith("ray::ProxyActor") for title in titles), titles  # in the head's Ray
        finally:
            os.killpg(served.pid, signal.SIGINT)  # what Ctrl-C does: serve run shuts its application down
            served.wait(timeout=JOB_TIMEOUT_S)
        assert run([*script, "status"], env).returncode == 0
    finally:
        stopped = run([*script, "stop"], env)
        leftover = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        shutil.rmtree(state, ignore_errors=True)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert head_pid is not None and not leftover, leftover
    assert not session_processes(head_pid)
    assert run([*script, "status"], env).returncode == NOT_RUNNING
