"""jit-embedding-server under steady load for a long time (issue 8, "Soak"): 64 concurrent clients for 10
minutes, zero errors, and the server's RSS growing by less than 10% after warm-up.

The clients are --processes processes (forked) of --threads threads each, every thread a closed loop on
the process's EmbeddingClient (the library a training job uses: pooled connections, retries). Each
iteration picks one of three requests, as a DataLoader mix would:

  many-work     EmbeddingClient.encode_many("work", 8 samples): cache-first (digests, then the misses)
  many-tokens   encode_many("tokens", 8 token sequences of 1-16 ids): padded, cut back, cache-first
  encode-work   EmbeddingClient.encode("work", [4, width]): inputs sent at once, served from the cache
                row by row where it can

Each sample is drawn from a hot set (--hot ids, so repeated: cache hits once computed) with probability
--hot-fraction, else it is new (a miss). The server's memory cache (--cache-mb) is smaller than what the
run stores, so its LRU evicts all along. Every answer is compared with the encoders run locally on the
same inputs; an error is an exception, a wrong output or a wrong shape.

Reported: errors (the target is 0), the samples by source, the server's RSS after warm-up (the first
--warmup seconds) and at the end, the growth in % (target < 10), and requests and samples per second in
each --report-every window. The encoders are benchmarks/overload.py's Work (tanh MLP, width 256, depth
8) and Tokens (an embedding table) below, exported as TorchScript into build/bench/artifacts/.

    python3 benchmarks/soak.py [--duration 600] [--processes 4 --threads 16] [--json PATH]
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import random
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from bench_common import (  # benchmarks/ is on sys.path
    BENCH_DIR,
    SERVER_CANDIDATES,
    find_binary,
    load_module,
    print_table,
    proc_status_kib,
)
from torch import nn

bench_overload = load_module("jit_bench_overload", Path(__file__).with_name("overload.py"))
bench_server = load_module("jit_bench_server", Path(__file__).with_name("server.py"))

WORK_WIDTH, WORK_DEPTH = 256, 8
VOCAB, TOKEN_WIDTH, MAX_TOKENS = 1000, 64, 16
SAMPLES_PER_CALL = 8
ENCODE_ROWS = 4
OPS = (("many-work", 0.45), ("many-tokens", 0.35), ("encode-work", 0.20))
RTOL, ATOL = 1e-4, 1e-5


# ---------------------------------------------------------------------------------------------- encoders
class Tokens(nn.Module):
    """h[b, t] = E[ids[b, t]] and pooled[b] = sum_t h[b, t]; row 0 of E is zero, so right-padding with id 0
    changes neither the kept tokens nor the pooled sum."""

    def __init__(self, vocab: int = VOCAB, width: int = TOKEN_WIDTH, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        table = torch.randn(vocab, width, generator=gen)
        table[0] = 0
        self.table = nn.Parameter(table)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.table[ids]
        return h, h.sum(dim=1)


def tokens_factory(checkpoint: str | None, dtype: torch.dtype) -> tuple[nn.Module, dict[str, Any]]:
    spec = {
        "inputs": [
            {"name": "ids", "dtype": "int64", "dims": ["batch", "seq"], "seq_dim": 1, "example_range": [1, VOCAB]}
        ],
        "outputs": [
            {"name": "h", "dtype": "float32", "dims": ["batch", "seq", TOKEN_WIDTH], "seq_dim": 1},
            {"name": "pooled", "dtype": "float32", "dims": ["batch", TOKEN_WIDTH]},
        ],
        "dynamic_dims": {"seq": [1, 64]},
    }
    return Tokens().to(dtype), spec


def server_config(work: Path, tokens: Path, cache_mb: int) -> dict[str, Any]:
    batching = {"max_batch_size": 32, "max_queue_delay_us": 2000, "max_queue_size": 1024}
    return {
        "server": {"threads": 256},
        "encoders": [
            {"name": "work", "artifact": str(work), **batching},
            {"name": "tokens", "artifact": str(tokens), "length_buckets": [4, 8, 16], **batching},
        ],
        "cache": {"memory_mb": cache_mb},
    }


# ---------------------------------------------------------------------------------------------- clients
def sample_inputs(op: str, sample_id: int) -> dict[str, torch.Tensor]:
    """One sample's inputs, a function of its id (so that any process can check any answer)."""
    gen = torch.Generator().manual_seed(sample_id)
    if op == "many-tokens":
        n = 1 + sample_id % MAX_TOKENS
        return {"ids": torch.randint(1, VOCAB, (1, n), generator=gen)}
    return {"x": torch.randn(1, WORK_WIDTH, generator=gen)}


