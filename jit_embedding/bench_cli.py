"""``jit-embedding bench``: a load generator to point at a deployment (docs/bench.md).

    jit-embedding bench --server URL [--server URL ...] --encoder NAME [--concurrency 1:64:x2]
    jit-embedding bench --server URL --encoder NAME --rate 200 [--arrivals poisson]
    jit-embedding bench --server URL --encoder NAME --concurrency 16 --profile trace.json

It sends synthetic inputs, made from the encoder's spec (GET /v1/encoders), through EmbeddingClient's
pooled keep-alive connections, with the meta ``cache: "bypass"`` by default so that the servers
compute every request instead of answering repeats from their caches.

Two modes:

- **closed loop** (``--concurrency``): C requests in flight at once, each sent as soon as the one
  before it is answered; a sweep ``1:64:x2`` runs C = 1, 2, 4, ..., 64.
- **open loop** (``--rate``): requests sent at R per second, evenly spaced (``constant``) or with
  exponential gaps (``poisson``); latency counts from the scheduled send time, so a server or a
  client that falls behind shows up as latency.

Each level runs a discarded warm-up window, then measurement windows of ``--window-s`` until the
throughput of the last three windows is within ``--stability`` of their mean, or ``--max-windows``
windows. A level's numbers are those of its last (up to) three windows. The sweep stops after the
first level whose p99 exceeds ``--latency-threshold-ms``.

``--profile PATH`` fetches a Chrome trace of the first server's pipeline stages (GET /v1/trace,
``--profile-ms`` long) during the first level, starting after its warm-up window; the level's load
keeps running until the capture ends. The trace is written to PATH (open it in ui.perfetto.dev).

Every problem is one line on stderr: exit status 2 for a bad argument, 1 for a failure (an
unreachable server, an unknown encoder, a probe request the server refuses, a level where every
request failed), 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import queue
import random
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jit_embedding import codec
from jit_embedding.cli_common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandError,
    Server,
    call_factory,
    first_line,
    import_target,
    text_table,
)
from jit_embedding.client import CACHE_MODES, ClientError, EmbeddingClient

#: Integer token inputs get random ids in [1, vocab); inputs whose name contains this are all ones.
MASK_MARK = "mask"
#: Distinct synthetic input sets cycled through (each request is still encoded afresh).
INPUT_SETS = 4
#: Windows whose throughput must agree for a level to count as stable.
STABLE_WINDOWS = 3
#: Threads waiting on answers in open-loop mode (latency comes from the native client's own
#: submit-to-answer time, so their order of waiting does not bias it).
COLLECTORS = 8
#: Native client workers (requests in flight at once) in open-loop mode.
OPEN_LOOP_WORKERS = 256
#: GET /v1/trace's bounds on duration_ms.
PROFILE_MS_RANGE = (1, 60000)

_FLOAT_DTYPES = {"float32", "float16", "bfloat16", "float8_e4m3fn"}
_INT_DTYPES = {"int8", "int16", "int32", "int64"}

#: Columns of the CSV and keys of each JSON row, in order.
FIELDS = [
    "concurrency",
    "rate",
    "requests",
    "errors",
    "windows",
    "stable",
    "duration_s",
    "requests_per_s",
    "samples_per_s",
    "mb_per_s",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "server_queue_ms",
    "server_compute_ms",
    "server_serialize_ms",
    "server_batch_size",
    "batch_formation_ms",
    "client_encode_ms",
    "client_network_server_ms",
    "client_decode_ms",
    "metrics_batches",
    "metrics_batch_size",
    "metrics_compute_ms_per_batch",
    "metrics_queue_ms",
]

#: The histograms read from every server's /metrics before and after a level, for the encoder.
METRIC_SERIES = ("jit_batch_size", "jit_compute_seconds", "jit_queue_seconds")


# ---------------------------------------------------------------------------------------------------
# Arguments


def parse_levels(text: str, flag: str, integer: bool) -> list[float]:
    """``8`` -> [8]; ``1:64:x2`` -> [1, 2, 4, ..., 64]; ``100:400:+100`` (or ``:100``) -> [100, 200,
    300, 400]; ``start:end`` steps x2. Raises CommandError (exit 2) for anything else."""
    number = r"\d+" if integer else r"\d+(?:\.\d+)?"
    m = re.fullmatch(rf"({number})(?::({number})(?::(x|\+)?(\d+(?:\.\d+)?))?)?", text.strip())
    usage = f"{flag} '{text}': expected N or start:end[:xF|:+K] (8, 1:64:x2, 100:400:+100)"
    if not m:
        raise CommandError(usage, EXIT_USAGE)
    cast = int if integer else float
    start = cast(m.group(1))
    end = cast(m.group(2)) if m.group(2) is not None else start
    kind, step = (m.group(3) or "+", float(m.group(4))) if m.group(4) is not None else ("x", 2.0)
    if start <= 0:
        raise CommandError(f"{flag} '{text}': levels must be positive", EXIT_USAGE)
    if end < start:
        raise CommandError(f"{flag} '{text}': the end is below the start", EXIT_USAGE)
    if (kind == "x" and step <= 1) or (kind == "+" and step <= 0) or (integer and kind == "+" and step % 1):
        raise CommandError(f"{flag} '{text}': the step must grow the level (x2, +8)", EXIT_USAGE)
    levels, level = [], start
    while level <= end * (1 + 1e-9):
        levels.append(cast(round(level)) if integer else level)
        level = level * step if kind == "x" else level + step
    if integer:
        levels = sorted(set(levels))  # x1.5 from 1 rounds to repeats
    if len(levels) > 1000:
        raise CommandError(f"{flag} '{text}': {len(levels)} levels; at most 1000", EXIT_USAGE)
    return levels


def _check_args(args: argparse.Namespace) -> list[Server]:
    def positive(flag: str, value: float | None) -> None:
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise CommandError(f"{flag} must be positive, got {value:g}", EXIT_USAGE)

    if bool(args.dataset) != bool(args.prep):
        raise CommandError("--dataset and --prep go together", EXIT_USAGE)
    for flag, value in (
        ("--batch", args.batch),
        ("--seq-len", args.seq_len),
        ("--window-s", args.window_s),
        ("--max-windows", args.max_windows),
        ("--stability", args.stability),
        ("--latency-threshold-ms", args.latency_threshold_ms),
        ("--timeout", args.timeout),
    ):
        positive(flag, value)
    if args.vocab < 2:
        raise CommandError(f"--vocab must be at least 2, got {args.vocab}", EXIT_USAGE)
    if not PROFILE_MS_RANGE[0] <= args.profile_ms <= PROFILE_MS_RANGE[1]:
        raise CommandError(
            f"--profile-ms must be in [{PROFILE_MS_RANGE[0]}, {PROFILE_MS_RANGE[1]}], got {args.profile_ms}", EXIT_USAGE
        )
    if args.rate is not None and args.concurrency is not None:
        raise CommandError("give --concurrency (closed loop) or --rate (open loop), not both", EXIT_USAGE)
    outputs = (("--csv", args.csv), ("--json", args.json), ("--plot", args.plot), ("--profile", args.profile))
    for flag, path in outputs:
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise CommandError(f"{flag} {path}: the folder {Path(path).resolve().parent} does not exist", EXIT_USAGE)
    servers, seen = [], set()
    for url in args.server:
        s = Server(url)
        if s.endpoint not in seen:
            seen.add(s.endpoint)
            servers.append(s)
    return servers


# ---------------------------------------------------------------------------------------------------
# Synthetic inputs


def synthetic_inputs(spec: dict, batch: int, seq_len: int, vocab: int, gen: torch.Generator) -> dict:
    """One set of inputs for an encoder entry of GET /v1/encoders: dynamic dims (-1) are ``batch``
    for the first and ``seq_len`` for the others; floats are standard normal, integer inputs random
    ids in [1, vocab) (all ones when the name contains "mask"), uint8 uniform in [0, 256).

    Raises:
        CommandError: an input of a dtype this command cannot make (str, bytes).
    """
    out = {}
    for t in spec.get("inputs", []):
        name, dtype = t["name"], t.get("dtype", "float32")
        shape = [batch if i == 0 and d < 0 else seq_len if d < 0 else int(d) for i, d in enumerate(t["shape"])]
        mask = MASK_MARK in name.lower()
        if dtype in _FLOAT_DTYPES:
            value = torch.randn(shape, generator=gen).to(codec.DTYPES[dtype])
        elif dtype in _INT_DTYPES or dtype == "uint8":
            torch_dtype = codec.DTYPES[dtype]
            if mask:
                value = torch.ones(shape, dtype=torch_dtype)
            elif dtype == "uint8":
                value = torch.randint(0, 256, shape, generator=gen, dtype=torch_dtype)
            else:
                high = min(vocab, torch.iinfo(torch_dtype).max + 1)
                value = torch.randint(1, high, shape, generator=gen, dtype=torch_dtype)
        elif dtype == "bool":
            value = torch.ones(shape, dtype=torch.bool) if mask else torch.rand(shape, generator=gen) < 0.5
        else:
            raise CommandError(f"input '{name}' has dtype {dtype}; bench makes tensors only", EXIT_USAGE)
        out[name] = value
    if not out:
        raise CommandError(f"encoder '{spec.get('name')}' lists no inputs", EXIT_FAILED)
    return out


# ---------------------------------------------------------------------------------------------------
# Load


class _Recorder:
    """Answers as they come in; the controller takes each window's share with ``take()``.

    A record: (latency_s, encode_s, client_latency_s, decode_s, queue_s, compute_s, serialize_s,
    batch_samples), or None for a failed request."""

    def __init__(self):
        self._lock = threading.Lock()
        self._records: list = []
        self.first_error: str | None = None

    def add(self, record: tuple | None, error: BaseException | None = None) -> None:
        with self._lock:
            self._records.append(record)
            if error is not None and self.first_error is None:
                self.first_error = (str(error).strip().splitlines() or [type(error).__name__])[0]

    def take(self) -> list:
        with self._lock:
            records, self._records = self._records, []
        return records


class _Load:
    """Sends requests the way the mode asks, until ``stop()``."""

    def __init__(self, client: EmbeddingClient, encoder: str, input_sets: list, meta: dict, timeout: float):
        self.client = client
        self.encoder = encoder
        self.input_sets = input_sets
        self.meta = meta
        self.timeout = timeout
        self.recorder = _Recorder()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counter = 0
        self._counter_lock = threading.Lock()

    def _next_inputs(self) -> dict:
        with self._counter_lock:
            self._counter += 1
            return self.input_sets[self._counter % len(self.input_sets)]

    def _send(self) -> tuple[Any, float, float]:
        """Builds a frame and submits it: (native future, encode seconds, submit time)."""
        t0 = time.perf_counter()
        frame = codec.encode(self._next_inputs(), meta=self.meta)
        t1 = time.perf_counter()
        # The frame as built here carries the "cache" mode, and its encoding is timed on its own.
        return self.client.submit_frame(self.encoder, frame), t1 - t0, t1

    def _finish(self, native: Any, scheduled: float, submitted: float, encode_s: float) -> None:
        """Waits for one answer, decodes it and records it; latency runs from ``scheduled``."""
        try:
            native.wait(self.timeout)  # the decode below is timed on its own
            t0 = time.perf_counter()
            _, meta = native.result(0)
            decode_s = time.perf_counter() - t0
        except (ClientError, TimeoutError, codec.CodecError) as e:
            self.recorder.add(None, e)
            return
        client_s = float(meta["client"]["latency_s"])
        timings = meta.get("timings") or {}
        self.recorder.add(
            (
                (submitted - scheduled) + client_s + decode_s,
                encode_s,
                client_s,
                decode_s,
                float(timings.get("queue_us", 0)) / 1e6,
                float(timings.get("compute_us", 0)) / 1e6,
                float(timings.get("serialize_us", 0)) / 1e6,
                float(timings.get("batch_samples", 0)),
            )
        )

    def start_closed(self, concurrency: int) -> None:
        def worker() -> None:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    native, encode_s, submitted = self._send()
                except ClientError as e:
                    self.recorder.add(None, e)
                    continue
                self._finish(native, t0, submitted, encode_s)

        self._threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        for t in self._threads:
            t.start()

    def start_open(self, rate: float, arrivals: str, seed: int) -> None:
        pending: queue.Queue = queue.Queue()
        rng = random.Random(seed)

        def scheduler() -> None:
            next_t = time.perf_counter()
            while not self._stop.is_set():
                delay = next_t - time.perf_counter()
                if delay > 0:
                    self._stop.wait(delay)
                    continue
                try:
                    native, encode_s, submitted = self._send()
                    pending.put((native, next_t, submitted, encode_s))
                except ClientError as e:
                    self.recorder.add(None, e)
                next_t += rng.expovariate(rate) if arrivals == "poisson" else 1.0 / rate
            for _ in range(COLLECTORS):
                pending.put(None)

        def collector() -> None:
            while (item := pending.get()) is not None:
                self._finish(*item)

        self._threads = [threading.Thread(target=collector, daemon=True) for _ in range(COLLECTORS)]
        self._threads.append(threading.Thread(target=scheduler, daemon=True))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stops sending and waits for the requests in flight (each bounded by the timeout)."""
        self._stop.set()
        for t in self._threads:
            t.join()


