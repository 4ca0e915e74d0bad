"""DataLoader integration: wrap an existing Dataset so that its workers fetch embeddings from the
servers ahead of need.

    from jit_embedding import EmbeddingClient
    from jit_embedding.data import JITEmbeddingDataset

    client = EmbeddingClient(endpoints=["http://10.0.0.5:8000", "http://10.0.0.6:8000"])
    ds = JITEmbeddingDataset(base, fields={"latent": ("vae", image_prep), "text": ("t5", tokenize)}, client=client)
    loader = DataLoader(ds, batch_size=32, num_workers=4, sampler=DistributedSampler(ds))

A field is ``(encoder, prep)``: ``prep(sample)`` runs in the worker and returns the encoder's inputs
for ONE sample, without a batch dimension (``{"input_ids": [S], "attention_mask": [S]}`` from an HF
tokenizer, ``{"pixels": [3, H, W]}`` for an image). The sample the loader yields is the base sample
(a dict, or ``{"sample": value}`` otherwise) with each field added: the encoder's output tensor, or
a dict of them when the encoder has several outputs, again without a batch dimension.

The client is created before the DataLoader and is fork-safe: each worker reconnects lazily on first
use (see jit_embedding.client). Every request is answered exactly once, after retries and failover
inside the client, so no sample is dropped or duplicated, and the order is the sampler's.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from jit_embedding import transport as _transport

Field = tuple[str, Callable[[Any], Mapping[str, torch.Tensor]]]

#: Stats slots: one per worker, plus slot 0 for the main process (num_workers=0).
MAX_WORKERS = 256
_STAT_NAMES = (
    "samples",
    "requests",
    "wait_s",
    "latency_s",
    "bytes_sent",
    "bytes_received",
    "retries",
    "failures",
    "rows_local_cache",
    "rows_server_cache",
    "rows_computed",
)


class _WorkerStats:
    """Per-worker counters in shared memory, written by the workers and read by the main process.
    Shared at construction, so they reach fork and spawn workers alike."""

    def __init__(self) -> None:
        self._values = multiprocessing.RawArray("d", (MAX_WORKERS + 1) * len(_STAT_NAMES))

    @staticmethod
    def slot() -> int:
        info = get_worker_info()
        return 0 if info is None else 1 + info.id % MAX_WORKERS

    def add(self, **deltas: float) -> None:
        base = self.slot() * len(_STAT_NAMES)
        for name, value in deltas.items():
            self._values[base + _STAT_NAMES.index(name)] += value

    def set(self, **values: float) -> None:
        base = self.slot() * len(_STAT_NAMES)
        for name, value in values.items():
            self._values[base + _STAT_NAMES.index(name)] = value

    def get(self, *names: str) -> dict[str, float]:
        base = self.slot() * len(_STAT_NAMES)
        return {name: self._values[base + _STAT_NAMES.index(name)] for name in names}

    def read(self) -> list[dict[str, float]]:
        """One dict per slot that has seen a sample: {"worker": -1 for the main process, ...}."""
        out = []
        for slot in range(MAX_WORKERS + 1):
            row = self._values[slot * len(_STAT_NAMES) : (slot + 1) * len(_STAT_NAMES)]
            if row[0]:
                out.append({"worker": slot - 1, **dict(zip(_STAT_NAMES, row))})
        return out


class _Fetcher:
    """Prepares the fields of a group of samples, submits each field's samples as one cache-first
    request (``EmbeddingClient.submit_many``), and assembles the answers."""

    def __init__(
        self,
        fields: Mapping[str, Field],
        client: Any,
        stats: _WorkerStats,
        deadline_s: float | None,
        sample_key: Callable[[Any], str] | None = None,
        cache: str = "use",
        transport: Any = None,
    ):
        if not fields:
            raise ValueError("fields must name at least one (encoder, prep) pair")
        for name, field in fields.items():
            if not (isinstance(field, tuple) and len(field) == 2 and isinstance(field[0], str) and callable(field[1])):
                raise TypeError(f"field '{name}' must be (encoder name, prep function), got {field!r}")
        if sample_key is not None and not callable(sample_key):
            raise TypeError(f"sample_key must be a function of a sample, got {sample_key!r}")
        self.fields = dict(fields)
        self.client = client
        self.stats = stats
        self.deadline_s = deadline_s
        self.sample_key = sample_key
        self.cache = cache
        self.transport = _transport.normalize(transport)  # validated here, in the main process
        # A worker slot outlives its process (DataLoader starts new workers every epoch unless
        # persistent_workers), while the client's totals start again in each: carry them over.
        self._pid = -1
        self._carried: dict[str, float] = {}

    def submit(self, samples: Sequence[Any]) -> list[tuple[str, Any, float]]:
        pending = []
        for name, (encoder, prep) in self.fields.items():
            inputs = [{k: torch.as_tensor(v).unsqueeze(0) for k, v in prep(s).items()} for s in samples]
            # The field is part of the key: two fields may run the same encoder on different preps.
            keys = None if self.sample_key is None else [f"{name}:{self.sample_key(s)}" for s in samples]
            deadline = None if self.deadline_s is None else time.time() + self.deadline_s
            future = self.client.submit_many(
                encoder, inputs, keys, deadline, cache=self.cache, transport=self.transport or None
            )
            pending.append((name, future, time.perf_counter()))
        return pending

    def gather(self, samples: Sequence[Any], pending: list[tuple[str, Any, float]]) -> list[dict[str, Any]]:
        out = [dict(s) if isinstance(s, Mapping) else {"sample": s} for s in samples]
        waited = latency = 0.0
        for name, future, submitted in pending:
            start = time.perf_counter()
            results, _meta = future.result()
            now = time.perf_counter()
            waited += now - start
            latency += (now - submitted) * len(samples)
            for sample_out, outputs in zip(out, results):
                values = {k: v[0] for k, v in outputs.items()}
                sample_out[name] = next(iter(values.values())) if len(values) == 1 else values
        self.stats.add(samples=len(samples), requests=len(pending), wait_s=waited, latency_s=latency)
        return out

    def sync_client_stats(self) -> None:
        """Copies the client's totals into this worker's slot: once per batch, not per sample, as
        reading them walks every endpoint's counters."""
        stats = self.client.stats() if hasattr(self.client, "stats") else None
        if not stats:
            return
        totals = {k: 0.0 for k in ("bytes_sent", "bytes_received", "retries", "failures")}
        for row in stats.values() if isinstance(stats, Mapping) and "bytes_sent" not in stats else [stats]:
            for k in totals:
                totals[k] += float(row.get(k, 0))
        if hasattr(self.client, "cache_stats"):
            totals.update({k: float(v) for k, v in self.client.cache_stats().items()})
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._carried = self.stats.get(*totals)
        self.stats.set(**{k: self._carried[k] + v for k, v in totals.items()})


