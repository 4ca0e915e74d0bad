"""Settings of the Ray Serve deployment, and each replica's own server config.

Everything here is plain Python (no Ray import), so the CLI can validate a deployment before it
connects to a cluster. Every limit and delay is a named field of :class:`RaySettings`; docs/ray.md
lists them with their defaults.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from pathlib import Path
from typing import Any

import yaml

#: The Serve deployment names inside the two applications of one jit-embedding app.
SERVER_DEPLOYMENT = "EmbeddingServer"
REGISTRY_DEPLOYMENT = "EndpointRegistry"
#: The registry lives in its own Serve application, so an update of the servers leaves it running.
REGISTRY_APP_SUFFIX = "-discovery"
#: Margin added to the drain budget for Serve's graceful_shutdown_timeout_s.
SHUTDOWN_MARGIN_S = 5.0


@dataclasses.dataclass
class RaySettings:
    """How one jit-embedding application runs on Ray Serve (docs/ray.md, "Settings").

    Scaling (Serve's autoscaler with jit_embedding.ray.autoscaling.queue_depth_policy):
        min_replicas, max_replicas: bounds of the replica count.
        initial_replicas: replicas at the first deploy (None: min_replicas).
        num_replicas: a fixed count instead of autoscaling (None: autoscale).
        target_ongoing_requests: the load per replica the policy aims at: requests in flight in
            the server, or samples queued, whichever is larger.
        upscale_delay_s, downscale_delay_s: how long a scale-up / scale-down decision must hold.
        metrics_interval_s: how often a replica pushes its load to Serve.
        look_back_period_s: the window Serve averages the load over.
    Replicas:
        ray_actor_options: Ray resources per replica, e.g. {"num_cpus": 4, "num_gpus": 0.5}.
        host: the address each server binds and publishes; "" = the node's IP.
        startup_timeout_s: a server not ready within this fails the replica (Serve retries).
        health_check_period_s: how often Serve checks that the server process is alive.
        max_surge_percent: replicas started ahead of the ones they replace in a rolling update,
            as a percentage of the target (rounded up: 1 means one at a time).
        binary: the C++ server (None: the packaged one); Python ``factory:`` encoders always run
            under ``jit-embedding serve``.
        workdir: the folder for per-replica config files and logs (None: the system temp dir).
    Discovery and draining:
        heartbeat_s: how often a replica re-registers its endpoint.
        registry_ttl_s: an endpoint not re-registered this long is dropped (a killed replica).
        drain_delay_s: after a replica leaves the registry, how long it keeps serving before it
            stops admitting: at least the clients' discovery_interval.
        http_host, http_port: Serve's HTTP proxy, which answers discovery (never data).
        route_prefix: the discovery route (None: "/<app>").
    """

    app: str = "jit-embedding"
    min_replicas: int = 1
    max_replicas: int = 4
    initial_replicas: int | None = None
    num_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 60.0
    metrics_interval_s: float = 1.0
    look_back_period_s: float = 5.0
    ray_actor_options: dict[str, Any] = dataclasses.field(default_factory=lambda: {"num_cpus": 1})
    host: str = ""
    startup_timeout_s: float = 300.0
    health_check_period_s: float = 2.0
    max_surge_percent: int = 1
    binary: str | None = None
    workdir: str | None = None
    heartbeat_s: float = 1.0
    registry_ttl_s: float = 5.0
    drain_delay_s: float = 2.0
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    route_prefix: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> RaySettings:
        """Settings from a mapping (a YAML file's, or the CLI's). Raises ValueError naming an
        unknown key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown Ray setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**values)

    def to_mapping(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raises ValueError naming the first bad setting."""

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"Ray setting {what}")

        need(bool(self.app) and "#" not in self.app and "/" not in self.app, f"app: bad name {self.app!r}")
        need(self.min_replicas >= 1, f"min_replicas must be >= 1, got {self.min_replicas}")
        need(self.max_replicas >= self.min_replicas, f"max_replicas ({self.max_replicas}) must be >= min_replicas")
        if self.initial_replicas is not None:
            need(
                self.min_replicas <= self.initial_replicas <= self.max_replicas,
                f"initial_replicas must be within [min_replicas, max_replicas], got {self.initial_replicas}",
            )
        need(self.num_replicas is None or self.num_replicas >= 1, "num_replicas must be >= 1")
        need(self.target_ongoing_requests > 0, "target_ongoing_requests must be > 0")
        for name in ("upscale_delay_s", "downscale_delay_s", "drain_delay_s"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0")
        for name in ("metrics_interval_s", "look_back_period_s", "startup_timeout_s", "heartbeat_s"):
            need(getattr(self, name) > 0, f"{name} must be > 0")
        need(self.health_check_period_s > 0, "health_check_period_s must be > 0")
        need(
            self.look_back_period_s > self.metrics_interval_s,
            "look_back_period_s must be > metrics_interval_s (Serve averages several reports)",
        )
        need(self.registry_ttl_s > self.heartbeat_s, "registry_ttl_s must be > heartbeat_s")
        need(0 <= self.max_surge_percent <= 100, "max_surge_percent must be in [0, 100]")
        need(0 < self.http_port < 65536, f"http_port must be in 1..65535, got {self.http_port}")
        need(isinstance(self.ray_actor_options, dict), "ray_actor_options must be a mapping")

    @property
    def registry_app(self) -> str:
        return self.app + REGISTRY_APP_SUFFIX

    @property
    def discovery_route(self) -> str:
        return self.route_prefix or f"/{self.app}"


def load_server_config(path: str | Path) -> tuple[dict, Path]:
    """Reads a server YAML config (csrc/server/config.h). Returns (mapping, its folder).
    Raises ValueError for a missing or malformed file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ValueError(f"cannot read the server config {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ValueError(f"the server config {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"the server config {path} must be a mapping")
    if not isinstance(data.get("encoders", []), list) or not data.get("encoders"):
        raise ValueError(f"the server config {path} lists no encoders")
    return data, path.resolve().parent


def absolute_config(config: dict, base_dir: Path) -> dict:
    """A copy of `config` whose relative paths (encoder artifacts, artifact_root, the RocksDB
    folder, *_file settings) are absolute against `base_dir`, so the file can live anywhere. The
    artifact root defaults to `base_dir`, as the server's own default would be. Every node must
    see these paths (a shared file system or the same image)."""

    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(value):
            return str((base_dir / value).resolve())
        return value

    def files(mapping: Any) -> Any:
        if not isinstance(mapping, dict):
            return mapping
        return {k: (absolute(v) if k.endswith("_file") else files(v)) for k, v in mapping.items()}

    out = dict(config)
    server = files(dict(out.get("server") or {}))
    server["artifact_root"] = absolute(server.get("artifact_root", "."))
    out["server"] = server
    out["encoders"] = [
        {**e, "artifact": absolute(e["artifact"])} if isinstance(e, dict) and "artifact" in e else e
        for e in out.get("encoders", [])
    ]
    cache = out.get("cache")
    if isinstance(cache, dict) and isinstance(cache.get("rocksdb"), dict) and cache["rocksdb"].get("path"):
        out["cache"] = {**cache, "rocksdb": {**cache["rocksdb"], "path": absolute(cache["rocksdb"]["path"])}}
    return out


def python_hosted(config: dict) -> bool:
    """Whether the config has Python ``factory:`` encoders (served by ``jit-embedding serve``)."""
    return any(isinstance(e, dict) and "factory" in e for e in config.get("encoders", []))


def claim_rocksdb_slot(base: str) -> tuple[str, int]:
    """A RocksDB folder of this replica's own under `base`: the first ``slot-N`` whose lock file
    no live process holds. Two replicas on one node cannot share one RocksDB folder; slots let a
    replacement replica reuse its predecessor's cache. Returns (folder, lock fd: keep it open)."""
    Path(base).mkdir(parents=True, exist_ok=True)
    for n in range(1024):
        fd = os.open(os.path.join(base, f"slot-{n}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return os.path.join(base, f"slot-{n}"), fd
    raise ValueError(f"cache.rocksdb.path {base}: all 1024 replica slots are taken")


def replica_config(config: dict, host: str, allow_public: bool) -> tuple[dict, int | None]:
    """The config one replica's server runs with: `config` (already absolute) bound to `host`
    on a port of its choosing, with its own RocksDB slot. Returns (config, slot lock fd or None).

    ``allow_public`` sets ``server.allow_public`` (a server refuses a non-loopback host without
    it); set it only for such a host, so a loopback deployment runs with any server version."""
    out = dict(config)
    server = dict(out.get("server") or {})
    server["host"] = host
    server["port"] = 0
    if allow_public:
        server["allow_public"] = True
    out["server"] = server
    lock_fd = None
    cache = out.get("cache")
    if isinstance(cache, dict) and isinstance(cache.get("rocksdb"), dict) and cache["rocksdb"].get("path"):
        folder, lock_fd = claim_rocksdb_slot(cache["rocksdb"]["path"])
        out["cache"] = {**cache, "rocksdb": {**cache["rocksdb"], "path": folder}}
    return out, lock_fd


def drain_timeout_s(config: dict) -> float:
    """How long a replica waits for its server to drain: the server's own drain grace plus 2 s."""
    grace_ms = (config.get("server") or {}).get("drain_grace_ms", 30000)
    return float(grace_ms) / 1000.0 + 2.0


def graceful_shutdown_timeout_s(settings: RaySettings, config: dict) -> float:
    """Serve's graceful_shutdown_timeout_s for the replicas: the discovery delay, the drain and a
    margin, so Serve never kills a replica that is still draining."""
    return settings.drain_delay_s + drain_timeout_s(config) + SHUTDOWN_MARGIN_S