class _Profiler:
    """Fetches GET /v1/trace from one server on a thread of its own, after ``delay_s`` of load."""

    def __init__(self, server: Server, duration_ms: int, delay_s: float, timeout: float):
        self.trace: dict | None = None
        self.error: str | None = None
        self._cancel = threading.Event()

        def fetch() -> None:
            if self._cancel.wait(delay_s):
                return
            try:
                path = f"/v1/trace?duration_ms={duration_ms}"
                self.trace = server.request_json("GET", path, timeout=duration_ms / 1e3 + timeout)
            except CommandError as e:
                self.error = str(e)

        self._thread = threading.Thread(target=fetch, daemon=True)
        self._thread.start()

    def wait(self, cancel: bool = False) -> None:
        """Waits for the capture to end (the load should still be running); ``cancel`` skips one
        that has not started yet."""
        if cancel:
            self._cancel.set()
        self._thread.join()


def write_profile(path: str, trace: dict) -> str:
    """Writes the trace; returns the line that reports it."""
    Path(path).write_text(json.dumps(trace) + "\n")
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") in ("X", "b")]
    other = trace.get("otherData") or {}
    dropped = int(other.get("dropped_events", 0))
    return (
        f"wrote trace {path}: {len(events)} events over {float(other.get('duration_ms', 0)):.0f} ms"
        + (f", {dropped} dropped (buffer full)" if dropped else "")
        + "; open it in https://ui.perfetto.dev"
    )


