"""jit-embedding-server offered 4x its capacity (issue 8, "Overload"): what the excess gets, what the
accepted requests get, how much memory the server takes, and how fast it is back to full speed.

  1. capacity   a closed loop (C connections, each sending its next request when the last is answered)
                on a compute-bound encoder: requests answered per second. C x samples per request stays
                within max_queue_size, so the closed loop itself never sees a 429.
  2. overload   an open loop at factor x capacity for --duration seconds: request k leaves at
                t0 + k / rate whether or not earlier ones were answered (up to --connections at once),
                over raw HTTP, so no client retry hides a 429. Every answer is checked: 200 with
                outputs equal to the encoder run locally on that request's inputs, or 429 with
                Retry-After. Anything else (another status, a socket error, a wrong output) is counted.
  3. recovery   the moment the open loop's last request is answered, the closed loop of step 1 again:
                the time until its throughput over a sliding --window reaches --recover-fraction of
                the capacity.

The server's peak RSS (VmHWM) is read before and after, and checked against a bound derived from the
settings: the peak after step 1, plus twice what the queue and the connections can hold (queued
samples x bytes per sample, connections x request and response bytes), plus 512 KiB per connection
(stack and allocator) and 64 MiB. Nothing here asserts a timing: the script prints PASS/MISS for the
issue's targets (429 + Retry-After for the excess, nothing lost or wrong, bounded RSS, recovery within
5 s) and exits 1 only when an answer was wrong or the server died.

The encoder (`Work`, below) is a seeded tanh MLP, exported as TorchScript into build/bench/artifacts/ and
served with one instance on one intra-op thread, so that the load generator (Python threads, the other
core) does not take the server's core. tests/python/test_overload.py runs the same steps for 15 s.

    python3 benchmarks/overload.py [--duration 60] [--factor 4] [--json PATH]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import itertools
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from bench_common import (  # benchmarks/, the script's folder, is on sys.path
    ARTIFACTS,
    BENCH_DIR,
    SERVER_CANDIDATES,
    artifact_folder,
    find_binary,
    load_module,
    print_table,
    proc_status_kib,
)
from torch import nn

from jit_embedding import codec

ENCODER = "work"
WIDTH = 1024  # input and output features per sample (4 KiB of float32 each)
DEPTH = 32  # tanh(x @ W) applications per sample: about 1 ms of one core per sample
SAMPLES_PER_REQUEST = 16
MAX_BATCH = 32
MAX_QUEUE = 128  # samples; the 429 threshold
SERVER_THREADS = 256  # one per keep-alive connection; above --connections
HTTP_TIMEOUT_S = 60.0
LATE_S = 0.05  # an open-loop send this far behind its schedule counts as late
RTOL, ATOL = 1e-4, 1e-5
TARGET_RECOVERY_S = 5.0


# ---------------------------------------------------------------------------------------------- encoder
class Work(nn.Module):
    """y = tanh(... tanh(x @ W) ... @ W), `depth` times, with one seeded [width, width] W: compute-bound
    (depth x width^2 multiply-adds per sample) with small weights."""

    def __init__(self, width: int, depth: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(width, width, generator=gen) / width**0.5)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.depth):
            x = torch.tanh(x @ self.weight)
        return x


def work_factory(width: int, depth: int):
    """An `export --module` factory for Work(width, depth): x [batch, width] -> y [batch, width]."""

    def factory(checkpoint: str | None, dtype: torch.dtype) -> tuple[nn.Module, dict[str, Any]]:
        spec = {
            "inputs": [{"name": "x", "dtype": "float32", "dims": ["batch", width]}],
            "outputs": [{"name": "y", "dtype": "float32", "dims": ["batch", width]}],
        }
        return Work(width, depth).to(dtype), spec

    return factory


def export_module(name: str, factory, options: list, sources: list, max_batch: int, root: Path = ARTIFACTS) -> Path:
    """`root`/<name>-<digest>: `factory` (an `export --module` factory) exported as TorchScript (seconds), reused
    while the digest of `options`, torch's version, the source of `sources` and of the exporter is unchanged."""
    from jit_embedding.export import export

    folder = artifact_folder(name, [name, options, max_batch, torch.__version__], sources, root)
    if not (folder / "manifest.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        export("module", None, folder, module=factory, format="torchscript", max_batch_size=max_batch, name=name)
    return folder


def export_work(width: int = WIDTH, depth: int = DEPTH, max_batch: int = MAX_BATCH, root: Path = ARTIFACTS) -> Path:
    """Work(width, depth) exported (export_module) as the encoder ENCODER."""
    return export_module(ENCODER, work_factory(width, depth), [width, depth], [Work], max_batch, root)


def encoder_entry(artifact: Path, max_queue: int = MAX_QUEUE, max_batch: int = MAX_BATCH) -> dict[str, Any]:
    """The config entry: one instance on one intra-op thread (the other core is the load generator's)."""
    return {
        "name": ENCODER,
        "artifact": str(artifact),
        "max_batch_size": max_batch,
        "max_queue_delay_us": 2000,
        "max_queue_size": max_queue,
        "instances": 1,
        "intra_op_threads": 1,
    }


@dataclass
class Workload:
    """Distinct request frames and the outputs the encoder gives for each, computed locally."""

    frames: list[bytes]
    expected: list[torch.Tensor]
    samples_per_request: int
    sample_bytes: int  # input plus output bytes of one sample

    @classmethod
    def make(cls, n: int, samples: int = SAMPLES_PER_REQUEST, width: int = WIDTH, depth: int = DEPTH) -> Workload:
        module = Work(width, depth).eval()
        gen = torch.Generator().manual_seed(1)
        frames, expected = [], []
        with torch.no_grad():
            for _ in range(n):
                x = torch.randn(samples, width, generator=gen)
                frames.append(codec.encode({"x": x}))
                expected.append(module(x))
        return cls(frames, expected, samples, 2 * width * 4)

    def check(self, i: int, body: bytes) -> str | None:
        """None when `body` is the right answer to request i; otherwise what is wrong with it."""
        try:
            outputs, _meta = codec.decode(body)
        except Exception as e:  # noqa: BLE001 (any decode failure is a wrong answer, reported)
            return f"request {i}: undecodable answer: {e}"
        y = outputs.get("y")
        if y is None or y.shape != self.expected[i].shape:
            return f"request {i}: outputs {sorted(outputs)} of shape {None if y is None else tuple(y.shape)}"
        if not torch.allclose(y, self.expected[i], rtol=RTOL, atol=ATOL):
            return f"request {i}: max abs difference {(y - self.expected[i]).abs().max().item():.3g}"
        return None


# ---------------------------------------------------------------------------------------------- load
@dataclass
class Tally:
    """What a set of requests got."""

    sent: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    transport: collections.Counter = field(default_factory=collections.Counter)  # socket errors by type
    no_retry_after: int = 0  # 429s without a Retry-After of whole seconds
    wrong: list[str] = field(default_factory=list)  # 200s whose outputs were not the expected ones
    late: int = 0  # open loop: sends more than LATE_S behind schedule
    ok_latency_s: list[float] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.sent += other.sent
        self.statuses.update(other.statuses)
        self.transport.update(other.transport)
        self.no_retry_after += other.no_retry_after
        self.wrong += other.wrong
        self.late += other.late
        self.ok_latency_s += other.ok_latency_s

    @property
    def unexpected(self) -> int:
        """Answers that are neither a correct 200 nor a 429 with Retry-After."""
        other = sum(n for s, n in self.statuses.items() if s not in (200, 429))
        return other + sum(self.transport.values()) + self.no_retry_after + len(self.wrong)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.ok_latency_s)
        pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3, 2)) if lat else (lambda q: None)
        return {
            "sent": self.sent,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "transport_errors": dict(self.transport),
            "429_without_retry_after": self.no_retry_after,
            "wrong_outputs": len(self.wrong),
            "wrong_examples": self.wrong[:5],
            "late_sends": self.late,
            "ok_p50_ms": pct(0.5),
            "ok_p99_ms": pct(0.99),
        }


