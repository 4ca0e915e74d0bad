"""The Ray Serve deployment whose replicas each run one jit-embedding server.

A replica (:class:`EmbeddingServerReplica`) is a Ray actor with the resources of
``RaySettings.ray_actor_options`` (``{"num_gpus": 0.5}`` shares a GPU). It:

1. starts the server (``server_process.ServerProcess``) on a free port of its node, bound to the
   node's IP (or ``RaySettings.host``), and waits until ``/health/ready`` answers 200;
2. registers ``host:port`` with the app's registry (``discovery.py``) and re-registers every
   ``heartbeat_s`` from a thread of its own;
3. reports the server's load to Serve's autoscaler (``record_autoscaling_stats``: in-flight
   requests and queue depth, read from ``/metrics``; ``autoscaling.py`` turns them into a count);
4. answers Serve's health check with the server process's liveness (a dead server makes Serve
   replace the replica);
5. drains in ``__del__``, which Serve calls before it removes the replica (scale-down, rolling
   update, deletion): deregister, keep serving ``drain_delay_s`` while clients refresh their lists,
   then SIGTERM the server, which stops admitting (``/health/ready`` 503), finishes its in-flight
   requests and exits. Serve's ``graceful_shutdown_timeout_s`` is set to cover all of it.

No request goes through the replica's Python: clients call the server directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray import serve

from jit_embedding.ray.server_process import ServerProcess, ServerProcessError
from jit_embedding.ray.settings import (
    REGISTRY_DEPLOYMENT,
    SERVER_DEPLOYMENT,
    RaySettings,
    drain_timeout_s,
    python_hosted,
    replica_config,
)

#: The environment variable with the servers' bearer token (csrc/server/auth.h); when set in the
#: replica's environment the replica's own probes send it too.
AUTH_TOKEN_ENV = "JIT_EMBEDDING_AUTH_TOKEN"
#: Seconds one registry call may take before the heartbeat tries again.
REGISTRY_CALL_TIMEOUT_S = 10.0


@serve.deployment(name=SERVER_DEPLOYMENT)
class EmbeddingServerReplica:
    """One replica: one server process (see the module docstring).

    Args:
        settings: RaySettings.to_mapping() of the app.
        config: the server config, paths already absolute (settings.absolute_config).
    """

    def __init__(self, settings: dict[str, Any], config: dict[str, Any]):
        self._settings = RaySettings.from_mapping(settings)
        ctx = serve.get_replica_context()
        self._replica_id = ctx.replica_id.unique_id
        self._node_ip = ray.util.get_node_ip_address()
        bind_host = self._settings.host or self._node_ip
        loopback = bind_host in ("127.0.0.1", "localhost", "::1")
        server_config, self._slot_fd = replica_config(config, bind_host, allow_public=not loopback)
        self._drain_timeout_s = drain_timeout_s(server_config)
        root = Path(self._settings.workdir or tempfile.gettempdir()) / "jit-embedding-ray"
        workdir = root / f"{ctx.app_name}-{self._replica_id}"
        self._server = ServerProcess(
            server_config,
            workdir,
            binary=Path(self._settings.binary) if self._settings.binary else None,
            python_hosted=python_hosted(server_config),
            auth_token=os.environ.get(AUTH_TOKEN_ENV) or None,
        )
        try:
            self._server.start(self._settings.startup_timeout_s)
        except BaseException:
            # Serve retries the replica: leave neither a half-started server nor the cache slot behind.
            self._server.kill()
            if self._slot_fd is not None:
                os.close(self._slot_fd)
            raise
        advertised = self._node_ip if bind_host in ("0.0.0.0", "::") else bind_host
        self.endpoint = f"{advertised}:{self._server.port}"
        self._registry = serve.get_deployment_handle(REGISTRY_DEPLOYMENT, self._settings.registry_app)
        self._stopping = threading.Event()
        self._registered = threading.Event()
        self._closed = False
        self._heartbeat = threading.Thread(target=self._beat, name="jit-registry-heartbeat", daemon=True)
        self._heartbeat.start()

    # ------------------------------------------------------------------ Serve hooks
    def check_health(self) -> None:
        """Serve's health check: raises when the server process has exited."""
        self._server.check_alive()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics: ``{"jit_http_in_flight", "jit_queue_depth"}``."""
        try:
            return await asyncio.to_thread(self._server.load)
        except ServerProcessError:
            return {"jit_http_in_flight": 0.0, "jit_queue_depth": 0.0}

    def __del__(self) -> None:
        """Serve's graceful-shutdown hook (see the module docstring, step 5). Idempotent; also safe
        on a half-built replica (Python may call it again at garbage collection)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._stopping.set()
        # Serve runs this on the replica's event loop thread, where blocking on a handle is refused:
        # the registry call gets a thread of its own.
        leave = threading.Thread(target=self._deregister, name="jit-registry-leave", daemon=True)
        leave.start()
        leave.join(REGISTRY_CALL_TIMEOUT_S)
        self._heartbeat.join(REGISTRY_CALL_TIMEOUT_S)
        if self._registered.is_set():
            time.sleep(self._settings.drain_delay_s)  # clients refresh their lists meanwhile
        self._server.drain(self._drain_timeout_s)
        if self._slot_fd is not None:
            os.close(self._slot_fd)
        shutil.rmtree(self._server.workdir, ignore_errors=True)  # its config, port file and log

    # ------------------------------------------------------------------ our methods (handle calls)
    def info(self) -> dict[str, Any]:
        """What the registry publishes for this replica."""
        return {
            "replica_id": self._replica_id,
            "endpoint": self.endpoint,
            "versions": self._server.encoders(),
            "node_ip": self._node_ip,
            "pid": os.getpid(),
            "server_pid": self._server.pid,
        }

    # ------------------------------------------------------------------ internals
    def _beat(self) -> None:
        while not self._stopping.is_set():
            if self._server.exit_code() is None and self._server.ready():
                try:
                    self._registry.register.remote(self.info()).result(timeout_s=REGISTRY_CALL_TIMEOUT_S)
                    self._registered.set()
                except Exception:  # the registry restarting: the next beat registers again
                    pass
            self._stopping.wait(self._settings.heartbeat_s)

    def _deregister(self) -> None:
        # The registry may be gone too (app deletion): its TTL would drop us anyway.
        with contextlib.suppress(Exception):
            self._registry.deregister.remote(self._replica_id).result(timeout_s=REGISTRY_CALL_TIMEOUT_S)