def _bytes(client: EmbeddingClient) -> int:
    return sum(int(s["bytes_sent"]) + int(s["bytes_received"]) for s in client.stats().values())


def _stable(rates: list[float], stability: float) -> bool:
    if len(rates) < STABLE_WINDOWS:
        return False
    last = rates[-STABLE_WINDOWS:]
    mean = sum(last) / len(last)
    return mean > 0 and all(abs(r - mean) <= stability * mean for r in last)


def scrape(servers: list[Server], encoder: str, timeout: float) -> dict[str, float]:
    """Sums over the servers of each METRIC_SERIES histogram's _sum and _count for ``encoder``."""
    totals = {f"{name}_{part}": 0.0 for name in METRIC_SERIES for part in ("sum", "count")}
    label = f'encoder="{encoder}"'
    for s in servers:
        for line in s.request_text("/metrics", timeout).splitlines():
            name, _, rest = line.partition("{")
            if name in totals and label in rest:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def metrics_row(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """The server-side view of a level from /metrics deltas: batches run, their mean size, compute
    time per batch, and the mean queue wait per request."""
    d = {k: after[k] - before[k] for k in before}
    batches = d["jit_batch_size_count"]
    queued = d["jit_queue_seconds_count"]
    return {
        "metrics_batches": batches,
        "metrics_batch_size": d["jit_batch_size_sum"] / batches if batches else None,
        "metrics_compute_ms_per_batch": 1e3 * d["jit_compute_seconds_sum"] / batches if batches else None,
        "metrics_queue_ms": 1e3 * d["jit_queue_seconds_sum"] / queued if queued else None,
    }


def measure(load: _Load, client: EmbeddingClient, args: argparse.Namespace, servers: list[Server]) -> dict:
    """Runs the warm-up window and the measurement windows on a started load; returns the level's row
    (without its concurrency/rate), with the servers' /metrics over the measured windows."""
    time.sleep(args.window_s)  # warm-up: connections, the server's first batches
    load.recorder.take()
    before = scrape(servers, args.encoder, args.timeout)
    windows = []  # (records, seconds, bytes)
    rates: list[float] = []
    b0, t0 = _bytes(client), time.perf_counter()
    while len(windows) < args.max_windows:
        time.sleep(args.window_s)
        records = load.recorder.take()
        b1, t1 = _bytes(client), time.perf_counter()
        windows.append((records, t1 - t0, b1 - b0))
        rates.append(sum(r is not None for r in records) / (t1 - t0))
        b0, t0 = b1, t1
        if _stable(rates, args.stability):
            break
    row = summarize(windows[-STABLE_WINDOWS:], len(windows), _stable(rates, args.stability), args.batch)
    row.update(metrics_row(before, scrape(servers, args.encoder, args.timeout)))
    return row


def summarize(windows: list, n_windows: int, stable: bool, batch: int) -> dict:
    records = [r for w in windows for r in w[0]]
    ok = np.array([r for r in records if r is not None], dtype=np.float64).reshape(-1, 8)
    seconds = sum(w[1] for w in windows)
    row: dict[str, Any] = {
        "requests": int(len(ok)),
        "errors": int(len(records) - len(ok)),
        "windows": n_windows,
        "stable": stable,
        "duration_s": round(seconds, 3),
        "requests_per_s": len(ok) / seconds,
        "samples_per_s": len(ok) * batch / seconds,
        "mb_per_s": sum(w[2] for w in windows) / seconds / 1e6,
    }
    if len(ok):
        lat = ok[:, 0] * 1e3
        for q in (50, 90, 95, 99):
            row[f"p{q}_ms"] = float(np.percentile(lat, q))
        server_s = ok[:, 4] + ok[:, 5] + ok[:, 6]
        row.update(
            server_queue_ms=float(ok[:, 4].mean() * 1e3),
            server_compute_ms=float(ok[:, 5].mean() * 1e3),
            server_serialize_ms=float(ok[:, 6].mean() * 1e3),
            server_batch_size=float(ok[:, 7].mean()),
            batch_formation_ms=float(ok[:, 4].mean() * 1e3),
            client_encode_ms=float(ok[:, 1].mean() * 1e3),
            client_network_server_ms=float(np.maximum(ok[:, 2] - server_s, 0).mean() * 1e3),
            client_decode_ms=float(ok[:, 3].mean() * 1e3),
        )
    return row


# ---------------------------------------------------------------------------------------------------
# Output


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_rows(rows: list[dict], mode: str) -> str:
    level = "conc" if mode == "closed" else "rate/s"
    key = "concurrency" if mode == "closed" else "rate"
    main = [level, "req/s", "samples/s", "MB/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "errors", "stable"]
    split = [level, "queue", "compute", "serialize", "batch", "encode", "net+server", "decode"]
    lines = text_table(
        main,
        [
            [_fmt(r[key], 1 if mode == "open" else 0)]
            + [_fmt(r.get(k)) for k in ("requests_per_s", "samples_per_s", "mb_per_s")]
            + [_fmt(r.get(f"p{q}_ms")) for q in (50, 90, 95, 99)]
            + [_fmt(r["errors"]), _fmt(r["stable"]) + f" ({r['windows']})"]
            for r in rows
        ],
        left=0,
    )
    lines += ["", "breakdown, mean ms per request (server: queue = batch formation; batch = samples per batch)"]
    lines += text_table(
        split,
        [
            [_fmt(r[key], 1 if mode == "open" else 0)]
            + [
                _fmt(r.get(k))
                for k in (
                    "server_queue_ms",
                    "server_compute_ms",
                    "server_serialize_ms",
                    "server_batch_size",
                    "client_encode_ms",
                    "client_network_server_ms",
                    "client_decode_ms",
                )
            ]
            for r in rows
        ],
        left=0,
    )
    lines += ["", "server /metrics over the measured windows (all servers)"]
    lines += text_table(
        [level, "batches", "batch size", "compute ms/batch", "queue ms"],
        [
            [_fmt(r[key], 1 if mode == "open" else 0)]
            + [
                _fmt(r.get(k), d)
                for k, d in (
                    ("metrics_batches", 0),
                    ("metrics_batch_size", 2),
                    ("metrics_compute_ms_per_batch", 2),
                    ("metrics_queue_ms", 2),
                )
            ]
            for r in rows
        ],
        left=0,
    )
    return "\n".join(lines)


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})


