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

Fork safety: a client made before ``fork()`` (a DataLoader's workers) rebuilds its connections and
threads in the child on first use and never touches the parent's. With the ``spawn`` start method
it pickles as its options.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch

from jit_embedding import _C, codec

__all__ = ["ClientError", "EmbeddingClient", "Future"]

#: Raised when a request fails; the message names the endpoint, the encoder and the cause (HTTP
#: status and the server's message, or the socket error). A subclass of RuntimeError.
ClientError = _C.ClientError

Inputs = Mapping[str, Union[torch.Tensor, np.ndarray]]


class Future:
    """A submitted request. ``result()`` waits with the GIL released."""

    def __init__(self, native: Any):
        self._native = native

    def done(self) -> bool:
        """Whether the answer (or the error) is in."""
        return self._native.done()

    def result(self, timeout: float | None = None) -> tuple[dict[str, torch.Tensor], dict]:
        """Waits up to ``timeout`` seconds (None: until the request's own deadline resolves it).

        Returns:
            ``(outputs, meta)``: output name -> tensor (zero-copy views of the response body for
            uncompressed payloads), and the server's meta dict plus ``meta["client"]`` =
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
        return outputs, meta


class EmbeddingClient:
    """A client for one or more jit-embedding servers. Thread-safe; one per process is enough.

    Args:
        endpoints: ``"host:port"`` or ``"http://host:port"`` of each server.
        timeout: seconds; the deadline of a request that gives none.
        retries: attempts after the first, for safe failures only (connection error, 429, 503).
        auth_token: sent as ``Authorization: Bearer <token>``.
        balancer: ``"least_outstanding"`` or ``"affinity"`` (same key -> same server).
        health_interval: seconds between probes (GET /health/ready) of an ejected endpoint.
        backoff_base, backoff_max: seconds; full-jitter backoff ``U(0, min(max, base * 2**retry))``.
        max_connections_per_endpoint: keep-alive connections (and requests in flight) per server.
        workers: native threads running submitted requests (requests in flight at once).
        connect_timeout: seconds per TCP connect, also capped by the deadline.

    Raises:
        ClientError: no endpoints, a malformed endpoint, an unknown balancer, or a bad limit.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
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
    ):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        self._options = {
            "endpoints": [str(e) for e in endpoints],
            "timeout_s": float(timeout),
            "retries": int(retries),
            "auth_token": auth_token,
            "balancer": str(balancer),
            "health_interval_s": float(health_interval),
            "backoff_base_s": float(backoff_base),
            "backoff_max_s": float(backoff_max),
            "max_connections_per_endpoint": int(max_connections_per_endpoint),
            "workers": int(workers),
            "connect_timeout_s": float(connect_timeout),
        }
        self._native = _C.Client(**self._options)  # validates the options now
        self._specs: dict[str, dict] = {}

    # Pickling (multiprocessing "spawn", DataLoader workers) carries the options only: the child
    # builds its own connections and threads.
    def __getstate__(self) -> dict:
        return {"options": self._options}

    def __setstate__(self, state: dict) -> None:
        self._options = state["options"]
        self._native = _C.Client(**self._options)
        self._specs = {}

    @property
    def endpoints(self) -> list[str]:
        return list(self._options["endpoints"])

    def submit(self, encoder: str, inputs: Inputs, key: str | None = None, deadline: float | None = None) -> Future:
        """Sends ``inputs`` to ``encoder`` without waiting.

        Args:
            encoder: the encoder's name on the servers.
            inputs: input name -> tensor (torch on any device, or NumPy), batch dimension first.
            key: the request's affinity key (``balancer="affinity"``), e.g. a sample id.
            deadline: absolute, in seconds since the Unix epoch (``time.time()`` scale); default
                now + ``timeout``. Retries, backoff and waits never pass it.

        Raises:
            CodecError: an input of a dtype the wire format does not carry.
            ClientError: an invalid encoder name.
        """
        frame = codec.encode(inputs)
        return Future(self._native.submit(encoder, frame, key or "", deadline))

    def encode(
        self, encoder: str, inputs: Inputs, key: str | None = None, deadline: float | None = None
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """``submit(...).result()``: ``(outputs, meta)``, or raises ClientError."""
        return self.submit(encoder, inputs, key, deadline).result()

    def encoders(self, refresh: bool = False) -> dict[str, dict]:
        """The servers' encoders (GET /v1/encoders), name -> entry with ``inputs``/``outputs`` specs."""
        if refresh or not self._specs:
            listed = json.loads(self._native.encoders_json(None))["encoders"]
            self._specs = {e["name"]: e for e in listed}
        return self._specs

    def encode_many(
        self,
        encoder: str,
        samples: Sequence[Inputs],
        keys: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> list[tuple[dict[str, torch.Tensor], dict]]:
        """Encodes several samples in one request and splits the results back, in order.

        Each sample maps the same input names to tensors with the batch dimension first (a sample
        may hold several rows). Inputs concatenate along dim 0; an input with a ``seq_dim`` in the
        encoder's spec (token ids, masks) is right-padded with its pad_value to the longest sample, and each
        output with a ``seq_dim`` is cut back to its sample's length (that of the sample's first
        padded input). ``keys`` (one per sample) join into the request's affinity key.

        Returns:
            One ``(outputs, meta)`` per sample; the meta dicts are the request's, shared.

        Raises:
            ValueError: samples with different input names, or no samples.
            ClientError: the request failed, or ``encoder`` is not served.
        """
        if not samples:
            raise ValueError("encode_many: no samples")
        names = list(samples[0].keys())
        for i, s in enumerate(samples):
            if list(s.keys()) != names:
                raise ValueError(f"encode_many: sample {i} has inputs {list(s.keys())}, sample 0 has {names}")
        spec = self._spec(encoder)
        seq_dims = {t["name"]: t["seq_dim"] for t in spec["inputs"] if t.get("seq_dim") is not None}
        pad_values = {t["name"]: t.get("pad_value", 0) for t in spec["inputs"]}
        tensors = [{n: _as_tensor(v) for n, v in s.items()} for s in samples]
        rows = [int(t[names[0]].shape[0]) for t in tensors]
        lengths: list[int | None] = [None] * len(samples)
        packed = {}
        for n in names:
            parts = [t[n] for t in tensors]
            dim = seq_dims.get(n)
            if dim is not None:
                longest = max(int(p.shape[dim]) for p in parts)
                for i, p in enumerate(parts):
                    if lengths[i] is None:
                        lengths[i] = int(p.shape[dim])
                padded = []
                for p in parts:
                    pad = longest - int(p.shape[dim])
                    if pad:
                        shape = list(p.shape)
                        shape[dim] = pad
                        p = torch.cat([p, torch.full(shape, pad_values.get(n, 0), dtype=p.dtype)], dim=dim)
                    padded.append(p)
                parts = padded
            packed[n] = torch.cat(parts, dim=0)
        key = "|".join(keys) if keys else None
        outputs, meta = self.encode(encoder, packed, key, deadline)

        out_seq = {t["name"]: t["seq_dim"] for t in spec["outputs"] if t.get("seq_dim") is not None}
        results = []
        start = 0
        for i, n_rows in enumerate(rows):
            sample = {}
            for name, value in outputs.items():
                part = value[start : start + n_rows] if isinstance(value, torch.Tensor) else value
                dim = out_seq.get(name)
                if dim is not None and lengths[i] is not None and isinstance(part, torch.Tensor):
                    part = part.narrow(dim, 0, lengths[i])
                sample[name] = part
            results.append((sample, meta))
            start += n_rows
        return results

    def stats(self) -> dict[str, dict]:
        """Per endpoint: requests, responses, failures, retries, bytes_sent, bytes_received,
        connections_opened, ejections, outstanding, healthy, latency_sum_s and latency_buckets
        ``[(upper bound s, count), ...]`` (counts per bucket, not cumulative)."""
        return self._native.stats()

    def _spec(self, encoder: str) -> dict:
        specs = self.encoders()
        if encoder not in specs:
            specs = self.encoders(refresh=True)
        if encoder not in specs:
            raise ClientError(
                f"jit-embedding client: encoder '{encoder}' is not served at {', '.join(self.endpoints)}"
                f" (served: {', '.join(sorted(specs)) or 'none'})"
            )
        return specs[encoder]


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu() if value.device.type != "cpu" else value.detach()
    raise TypeError(f"encode_many: inputs must be tensors or arrays, not {type(value).__name__}")
