"""Connecting to Ray: a cluster when one is given, else a local one that listens on loopback only.

    with ray_session(address) as ray:      # every job's set-up and tear-down, written once
        ...

``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray 2.60 bind 127.0.0.1 for its node IP and every listener, but Ray
reads it when ``ray`` is *imported*: :func:`ray_session` sets it before its own ``import ray`` and refuses to start a
local Ray when something imported Ray earlier without it (that Ray would listen on the machine's interfaces).

Credentials never travel through ``runtime_env`` (it shows in the dashboard and the job's metadata): a local Ray's
workers inherit the driver's environment, and a cluster's workers take theirs from the cluster (pod environment,
Kubernetes Secret, instance role). Only the non-secret settings in :data:`FORWARDED_ENV` are forwarded.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOCAL_ADDRESS = "local"
# Non-secret settings a cluster's workers need to find storage and models the way the driver does.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE", "DCM_MODEL_CACHE")


def forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def set_loopback_env() -> None:
    """Puts :data:`LOOPBACK_ENV` into the environment (over any other value); call it before anything imports
    ``ray``. Ray's own processes (GCS, raylet, workers) inherit it."""
    for key, value in LOOPBACK_ENV.items():
        if os.environ.get(key, value) != value:
            logger.warning("%s=%s would expose a local Ray on the network; using %s", key, os.environ[key], value)
        os.environ[key] = value


def loopback_effective() -> bool:
    """True when the environment holds :data:`LOOPBACK_ENV` (what an ``import ray`` now would read)."""
    return all(os.environ.get(k) == v for k, v in LOOPBACK_ENV.items())


def init_ray(address: str | None = None, *, num_cpus: float | None = None, num_gpus: int | None = None) -> bool:
    """Connects to ``address`` (or ``RAY_ADDRESS``, e.g. under ``ray job submit``) or starts a loopback-only local Ray.

    A driver that is already connected (tests, notebooks) is left as it is. Returns True when this call connected,
    i.e. when the caller owns the connection and should call :func:`shutdown_ray`.

    Raises:
        RuntimeError: a local Ray would start after ``ray`` was imported without the loopback setting.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    # What an already imported ray read: judged before this call changes the environment.
    imported_with_loopback = "ray" not in sys.modules or loopback_effective()
    if not address:
        set_loopback_env()
    import ray

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": forwarded_env()}
    if address:
        logger.info("connecting to Ray at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return True
    if not imported_with_loopback:
        raise RuntimeError(
            "ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set, so a local Ray would listen on "
            "the machine's network interfaces; set it in the environment (or call dcm.cluster.runtime."
            "set_loopback_env()) before importing ray"
        )
    logger.info("starting a local Ray on 127.0.0.1")
    # "local": a fresh Ray of this process, never a head that `ray start` left on this machine (ray.init()'s default).
    ray.init(address=LOCAL_ADDRESS, num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
             runtime_env=runtime_env)  # fmt: skip
    return True


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: float | None = None, num_gpus: int | None = None) -> Iterator:
    """Connects (or starts a loopback-only local Ray), yields the ``ray`` module, and shuts down what it started.

    The set-up and tear-down pair of every Ray job (the ``compute_init`` / ``compute_cleanup`` pattern).
    """
    owns = init_ray(address, num_cpus=num_cpus, num_gpus=num_gpus)
    import ray

    try:
        yield ray
    finally:
        if owns:
            shutdown_ray()