def write_plot(path: str, rows: list[dict], mode: str, encoder: str) -> bool:
    """Throughput against p99 latency, one point per level; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = [r for r in rows if r.get("p99_ms") is not None]
    key = "concurrency" if mode == "closed" else "rate"
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["p99_ms"] for r in points], [r["samples_per_s"] for r in points], marker="o")
    for r in points:
        ax.annotate(f"{r[key]:g}", (r["p99_ms"], r["samples_per_s"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("samples/s")
    ax.set_title(f"{encoder}: throughput vs p99 ({'concurrency' if mode == 'closed' else 'requests/s'} labelled)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------------
# The command


def dataset_inputs(dataset_target: str, prep_target: str, spec: dict, batch: int) -> list[dict]:
    """Request inputs from the user's own samples: ``prep(dataset[i])`` gives one sample's inputs
    without a batch dimension (as a JITEmbeddingDataset field's prep does); ``batch`` consecutive
    samples make a request, token inputs (a ``seq_dim`` in the spec) right-padded with their
    pad_value to the longest. Up to INPUT_SETS requests' worth, cycled during the run."""
    dataset = call_factory(dataset_target, "--dataset")
    prep = import_target(prep_target, "--prep")
    if not callable(prep):
        raise CommandError(f"--prep '{prep_target}' is not callable", EXIT_USAGE)
    try:
        n = len(dataset)
    except TypeError:
        raise CommandError(
            f"--dataset '{dataset_target}' has no len(): a map-style dataset is needed", EXIT_USAGE
        ) from None
    if n < batch:
        raise CommandError(f"--dataset '{dataset_target}' has {n} samples, fewer than --batch {batch}", EXIT_USAGE)
    seq = {t["name"]: (int(t["seq_dim"]), int(t.get("pad_value", 0))) for t in spec["inputs"] if t.get("seq_dim")}
    sets = []
    for start in range(0, min(n, batch * INPUT_SETS) - batch + 1, batch):
        try:
            samples = [
                {k: torch.as_tensor(v) for k, v in prep(dataset[i]).items()} for i in range(start, start + batch)
            ]
        except Exception as e:
            raise CommandError(
                f"--prep on samples {start}..{start + batch - 1}: {type(e).__name__}: {first_line(e)}"
            ) from None
        inputs = {}
        for name in samples[0]:
            parts = [s[name].unsqueeze(0) for s in samples]
            if name in seq:
                dim, pad = seq[name]
                longest = max(p.shape[dim] for p in parts)
                padded = []
                for p in parts:
                    if p.shape[dim] < longest:
                        shape = list(p.shape)
                        shape[dim] = longest - p.shape[dim]
                        p = torch.cat([p, torch.full(shape, pad, dtype=p.dtype)], dim=dim)
                    padded.append(p)
                parts = padded
            try:
                inputs[name] = torch.cat(parts)
            except RuntimeError as e:
                raise CommandError(
                    f"--prep gives '{name}' of different shapes across samples: {first_line(e)}"
                ) from None
        sets.append(inputs)
    return sets


def _encoder_spec(servers: list[Server], encoder: str, timeout: float) -> dict:
    """The encoder's entry of GET /v1/encoders; every server must serve it."""
    spec = None
    for s in servers:
        listed = s.request_json("GET", "/v1/encoders", timeout=timeout).get("encoders", [])
        found = {e.get("name"): e for e in listed}
        if encoder not in found:
            served = ", ".join(sorted(str(n) for n in found)) or "none"
            raise CommandError(f"encoder '{encoder}' is not served at {s.url} (served: {served})")
        spec = spec or found[encoder]
    return spec


def run(args: argparse.Namespace) -> int:
    servers = _check_args(args)
    mode = "open" if args.rate is not None else "closed"
    if mode == "open":
        levels = parse_levels(args.rate, "--rate", integer=False)
    else:
        levels = parse_levels(args.concurrency or "1:64:x2", "--concurrency", integer=True)
    spec = _encoder_spec(servers, args.encoder, args.timeout)
    max_batch = int((spec.get("batching") or {}).get("max_batch_size") or 0)
    if max_batch and args.batch > max_batch:
        raise CommandError(f"--batch {args.batch} is above '{args.encoder}''s max_batch_size {max_batch}", EXIT_USAGE)
    if args.dataset:
        input_sets = dataset_inputs(args.dataset, args.prep, spec, args.batch)
    else:
        gen = torch.Generator().manual_seed(args.seed)
        input_sets = [synthetic_inputs(spec, args.batch, args.seq_len, args.vocab, gen) for _ in range(INPUT_SETS)]
    workers = OPEN_LOOP_WORKERS if mode == "open" else max(16, int(max(levels)))
    client = EmbeddingClient(
        [s.endpoint for s in servers],
        timeout=args.timeout,
        retries=0,  # a retried request would hide a failure and stretch its latency
        workers=workers,
        max_connections_per_endpoint=max(64, workers),
    )
    meta = {"cache": args.cache}
    # One probe request: a spec the synthetic inputs do not satisfy fails here, with the server's word.
    try:
        client.submit_frame(args.encoder, codec.encode(input_sets[0], meta=meta)).result(args.timeout)
    except (ClientError, TimeoutError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CommandError(f"the probe request failed: {first}") from None

    shapes = ", ".join(f"{n} {list(v.shape)} {str(v.dtype).replace('torch.', '')}" for n, v in input_sets[0].items())
    how = f"concurrency {args.concurrency or '1:64:x2'}" if mode == "closed" else f"{args.arrivals} rate {args.rate}/s"
    print(f"bench '{args.encoder}' at {', '.join(s.url for s in servers)}: {how}, cache {args.cache}")
    print(f"inputs: {shapes}")
    print(
        f"windows of {args.window_s:g} s (one warm-up), at most {args.max_windows}, stable within {args.stability:.0%}"
    )
    sys.stdout.flush()

    rows: list[dict] = []
    note = None
    first_error = None
    profiling = False
    profiler = None
    try:
        for level in levels:
            load = _Load(client, args.encoder, input_sets, meta, args.timeout)
            if mode == "closed":
                load.start_closed(int(level))
            else:
                load.start_open(float(level), args.arrivals, args.seed)
            if args.profile and profiler is None:
                profiler = _Profiler(servers[0], args.profile_ms, args.window_s, args.timeout)
                profiling = True
            try:
                measured = measure(load, client, args, servers)
            finally:
                if profiling:
                    profiling = False
                    profiler.wait(cancel=sys.exc_info()[0] is not None)  # under load until the capture ends
                load.stop()
            row = {"concurrency": int(level) if mode == "closed" else None, "rate": level if mode == "open" else None}
            row.update(measured)
            rows.append(row)
            first_error = first_error or load.recorder.first_error
            label = f"concurrency {int(level)}" if mode == "closed" else f"rate {level:g}/s"
            if not row["requests"]:
                note = f"every request failed at {label}: {load.recorder.first_error or 'no answer in time'}"
                break
            if args.latency_threshold_ms is not None and row["p99_ms"] > args.latency_threshold_ms:
                note = f"stopped: p99 {row['p99_ms']:.2f} ms is over {args.latency_threshold_ms:g} ms at {label}"
                break
    except KeyboardInterrupt:
        note = "interrupted"
    print()
    if rows:
        print(format_rows(rows, mode))
    errors = sum(r["errors"] for r in rows)
    if errors and first_error:
        print(f"\n{errors} requests failed; the first: {first_error}")
    if note:
        print(f"\n{note}")
    report = {
        "encoder": args.encoder,
        "servers": [s.url for s in servers],
        "mode": mode,
        "arrivals": args.arrivals if mode == "open" else None,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "cache": args.cache,
        "inputs": {
            n: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for n, v in input_sets[0].items()
        },
        "window_s": args.window_s,
        "max_windows": args.max_windows,
        "stability": args.stability,
        "latency_threshold_ms": args.latency_threshold_ms,
        "note": note,
        "rows": [{k: r.get(k) for k in FIELDS} for r in rows],
    }
    if args.csv:
        write_csv(args.csv, rows)
        print(f"wrote {args.csv}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        if write_plot(args.plot, rows, mode, args.encoder):
            print(f"wrote {args.plot}")
        else:
            print(f"note: matplotlib is not installed, so no plot was written to {args.plot}")
    profile_error = None
    if profiler is not None and profiler.trace is not None:
        print(write_profile(args.profile, profiler.trace))
    elif profiler is not None and note != "interrupted":
        profile_error = f"--profile: no trace from {servers[0].url}: {profiler.error or 'the capture was skipped'}"
    if note == "interrupted":
        print("jit-embedding bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if note and note.startswith("every"):
        print(f"jit-embedding bench: {note}", file=sys.stderr)
        return EXIT_FAILED
    if profile_error:
        print(f"jit-embedding bench: {profile_error}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except CommandError as e:
        print(f"jit-embedding bench: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print("jit-embedding bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def add_parser(sub: Any) -> None:
    """Adds ``bench`` to the ``jit-embedding`` subcommands."""
    p = sub.add_parser(
        "bench",
        help="load-test a deployment: throughput and latency by concurrency or request rate",
        description="Send synthetic requests to the servers and report throughput, latency percentiles and"
        " where the time goes, per concurrency level (closed loop) or request rate (open loop); docs/bench.md.",
    )
    p.add_argument("--server", required=True, action="append", metavar="URL", help="host:port (repeatable)")
    p.add_argument("--encoder", required=True, help="the encoder to load")
    p.add_argument(
        "--concurrency",
        metavar="LEVELS",
        help="requests in flight: N, or a sweep start:end[:xF|:+K] (default 1:64:x2)",
    )
    p.add_argument(
        "--rate", metavar="LEVELS", help="open loop instead: requests/s, N or start:end[:xF|:+K] (default: none)"
    )
    p.add_argument(
        "--arrivals", choices=("constant", "poisson"), default="constant", help="open-loop spacing (default constant)"
    )
    p.add_argument("--batch", type=int, default=1, help="samples per request (default 1)")
    p.add_argument(
        "--dataset",
        metavar="MODULE:FACTORY",
        help="send the user's own samples instead of synthetic ones: a function returning a map-style dataset",
    )
    p.add_argument(
        "--prep", metavar="MODULE:FN", help="with --dataset: sample -> the encoder's inputs for that one sample"
    )
    p.add_argument("--seq-len", type=int, default=128, help="length of the other dynamic dims (default 128)")
    p.add_argument("--vocab", type=int, default=1000, help="integer token ids are drawn from [1, vocab) (default 1000)")
    p.add_argument("--window-s", type=float, default=2.0, help="seconds per measurement window (default 2)")
    p.add_argument("--max-windows", type=int, default=10, help="measurement windows per level at most (default 10)")
    p.add_argument(
        "--stability",
        type=float,
        default=0.10,
        help="stable: the last 3 windows' throughput within this fraction of their mean (default 0.10)",
    )
    p.add_argument(
        "--latency-threshold-ms", type=float, help="stop the sweep after a level whose p99 is over this (default: none)"
    )
    p.add_argument("--cache", choices=CACHE_MODES, default="bypass", help="the requests' cache mode (default bypass)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs and of the poisson gaps (default 0)")
    p.add_argument("--csv", metavar="PATH", help="write one row per level as CSV (default: none)")
    p.add_argument("--json", metavar="PATH", help="write the settings and rows as JSON (default: none)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of throughput vs p99 latency (needs matplotlib)")
    p.add_argument(
        "--profile",
        metavar="PATH",
        help="during the first level, capture a Chrome trace of the first server's pipeline (GET /v1/trace)"
        " and write it here (default: none)",
    )
    p.add_argument(
        "--profile-ms", type=int, default=2000, help="length of the --profile capture in ms, 1 to 60000 (default 2000)"
    )
    p.set_defaults(func=_run)
