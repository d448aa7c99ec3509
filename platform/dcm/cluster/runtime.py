"""Connecting to Ray: a cluster when one is given, else a local one that listens on loopback only.

``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray 2.60 bind 127.0.0.1 for its node IP and every listener; without
it a local Ray binds the machine's external interface, and an unauthenticated Ray on the network is a known hole.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Environment that Ray workers need to reach S3-compatible storage (forwarded when set on the driver).
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_SESSION_TOKEN",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "DCM_MODEL_CACHE",
)


def forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Connects to ``address`` (or ``RAY_ADDRESS``, e.g. under ``ray job submit``) or starts a loopback-only local Ray.

    A driver that is already connected (tests, notebooks) is left as it is. Returns True when this call connected,
    i.e. when the caller owns the connection and should call :func:`shutdown_ray`.
    """
    import ray

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": forwarded_env()}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("connecting to Ray at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return True
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    logger.info("starting a local Ray on 127.0.0.1")
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, runtime_env=runtime_env)
    return True


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
