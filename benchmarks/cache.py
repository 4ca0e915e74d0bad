"""The embedding cache (csrc/cache), each part a ratio against a baseline measured in the same run.

Library level, through jit-cache-bench (benchmarks/cache_bench.cpp; see its header for every detail):

  a. hit latency per tier: each tier filled with N entries of a [77, 768] float32 text embedding (236 KB)
     and, separately, of a [4, 32, 32] float32 latent (16 KB), then random get()s timed one by one:
       memory         the in-memory LRU
       rocksdb cold   the database reopened after its files were evicted from the page cache (empty block cache)
       rocksdb warm   the same keys again (page cache warm, block cache holding what fits)
       redis          the Redis tier against a redis-server this script starts on a free loopback port
       tiered         TieredCache with memory + RocksDB + Redis: every get a memory hit
     -> p50/p99/mean in microseconds, hits/s, and each tier's p50 / p99 as a multiple of the memory tier's
  b. RocksDB tier against plain files on the same disk: 128 KiB values (1 GiB by default) written until durable
     (files: one per value, then fsync of every file and the directory, and the same again with each file's
     writeback started at close; the RocksDB tier: put() through a RocksDB-only TieredCache, flush(), close, fsync
     of every database file and the directory), then read back in a random order after evicting them from the page
     cache (drop_caches as root, else fadvise)
     -> MB/s of each and RocksDB MB/s / plain-file MB/s

Server level, the built jit-embedding-server on the demo's encoders (examples/train_text_to_image.py, imported as a
module: its seeded VAE on 32x32 images and all-MiniLM-L6-v2 on captions, exported into build/demo/ when missing) with
the demo's cache (memory LRU + RocksDB in a temporary folder):

  c. throughput of serving hits against computing: N samples per encoder through EmbeddingClient.submit_many
     (batches of B, K in flight), each pass every sample once:
       computing      cache="bypass", before the cache passes and again after them (the baseline: their mean)
       cold           an empty cache: lookup misses, compute, store
       server memory  the same samples again
       server RocksDB the server restarted on the same folder (its memory cold): each key read once
       local cache    a client with local_cache_dir: filled from the server's hits, then hits from its memory LRU,
                      then from the folder (a new client)
     -> samples/s and p50/p99 per call (submit to answer) as multiples of computing, request bytes uploaded per
        sample, where the samples came from, and a check that every hit equals the cold pass's output
  d. epoch time warm vs cold: a DataLoader (W workers, batch B) over JITEmbeddingDataset with the demo's fields over
     N samples of its ShapesDataset: cold (fresh cache folder), warm in memory (same server, second epoch), warm from
     RocksDB (a new server on the folder), and an epoch on a server with the cache disabled
     -> seconds per epoch, time / cold, bytes uploaded per epoch, the server's CPU seconds

Nothing here asserts a timing; the numbers are for this machine as a whole (anything else using the disk or the
cores moves them: the script prints the load average at its start). Temporary data goes to a fresh directory under
--dir (default build/bench/, the repository's disk), removed at the end.

    python3 benchmarks/cache.py [--quick] [--parts abcd] [--total-mib N] [--dir DIR] [--json PATH]
                                [--samples N] [--epoch-samples N] [--batch B] [--in-flight K] [--workers W]
                                [--server-threads T]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import dataclasses
import gc
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_common import (  # benchmarks/, the script's folder, is on sys.path
    BENCH_DIR,
    ROOT,
    SERVER_CANDIDATES,
    find_binary,
    free_port,
    load_module,
)

CACHE_BENCH_CANDIDATES = [ROOT / "build" / "cmake" / "jit-cache-bench"]
REDIS_READY_TIMEOUT_S = 10.0
MIB = 1 << 20

# The payloads of part a: (label, shape, entries, gets) at full size, and with --quick.
HIT_PAYLOADS = [("text [77,768] fp32", "77,768", 1000, 2000), ("latent [4,32,32] fp32", "4,32,32", 5000, 5000)]
HIT_PAYLOADS_QUICK = [("text [77,768] fp32", "77,768", 200, 500), ("latent [4,32,32] fp32", "4,32,32", 1000, 1000)]

# Parts c and d: the demo (examples/train_text_to_image.py) and its settings.
DEMO_PATH = ROOT / "examples" / "train_text_to_image.py"
DEMO_MODULE = "train_text_to_image"
DEMO_IMAGE_SIZE = 32  # the demo's --image-size
SERVER_QUEUE_DELAY_US = 2000  # the demo's --queue-delay-us
LOCAL_VERSION_TTL_S = 600.0  # part c's local cache: the version confirmation outlasts every pass
EPOCH_SEED = 0


# ---------------------------------------------------------------------------------------------- binaries
def run_cache_bench(binary: Path, *args: str, timeout: float = 600.0) -> list[dict[str, Any]]:
    """Runs jit-cache-bench and returns the JSON objects it printed, one per line."""
    cmd = [str(binary), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {out.returncode}: {out.stderr.strip()}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- redis
def die_with_parent() -> None:
    """In a child before exec (Linux): SIGTERM it when this process dies, however it dies (even SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str | None]:
    """A redis-server without persistence on a free loopback port: yields its redis:// URL, or None when no
    redis-server is installed. Stopped on the way out, whatever happened inside (and by the kernel if this process
    dies without unwinding)."""
    binary = shutil.which("redis-server")
    if binary is None:
        print("  (no redis-server on PATH: the Redis tier is left out)", flush=True)
        yield None
        return
    port = free_port()
    log = open(workdir / "redis.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--loglevel", "warning"],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + REDIS_READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}: {(workdir / 'redis.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server was not listening on port {port} within {REDIS_READY_TIMEOUT_S} s")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


# ---------------------------------------------------------------------------------------------- context
@dataclass
class Context:
    """What every part gets."""

    cache_bench: Path | None  # None when only parts c and d run
    workdir: Path  # a fresh directory on the disk under test, removed at the end
    redis_url: str | None  # None: no Redis tier (no redis-server, or a build without hiredis)
    info: dict[str, Any]  # jit-cache-bench --info: which tiers this build has
    quick: bool
    total_bytes: int  # part b
    drop_cache: str  # part b and rocksdb cold: auto, drop_caches, fadvise or none
    server_bin: Path | None = None  # parts c and d: jit-embedding-server
    server_threads: int | None = None  # parts c and d: intra_op_threads of each encoder (None: each part's default)
    samples: int = 2048  # part c: samples per encoder
    epoch_samples: int = 2048  # part d (the demo's dataset size)
    batch: int = 32  # parts c and d: samples per submit_many / per DataLoader batch
    in_flight: int = 4  # part c: calls outstanding
    repeats: int = 3  # part c: passes per hit row (a server restart per RocksDB pass, a new client per folder pass)
    workers: int = 2  # part d: DataLoader workers
    demo: Any = None  # parts c and d: the demo's encoders (Demo), loaded on first use


# ---------------------------------------------------------------------------------------------- part a
def part_a(ctx: Context) -> dict[str, Any]:
    tiers = ["memory"]
    if ctx.info["rocksdb"]:
        tiers.append("rocksdb")
    if ctx.info["redis"] and ctx.redis_url:
        tiers.append("redis")
    tiers.append("tiered")
    print(f"\n== a. hit latency per tier ({', '.join(tiers)})", flush=True)
    payloads = HIT_PAYLOADS_QUICK if ctx.quick else HIT_PAYLOADS
    out: dict[str, Any] = {"tiers": tiers, "payloads": {}}
    for label, shape, entries, gets in payloads:
        args = ["--hits", ",".join(tiers), "--shape", shape, "--entries", str(entries), "--gets", str(gets)]
        args += ["--dir", str(ctx.workdir), "--drop-cache", ctx.drop_cache]
        if "redis" in tiers:
            args += ["--redis-url", ctx.redis_url]
        rows = run_cache_bench(ctx.cache_bench, *args)
        out["payloads"][label] = rows
        for r in rows:
            print(
                f"  {label}: {r['tier']:<7} {r['state']:<4}  p50 {r['p50_us']:9.2f} us  p99 {r['p99_us']:9.2f} us  "
                f"{r['hits_per_s']:12.0f} hits/s",
                flush=True,
            )
    return out


def times(x: float, base: float) -> str:
    """x / base as "12x" (one decimal below 10)."""
    if base <= 0:
        return "-"
    r = x / base
    return f"{r:.1f}x" if r < 10 else f"{r:.0f}x"


def report_a(a: dict[str, Any]) -> None:
    for label, rows in a["payloads"].items():
        mem = next(r for r in rows if r["tier"] == "memory")
        table = []
        for r in rows:
            note = ""
            if r["tier"] == "rocksdb" and r["state"] == "cold":
                note = f"page cache: {r['page_cache']}, {r['resident_after_open'] * 100:.0f}% resident after open"
            elif r["tier"] == "rocksdb":
                note = f"block cache {r['block_cache_bytes'] // MIB} MiB"
            elif r["tier"] == "tiered":
                note = f"{r['tiers']}; {r['served_by_memory']}/{r['gets']} from memory"
            table.append(
                [f"{r['tier']} ({r['state']})", f"{r['p50_us']:.2f}", f"{r['p99_us']:.2f}", f"{r['mean_us']:.2f}",
                 f"{r['hits_per_s']:.0f}", times(r["p50_us"], mem["p50_us"]), times(r["p99_us"], mem["p99_us"]), note]
            )  # fmt: skip
        first = rows[0]
        print_table(
            f"a. hit latency, {label} ({first['entry_bytes'] / 1e3:.0f} KB entries, {first['entries']} entries, "
            f"random keys; us = microseconds per get)",
            ["tier", "p50 us", "p99 us", "mean us", "hits/s", "p50 / memory", "p99 / memory", "notes"],
            table,
        )


# ---------------------------------------------------------------------------------------------- part b
def part_b(ctx: Context) -> dict[str, Any]:
    if not ctx.info["rocksdb"]:
        print("\n== b. skipped: this build has no RocksDB tier", flush=True)
        return {"skipped": "no RocksDB in this build"}
    print(f"\n== b. RocksDB tier vs plain files: {ctx.total_bytes / MIB:.0f} MiB of 128 KiB values", flush=True)
    rows = run_cache_bench(
        ctx.cache_bench, "--throughput", "--value-bytes", str(128 * 1024), "--total-bytes", str(ctx.total_bytes),
        "--dir", str(ctx.workdir), "--drop-cache", ctx.drop_cache,
    )  # fmt: skip
    for r in rows:
        print(f"  {r['op']:<5} {r['path']:<22} {r['mb_per_s']:8.1f} MB/s ({r['seconds']:.2f} s)", flush=True)
    return {"rows": rows}


def report_b(b: dict[str, Any]) -> None:
    if "rows" not in b:
        return
    table = []
    for r in b["rows"]:
        notes = []
        if r["path"] == "rocksdb" and r["op"] == "write":
            notes.append(f"{r['ratio_to_files_early_writeback']:.2f}x files_early_writeback")
            notes.append(f"{r['db_files_bytes'] / 1e6:.0f} MB on disk")
        if "page_cache" in r:
            notes.append(f"page cache: {r['page_cache']}")
            notes.append(f"{r.get('resident_after_open', r['resident_after_drop']) * 100:.0f}% resident at start")
        if "verify_s" in r:
            notes.append(f"checksums alone {r['verify_s']:.2f} s")
        ratio = f"{r['ratio_to_files']:.2f}" if "ratio_to_files" in r else "1.00"
        table.append([f"{r['op']} {r['path']}", f"{r['mb_per_s']:.1f}", f"{r['seconds']:.2f}", ratio, "; ".join(notes)])
    first = b["rows"][0]
    print_table(
        f"b. RocksDB tier vs plain files: {first['values']} values of {first['payload_bytes'] // 1024} KiB, "
        f"{first['bytes'] / 1e6:.0f} MB of frames (MB = 1e6 bytes; writes until durable, reads in random order)",
        ["op / path", "MB/s", "seconds", "x files", "notes"],
        table,
    )


# ---------------------------------------------------------------------------------------------- server level
# Parts c and d run the built jit-embedding-server on the demo's two encoders (examples/train_text_to_image.py,
# imported as a module: a seeded diffusers VAE on 32x32 images and the real all-MiniLM-L6-v2 on captions of at
# most 12 tokens), exported by the demo's own prepare_encoders() into build/demo/artifacts/ when missing.
def load_demo() -> Any:
    """examples/train_text_to_image.py as a module, registered in sys.modules so that its classes pickle."""
    return load_module(DEMO_MODULE, DEMO_PATH)


@dataclass
class Demo:
    """The demo's encoders and what makes their inputs."""

    module: Any  # examples/train_text_to_image.py
    artifacts: dict[str, Path]  # "vae", "minilm" -> exported artifact folder
    tokenize: Any  # the demo's Tokenize: caption -> input_ids, attention_mask [TEXT_MAX_LEN]


def demo_encoders(ctx: Context) -> Demo:
    """The demo's artifacts (exported on first use, then cached under build/demo/), loaded once per run."""
    if ctx.demo is None:
        t0 = time.perf_counter()
        module = load_demo()
        artifacts = module.prepare_encoders(DEMO_IMAGE_SIZE, "aoti")
        tokenize = module.Tokenize(module.minilm_path() / "tokenizer.json", module.TEXT_MAX_LEN)
        ctx.demo = Demo(module, artifacts, tokenize)
        shown = ", ".join(f"{k}: {v.relative_to(ROOT) if v.is_relative_to(ROOT) else v}" for k, v in artifacts.items())
        print(f"  the demo's encoders ({time.perf_counter() - t0:.1f} s to import and find or export): {shown}")
    return ctx.demo


@contextlib.contextmanager
def embedding_server(ctx: Context, demo: Demo, cache: dict[str, Any], name: str, threads: int) -> Iterator[Any]:
    """The demo's jit-embedding-server (its EmbeddingServer) on its encoders with the given `cache:` section, on a
    free loopback port; stopped with SIGTERM, after which it must have drained and exited 0, and by the kernel if
    this process dies first."""
    server = demo.module.EmbeddingServer(
        demo.artifacts,
        ctx.workdir / f"server-{name}",
        threads,
        SERVER_QUEUE_DELAY_US,
        cache,
        binary=ctx.server_bin,
        preexec=die_with_parent,
    )
    with server:
        yield server
    if server.exit_code != 0:
        raise RuntimeError(
            f"{ctx.server_bin.name} exited with {server.exit_code} after SIGTERM (log: {server.workdir})"
        )


def tier_hits(server: Any) -> dict[str, int]:
    """Hits so far per cache tier (GET /v1/cache/stats), plus the writes the tiers' queue dropped."""
    stats = server.cache_stats()
    return {**{t["tier"]: t["hits"] for t in stats["tiers"]}, "dropped_writes": stats["dropped_writes"]}


def make_client(endpoint: str, **options: Any) -> Any:
    from jit_embedding.client import EmbeddingClient

    return EmbeddingClient([endpoint], timeout=120.0, retries=3, **options)


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else 0.0


# ---------------------------------------------------------------------------------------------- part c
#: The encoders of part c and d, by their names in the demo's server config.
ENCODERS = ("vae", "minilm")


def part_c_inputs(demo: Demo, n: int) -> dict[str, list[dict[str, Any]]]:
    """Per encoder, n samples' inputs ([1, ...] each, as the demo's data layer sends them): the images of the demo's
    first n samples, and their captions with the sample's index appended, so that every text is distinct (the demo
    has 324 distinct captions, which would hit each other within a pass); a text the tokenizer's truncation made
    equal to an earlier one is left out."""
    data = demo.module.ShapesDataset(n, DEMO_IMAGE_SIZE)
    samples = [data[i] for i in range(n)]
    images = [{"pixels": demo.module.image_prep(s)["pixels"].unsqueeze(0)} for s in samples]
    texts, seen = [], set()
    for s in samples:
        tokens = demo.tokenize({"caption": f"{s['caption']} {s['index']}"})
        key = tuple(tokens["input_ids"].tolist())
        if key not in seen:
            seen.add(key)
            texts.append({k: v.unsqueeze(0) for k, v in tokens.items()})
    return {"vae": images, "minilm": texts}


def warm_up_server(client: Any, inputs: dict[str, list[dict[str, Any]]]) -> None:
    """One request per encoder, computed without touching any cache: the first calls (connections, the encoder list,
    the engine's first runs) stay out of the timings, and the client learns the serving versions."""
    for encoder, samples in inputs.items():
        client.submit_many(encoder, samples, cache="bypass").result()


@dataclass
class Pass:
    """One client pass over every sample (client_pass)."""

    seconds: float
    latencies: list[float]  # per call, submit to answer
    sources: collections.Counter  # samples by where they came from
    bytes_sent: int  # request bodies
    outputs: list[dict[str, Any]]  # each sample's outputs, in order (dropped once checked)
    samples: int = 0
    tier_hits: dict[str, int] = dataclasses.field(default_factory=dict)  # the server's tier hits during the pass
    mismatches: int | None = None  # samples whose outputs differ from the cold pass's (None: not checked)


def client_pass(
    client: Any, encoder: str, inputs: list[dict[str, Any]], batch: int, in_flight: int, cache: str
) -> Pass:
    """Every sample once through client.submit_many in calls of `batch` samples, `in_flight` calls outstanding (the
    next one is submitted when the oldest is answered)."""
    pending: collections.deque = collections.deque()
    done = Pass(0.0, [], collections.Counter(), 0, [])

    def collect() -> None:
        future, submitted = pending.popleft()
        samples, meta = future.result()
        done.latencies.append(time.perf_counter() - submitted)
        done.sources.update(meta["sources"])
        done.bytes_sent += meta["bytes_sent"]
        done.outputs.extend(samples)

    t0 = time.perf_counter()
    for i in range(0, len(inputs), batch):
        if len(pending) >= in_flight:
            collect()
        submitted = time.perf_counter()
        pending.append((client.submit_many(encoder, inputs[i : i + batch], cache=cache), submitted))
    while pending:
        collect()
    done.seconds = time.perf_counter() - t0
    done.samples = len(done.outputs)
    return done


def mismatches(outputs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> int:
    """Samples whose outputs are not bit-for-bit those of the reference pass."""
    import torch

    return sum(
        a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a) for a, b in zip(outputs, reference)
    ) + abs(len(outputs) - len(reference))


def pass_row(passes: list[Pass]) -> dict[str, Any]:
    """The passes of one row together: samples/s of the median pass (a stall of the busy machine in one short pass
    moves the total much more) and over their total time, p50/p99 over all their calls, request bytes per sample,
    samples by source, the server's tier hits, and the samples whose outputs differ from the cold pass's."""
    samples = sum(p.samples for p in passes)
    seconds = sum(p.seconds for p in passes)
    latencies = [t for p in passes for t in p.latencies]
    sent = sum(p.bytes_sent for p in passes)
    tiers: collections.Counter = collections.Counter()
    for p in passes:
        tiers.update(p.tier_hits)
    row = {
        "passes": len(passes),
        "samples": samples,
        "calls": len(latencies),
        "seconds": seconds,
        "samples_per_s": statistics.median(p.samples / p.seconds for p in passes),
        "samples_per_s_overall": samples / seconds,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "bytes_sent": sent,
        "bytes_per_sample": sent / samples,
        "sources": dict(sum((p.sources for p in passes), collections.Counter())),
        "server_tier_hits": dict(tiers),
    }
    if all(p.mismatches is not None for p in passes):
        row["mismatches"] = sum(p.mismatches for p in passes)
    return row


def part_c(ctx: Context) -> dict[str, Any]:
    if not ctx.info["rocksdb"]:
        print("\n== c. skipped: this build has no RocksDB tier", flush=True)
        return {"skipped": "no RocksDB in this build"}
    demo = demo_encoders(ctx)
    threads = ctx.server_threads or len(os.sched_getaffinity(0))  # one encoder computes at a time: every core
    print(
        f"\n== c. serving hits vs computing: jit-embedding-server, {ctx.samples} samples per encoder, calls of "
        f"{ctx.batch} via submit_many, {ctx.in_flight} in flight, {threads} intra-op thread(s) per encoder; each hit "
        f"row {ctx.repeats} pass(es)",
        flush=True,
    )
    inputs = part_c_inputs(demo, ctx.samples)
    server_cache = {"rocksdb": {"path": str(ctx.workdir / "c-server-cache")}}  # the demo's: memory LRU + RocksDB
    # The local cache: a RocksDB folder of the client's own (shared by the processes of a node) behind an in-memory
    # LRU per client. A local hit needs the serving version confirmed within the TTL: a long one here, so that no
    # pass is cut short by a re-confirmation.
    local = {"local_cache_dir": str(ctx.workdir / "c-local-cache"), "local_cache_version_ttl": LOCAL_VERSION_TTL_S}
    passes: dict[str, dict[str, list[Pass]]] = {e: collections.defaultdict(list) for e in ENCODERS}
    reference: dict[str, list[dict[str, Any]]] = {}  # the cold pass's outputs

    def measure(label: str, client: Any, cache: str, server: Any) -> None:
        """One pass per encoder, recorded under `label`; a hit pass's outputs are checked against the cold pass's,
        then dropped."""
        for encoder in ENCODERS:
            gc.collect()  # no collection of the last pass's garbage inside this one
            before = tier_hits(server)
            done = client_pass(client, encoder, inputs[encoder], ctx.batch, ctx.in_flight, cache)
            after = tier_hits(server)
            done.tier_hits = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
            if label == "cold":
                reference[encoder] = done.outputs
            elif encoder in reference and cache != "bypass":
                done.mismatches = mismatches(done.outputs, reference[encoder])
            done.outputs = []
            passes[encoder][label].append(done)
            served = ", ".join(f"{k} {v}" for k, v in sorted(done.sources.items()))
            tiers = ", ".join(f"{k} {v}" for k, v in done.tier_hits.items())
            print(
                f"  {encoder:<6} {label:<36} {done.samples / done.seconds:8.0f} samples/s  p50 "
                f"{percentile(done.latencies, 50) * 1e3:7.2f} ms  {done.bytes_sent / done.samples:6.0f} B/sample "
                f"up  ({served}"
                + (f"; server tiers: {tiers}" if tiers else "")
                + (f"; {done.mismatches} DIFFER from the cold pass" if done.mismatches else "")
                + ")",
                flush=True,
            )

    def warm_up(client: Any) -> None:
        warm_up_server(client, {e: inputs[e][: ctx.batch] for e in ENCODERS})

    with embedding_server(ctx, demo, server_cache, "c1", threads) as server:
        client = make_client(server.endpoint)
        warm_up(client)
        measure("computing", client, "bypass", server)
        measure("cold", client, "use", server)
        for _ in range(ctx.repeats):
            measure("server memory hits", client, "use", server)
        del client
    for i in range(ctx.repeats):
        # The same folder, a new server: its memory is empty, and each key is read once from RocksDB.
        with embedding_server(ctx, demo, server_cache, f"c{i + 2}", threads) as server:
            client = make_client(server.endpoint)
            warm_up(client)
            measure("server RocksDB hits (restarted)", client, "use", server)
            if i < ctx.repeats - 1:
                continue
            filler = make_client(server.endpoint, **local)
            warm_up(filler)
            measure("server hits, filling the local cache", filler, "use", server)
            for _ in range(ctx.repeats):
                measure("local cache hits (client memory)", filler, "use", server)
            del filler
            gc.collect()  # closes its cache, which flushes its writes to the folder
            for _ in range(ctx.repeats):
                reader = make_client(server.endpoint, **local)  # its memory LRU empty: hits from the folder
                warm_up(reader)
                measure("local cache hits (RocksDB folder)", reader, "use", server)
                del reader
                gc.collect()
            measure("computing, again", client, "bypass", server)
            del client

    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for encoder in ENCODERS:
        rows[encoder] = {label: pass_row(done) for label, done in passes[encoder].items()}
        r = rows[encoder]
        r["computing, mean"] = {
            k: (r["computing"][k] + r["computing, again"][k]) / 2 for k in ("samples_per_s", "p50_ms", "p99_ms")
        }
        r["computing, mean"]["bytes_per_sample"] = r["computing"]["bytes_per_sample"]
    return {
        "samples": {e: len(inputs[e]) for e in ENCODERS},
        "input_bytes_per_sample": {e: sum(t.nbytes for t in inputs[e][0].values()) for e in ENCODERS},
        "batch": ctx.batch,
        "in_flight": ctx.in_flight,
        "repeats": ctx.repeats,
        "intra_op_threads": threads,
        "local_cache_version_ttl_s": LOCAL_VERSION_TTL_S,
        "rows": rows,
    }


def report_c(c: dict[str, Any]) -> None:
    if "skipped" in c:
        return
    labels = [
        ("computing", "computing (cache bypass), before"),
        ("computing, again", "computing (cache bypass), after"),
        ("cold", "cold cache: lookup, compute, store"),
        ("server memory hits", "server memory hits"),
        ("server RocksDB hits (restarted)", "server RocksDB hits (restarted server)"),
        ("server hits, filling the local cache", "server hits, filling the local cache"),
        ("local cache hits (client memory)", "local cache hits (client memory LRU)"),
        ("local cache hits (RocksDB folder)", "local cache hits (RocksDB folder, new client)"),
    ]
    for encoder in ENCODERS:
        rows = c["rows"][encoder]
        base = rows["computing, mean"]
        table = []
        for key, label in labels:
            r = rows[key]
            served = ", ".join(f"{k} {v}" for k, v in sorted(r["sources"].items()))
            tiers = ", ".join(f"{k} {v}" for k, v in r["server_tier_hits"].items() if k != "dropped_writes")
            notes = f"{r['passes']} pass{'es' if r['passes'] > 1 else ''}: {served}" + (
                f"; server tiers: {tiers}" if tiers else ""
            )
            if r["server_tier_hits"].get("dropped_writes"):
                notes += f"; {r['server_tier_hits']['dropped_writes']} writes dropped"
            if "mismatches" in r:
                notes += "; all equal to cold's outputs" if r["mismatches"] == 0 else f"; {r['mismatches']} DIFFER"
            table.append(
                [label, f"{r['samples_per_s']:.0f}", times(r["samples_per_s"], base["samples_per_s"]),
                 f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", times(base["p50_ms"], r["p50_ms"]),
                 f"{r['bytes_per_sample']:.0f}", notes]
            )  # fmt: skip
        print_table(
            f"c. {encoder}: {c['samples'][encoder]} samples ({c['input_bytes_per_sample'][encoder]} B of inputs each), "
            f"submit_many calls of {c['batch']}, {c['in_flight']} in flight, {c['intra_op_threads']} intra-op "
            f"thread(s); samples/s: the median pass; x computing: against the mean of the before and after runs "
            f"({base['samples_per_s']:.0f} samples/s, p50 {base['p50_ms']:.2f} ms per call)",
            ["path", "samples/s", "x computing", "p50 ms", "p99 ms", "p50 speedup", "upload B/sample",
             "passes: served by (client sources; server tier hits)"],
            table,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------- part d
def epoch(ctx: Context, demo: Demo, data: Any, server: Any, cache: str = "use") -> dict[str, Any]:
    """One epoch of a DataLoader (ctx.workers workers, shuffled) over JITEmbeddingDataset with the demo's fields,
    with a new client (so its counters are this epoch's). Timed from iter() (the workers' start included) to the
    last batch."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from jit_embedding.data import JITEmbeddingDataset

    fields = {"latent": ("vae", demo.module.image_prep), "text": ("minilm", demo.tokenize)}
    ds = JITEmbeddingDataset(data, fields=fields, client=make_client(server.endpoint), cache=cache)
    sampler = RandomSampler(data, generator=torch.Generator().manual_seed(EPOCH_SEED))
    loader = DataLoader(ds, batch_size=ctx.batch, sampler=sampler, num_workers=ctx.workers)
    cpu0 = server.cpu_seconds()
    t0 = time.perf_counter()
    samples, shapes = 0, set()
    for batch in loader:
        samples += batch["latent"].shape[0]
        shapes.add((tuple(batch["latent"].shape[1:]), tuple(batch["text"].shape[1:])))
    seconds = time.perf_counter() - t0
    stats = ds.worker_stats()
    total = {
        k: sum(r[k] for r in stats) for k in ("bytes_sent", "rows_computed", "rows_server_cache", "rows_local_cache")
    }
    return {
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "server_cpu_s": server.cpu_seconds() - cpu0,
        "shapes": sorted(shapes),
        "workers": len(stats),
        **total,
    }


def part_d(ctx: Context) -> dict[str, Any]:
    if not ctx.info["rocksdb"]:
        print("\n== d. skipped: this build has no RocksDB tier", flush=True)
        return {"skipped": "no RocksDB in this build"}
    demo = demo_encoders(ctx)
    threads = ctx.server_threads or 1  # the demo's: both encoders compute at once, beside the loader workers
    print(
        f"\n== d. epoch time warm vs cold: a DataLoader ({ctx.workers} workers, batch {ctx.batch}) over "
        f"JITEmbeddingDataset with the demo's fields, {ctx.epoch_samples} samples of its ShapesDataset, "
        f"{threads} intra-op thread(s) per encoder",
        flush=True,
    )
    data = demo.module.ShapesDataset(ctx.epoch_samples, DEMO_IMAGE_SIZE)
    first = [data[i] for i in range(min(ctx.batch, len(data)))]
    warm_inputs = {
        "vae": [{k: v.unsqueeze(0) for k, v in demo.module.image_prep(s).items()} for s in first],
        "minilm": [{k: v.unsqueeze(0) for k, v in demo.tokenize(s).items()} for s in first],
    }
    server_cache = {"rocksdb": {"path": str(ctx.workdir / "d-server-cache")}}
    epochs: dict[str, dict[str, Any]] = {}

    def run(label: str, server: Any, cache: str = "use") -> None:
        if label != "warm, memory (same server, again)":
            warm_up_server(make_client(server.endpoint), warm_inputs)  # a fresh server: its first runs untimed
        r = epochs[label] = epoch(ctx, demo, data, server, cache)
        print(
            f"  {label:<34} {r['seconds']:6.2f} s  {r['samples_per_s']:7.0f} samples/s  "
            f"{r['bytes_sent'] / 1e6:7.2f} MB uploaded  rows: {r['rows_computed']:.0f} computed, "
            f"{r['rows_server_cache']:.0f} server cache; server CPU {r['server_cpu_s']:.1f} s",
            flush=True,
        )

    with embedding_server(ctx, demo, {"enabled": False}, "d0", threads) as server:
        # The server has no cache (no /v1/cache/lookup): the client sends inputs straight to /v1/encode.
        run("cache disabled (baseline)", server, cache="bypass")
    with embedding_server(ctx, demo, server_cache, "d1", threads) as server:
        run("cold (fresh cache folder)", server)
        run("warm, memory (same server, again)", server)
    with embedding_server(ctx, demo, server_cache, "d2", threads) as server:
        run("warm, RocksDB (new server)", server)
    return {
        "samples": ctx.epoch_samples,
        "batch": ctx.batch,
        "workers": ctx.workers,
        "intra_op_threads": threads,
        "distinct_captions": len({data[i]["caption"] for i in range(len(data))}),
        "epochs": epochs,
    }


def report_d(d: dict[str, Any]) -> None:
    if "skipped" in d:
        return
    cold = d["epochs"]["cold (fresh cache folder)"]
    table = []
    for label, r in d["epochs"].items():
        table.append(
            [label, f"{r['seconds']:.2f}", f"{r['samples_per_s']:.0f}", f"{r['seconds'] / cold['seconds']:.2f}",
             times(cold["seconds"], r["seconds"]), f"{r['bytes_sent'] / 1e6:.2f}",
             f"{r['bytes_sent'] / max(r['samples'], 1):.0f}", f"{r['server_cpu_s']:.1f}",
             f"{r['rows_computed']:.0f} computed, {r['rows_server_cache']:.0f} from the server's cache"]
        )  # fmt: skip
    print_table(
        f"d. epoch time: {d['samples']} samples ({d['distinct_captions']} distinct captions), batch {d['batch']}, "
        f"{d['workers']} DataLoader workers, {d['intra_op_threads']} intra-op thread(s) per encoder, 2 rows per "
        f"sample (vae + minilm); time / cold and speedup against the cold epoch",
        ["epoch", "seconds", "samples/s", "time / cold", "speedup", "MB uploaded", "B/sample up", "server CPU s",
         "rows"],
        table,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- parts
# letter -> (title, run, report). Parts run in letter order; a part that needs Redis is listed in NEEDS_REDIS.
PARTS: dict[str, tuple[str, Callable[[Context], dict[str, Any]], Callable[[dict[str, Any]], None]]] = {
    "a": ("hit latency per tier (library)", part_a, report_a),
    "b": ("RocksDB tier vs plain files, MB/s (library)", part_b, report_b),
    "c": ("serving hits vs computing (server)", part_c, report_c),
    "d": ("epoch time warm vs cold (server)", part_d, report_d),
}
NEEDS_REDIS = {"a"}


# ---------------------------------------------------------------------------------------------- report
def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """First and last columns left-aligned (labels, notes), the numbers between right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        cells = (c.ljust(w) if i in (0, len(r) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        return "  ".join(cells).rstrip()

    print(f"\n{title}\n{line(header)}\n{'  '.join('-' * w for w in widths)}")
    for r in rows:
        print(line(r))


def machine_info(workdir: Path) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    disk = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["df", "-T", str(workdir)], capture_output=True, text=True, timeout=10).stdout
        fields = out.splitlines()[-1].split()
        disk = f"{fields[0]} ({fields[1]})"
    redis = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if shutil.which("redis-server"):
            redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "disk": disk,
        "root": os.geteuid() == 0,
        "redis_server": (redis or "").strip() or None,
        "loadavg_at_start": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true",
        help="fewer entries in part a, 256 MiB in part b, 128 samples in parts c and d",
    )  # fmt: skip
    titles = "; ".join(f"{k}: {title}" for k, (title, _, _) in PARTS.items())
    ap.add_argument("--parts", default="".join(PARTS), help=f"which parts to run (default all: {titles})")
    ap.add_argument("--total-mib", type=int, default=None, help="part b's total size in MiB (default 1024; quick 256)")
    ap.add_argument("--dir", default=str(BENCH_DIR), help="where temporary data goes: the disk under test")
    ap.add_argument(
        "--drop-cache", default="auto", choices=["auto", "drop_caches", "fadvise", "none"],
        help="how cold reads evict the page cache (auto: drop_caches as root, else fadvise)",
    )  # fmt: skip
    ap.add_argument("--samples", type=int, default=None, help="part c's samples per encoder (default 2048; quick 128)")
    ap.add_argument("--epoch-samples", type=int, default=None, help="part d's epoch size (default 2048; quick 128)")
    ap.add_argument("--batch", type=int, default=32, help="samples per request (c) and per DataLoader batch (d)")
    ap.add_argument("--in-flight", type=int, default=4, help="part c's calls outstanding (default 4)")
    ap.add_argument("--repeats", type=int, default=None, help="part c's passes per hit row (default 3; quick 1)")
    ap.add_argument("--workers", type=int, default=2, help="part d's DataLoader workers (default 2)")
    ap.add_argument(
        "--server-threads", type=int, default=None,
        help="intra_op_threads of each encoder in the server (default: every usable core in part c, where one "
        "encoder computes at a time; 1, the demo's, in part d, where both do, beside the loader workers)",
    )  # fmt: skip
    ap.add_argument("--json", metavar="PATH", default=str(BENCH_DIR / "cache.json"), help="results (JSON)")
    args = ap.parse_args()
    for name in ("samples", "epoch_samples", "batch", "in_flight", "repeats", "workers", "server_threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "workers" else 1):
            ap.error(f"--{name.replace('_', '-')} must be {'at least 0' if name == 'workers' else 'positive'}")
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        sys.exit(f"benchmarks/cache.py: unknown or not yet written part(s) {''.join(unknown)} (have {''.join(PARTS)})")
    # SIGTERM unwinds like an exception, so the redis-server and the temporary data are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    cache_bench = find_binary(
        "JIT_CACHE_BENCH_BINARY", CACHE_BENCH_CANDIDATES, "run `make build` (JIT_BUILD_TESTS or _BENCHMARKS)"
    )
    build = run_cache_bench(cache_bench, "--info")[0]
    server_bin = None
    if set(args.parts) & {"c", "d"}:
        server_bin = find_binary("JIT_SERVER_BINARY", SERVER_CANDIDATES, "run `make build`")
    total_mib = args.total_mib if args.total_mib is not None else (256 if args.quick else 1024)

    with tempfile.TemporaryDirectory(prefix="jit-cache-bench-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        info = machine_info(workdir)
        print("command: " + " ".join(shlex.quote(a) for a in getattr(sys, "orig_argv", [sys.executable, *sys.argv])))
        print(
            f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), load average "
            f"{info['loadavg_at_start'][0]:.2f}\ndisk under test: {info['disk']} at {args.dir}\n"
            f"jit-cache-bench: {cache_bench} (RocksDB {build['rocksdb']}, Redis {build['redis']})\n"
            + (f"jit-embedding-server: {server_bin}\n" if server_bin else "")
            + f"redis-server: {info['redis_server'] or 'not installed'}"
        )
        results: dict[str, Any] = {}
        needs_redis = bool(NEEDS_REDIS & set(args.parts)) and build["redis"]
        with redis_server(workdir) if needs_redis else contextlib.nullcontext() as redis_url:
            ctx = Context(
                cache_bench=cache_bench,
                workdir=workdir,
                redis_url=redis_url,
                info=build,
                quick=args.quick,
                total_bytes=total_mib * MIB,
                drop_cache=args.drop_cache,
                server_bin=server_bin,
                server_threads=args.server_threads,
                samples=args.samples or (128 if args.quick else 2048),
                epoch_samples=args.epoch_samples or (128 if args.quick else 2048),
                batch=args.batch,
                in_flight=args.in_flight,
                repeats=args.repeats or (1 if args.quick else 3),
                workers=args.workers,
            )
            for letter, (_, run, _) in PARTS.items():
                if letter in args.parts:
                    t0 = time.perf_counter()
                    results[letter] = run(ctx)
                    results[letter]["wall_s"] = time.perf_counter() - t0
                    print(f"  (part {letter}: {results[letter]['wall_s']:.0f} s)", flush=True)

    for letter, (_, _, report) in PARTS.items():
        if letter in results:
            report(results[letter])
    with open(args.json, "w") as f:
        json.dump({"argv": sys.argv, "machine": info, "build": build, "quick": args.quick, **results}, f, indent=2)
    print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
