"""Discovery: the live endpoint list of a jit-embedding app on Ray Serve.

The registry is a Serve deployment (``EndpointRegistry``, one small replica, no CPU) in an
application of its own, ``<app>-discovery``, so that an update of the servers (``jit-embedding ray
update``) leaves it running. Why a registry at all: a DeploymentHandle call reaches *one* replica,
and Serve has no public API that lists a deployment's replicas with anything like our port. So each
server replica registers ``host:port`` when its server is ready, re-registers every
``heartbeat_s`` (which also re-fills a restarted registry), and deregisters before it drains. An
entry not refreshed within ``registry_ttl_s`` is dropped: that is how a replica killed outright
(no ``__del__``) leaves the list.

Clients read the list over Serve's HTTP proxy (``GET http://<proxy>/<app>``), a plain JSON answer,
so a DataLoader worker needs neither Ray nor a Serve handle; ``ray://<app>`` only resolves that URL
once through Ray (:func:`resolve`). Data never passes through Serve.

The answer::

    {"app": "...", "endpoints": ["10.0.0.5:41235", ...],   # sorted; what the client balances over
     "replicas": [{"replica_id", "endpoint", "versions": {encoder: version}, "node_ip", "pid",
                   "server_pid", "registered_s"}, ...],
     "generation": 7,          # +1 at every change of the endpoint set
     "complete": true,         # false during the first registry_ttl_s after the registry started:
                               # replicas may not have re-registered yet, so clients only add
     "url": "http://..."}
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any

from ray import serve

from jit_embedding.ray.settings import REGISTRY_APP_SUFFIX, REGISTRY_DEPLOYMENT, RaySettings

#: Deregistered replica ids remembered, so a heartbeat already on its way cannot re-add one.
TOMBSTONES = 1024
#: Seconds a client waits for the registry when resolving ``ray://<app>``.
RESOLVE_TIMEOUT_S = 30.0


@serve.deployment(name=REGISTRY_DEPLOYMENT, num_replicas=1, ray_actor_options={"num_cpus": 0})
class EndpointRegistry:
    """The registry (see the module docstring). Methods are called through a DeploymentHandle by
    the server replicas; ``__call__`` answers HTTP GET with the listing.

    Args:
        app: the server application's name.
        ttl_s: RaySettings.registry_ttl_s.
        url: the discovery URL clients use (reported by ``describe``, for ``ray://`` clients).
        record: how the servers were last deployed, ``{"settings": RaySettings mapping,
            "config": server config path}`` (``describe`` returns it; ``update`` starts from it).
    """

    def __init__(self, app: str, ttl_s: float, url: str, record: dict[str, Any] | None = None):
        self._app = app
        self._ttl_s = float(ttl_s)
        self._url = url
        self._record = dict(record or {})
        self._lock = threading.Lock()  # Serve may run sync methods on several threads
        self._entries: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, float] = {}
        self._tombstones: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._generation = 0
        self._started = time.monotonic()

    def register(self, info: dict[str, Any]) -> int:
        """Adds or refreshes one replica: ``info`` has ``replica_id`` and ``endpoint`` (host:port),
        and may have ``versions``, ``node_ip``, ``pid``, ``server_pid``. Returns the generation.
        A deregistered replica id is ignored."""
        rid = str(info["replica_id"])
        with self._lock:
            if rid in self._tombstones:
                return self._generation
            old = self._entries.get(rid)
            if old is None or old["endpoint"] != info["endpoint"]:
                self._generation += 1
                info = {**info, "registered_s": time.time()}
            else:
                info = {**info, "registered_s": old["registered_s"]}
            self._entries[rid] = info
            self._seen[rid] = time.monotonic()
            return self._generation

    def deregister(self, replica_id: str) -> int:
        """Removes a replica for good (it is draining). Returns the generation."""
        rid = str(replica_id)
        with self._lock:
            self._tombstones[rid] = None
            while len(self._tombstones) > TOMBSTONES:
                self._tombstones.popitem(last=False)
            if self._entries.pop(rid, None) is not None:
                self._seen.pop(rid, None)
                self._generation += 1
            return self._generation

    def listing(self) -> dict[str, Any]:
        """The answer described in the module docstring (expired entries dropped first)."""
        now = time.monotonic()
        with self._lock:
            expired = [rid for rid, seen in self._seen.items() if now - seen > self._ttl_s]
            for rid in expired:
                self._entries.pop(rid, None)
                self._seen.pop(rid, None)
            if expired:
                self._generation += 1
            replicas = sorted(self._entries.values(), key=lambda e: e["endpoint"])
            return {
                "app": self._app,
                "endpoints": sorted({e["endpoint"] for e in replicas}),
                "replicas": replicas,
                "generation": self._generation,
                "complete": now - self._started >= self._ttl_s,
                "url": self._url,
            }

    def describe(self) -> dict[str, Any]:
        """``{"app", "url", "record", "pid"}``."""
        with self._lock:
            return {"app": self._app, "url": self._url, "record": dict(self._record), "pid": os.getpid()}

    def set_record(self, record: dict[str, Any]) -> None:
        """Replaces the deployment record (``update`` calls it after redeploying the servers)."""
        with self._lock:
            self._record = dict(record)

    async def __call__(self, request: Any) -> dict[str, Any]:
        return self.listing()


def registry_app(settings: RaySettings, record: dict[str, Any]) -> Any:
    """The bound registry application of `settings` (its HTTP route is settings.discovery_route;
    the URL it reports uses settings.http_host, or this node's IP when that is 0.0.0.0)."""
    import ray

    host = settings.http_host if settings.http_host not in ("0.0.0.0", "::", "") else ray.util.get_node_ip_address()
    url = f"http://{host}:{settings.http_port}{settings.discovery_route}"
    return EndpointRegistry.options(logging_config={"enable_access_log": False}).bind(
        settings.app, settings.registry_ttl_s, url, record
    )


def resolve(app: str, ray_address: str | None = None) -> str:
    """The HTTP discovery URL of the jit-embedding app `app`, asked of its registry through Ray.

    Connects to the cluster (``ray_address``, else ``$RAY_ADDRESS``, else ``"auto"``) unless
    this process is already connected, and disconnects again if it connected, so a DataLoader that
    forks afterwards inherits no Ray state.

    Raises:
        ValueError: no such app, or its registry did not answer within RESOLVE_TIMEOUT_S.
    """
    import ray

    owned = not ray.is_initialized()
    if owned:
        ray.init(address=ray_address or os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False)
    try:
        try:
            handle = serve.get_app_handle(app + REGISTRY_APP_SUFFIX)
        except Exception as e:  # RayServeException: the app does not exist
            raise ValueError(f"ray://{app}: no jit-embedding app '{app}' on this Ray cluster ({e})") from e
        try:
            return str(handle.describe.remote().result(timeout_s=RESOLVE_TIMEOUT_S)["url"])
        except Exception as e:
            raise ValueError(f"ray://{app}: its registry did not answer: {e}") from e
    finally:
        if owned:
            ray.shutdown()