class Connection:
    """One keep-alive HTTP connection; reopened when the server closed it."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes) -> tuple[int, str | None, bytes]:
        """(status, Retry-After, body). A request on a reused connection that the server had closed is
        sent once more on a fresh one; any other socket error raises."""
        for attempt in range(2):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT_S)
            try:
                self.conn.request("POST", path, body=body, headers={"Content-Type": "application/octet-stream"})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, resp.getheader("Retry-After"), data
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt or not reused:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _send(conn: Connection, work: Workload, i: int, tally: Tally, t_done: list[float] | None = None) -> None:
    """Sends request i, records its answer in `tally` (and its completion time in t_done when 200)."""
    tally.sent += 1
    t0 = time.perf_counter()
    try:
        status, retry_after, body = conn.post(f"/v1/encode/{ENCODER}", work.frames[i])
    except (OSError, http.client.HTTPException) as e:
        tally.transport[type(e).__name__] += 1
        return
    t1 = time.perf_counter()
    tally.statuses[status] += 1
    if status == 429 and not (retry_after or "").strip().isdigit():
        tally.no_retry_after += 1
    if status == 200:
        wrong = work.check(i, body)
        if wrong:
            tally.wrong.append(wrong)
        else:
            tally.ok_latency_s.append(t1 - t0)
            if t_done is not None:
                t_done.append(t1)


def _run_threads(n: int, target) -> list[Tally]:
    results: list[Tally] = [Tally() for _ in range(n)]
    threads = [threading.Thread(target=target, args=(results[j],), daemon=True) for j in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def closed_loop(port: int, work: Workload, concurrency: int, seconds: float) -> tuple[Tally, float]:
    """`concurrency` connections sending back to back for `seconds`: (tally, correct 200s per second
    completed inside the window)."""
    start = time.perf_counter()
    end = start + seconds
    counter = itertools.count()
    done: list[float] = []

    def worker(tally: Tally) -> None:
        conn = Connection(port)
        while time.perf_counter() < end:
            _send(conn, work, next(counter) % len(work.frames), tally, done)
        conn.close()

    total = Tally()
    for t in _run_threads(concurrency, worker):
        total.add(t)
    return total, sum(1 for t in done if t <= end) / seconds


def open_loop(port: int, work: Workload, rate: float, seconds: float, connections: int) -> tuple[Tally, float]:
    """Request k leaves at t0 + k / rate for `seconds`, on up to `connections` at once. Returns the tally
    and the time (perf_counter) when the last answer came in."""
    t0 = time.perf_counter() + 0.05
    total_requests = int(rate * seconds)
    counter = itertools.count()

    def worker(tally: Tally) -> None:
        conn = Connection(port)
        while (k := next(counter)) < total_requests:
            delay = t0 + k / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif -delay > LATE_S:
                tally.late += 1
            _send(conn, work, k % len(work.frames), tally)
        conn.close()

    total = Tally()
    for t in _run_threads(connections, worker):
        total.add(t)
    return total, time.perf_counter()


def recovery(
    port: int, work: Workload, concurrency: int, target_per_s: float, window: float, limit: float, t_stop: float
) -> tuple[float | None, Tally]:
    """Runs the closed loop from now until its correct answers over the last `window` seconds reach
    `target_per_s` (or `limit` seconds pass). Returns (seconds from `t_stop` to the start of that
    window, or None if it never came; the tally)."""
    done: list[float] = []
    stop = threading.Event()
    counter = itertools.count()
    start = time.perf_counter()
    found: list[float] = []

    def worker(tally: Tally) -> None:
        conn = Connection(port)
        while not stop.is_set():
            _send(conn, work, next(counter) % len(work.frames), tally, done)
        conn.close()

    def monitor() -> None:
        while time.perf_counter() - start < limit:
            time.sleep(0.05)
            now = time.perf_counter()
            if now - start < window:
                continue
            if sum(1 for t in list(done) if t > now - window) >= target_per_s * window:
                found.append(max(0.0, now - window - t_stop))
                break
        stop.set()

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    total = Tally()
    for t in _run_threads(concurrency, worker):
        total.add(t)
    watcher.join()
    return (found[0] if found else None), total


# ---------------------------------------------------------------------------------------------- memory
def rss_bound_kib(base_hwm_kib: int, work: Workload, max_queue: int, connections: int) -> int:
    """The most the server may hold at the peak of an overload: see the module docstring."""
    request = len(work.frames[0])
    response = work.samples_per_request * work.sample_bytes // 2 + 4096
    held = max_queue * work.sample_bytes + connections * (request + response)
    return base_hwm_kib + (2 * held + connections * (512 << 10) + (64 << 20)) // 1024


# ---------------------------------------------------------------------------------------------- the run
def http_counts(metrics_text: str) -> collections.Counter:
    """jit_http_requests_total{path="/v1/encode/{encoder}"} by code."""
    out: collections.Counter = collections.Counter()
    for line in metrics_text.splitlines():
        if line.startswith("jit_http_requests_total{") and 'path="/v1/encode/{encoder}"' in line:
            code = line.split('code="', 1)[1].split('"', 1)[0]
            out[int(code)] += int(float(line.rsplit(" ", 1)[1]))
    return out


def run(
    binary: Path,
    artifact: Path,
    log: Path,
    *,
    duration: float = 60.0,
    factor: float = 4.0,
    capacity_s: float = 10.0,
    warmup_s: float = 2.0,
    concurrency: int = 4,
    connections: int = 128,
    window: float = 1.0,
    recover_fraction: float = 0.8,
    recover_limit: float = 30.0,
) -> dict[str, Any]:
    """Steps 1-3 of the module docstring against a server it starts (and stops with SIGTERM) on
    `artifact`. Returns every number, the tallies, and the server's exit code."""
    bench_server = load_module("jit_bench_server", Path(__file__).with_name("server.py"))
    work = Workload.make(64)
    if concurrency * work.samples_per_request > MAX_QUEUE:
        raise ValueError(f"concurrency {concurrency} x {work.samples_per_request} samples exceeds the queue")
    config = {
        "server": {"threads": SERVER_THREADS, "drain_grace_ms": 30000},
        "encoders": [encoder_entry(artifact)],
        "cache": {"enabled": False},  # every request computes: the capacity is the encoder's
    }
    result: dict[str, Any] = {"duration_s": duration, "factor": factor, "connections": connections}
    server = bench_server.Server(binary, config, log)
    try:
        pid, port = server.proc.pid, server.port
        closed_loop(port, work, concurrency, warmup_s)
        cap_tally, capacity = closed_loop(port, work, concurrency, capacity_s)
        base = proc_status_kib(pid)
        before = http_counts(server.metrics())

        rate = factor * capacity
        t_start = time.perf_counter()
        over, t_stop = open_loop(port, work, rate, duration, connections)
        during = http_counts(server.metrics())
        rec_s, rec_tally = recovery(port, work, concurrency, recover_fraction * capacity, window, recover_limit, t_stop)
        after = proc_status_kib(pid)
        ready = bench_server.http_get(port, "/health/ready")[0]
        result.update(
            capacity_req_per_s=capacity,
            capacity_samples_per_s=capacity * work.samples_per_request,
            offered_req_per_s=rate,
            achieved_offered_req_per_s=over.sent / max(1e-9, t_stop - t_start),
            open_loop=over.summary(),
            closed_loop=cap_tally.summary(),
            recovery_tally=rec_tally.summary(),
            fraction_429=over.statuses[429] / max(1, over.sent),
            accepted_req_per_s=over.statuses[200] / max(1e-9, t_stop - t_start),
            server_counts={str(k): v - before[k] for k, v in during.items() if v - before[k]},
            rss_base_kib=base["VmRSS"],
            hwm_base_kib=base["VmHWM"],
            hwm_peak_kib=after["VmHWM"],
            rss_after_kib=after["VmRSS"],
            rss_bound_kib=rss_bound_kib(base["VmHWM"], work, MAX_QUEUE, connections),
            recovery_s=rec_s,
            recover_fraction=recover_fraction,
            window_s=window,
            alive_after=server.proc.poll() is None,
            ready_after=ready,
            unexpected=over.unexpected + cap_tally.unexpected + rec_tally.unexpected,
            wrong_outputs=len(over.wrong) + len(cap_tally.wrong) + len(rec_tally.wrong),
            accepted_correct=over.statuses[200] - len(over.wrong),
        )
    finally:
        server.stop()
    result["exit_code"] = server.proc.returncode
    return result


