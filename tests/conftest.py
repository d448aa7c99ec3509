"""Session-wide test fixtures: a loopback S3-speaking server (moto over HTTP) and one local Ray cluster.

Both bind 127.0.0.1 only and are stopped at the end of the session by their own handles.
"""

from __future__ import annotations

import os
import uuid

import pytest

# Ray 2.60 listens on 127.0.0.1 only with this set; token auth is off for tests.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RAY_TEST_CPUS = 4  # logical CPUs: actors take fractions, so read tasks never starve on a 2-core machine


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a moto S3 server on 127.0.0.1 (random port), with dummy credentials in the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket name on the test server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    """One local Ray for the whole session (workers inherit the S3 test endpoint)."""
    import ray

    from dcm.cluster.runtime import init_ray, shutdown_ray

    init_ray(num_cpus=RAY_TEST_CPUS, num_gpus=0)
    yield ray
    shutdown_ray()


@pytest.fixture(scope="session")
def tiny_wan():
    """A tiny random dual-expert Wan pipeline (read-only: tests must not modify it)."""
    from dcm.io.model_folder import load_pipeline

    return load_pipeline("tiny-wan")
