"""The custom Ray Serve autoscaling policy of the jit-embedding deployment.

Training jobs talk to the C++ servers directly, so Serve's own signal (requests through its
handles and proxy) stays at zero. Each replica therefore reports its server's load to Serve as
custom autoscaling metrics (``EmbeddingServerReplica.record_autoscaling_stats``, read from the
server's ``/metrics``):

    jit_http_in_flight   requests the server holds now (queued, computing or being answered)
    jit_queue_depth      samples waiting in the encoders' queues (summed over encoders)

Serve aggregates each metric per replica over ``look_back_period_s`` and calls
:func:`queue_depth_policy` every control-loop tick. The policy returns the replica count that
brings every replica to ``target_ongoing_requests`` (the AutoscalingConfig field, reused as "our
load per replica")::

    load(replica) = max(in_flight, queue_depth)
    desired       = ceil(sum(load) / target_ongoing_requests)

``max`` because the two count different things: in-flight counts requests (one request may hold
a batch of many samples), queue depth counts samples waiting (it grows when the encoder falls
behind even with few, large requests). A replica that has not reported yet counts as zero load.

Serve wraps a custom policy with its own machinery (``autoscaling_policy._apply_autoscaling_config``
in Ray 2.60): ``upscale_delay_s`` / ``downscale_delay_s`` (a decision must persist that long),
``upscaling_factor`` / ``downscaling_factor``, and the ``min_replicas`` / ``max_replicas`` bounds.
This module adds no delays or bounds of its own.

The module imports nothing from jit_embedding or torch: Serve pickles the policy by value into
its controller, which may run on a head node without them.
"""

from __future__ import annotations

import math
from typing import Any

#: The custom metric names a replica reports (the server's Prometheus gauge names).
IN_FLIGHT_METRIC = "jit_http_in_flight"
QUEUE_DEPTH_METRIC = "jit_queue_depth"
#: The import path Serve is given (AutoscalingConfig.policy.policy_function).
POLICY_PATH = "jit_embedding.ray.autoscaling:queue_depth_policy"
#: policy_state keys: the last load seen, for `jit-embedding ray status` and the tests' timeline.
STATE_LOAD = "jit_load"
STATE_DESIRED = "jit_desired"


def replica_loads(aggregated_metrics: dict[str, dict[Any, float]] | None, replicas: list[Any]) -> dict[Any, float]:
    """Each running replica's load, ``max(in_flight, queue_depth)``, from Serve's aggregated
    custom metrics (metric name -> replica id -> value). Replicas without a report count 0."""
    metrics = aggregated_metrics or {}
    in_flight = metrics.get(IN_FLIGHT_METRIC, {})
    queued = metrics.get(QUEUE_DEPTH_METRIC, {})
    return {r: max(float(in_flight.get(r, 0.0)), float(queued.get(r, 0.0)), 0.0) for r in replicas}


def desired_replicas(total_load: float, target_per_replica: float, current: int) -> int:
    """``ceil(total_load / target_per_replica)``; 0 load asks for 0 (Serve raises it to
    min_replicas). Keeps ``current`` when the target is not positive (a misconfiguration the
    deployment's settings already refuse)."""
    if target_per_replica <= 0:
        return current
    return int(math.ceil(total_load / target_per_replica - 1e-9))


def queue_depth_policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    """The Serve autoscaling policy (``AutoscalingConfig(policy={"policy_function": POLICY_PATH})``).

    Args:
        ctx: Serve's ``AutoscalingContext``: ``aggregated_metrics`` (our custom metrics, per
            replica), ``running_replicas``, ``current_num_replicas``, ``target_num_replicas``,
            ``config`` (its ``target_ongoing_requests`` is the target load per replica) and
            ``policy_state``.

    Returns:
        ``(desired replica count, policy state)``; Serve then applies the delays, the scaling
        factors and the min/max bounds.
    """
    replicas = list(ctx.running_replicas or [])
    state = dict(ctx.policy_state or {})
    if not replicas:
        # Starting up (or every replica died): nothing measured, keep Serve's target.
        return ctx.target_num_replicas, state
    loads = replica_loads(ctx.aggregated_metrics, replicas)
    total = sum(loads.values())
    target = float(ctx.config.get_target_ongoing_requests())
    desired = desired_replicas(total, target, ctx.current_num_replicas)
    state[STATE_LOAD] = total
    state[STATE_DESIRED] = desired
    return desired, state