def report(r: dict[str, Any]) -> bool:
    """Prints the table; returns whether every target was met."""
    ol = r["open_loop"]
    mib = lambda kib: f"{kib / 1024:.0f} MiB"  # noqa: E731
    rec = "never" if r["recovery_s"] is None else f"{r['recovery_s']:.2f} s"
    rows = [
        [
            "capacity (closed loop)",
            f"{r['capacity_req_per_s']:.1f} req/s ({r['capacity_samples_per_s']:.0f} samples/s)",
        ],
        ["offered (open loop)", f"{r['offered_req_per_s']:.1f} req/s x {r['duration_s']:.0f} s ({r['factor']:g}x)"],
        ["achieved offered rate", f"{r['achieved_offered_req_per_s']:.1f} req/s ({ol['late_sends']} sends late)"],
        ["answers by status", ", ".join(f"{k}: {v}" for k, v in ol["statuses"].items()) or "none"],
        ["429 fraction", f"{r['fraction_429']:.3f}"],
        ["accepted during overload", f"{r['accepted_req_per_s']:.1f} req/s"],
        ["429 without Retry-After", str(ol["429_without_retry_after"])],
        ["accepted and correct", f"{r['accepted_correct']} of {ol['statuses'].get('200', 0)}"],
        ["other answers, socket errors", f"{r['unexpected']}"],
        ["accepted p50 / p99", f"{ol['ok_p50_ms']} / {ol['ok_p99_ms']} ms"],
        ["peak RSS before / after", f"{mib(r['hwm_base_kib'])} / {mib(r['hwm_peak_kib'])}"],
        ["RSS bound from settings", mib(r["rss_bound_kib"])],
        [f"recovery to {r['recover_fraction']:.0%} of capacity", rec],
        ["server after", f"alive {r['alive_after']}, ready {r['ready_after']}, exit code {r['exit_code']}"],
    ]
    print_table("Overload", ["measure", "value"], rows)
    targets = {
        "excess answered 429 + Retry-After": r["fraction_429"] > 0 and ol["429_without_retry_after"] == 0,
        "every accepted request correct, nothing else": r["unexpected"] == 0,
        "peak RSS within the bound": r["hwm_peak_kib"] <= r["rss_bound_kib"],
        f"recovery within {TARGET_RECOVERY_S:g} s": r["recovery_s"] is not None
        and r["recovery_s"] <= TARGET_RECOVERY_S,
        "no crash, clean drain": r["alive_after"] and r["ready_after"] == 200 and r["exit_code"] == 0,
    }
    print_table("Targets", ["target", "result"], [[k, "PASS" if v else "MISS"] for k, v in targets.items()])
    return all(targets.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of overload (default 60)")
    ap.add_argument("--factor", type=float, default=4.0, help="offered rate / capacity (default 4)")
    ap.add_argument("--capacity-seconds", type=float, default=10.0, help="closed-loop measurement (default 10)")
    ap.add_argument("--connections", type=int, default=128, help="open-loop requests in flight at most")
    ap.add_argument("--window", type=float, default=1.0, help="recovery throughput window, seconds")
    ap.add_argument("--recover-fraction", type=float, default=0.8, help="of capacity, to count as recovered")
    ap.add_argument("--json", type=Path, default=BENCH_DIR / "overload.json")
    args = ap.parse_args()
    binary = find_binary("JIT_SERVER_BINARY", SERVER_CANDIDATES, "run `make build`")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    artifact = export_work()
    r = run(
        binary,
        artifact,
        BENCH_DIR / "overload-server.log",
        duration=args.duration,
        factor=args.factor,
        capacity_s=args.capacity_seconds,
        connections=args.connections,
        window=args.window,
        recover_fraction=args.recover_fraction,
    )
    met = report(r)
    args.json.write_text(json.dumps(r, indent=2))
    print(json.dumps({"benchmark": "overload", "targets_met": met, **{k: v for k, v in r.items() if "tally" not in k}}))
    if r["wrong_outputs"] or not r["alive_after"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
