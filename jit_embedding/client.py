"""The jit-embedding client: tensors to N servers and embeddings back, from any process.

Requests go over pooled keep-alive HTTP connections, balanced across endpoints (least outstanding
requests with power-of-two choices, or rendezvous-hash affinity on a key), with failed endpoints
ejected and probed back in, and safe failures (connection errors, 429, 503) retried on another
endpoint with jittered exponential backoff, never past the request's deadline. All of it runs in
C++ (``csrc/client/client.h``); waiting on a result releases the GIL.

Example::

    from jit_embedding.client import EmbeddingClient
    client = EmbeddingClient(["10.0.0.5:8000", "10.0.0.6:8000"])
    outputs, meta = client.encode("clip", {"input_ids": ids, "attention_mask": mask})
    future = client.submit("vae", {"x": images}, key="sample-17")
    latents, _ = future.result(timeout=30)

Discovery: ``EmbeddingClient(discovery="http://host:port/<app>")`` (or ``"ray://<app>"`` for a
jit-embedding app on Ray Serve, docs/ray.md) reads the endpoint list from a registry and refreshes
it every ``discovery_interval`` seconds on a daemon thread: new replicas join the balancer, removed
ones leave it after their requests in flight finish.

Fork safety: a client made before ``fork()`` (a DataLoader's workers) rebuilds its connections and
threads in the child on first use and never touches the parent's; the child starts its own
discovery thread then, from the endpoint set the parent had. With the ``spawn`` start method it
pickles as its options.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch

from jit_embedding import _C, codec, security
from jit_embedding import transport as _transport
from jit_embedding.transport import TransportSpec

__all__ = ["CACHE_MODES", "ClientError", "EmbeddingClient", "Future", "ManyFuture"]

#: Seconds one discovery request may take (also capped by the refresh interval's double).
DISCOVERY_FETCH_TIMEOUT_S = 10.0
#: Refreshes kept in ``discovery_stats()["history"]``.
DISCOVERY_HISTORY = 256
#: The stats() row of the endpoints no longer in the set.
REMOVED_ROW = "(removed)"

#: How a request uses the caches: read and write them, compute and overwrite, or neither.
CACHE_MODES = ("use", "refresh", "bypass")
#: Where a sample's outputs came from, by ManyFuture.result()'s ``meta["sources"]`` codes.
SOURCES = ("computed", "server_cache", "local_cache")

#: Raised when a request fails; the message names the endpoint, the encoder and the cause (HTTP
#: status and the server's message, or the socket error). A subclass of RuntimeError.
ClientError = _C.ClientError

Inputs = Mapping[str, Union[torch.Tensor, np.ndarray]]


class Future:
    """A submitted request. ``result()`` waits with the GIL released."""

    def __init__(self, native: Any, device: Any = None):
        self._native = native
        self._device = device

    def done(self) -> bool:
        """Whether the answer (or the error) is in."""
        return self._native.done()

    def wait(self, timeout: float | None = None) -> None:
        """Waits as ``result`` does (and raises as it does) without building the tensors: for
        callers that time the wait and the decoding apart."""
        self._native.result(timeout)

    def result(self, timeout: float | None = None) -> tuple[dict[str, torch.Tensor], dict]:
        """Waits up to ``timeout`` seconds (None: until the request's own deadline resolves it).

        Returns:
            ``(outputs, meta)``: output name -> tensor (zero-copy views of the response body for
            uncompressed payloads; outputs that travelled lossy restored to their dtype, on the
            submit's ``device``), and the server's meta dict plus ``meta["client"]`` =
            ``{"endpoint", "attempts", "latency_s"}``.

        Raises:
            TimeoutError: not answered within ``timeout`` (the request goes on).
            ClientError: the request failed.
        """
        entries, meta_bytes, endpoint, attempts, latency_s = self._native.result(timeout)
        outputs = {name: codec._to_value(dtype, shape, buf, off, n) for name, dtype, shape, buf, off, n in entries}
        meta = codec._unpack_meta(meta_bytes)
        meta = dict(meta) if isinstance(meta, dict) else ({} if meta is None else {"value": meta})
        meta["client"] = {"endpoint": endpoint, "attempts": attempts, "latency_s": latency_s}
        try:
            outputs = _transport.restore(outputs, meta.get("transport"), self._device)
        except ValueError as e:
            raise ClientError(f"jit-embedding client: {endpoint}: the lossy transport cannot be undone: {e}") from e
        return outputs, meta


class ManyFuture:
    """Samples submitted cache-first (``EmbeddingClient.submit_many``). ``result()`` waits with the
    GIL released."""

    def __init__(self, native: Any, rows_per_sample: list[int]):
        self._native = native
        self._rows = rows_per_sample

    def done(self) -> bool:
        """Whether the answer (or the error) is in."""
        return self._native.done()

    def result(self, timeout: float | None = None) -> tuple[list[dict[str, torch.Tensor]], dict]:
        """Waits up to ``timeout`` seconds (None: until the request's deadline resolves it).

        Returns:
            ``(samples, meta)``: per sample, output name -> tensor ``[rows, ...]`` cut back to the
            sample's own length (zero-copy views for single-row samples); ``meta`` =
            ``{"version", "sources": [per sample: "computed" | "server_cache" | "local_cache"],
            "endpoint", "exchanges", "bytes_sent", "latency_s"}`` (a multi-row sample's source is
            that of its first row).

        Raises:
            TimeoutError: not answered within ``timeout`` (the request goes on).
            ClientError: the request failed.
        """
        rows, sources, version, endpoint, exchanges, bytes_sent, latency_s = self._native.result(timeout)
        samples = []
        start = 0
        sample_sources = []
        for n in self._rows:
            per_row = [
                {name: codec._to_value(dtype, shape, buf, off, nb) for name, dtype, shape, buf, off, nb in entries}
                for entries in rows[start : start + n]
            ]
            if n == 1:
                samples.append(per_row[0])
            else:
                samples.append({name: torch.cat([r[name] for r in per_row]) for name in per_row[0]})
            sample_sources.append(SOURCES[sources[start]])
            start += n
        meta = {
            "version": version,
            "sources": sample_sources,
            "endpoint": endpoint,
            "exchanges": exchanges,
            "bytes_sent": bytes_sent,
            "latency_s": latency_s,
        }
        return samples, meta


class _Discovery:
    """The endpoint refresher of one EmbeddingClient in one process (see the module docstring).

    A daemon thread GETs ``url`` every ``interval`` seconds and hands a changed list to the native
    client. The answer is ``{"endpoints": ["host:port", ...], "complete": bool, "generation": n}``
    (jit_embedding.ray.discovery) or a plain JSON list. An empty list, a failed request or a bad
    answer keeps the current set; an answer marked ``"complete": false`` (a registry that has just
    restarted) only adds endpoints. Nothing here survives a fork: ``for_this_process()`` gives the
    child a fresh refresher (new lock, new thread) and never touches the parent's.
    """

    def __init__(self, url: str, interval: float, current: list[str], history: list | None = None):
        self.url = url
        self.interval = interval
        self.pid = os.getpid()
        self.current = list(current)
        self.refreshes = 0
        self.failures = 0
        self.last_error = ""
        self.history: collections.deque = collections.deque(history or [], maxlen=DISCOVERY_HISTORY)
        self._lock = threading.Lock()  # one refresh at a time (the thread, or refresh_endpoints())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def for_this_process(self) -> _Discovery:
        """This refresher, or in a forked child a new one over the set the child inherited."""
        if self.pid == os.getpid():
            return self
        return _Discovery(self.url, self.interval, self.current, list(self.history))

    def fetch(self) -> dict:
        """One GET of the registry: ``{"endpoints": [...], "complete": ..., "generation": ...}``.
        Raises ClientError naming the URL and the cause."""
        timeout = min(DISCOVERY_FETCH_TIMEOUT_S, max(1.0, 2 * self.interval))
        try:
            with urllib.request.urlopen(self.url, timeout=timeout) as resp:
                data = json.loads(resp.read())
        except (OSError, ValueError) as e:
            raise ClientError(f"jit-embedding client: discovery {self.url}: {e}") from e
        if isinstance(data, list):
            data = {"endpoints": data}
        if not isinstance(data, dict) or not isinstance(data.get("endpoints"), list):
            raise ClientError(f"jit-embedding client: discovery {self.url}: the answer has no 'endpoints' list")
        return data

    def refresh(self, native: Any) -> bool:
        """Fetches and applies the list once. Returns whether the set changed; never raises (a
        failure is counted and kept in ``last_error``)."""
        with self._lock:
            try:
                listing = self.fetch()
                wanted = [str(e) for e in listing["endpoints"]]
                if listing.get("complete", True) is False:
                    wanted = self.current + [e for e in wanted if e not in self.current]
                changed = bool(wanted) and set(wanted) != set(self.current)
                if changed:
                    self.current = list(native.set_endpoints(wanted))
                self.refreshes += 1
                self.history.append(
                    {
                        "time": time.time(),
                        "generation": listing.get("generation"),
                        "listed": sorted(listing["endpoints"]),
                        "endpoints": sorted(self.current),
                        "changed": changed,
                    }
                )
                return changed
            except Exception as e:  # a registry restarting, a bad entry: keep serving on the old set
                self.failures += 1
                self.last_error = str(e)
                return False

    def start(self, client: EmbeddingClient) -> None:
        """Starts the refresh thread; it holds the client weakly and ends with it."""
        ref = weakref.ref(client)
        stop = self._stop

        def loop() -> None:
            while not stop.wait(self.interval):
                c = ref()
                if c is None:
                    return
                self.refresh(c._native)
                del c

        self._thread = threading.Thread(target=loop, name="jit-embedding-discovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict:
        return {
            "url": self.url,
            "interval": self.interval,
            "endpoints": list(self.current),
            "refreshes": self.refreshes,
            "failures": self.failures,
            "last_error": self.last_error,
            "history": list(self.history),
        }


def resolve_discovery(discovery: str) -> str:
    """The HTTP URL of a discovery source: ``http(s)://...`` as is; ``ray://<app>`` asked of the
    app's registry through Ray (jit_embedding.ray.discovery.resolve). Raises ValueError for any
    other scheme, ClientError when Ray is missing or the app is unknown."""
    if discovery.startswith(("http://", "https://")):
        return discovery
    if discovery.startswith("ray://"):
        app = discovery[len("ray://") :].strip("/")
        if not app:
            raise ValueError("discovery 'ray://' names no app (expected ray://<app>)")
        try:
            from jit_embedding.ray.discovery import resolve
        except ImportError as e:
            raise ClientError(
                f"jit-embedding client: {discovery} needs Ray: pip install 'jit-embedding[ray]' ({e})"
            ) from e
        try:
            return resolve(app)
        except ValueError as e:
            raise ClientError(f"jit-embedding client: {e}") from e
    raise ValueError(f"discovery must be 'http://host:port/...' or 'ray://<app>', not {discovery!r}")


class EmbeddingClient:
    """A client for one or more jit-embedding servers. Thread-safe; one per process is enough.

    Args:
        endpoints: ``"host:port"``, ``"http://host:port"`` or ``"https://host:port"`` of each
            server (one https endpoint makes every connection TLS).
        timeout: seconds; the deadline of a request that gives none.
        retries: attempts after the first, for safe failures only (connection error, 429, 503).
        auth_token: sent as ``Authorization: Bearer <token>``; None: ``$JIT_EMBEDDING_AUTH_TOKEN``
            or the file ``$JIT_EMBEDDING_AUTH_TOKEN_FILE`` names, if set (docs/security.md).
        balancer: ``"least_outstanding"`` or ``"affinity"`` (same key -> same server).
        health_interval: seconds between probes (GET /health/ready) of an ejected endpoint.
        backoff_base, backoff_max: seconds; full-jitter backoff ``U(0, min(max, base * 2**retry))``.
        max_connections_per_endpoint: keep-alive connections (and requests in flight) per server.
        workers: native threads running submitted requests (requests in flight at once).
        connect_timeout: seconds per TCP connect, also capped by the deadline.
        attempt_timeout: seconds one attempt waits on a silent server before it counts as a
            connection error (retried on another endpoint, which a hung replica then costs);
            None: until the deadline. Set it above the slowest legitimate answer (docs/reliability.md).
        local_cache_dir: a folder for this node's own cache of embeddings (RocksDB, shared by
            every process that names it, DataLoader workers included); None: no local cache.
            ``submit_many`` reads it before asking any server.
        local_cache_max_bytes: the folder's size limit; the oldest entries go first.
        local_cache_memory_bytes: each process's in-memory LRU in front of the folder.
        local_cache_version_ttl: seconds; a local hit is served only while a server confirmed the
            encoder's version this recently (every answer confirms it), which bounds how long an
            in-place update can go unnoticed.
        tls_ca_file: PEM bundle that signed the servers' certificates (https endpoints); None:
            ``$JIT_EMBEDDING_TLS_CA_FILE``, else the system's CA store.
        tls_verify: False skips certificate and host name checks (testing only).

    Raises:
        ClientError: no endpoints, a malformed endpoint, an unknown balancer, a bad limit, or a
            local cache folder that cannot be opened.
    """

    def __init__(
        self,
        endpoints: Sequence[str] | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        auth_token: str | None = None,
        balancer: str = "least_outstanding",
        *,
        health_interval: float = 1.0,
        backoff_base: float = 0.05,
        backoff_max: float = 2.0,
        max_connections_per_endpoint: int = 64,
        workers: int = 16,
        connect_timeout: float = 2.0,
        attempt_timeout: float | None = None,
        local_cache_dir: str | None = None,
        local_cache_max_bytes: int = 16 << 30,
        local_cache_memory_bytes: int = 256 << 20,
        local_cache_version_ttl: float = 1.0,
        tls_ca_file: str | None = None,
        tls_verify: bool = True,
        discovery: str | None = None,
        discovery_interval: float = 2.0,
    ):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        endpoints = [str(e) for e in endpoints or []]
        discovery_url = None
        if discovery is not None:
            if not discovery_interval > 0:
                raise ValueError(f"discovery_interval must be > 0, got {discovery_interval}")
            discovery_url = resolve_discovery(str(discovery))
            if not endpoints:
                endpoints = _first_endpoints(discovery_url, float(discovery_interval), float(timeout))
        self._options = {
            "endpoints": endpoints,
            "timeout_s": float(timeout),
            "retries": int(retries),
            "auth_token": security.auth_token(auth_token),
            "balancer": str(balancer),
            "health_interval_s": float(health_interval),
            "backoff_base_s": float(backoff_base),
            "backoff_max_s": float(backoff_max),
            "max_connections_per_endpoint": int(max_connections_per_endpoint),
            "workers": int(workers),
            "connect_timeout_s": float(connect_timeout),
            "attempt_timeout_s": 0.0 if attempt_timeout is None else float(attempt_timeout),
            "local_cache_dir": "" if local_cache_dir is None else str(local_cache_dir),
            "local_cache_max_bytes": int(local_cache_max_bytes),
            "local_cache_memory_bytes": int(local_cache_memory_bytes),
            "local_cache_version_ttl_s": float(local_cache_version_ttl),
            "tls_ca_file": security.tls_ca_file(tls_ca_file) or "",
            "tls_verify": bool(tls_verify),
        }
        self._native = _C.Client(**self._options)  # validates the options now
        self._specs: dict[str, dict] = {}
        self._discovery: _Discovery | None = None
        if discovery_url is not None:
            self._start_discovery(
                _Discovery(discovery_url, float(discovery_interval), self._native.set_endpoints(endpoints))
            )

    def _start_discovery(self, discovery: _Discovery) -> None:
        self._discovery = discovery
        discovery.start(self)
        weakref.finalize(self, discovery.stop)

    def _tick(self) -> None:
        """In a forked child, the first call starts the child's own discovery thread (threads do
        not survive fork); the native client rebuilds its own state likewise."""
        d = self._discovery
        if d is not None and d.pid != os.getpid():
            self._start_discovery(d.for_this_process())

    # Pickling (multiprocessing "spawn", DataLoader workers) carries the options (with the current
    # endpoint set) and the discovery source: the child builds its own connections and threads.
    def __getstate__(self) -> dict:
        d = self._discovery
        options = {**self._options, "endpoints": self.endpoints}
        return {"options": options, "discovery": None if d is None else (d.url, d.interval)}

    def __setstate__(self, state: dict) -> None:
        self._options = state["options"]
        self._native = _C.Client(**self._options)
        self._specs = {}
        self._discovery = None
        if state.get("discovery"):
            url, interval = state["discovery"]
            self._start_discovery(_Discovery(url, interval, self._options["endpoints"]))

    @property
    def endpoints(self) -> list[str]:
        """The current endpoint set, ``"host:port"`` each (discovery changes it)."""
        self._tick()
        return [e for e in self._native.stats() if e != REMOVED_ROW]

    def set_endpoints(self, endpoints: Sequence[str]) -> list[str]:
        """Replaces the endpoint set now: endpoints that stay keep their connections and counters,
        removed ones finish their requests in flight. With discovery on, its next refresh may
        change the set again. Returns the set. Raises ClientError for an empty list or a malformed
        endpoint (the set is left as it was)."""
        self._tick()
        current = list(self._native.set_endpoints([str(e) for e in endpoints]))
        if self._discovery is not None:
            self._discovery.current = current
        return current

    def refresh_endpoints(self) -> bool:
        """Reads the discovery source once, now (the thread does it every discovery_interval).
        Returns whether the set changed. Raises ValueError without discovery."""
        if self._discovery is None:
            raise ValueError("refresh_endpoints: this client has no discovery source")
        self._tick()
        return self._discovery.refresh(self._native)

    def discovery_stats(self) -> dict | None:
        """None without discovery; else ``{"url", "interval", "endpoints", "refreshes",
        "failures", "last_error", "history"}``, where history holds this process's last refreshes
        as ``{"time", "generation", "listed", "endpoints", "changed"}``."""
        self._tick()
        return None if self._discovery is None else self._discovery.stats()

    def submit(
        self,
        encoder: str,
        inputs: Inputs,
        key: str | None = None,
        deadline: float | None = None,
        *,
        transport: TransportSpec = None,
        device: Any = None,
    ) -> Future:
        """Sends ``inputs`` to ``encoder`` without waiting.

        Args:
            encoder: the encoder's name on the servers.
            inputs: input name -> tensor (torch on any device, or NumPy), batch dimension first.
            key: the request's affinity key (``balancer="affinity"``), e.g. a sample id.
            deadline: absolute, in seconds since the Unix epoch (``time.time()`` scale); default
                now + ``timeout``. Retries, backoff and waits never pass it.
            transport: lossy transport of the float outputs (docs/transport.md): a mode of
                ``jit_embedding.transport.MODES`` for all of them, or output -> mode (``"*"``:
                the rest); None: exact.
            device: where ``result()`` puts the outputs (``"cuda"``: lossy outputs are restored
                there, so only their codes cross the bus); None: the CPU.

        Raises:
            CodecError: an input of a dtype the wire format does not carry.
            ValueError, TypeError: an unknown transport mode or a malformed transport spec.
            ClientError: an invalid encoder name.
        """
        self._tick()
        carried = _transport.normalize(transport)
        frame = codec.encode(inputs, meta={"transport": carried} if carried else None)
        return Future(self._native.submit(encoder, frame, key or "", deadline), device)

    def submit_frame(
        self, encoder: str, frame: bytes | bytearray | memoryview, key: str | None = None, deadline: float | None = None
    ) -> Future:
        """Sends a request frame built by the caller (``codec.encode(inputs, meta=...)``), for
        callers that set the request meta themselves (the cache mode, say) or time the encoding
        apart, as ``jit-embedding bench`` does. Otherwise as ``submit``."""
        self._tick()
        return Future(self._native.submit(encoder, frame, key or "", deadline))

    def encode(
        self,
        encoder: str,
        inputs: Inputs,
        key: str | None = None,
        deadline: float | None = None,
        *,
        transport: TransportSpec = None,
        device: Any = None,
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """``submit(...).result()``: ``(outputs, meta)``, or raises ClientError."""
        return self.submit(encoder, inputs, key, deadline, transport=transport, device=device).result()

    def encoders(self, refresh: bool = False) -> dict[str, dict]:
        """The servers' encoders (GET /v1/encoders), name -> entry with ``inputs``/``outputs`` specs."""
        self._tick()
        if refresh or not self._specs:
            listed = json.loads(self._native.encoders_json(None))["encoders"]
            self._specs = {e["name"]: e for e in listed}
        return self._specs

    def submit_many(
        self,
        encoder: str,
        samples: Sequence[Inputs],
        keys: Sequence[str] | None = None,
        deadline: float | None = None,
        *,
        cache: str = "use",
        params: Mapping[str, Any] | None = None,
        affinity_key: str | None = None,
        transport: TransportSpec = None,
    ) -> ManyFuture:
        """Sends several samples cache-first, without waiting: keys before inputs.

        Each sample maps the same input names to tensors with the batch dimension first (a sample
        may hold several rows; each row is cached on its own). The client hashes every row (its
        content digest, over ``params`` and the row's inputs at its own length) and asks, in this
        order: the local cache (``local_cache_dir``), the servers' caches (POST
        /v1/cache/lookup), and only for the rows still missing uploads their inputs (POST
        /v1/encode), token inputs (those with a ``seq_dim``) right-padded to the longest.

        Args:
            encoder: the encoder's name on the servers.
            samples: one mapping of input name -> tensor per sample.
            keys: one stable key per sample (a file name, a row id), used instead of the
                content digest: the caller promises the key changes when the inputs do.
            deadline: absolute, seconds since the Unix epoch; default now + ``timeout``.
            cache: ``"use"`` (default), ``"refresh"`` (compute and overwrite) or ``"bypass"``.
            params: preprocessing parameters that change the outputs without changing the inputs;
                part of every digest (sent as canonical JSON).
            affinity_key: the endpoint choice under ``balancer="affinity"``; default the first
                row's digest.
            transport: lossy transport of the computed rows' float outputs (as ``submit``); the
                C++ client restores them on the CPU before ``result()``. Such rows are not stored
                in the local cache, which keeps exact outputs only; cache hits travel exactly.

        Raises:
            ValueError: samples with different input names, no samples, keys not one per sample,
                an unknown cache mode, or an unknown transport mode.
            ClientError: ``encoder`` is not served.
        """
        self._tick()
        if not samples:
            raise ValueError("submit_many: no samples")
        if cache not in CACHE_MODES:
            raise ValueError(f"submit_many: cache must be one of {CACHE_MODES}, not {cache!r}")
        if keys is not None and len(keys) != len(samples):
            raise ValueError(f"submit_many: {len(keys)} keys for {len(samples)} samples")
        carried = _transport.normalize(transport)
        names = list(samples[0].keys())
        spec = self._spec(encoder)
        token_inputs = {
            t["name"]: (int(t["seq_dim"]), int(t.get("pad_value", 0)))
            for t in spec["inputs"]
            if t.get("seq_dim") is not None
        }
        seq_outputs = {t["name"]: int(t["seq_dim"]) for t in spec["outputs"] if t.get("seq_dim") is not None}
        rows: list[list[tuple]] = []
        row_keys: list[str] = []
        rows_per_sample: list[int] = []
        for i, s in enumerate(samples):
            if list(s.keys()) != names:
                raise ValueError(f"submit_many: sample {i} has inputs {list(s.keys())}, sample 0 has {names}")
            tensors = {n: _as_tensor(v) for n, v in s.items()}
            n_rows = int(tensors[names[0]].shape[0])
            for r in range(n_rows):
                rows.append([codec._to_item(n, t if n_rows == 1 else t[r : r + 1]) for n, t in tensors.items()])
                if keys is not None:
                    row_keys.append(str(keys[i]) if n_rows == 1 else f"{keys[i]}#{r}")
            rows_per_sample.append(n_rows)
        params_bytes = b"" if not params else json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
        max_batch = int(spec.get("batching", {}).get("max_batch_size", 0))
        native = self._native.submit_rows(
            encoder,
            rows,
            row_keys,
            params_bytes,
            token_inputs,
            seq_outputs,
            max_batch,
            cache,
            affinity_key or "",
            deadline,
            carried,
        )
        return ManyFuture(native, rows_per_sample)

    def encode_many(
        self,
        encoder: str,
        samples: Sequence[Inputs],
        keys: Sequence[str] | None = None,
        deadline: float | None = None,
        *,
        cache: str = "use",
        params: Mapping[str, Any] | None = None,
        transport: TransportSpec = None,
    ) -> list[tuple[dict[str, torch.Tensor], dict]]:
        """``submit_many(...).result()``, one ``(outputs, meta)`` per sample in order (the meta
        dict is shared). Each output with a ``seq_dim`` is cut back to its sample's length.

        Raises:
            ValueError, ClientError: as submit_many.
        """
        outputs, meta = self.submit_many(
            encoder, samples, keys, deadline, cache=cache, params=params, transport=transport
        ).result()
        return [(o, meta) for o in outputs]

    def cache_stats(self) -> dict[str, int]:
        """Samples (rows) answered by ``submit_many`` in this process, by source:
        ``rows_local_cache``, ``rows_server_cache`` and ``rows_computed``."""
        return self._native.cache_stats()

    def stats(self) -> dict[str, dict]:
        """Per endpoint: requests, responses, failures, retries, bytes_sent, bytes_received,
        connections_opened, ejections, outstanding, healthy, latency_sum_s and latency_buckets
        ``[(upper bound s, count), ...]`` (counts per bucket, not cumulative). Covers the current
        endpoint set, plus a ``"(removed)"`` row (REMOVED_ROW) summing the endpoints that discovery
        or set_endpoints() dropped, so the totals never go down."""
        self._tick()
        return self._native.stats()

    def _spec(self, encoder: str) -> dict:
        try:
            specs = self.encoders()
        except ClientError as e:
            raise ClientError(f"jit-embedding client: encoder '{encoder}': cannot read the encoder list: {e}") from e
        if encoder not in specs:
            specs = self.encoders(refresh=True)
        if encoder not in specs:
            raise ClientError(
                f"jit-embedding client: encoder '{encoder}' is not served at {', '.join(self.endpoints)}"
                f" (served: {', '.join(sorted(specs)) or 'none'})"
            )
        return specs[encoder]


def _first_endpoints(url: str, interval: float, timeout: float) -> list[str]:
    """The registry's first non-empty list, asked every `interval` for up to `timeout` seconds (a
    deployment may still be starting). Raises ClientError with the last cause."""
    probe = _Discovery(url, interval, [])
    give_up = time.monotonic() + timeout
    while True:
        try:
            endpoints = [str(e) for e in probe.fetch()["endpoints"]]
            if endpoints:
                return endpoints
            cause = "the registry lists no endpoints"
        except ClientError as e:
            cause = str(e)
        if time.monotonic() >= give_up:
            raise ClientError(f"jit-embedding client: discovery {url}: no endpoints within {timeout:.0f} s ({cause})")
        time.sleep(min(interval, 0.5))


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu() if value.device.type != "cpu" else value.detach()
    raise TypeError(f"encode_many: inputs must be tensors or arrays, not {type(value).__name__}")