class Checker:
    """The encoders run locally."""

    def __init__(self) -> None:
        self.work = bench_overload.Work(WORK_WIDTH, WORK_DEPTH).eval()
        self.tokens = Tokens().eval()

    def expected(self, op: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            if op == "many-tokens":
                h, pooled = self.tokens(inputs["ids"])
                return {"h": h, "pooled": pooled}
            return {"y": self.work(inputs["x"])}

    def wrong(self, op: str, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> str | None:
        want = self.expected(op, inputs)
        if set(outputs) != set(want):
            return f"{op}: outputs {sorted(outputs)}, expected {sorted(want)}"
        for name, w in want.items():
            got = outputs[name]
            if got.shape != w.shape or not torch.allclose(got, w, rtol=RTOL, atol=ATOL):
                return f"{op}: output {name} of shape {tuple(got.shape)} differs from the local one {tuple(w.shape)}"
        return None


def client_process(index: int, endpoint: str, threads: int, seconds: float, args: dict, out: Any) -> None:
    """One client process: `threads` closed loops for `seconds`; puts its tallies on `out`."""
    from jit_embedding import EmbeddingClient

    torch.set_num_threads(1)
    client = EmbeddingClient([endpoint], timeout=60.0, retries=5, workers=threads, max_connections_per_endpoint=threads)
    checker = Checker()
    start = time.time()
    buckets = collections.Counter()  # (second, "requests" | "samples") -> count
    sources: collections.Counter = collections.Counter()
    errors: list[str] = []
    error_count = [0]
    lock = threading.Lock()
    ops, weights = zip(*OPS)

    def loop(t: int) -> None:
        rng = random.Random(index * 1000 + t)
        fresh = (1 + index) * 10**9 + t * 10**7
        n = 0
        while time.time() - start < seconds:
            op = rng.choices(ops, weights)[0]
            count = ENCODE_ROWS if op == "encode-work" else SAMPLES_PER_CALL
            ids = []
            for _ in range(count):
                if rng.random() < args["hot_fraction"]:
                    ids.append(rng.randrange(args["hot"]))
                else:
                    n += 1
                    ids.append(fresh + n)
            samples = [sample_inputs(op, i) for i in ids]
            try:
                if op == "encode-work":
                    outputs, _meta = client.encode("work", {"x": torch.cat([s["x"] for s in samples])})
                    got = [{"y": outputs["y"][j : j + 1]} for j in range(count)]
                    where = ["encode"] * count
                else:
                    answers = client.encode_many("work" if op == "many-work" else "tokens", samples)
                    got = [o for o, _ in answers]  # each output [1, ...], cut back to the sample's length
                    where = answers[0][1]["sources"]
                wrong = [w for s, g in zip(samples, got) if (w := checker.wrong(op, s, g))]
            except Exception as e:  # noqa: BLE001 (every failure is an error of the run, counted and kept)
                wrong = [f"{op}: {type(e).__name__}: {e}"]
            second = int(time.time() - start)
            with lock:
                if wrong:
                    error_count[0] += len(wrong)
                    errors.extend(wrong[: max(0, 20 - len(errors))])
                    continue
                buckets[(second, "requests")] += 1
                buckets[(second, "samples")] += count
                sources.update(where)

    workers = [threading.Thread(target=loop, args=(t,), daemon=True) for t in range(threads)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    except BaseException:
        errors.append(traceback.format_exc())
        error_count[0] += 1
    out.put(
        {
            "index": index,
            "buckets": [[s, k, v] for (s, k), v in buckets.items()],
            "sources": dict(sources),
            "errors": errors,
            "error_count": error_count[0],
        }
    )


# ---------------------------------------------------------------------------------------------- the run
def run(binary: Path, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """Starts the server, the clients, samples the server's RSS every --rss-every seconds; returns the
    numbers."""
    work = bench_overload.export_work(WORK_WIDTH, WORK_DEPTH, 32)
    tokens = bench_overload.export_module("tokens", tokens_factory, [VOCAB, TOKEN_WIDTH], [Tokens], 32)
    server = bench_server.Server(binary, server_config(work, tokens, args.cache_mb), log)
    rss: list[tuple[float, int]] = []
    try:
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        params = {"hot": args.hot, "hot_fraction": args.hot_fraction}
        endpoint = f"127.0.0.1:{server.port}"
        procs = [
            ctx.Process(target=client_process, args=(i, endpoint, args.threads, args.duration, params, out))
            for i in range(args.processes)
        ]
        t0 = time.time()
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs) and time.time() - t0 < args.duration + 120:
            rss.append((time.time() - t0, proc_status_kib(server.proc.pid)["VmRSS"]))
            deadline = time.time() + args.rss_every
            while time.time() < deadline and any(p.is_alive() for p in procs):
                time.sleep(0.2)
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        alive = server.proc.poll() is None
        final = proc_status_kib(server.proc.pid)
        metrics = server.metrics()
    finally:
        server.stop()
    return summarize(args, results, rss, final, alive, server.proc.returncode, metrics)


def summarize(args, results, rss, final, alive, exit_code, metrics: str) -> dict[str, Any]:
    buckets: collections.Counter = collections.Counter()
    sources: collections.Counter = collections.Counter()
    errors: list[str] = []
    for r in results:
        for s, k, v in r["buckets"]:
            buckets[(s, k)] += v
        sources.update(r["sources"])
        errors += r["errors"]
    error_count = sum(r["error_count"] for r in results)
    after_warmup = [kib for t, kib in rss if t >= args.warmup]
    base = after_warmup[0] if after_warmup else rss[-1][1]
    end = rss[-1][1]
    windows = []
    for w0 in range(0, int(args.duration), args.report_every):
        secs = range(w0, min(int(args.duration), w0 + args.report_every))
        windows.append(
            {
                "from_s": w0,
                "req_per_s": sum(buckets[(s, "requests")] for s in secs) / len(secs),
                "samples_per_s": sum(buckets[(s, "samples")] for s in secs) / len(secs),
                "rss_mib": max((kib for t, kib in rss if w0 <= t < w0 + args.report_every), default=0) / 1024,
            }
        )
    evictions = sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("jit_cache_evictions_total{")
    )
    return {
        "duration_s": args.duration,
        "clients": args.processes * args.threads,
        "requests": sum(v for (s, k), v in buckets.items() if k == "requests"),
        "samples": sum(v for (s, k), v in buckets.items() if k == "samples"),
        "sources": dict(sources),
        "errors": error_count,
        "error_examples": errors[:10],
        "rss_after_warmup_kib": base,
        "rss_end_kib": end,
        "rss_peak_kib": final["VmHWM"],
        "rss_growth_pct": 100.0 * (end - base) / base,
        "rss_samples": rss,
        "windows": windows,
        "cache_evictions": evictions,
        "alive_after": alive,
        "exit_code": exit_code,
    }


def report(r: dict[str, Any], warmup: float) -> bool:
    rows = [
        [f"{w['from_s']} s", f"{w['req_per_s']:.1f}", f"{w['samples_per_s']:.0f}", f"{w['rss_mib']:.0f}"]
        for w in r["windows"]
    ]
    print_table("Throughput over time", ["window from", "req/s", "samples/s", "server RSS MiB"], rows)
    mib = lambda kib: f"{kib / 1024:.1f} MiB"  # noqa: E731
    rows = [
        ["clients, duration", f"{r['clients']}, {r['duration_s']:.0f} s"],
        ["requests, samples", f"{r['requests']}, {r['samples']}"],
        ["samples by source", ", ".join(f"{k}: {v}" for k, v in sorted(r["sources"].items()))],
        ["server cache evictions", f"{r['cache_evictions']:.0f}"],
        ["errors", str(r["errors"])],
        [f"RSS after warm-up ({warmup:.0f} s)", mib(r["rss_after_warmup_kib"])],
        ["RSS at the end", mib(r["rss_end_kib"])],
        ["RSS growth after warm-up", f"{r['rss_growth_pct']:+.2f} %"],
        ["peak RSS", mib(r["rss_peak_kib"])],
        ["server after", f"alive {r['alive_after']}, exit code {r['exit_code']}"],
    ]
    print_table("Soak", ["measure", "value"], rows)
    for e in r["error_examples"]:
        print(f"  error: {e}")
    targets = {
        "zero errors": r["errors"] == 0,
        "RSS growth after warm-up < 10%": r["rss_growth_pct"] < 10.0,
        "no crash, clean drain": r["alive_after"] and r["exit_code"] == 0,
    }
    print_table("Targets", ["target", "result"], [[k, "PASS" if v else "MISS"] for k, v in targets.items()])
    return all(targets.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--warmup", type=float, default=60.0, help="RSS growth is counted from here (default 60)")
    ap.add_argument("--processes", type=int, default=4, help="client processes (default 4)")
    ap.add_argument("--threads", type=int, default=16, help="concurrent clients per process (default 16)")
    ap.add_argument("--hot", type=int, default=4096, help="ids in the hot set (default 4096)")
    ap.add_argument("--hot-fraction", type=float, default=0.6, help="of samples drawn from it (default 0.6)")
    ap.add_argument("--cache-mb", type=int, default=16, help="the server's memory cache (default 16)")
    ap.add_argument("--rss-every", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--report-every", type=int, default=30, help="seconds per throughput window")
    ap.add_argument("--json", type=Path, default=BENCH_DIR / "soak.json")
    args = ap.parse_args()
    if args.warmup >= args.duration:
        ap.error("--warmup must be shorter than --duration")
    binary = find_binary("JIT_SERVER_BINARY", SERVER_CANDIDATES, "run `make build`")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    r = run(binary, args, BENCH_DIR / "soak-server.log")
    met = report(r, args.warmup)
    args.json.write_text(json.dumps(r, indent=2))
    print(json.dumps({"benchmark": "soak", "targets_met": met, **{k: v for k, v in r.items() if k != "rss_samples"}}))
    if r["errors"] or not r["alive_after"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
