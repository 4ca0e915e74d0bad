"""Deploying a jit-embedding app on Ray Serve, from a driver: deploy, update, status, shutdown.

One jit-embedding app is two Serve applications:

    <app>             the EmbeddingServer deployment (deployment.py): the replicas, autoscaled by
                      Serve with our policy (autoscaling.py); no HTTP route (data bypasses Serve)
    <app>-discovery   the EndpointRegistry deployment (discovery.py), answering GET <route> on
                      Serve's HTTP proxy with the live endpoint list

``update`` redeploys only ``<app>``: Serve replaces its replicas one by one (``max_surge_percent``
starts each replacement before the replica it replaces drains), while the registry keeps running.

Every function connects to Ray (``ray.init(address=...)``) when the process is not connected yet.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.config import AutoscalingConfig, HTTPOptions

from jit_embedding.ray.autoscaling import POLICY_PATH
from jit_embedding.ray.deployment import EmbeddingServerReplica
from jit_embedding.ray.discovery import registry_app
from jit_embedding.ray.settings import (
    REGISTRY_APP_SUFFIX,
    RaySettings,
    absolute_config,
    graceful_shutdown_timeout_s,
    load_server_config,
)

#: Seconds deploy/update wait for every replica to run the new version.
ROLLOUT_TIMEOUT_S = 600.0

# Ray 2.60 deprecates AutoscalingConfig.metrics_interval_s in favour of the environment variable
# RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S, but its replicas still read only the field
# (serve/_private/replica.py, start_metrics_pusher) and never the variable: the field is the one
# working way to set how often a replica reports its load. Serve re-validates the config on every
# status read, so the warning is silenced by its text here rather than around one call.
warnings.filterwarnings("ignore", message=r"The `metrics_interval_s` field", category=DeprecationWarning)


def connect(address: str | None = None) -> None:
    """Connects this process to the Ray cluster at `address` (None: $RAY_ADDRESS or "auto")
    unless it is connected already."""
    if not ray.is_initialized():
        ray.init(address=address or "auto", log_to_driver=False, logging_level="WARNING")


def autoscaling_config(settings: RaySettings) -> AutoscalingConfig | None:
    """Serve's AutoscalingConfig for `settings` (None with a fixed num_replicas); see the note on
    metrics_interval_s above."""
    if settings.num_replicas is not None:
        return None
    return AutoscalingConfig(
        min_replicas=settings.min_replicas,
        max_replicas=settings.max_replicas,
        initial_replicas=settings.initial_replicas,
        target_ongoing_requests=settings.target_ongoing_requests,
        upscale_delay_s=settings.upscale_delay_s,
        downscale_delay_s=settings.downscale_delay_s,
        metrics_interval_s=settings.metrics_interval_s,
        look_back_period_s=settings.look_back_period_s,
        policy={"policy_function": POLICY_PATH},
    )


def server_app(settings: RaySettings, config_path: str | Path) -> Any:
    """The bound EmbeddingServer application for `settings` and the server config at
    `config_path` (read here, on the driver; its paths must exist on every node)."""
    config, base = load_server_config(config_path)
    config = absolute_config(config, base)
    options: dict[str, Any] = {
        "ray_actor_options": dict(settings.ray_actor_options),
        "graceful_shutdown_timeout_s": graceful_shutdown_timeout_s(settings, config),
        "graceful_shutdown_wait_loop_s": 0.5,
        "health_check_period_s": settings.health_check_period_s,
        "health_check_timeout_s": max(10.0, 2 * settings.health_check_period_s),
        "max_surge_percent": settings.max_surge_percent,
        # No Serve request reaches a replica but our own small ones (info, the health check).
        "max_ongoing_requests": 16,
        "logging_config": {"enable_access_log": False},
    }
    scaling = autoscaling_config(settings)
    if scaling is None:
        options["num_replicas"] = settings.num_replicas
    else:
        options["autoscaling_config"] = scaling
    return EmbeddingServerReplica.options(**options).bind(settings.to_mapping(), config)


def deploy(settings: RaySettings, config_path: str | Path, *, address: str | None = None, wait: bool = True) -> str:
    """Starts Serve (HTTP proxy on settings.http_host:http_port, if Serve is not running yet), the
    registry application, then the server application. Returns the discovery URL.

    Raises:
        ValueError: a bad server config (named), or a rollout that did not finish in
            ROLLOUT_TIMEOUT_S (with Serve's message).
    """
    config_path = str(Path(config_path).resolve())
    target = server_app(settings, config_path)  # reads and checks the config before touching Ray
    connect(address)
    serve.start(http_options=HTTPOptions(host=settings.http_host, port=settings.http_port))
    record = {"settings": settings.to_mapping(), "config": config_path}
    handle = serve.run(
        registry_app(settings, record), name=settings.registry_app, route_prefix=settings.discovery_route
    )
    url = str(handle.describe.remote().result(timeout_s=60)["url"])
    serve.run(target, name=settings.app, route_prefix=None)
    if wait:
        wait_rolled_out(settings.app)
    return url


def deployed_record(app: str) -> dict[str, Any]:
    """``{"settings": mapping, "config": path}`` of the last deploy or update of `app`, kept by its
    registry. Raises ValueError when the app is not deployed."""
    if app + REGISTRY_APP_SUFFIX not in serve.status().applications:
        raise ValueError(f"no jit-embedding app '{app}' is deployed (jit-embedding ray deploy first)")
    return serve.get_app_handle(app + REGISTRY_APP_SUFFIX).describe.remote().result(timeout_s=60)["record"]


def update(
    app: str,
    config_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    address: str | None = None,
    wait: bool = True,
) -> RaySettings:
    """Redeploys the servers of `app` with a new server config (a new encoder version) and/or
    changed settings; everything not given stays as last deployed. Serve replaces the replicas one
    by one (each replacement starts before the replica it replaces drains); the registry keeps
    running, so settings of the registry itself (http_*, route_prefix, registry_ttl_s) keep their
    deployed values. Returns the settings now in force.

    Raises:
        ValueError: the app is not deployed, a bad setting or config, or a failed rollout.
    """
    connect(address)
    record = deployed_record(app)
    settings = RaySettings.from_mapping({**record["settings"], **(overrides or {}), "app": app})
    config_path = str(Path(config_path).resolve()) if config_path else record["config"]
    target = server_app(settings, config_path)
    serve.run(target, name=app, route_prefix=None)
    serve.get_app_handle(app + REGISTRY_APP_SUFFIX).set_record.remote(
        {"settings": settings.to_mapping(), "config": config_path}
    ).result(timeout_s=60)
    if wait:
        wait_rolled_out(app)
    return settings


def wait_rolled_out(app: str, timeout_s: float = ROLLOUT_TIMEOUT_S) -> None:
    """Waits until `app` is RUNNING with its deployment HEALTHY (a rollout complete). Raises
    ValueError on DEPLOY_FAILED or after `timeout_s`, with Serve's message."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(app)
        if status is not None:
            deployments = list(status.deployments.values())
            if str(status.status).endswith("RUNNING") and all(str(d.status).endswith("HEALTHY") for d in deployments):
                return
            if str(status.status).endswith("DEPLOY_FAILED"):
                raise ValueError(f"app '{app}' failed to deploy: {status.message}")
        if time.monotonic() > deadline:
            raise ValueError(f"app '{app}' did not finish rolling out in {timeout_s:.0f} s: {status}")
        time.sleep(0.25)


def status(app: str, *, address: str | None = None) -> dict[str, Any]:
    """The app's state: Serve's status of both applications (replica counts by state) and the
    registry's listing (endpoints and the encoder versions each serves). Raises ValueError when
    the app is not deployed."""
    connect(address)
    apps = serve.status().applications
    if app not in apps:
        raise ValueError(f"no jit-embedding app '{app}' is deployed")
    out: dict[str, Any] = {"app": app, "serve": {}}
    for name in (app, app + REGISTRY_APP_SUFFIX):
        s = apps.get(name)
        if s is None:
            continue
        out["serve"][name] = {
            "status": str(s.status).rsplit(".", 1)[-1],
            "message": s.message,
            "deployments": {
                d: {"status": str(v.status).rsplit(".", 1)[-1], "replicas": dict(v.replica_states)}
                for d, v in s.deployments.items()
            },
        }
    try:
        out["discovery"] = serve.get_app_handle(app + REGISTRY_APP_SUFFIX).listing.remote().result(timeout_s=30)
    except Exception as e:  # the registry is restarting: report what Serve knows
        out["discovery"] = {"error": str(e)}
    return out


def shutdown(app: str, *, address: str | None = None) -> None:
    """Deletes the server application (every replica drains) and then its registry."""
    connect(address)
    apps = serve.status().applications
    if app not in apps and app + REGISTRY_APP_SUFFIX not in apps:
        raise ValueError(f"no jit-embedding app '{app}' is deployed")
    if app in apps:
        serve.delete(app)
    if app + REGISTRY_APP_SUFFIX in apps:
        serve.delete(app + REGISTRY_APP_SUFFIX)


def build_server_app(args: dict[str, Any]) -> Any:
    """Application builder for Serve config files (KubeRay's ``serveConfigV2``, ``serve deploy``):
    ``import_path: jit_embedding.ray.app:build_server_app`` with ``args: {"config": <server YAML
    path>, "settings": {RaySettings fields}}``. The application must be named settings.app, and
    deployed with ``route_prefix: null`` (data bypasses Serve). Raises ValueError as deploy."""
    settings = RaySettings.from_mapping(dict(args.get("settings") or {}))
    if "config" not in args:
        raise ValueError("build_server_app: args need 'config', the server YAML path")
    return server_app(settings, args["config"])


def build_registry_app(args: dict[str, Any]) -> Any:
    """Application builder of the registry, for the same config files: the same ``args`` as
    build_server_app. The application must be named ``<settings.app>-discovery`` with
    ``route_prefix`` settings.discovery_route ("/<app>" by default)."""
    settings = RaySettings.from_mapping(dict(args.get("settings") or {}))
    return registry_app(settings, {"settings": settings.to_mapping(), "config": str(args.get("config", ""))})
