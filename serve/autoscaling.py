"""Autoscaling on held video jobs: Serve's default policy counts ongoing HTTP requests, which job polls barely move.

    autoscaling_config:            # infra/serve_config.yaml
      policy: {policy_function: serve.autoscaling:held_jobs_policy}
      target_ongoing_requests: 4   # read here as: jobs per replica to aim at

Each replica reports how many jobs (and sync calls) it holds (``VideoGen.record_autoscaling_stats``); the policy
asks for enough replicas to hold the deployment's jobs at ``target_ongoing_requests`` each. Serve applies
``min_replicas`` / ``max_replicas`` and the up/down-scale delays around it.
"""

from __future__ import annotations

import math
from typing import Any

from ray.serve.config import AutoscalingContext

# The custom metric each replica reports: jobs queued or generating there, sync calls included.
HELD_JOBS_METRIC = "jobs_held"


def held_jobs_policy(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    """Replicas = ceil(jobs held across the deployment / jobs per replica); the current count until replicas report."""
    per_replica = (ctx.aggregated_metrics or {}).get(HELD_JOBS_METRIC)
    if not per_replica:
        return ctx.current_num_replicas, ctx.policy_state
    held = sum(per_replica.values())
    return math.ceil(held / ctx.config.target_ongoing_requests), ctx.policy_state