class JITEmbeddingDataset(Dataset):
    """A map-style Dataset whose samples carry embeddings computed by the servers.

    Args:
        base: the user's map-style dataset.
        fields: ``{output field: (encoder, prep)}`` (see the module docstring).
        client: an ``EmbeddingClient`` (fork-safe; shared by all workers).
        deadline_s: per-request deadline in seconds (None: the client's timeout).
        sample_key: ``sample_key(sample) -> str``, a stable id of the sample (a file name), used as
            the cache key instead of the content digest of its prepared inputs. Only for data whose
            preparation is deterministic: a random crop needs the content digest.
        cache: ``"use"`` (default), ``"refresh"`` or ``"bypass"`` (see EmbeddingClient.submit_many).
        transport: lossy transport of the embeddings (docs/transport.md): a mode name such as
            ``"fp8_rowwise"`` or ``"bf16"`` for every float output, or output -> mode; None:
            exact. The workers restore each output to its dtype; the wire carries the codes.

    ``__getitems__`` (used by DataLoader's batched fetch) sends each field of the whole batch as one
    cache-first request: the samples' digests first, then the inputs of the misses only, so a
    cached batch uploads a few bytes per sample. It works with any sampler, including
    ``DistributedSampler``.
    """

    def __init__(
        self,
        base: Dataset,
        fields: Mapping[str, Field],
        client: Any,
        deadline_s: float | None = None,
        sample_key: Callable[[Any], str] | None = None,
        cache: str = "use",
        transport: Any = None,
    ):
        self.base = base
        self.stats = _WorkerStats()
        self._fetcher = _Fetcher(fields, client, self.stats, deadline_s, sample_key, cache, transport)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        samples = [self.base[i] for i in indices]
        out = self._fetcher.gather(samples, self._fetcher.submit(samples))
        self._fetcher.sync_client_stats()
        return out

    def worker_stats(self) -> list[dict[str, float]]:
        """Per-worker stats, readable from the main process while or after a loader runs:
        samples, requests, wait_s (time blocked on answers), latency_s (submit to answer, summed
        over samples), bytes_sent, bytes_received, retries and failures (the worker's client
        totals), and rows_local_cache, rows_server_cache and rows_computed (where the worker's
        samples came from)."""
        return self.stats.read()


class JITEmbeddingIterableDataset(IterableDataset):
    """An IterableDataset that keeps ``window`` samples in flight per worker and yields them in order.

    Args:
        base: an iterable of samples (re-iterable: each epoch iterates it again), or a map-style
            dataset (iterated by index).
        fields, client, deadline_s, sample_key, cache, transport: as for JITEmbeddingDataset.
        window: samples each worker keeps outstanding (K). Larger hides more latency.

    Worker ``w`` of ``n`` takes samples ``w, w + n, w + 2n, ...``, so the loader's order is
    deterministic and every sample appears exactly once per epoch.
    """

    def __init__(
        self,
        base: Iterable | Dataset,
        fields: Mapping[str, Field],
        client: Any,
        window: int = 32,
        deadline_s: float | None = None,
        sample_key: Callable[[Any], str] | None = None,
        cache: str = "use",
        transport: Any = None,
    ):
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.base = base
        self.window = window
        self.stats = _WorkerStats()
        self._fetcher = _Fetcher(fields, client, self.stats, deadline_s, sample_key, cache, transport)

    def _samples(self, worker: int, workers: int) -> Iterator[Any]:
        if hasattr(self.base, "__getitem__") and hasattr(self.base, "__len__"):
            # Map-style: index straight into this worker's share, loading nothing it skips.
            return (self.base[i] for i in range(worker, len(self.base), workers))  # type: ignore[arg-type]
        return itertools.islice(iter(self.base), worker, None, workers)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        samples = self._samples(0, 1) if info is None else self._samples(info.id, info.num_workers)
        window: collections.deque = collections.deque()
        for n, sample in enumerate(samples, 1):
            window.append((sample, self._fetcher.submit([sample])))
            if len(window) >= self.window:
                sample0, pending0 = window.popleft()
                if n % self.window == 0:
                    self._fetcher.sync_client_stats()
                yield self._fetcher.gather([sample0], pending0)[0]
        while window:
            sample0, pending0 = window.popleft()
            if len(window) == 0:
                self._fetcher.sync_client_stats()
            yield self._fetcher.gather([sample0], pending0)[0]

    def worker_stats(self) -> list[dict[str, float]]:
        """As JITEmbeddingDataset.worker_stats."""
        return self.stats.read()
