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

Server level (not written yet; the marked sections below are where they go):

  c. throughput of serving hits against computing
  d. epoch time warm vs cold

Nothing here asserts a timing; the numbers are for this machine as a whole (anything else using the disk or the
cores moves them: the script prints the load average at its start). Temporary data goes to a fresh directory under
--dir (default build/bench/, the repository's disk), removed at the end.

    python3 benchmarks/cache.py [--quick] [--parts ab] [--total-mib N] [--dir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "build" / "bench"
CACHE_BENCH_CANDIDATES = [ROOT / "build" / "cmake" / "jit-cache-bench"]
REDIS_READY_TIMEOUT_S = 10.0
MIB = 1 << 20

# The payloads of part a: (label, shape, entries, gets) at full size, and with --quick.
HIT_PAYLOADS = [("text [77,768] fp32", "77,768", 1000, 2000), ("latent [4,32,32] fp32", "4,32,32", 5000, 5000)]
HIT_PAYLOADS_QUICK = [("text [77,768] fp32", "77,768", 200, 500), ("latent [4,32,32] fp32", "4,32,32", 1000, 1000)]


# ---------------------------------------------------------------------------------------------- binaries
def find_binary(env: str, candidates: list[Path], hint: str) -> Path:
    """$env if set, else the newest existing candidate."""
    if os.environ.get(env):
        return Path(os.environ[env])
    found = [p for p in candidates if p.exists()]
    if not found:
        sys.exit(f"benchmarks/cache.py: no {candidates[0].name} (looked in {', '.join(map(str, candidates))}): {hint}")
    return max(found, key=lambda p: p.stat().st_mtime)


def run_cache_bench(binary: Path, *args: str, timeout: float = 600.0) -> list[dict[str, Any]]:
    """Runs jit-cache-bench and returns the JSON objects it printed, one per line."""
    cmd = [str(binary), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {out.returncode}: {out.stderr.strip()}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- redis
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    """What every part gets. Server-level parts will need more (the server binary, jit-loadgen): add fields."""

    cache_bench: Path
    workdir: Path  # a fresh directory on the disk under test, removed at the end
    redis_url: str | None  # None: no Redis tier (no redis-server, or a build without hiredis)
    info: dict[str, Any]  # jit-cache-bench --info: which tiers this build has
    quick: bool
    total_bytes: int  # part b
    drop_cache: str  # part b and rocksdb cold: auto, drop_caches, fadvise or none


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


# ---------------------------------------------------------------------------------------------- part c
# RESERVED (server level, to be written): throughput of serving hits against computing.
# Add part_c(ctx) -> dict and report_c(result), then register both in PARTS below.


# ---------------------------------------------------------------------------------------------- part d
# RESERVED (server level, to be written): epoch time warm vs cold.
# Add part_d(ctx) -> dict and report_d(result), then register both in PARTS below.


# ---------------------------------------------------------------------------------------------- parts
# letter -> (title, run, report). Parts run in letter order; a part that needs Redis is listed in NEEDS_REDIS.
PARTS: dict[str, tuple[str, Callable[[Context], dict[str, Any]], Callable[[dict[str, Any]], None]]] = {
    "a": ("hit latency per tier (library)", part_a, report_a),
    "b": ("RocksDB tier vs plain files, MB/s (library)", part_b, report_b),
    # "c": ("serving hits vs computing (server)", part_c, report_c),  -- reserved
    # "d": ("epoch time warm vs cold (server)", part_d, report_d),    -- reserved
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
    ap.add_argument("--quick", action="store_true", help="fewer entries in part a, 256 MiB in part b")
    titles = "; ".join(f"{k}: {title}" for k, (title, _, _) in PARTS.items())
    ap.add_argument("--parts", default="".join(PARTS), help=f"which parts to run (default all: {titles})")
    ap.add_argument("--total-mib", type=int, default=None, help="part b's total size in MiB (default 1024; quick 256)")
    ap.add_argument("--dir", default=str(BENCH_DIR), help="where temporary data goes: the disk under test")
    ap.add_argument(
        "--drop-cache", default="auto", choices=["auto", "drop_caches", "fadvise", "none"],
        help="how cold reads evict the page cache (auto: drop_caches as root, else fadvise)",
    )  # fmt: skip
    ap.add_argument("--json", metavar="PATH", default=str(BENCH_DIR / "cache.json"), help="results (JSON)")
    args = ap.parse_args()
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
    total_mib = args.total_mib if args.total_mib is not None else (256 if args.quick else 1024)

    with tempfile.TemporaryDirectory(prefix="jit-cache-bench-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        info = machine_info(workdir)
        print("command: " + " ".join(shlex.quote(a) for a in getattr(sys, "orig_argv", [sys.executable, *sys.argv])))
        print(
            f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), load average "
            f"{info['loadavg_at_start'][0]:.2f}\ndisk under test: {info['disk']} at {args.dir}\n"
            f"jit-cache-bench: {cache_bench} (RocksDB {build['rocksdb']}, Redis {build['redis']})\n"
            f"redis-server: {info['redis_server'] or 'not installed'}"
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
            )
            for letter, (_, run, _) in PARTS.items():
                if letter in args.parts:
                    results[letter] = run(ctx)

    for letter, (_, _, report) in PARTS.items():
        if letter in results:
            report(results[letter])
    with open(args.json, "w") as f:
        json.dump({"argv": sys.argv, "machine": info, "build": build, "quick": args.quick, **results}, f, indent=2)
    print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
