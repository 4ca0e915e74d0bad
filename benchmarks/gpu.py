"""The GPU path (issue 7), each number a ratio against a baseline measured in the same run.

  1. bandwidth   jit_embedding.ops kernels (fp8 rowwise quantize and dequantize, fp32 -> bf16 cast, 1080p -> 512
                 bilinear preprocessing) in GB/s of bytes read + written once, as a fraction of a device-to-device
                 Tensor.copy_ of a large buffer (goal >= 0.7); each op's pure-torch fallback alongside
  2. served      a VAE encoder at 512^2 and a T5 encoder (seeded random weights in the real architectures, exported
                 with AOTInductor for the device) served by jit-embedding-server (device: cuda, instances: 2) and
                 driven to saturation by jit-loadgen, against the same artifact offline in a tight loop at its best
                 batch size (goal >= 0.9)
  3. busy        during the served run, how much of the time the GPU had work (goal >= 0.9): the GPU utilization
                 NVML sampled, else the served trace's busy fraction, else (no GPU counter) compute seconds per
                 instance over wall seconds. Shown beside it: the sum of per-batch compute time
                 (jit_compute_seconds from /metrics) over wall time (with 2 instances it can reach 2) and the same
                 per instance; offline: CUDA-event time per batch over wall time. A torch.profiler
                 chrome trace of a few served batches (the same server hosted in a Python process, which the
                 profiler can see) goes to the output folder; if that fails, one of the offline loop, and the JSON
                 says which

Nothing here asserts a timing: the goals print as MET or MISS and never fail the run. The exit status is 1 when a
part failed to run, 2 for --device cuda without a CUDA device. --device cpu measures the same things on the CPU
(the C++ references instead of the kernels, tiny models), so the script itself is tested without a GPU.

    python3 benchmarks/gpu.py [--device cuda|cpu] [--quick] [--parts bandwidth,served] [--json PATH] [--out-dir DIR]

The binaries come from $JIT_SERVER_BINARY / $JIT_LOADGEN_BINARY, else build/cmake (`make build`). Artifacts are
exported once into build/bench/artifacts/gpu-* and reused while their inputs are unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from bench_common import (  # benchmarks/, the script's folder, is on sys.path
    BENCH_DIR,
    SERVER_CANDIDATES,
    cached_export,
    find_binary,
    load_module,
    print_table,
    run_for,
)

GIB = 1 << 30
MIB = 1 << 20
INSTANCES = 2
GOALS = {"bandwidth": 0.7, "served": 0.9, "busy": 0.9}

# benchmarks/server.py's helpers: the binaries' locations, starting our server, /metrics, running jit-loadgen.
bench_server = load_module("jit_bench_server", Path(__file__).with_name("server.py"))

# ---------------------------------------------------------------------------------------------- models
#: Stable Diffusion's AutoencoderKL (SD 1.x / 2.x): 4 levels, 128-512 channels, latent 4 x H/8 x W/8.
SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
#: t5-v1_1-base's encoder: 12 layers, d_model 768, gated-GELU feed-forward.
T5_BASE = {
    "vocab_size": 32128,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 12,
    "num_heads": 12,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "pad_token_id": 0,
    "eos_token_id": 1,
}
#: The tiny configs of tests/python/model_fixtures.py: compiles in seconds on a CPU.
TINY_VAE = {
    **SD_VAE,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 32,
}
TINY_T5 = {
    **T5_BASE,
    "vocab_size": 99,
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 37,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 20,
}


def model_plans(device: str, tiny: bool) -> dict[str, dict[str, Any]]:
    """What part 2 exports and serves, by name: the family, its config, the export options, the samples per
    request, and (text) the sequence length every request uses."""
    dtype = "bfloat16" if device == "cuda" else "float32"
    if tiny:
        return {
            "vae": {"family": "vae", "config": TINY_VAE, "image": 32, "dtype": dtype, "max_batch": 8, "per_req": 2},
            "t5": {
                "family": "t5", "config": TINY_T5, "seq": 16, "dtype": dtype, "max_batch": 16, "per_req": 4,
                "vocab": TINY_T5["vocab_size"],
            },
        }  # fmt: skip
    return {
        "vae": {"family": "vae", "config": SD_VAE, "image": 512, "dtype": dtype, "max_batch": 32, "per_req": 4},
        "t5": {
            "family": "t5", "config": T5_BASE, "seq": 128, "dtype": dtype, "max_batch": 256, "per_req": 16,
            "vocab": T5_BASE["vocab_size"],
        },
    }  # fmt: skip


def make_checkpoint(plan: dict[str, Any], folder: Path) -> None:
    """A checkpoint of the plan's architecture with weights from torch.manual_seed(0) (config.json +
    model.safetensors): the throughput of a real architecture, not of trained weights."""
    torch.manual_seed(0)
    if plan["family"] == "vae":
        from diffusers import AutoencoderKL

        model = AutoencoderKL(**plan["config"])
    else:
        from transformers import T5Config, T5EncoderModel

        model = T5EncoderModel(T5Config(**plan["config"]))
    model.save_pretrained(folder, safe_serialization=True)


def export_worker(plan_json: str, folder: str, device: str) -> None:
    """Runs in a child process (--export-worker): a checkpoint into a temporary folder, then
    jit_embedding.export.export() of it for `device`. The post-export check is off: these are random weights and
    only their speed is measured (tests/python/test_export.py checks what the exporter produces)."""
    from jit_embedding.export import export

    plan = json.loads(plan_json)
    out = Path(folder)
    with tempfile.TemporaryDirectory(prefix=".ckpt-", dir=out.parent) as ckpt:
        make_checkpoint(plan, Path(ckpt))
        options: dict[str, Any] = {"image_size": plan["image"]} if plan["family"] == "vae" else {}
        if plan["family"] == "t5":
            options["max_seq_len"] = plan["seq"]
        export(
            plan["family"], ckpt, out, device=device, dtype=plan["dtype"], max_batch_size=plan["max_batch"],
            check=False, **options,
        )  # fmt: skip


def exported(name: str, plan: dict[str, Any], device: str) -> Path:
    """build/bench/artifacts/gpu-<name>-<device>-<digest>, exported in a child process unless already there. The
    digest covers the plan, the device, torch's version and the source of the exporter and of make_checkpoint."""
    return cached_export(
        f"gpu-{name}-{device}",
        [plan, device, torch.__version__],
        [make_checkpoint],
        lambda folder: [sys.executable, __file__, "--export-worker", json.dumps(plan), str(folder), device],
    )


def make_inputs(manifest: dict[str, Any], batch: int, seq: int, vocab: int, device: str, seed: int = 0) -> dict:
    """One batch for the manifest's inputs: token ids below `vocab` and a mask of ones for a text encoder, uniform
    values in [-1, 1] (a VAE's pixel range) for float inputs."""
    from jit_embedding.codec import DTYPES

    g = torch.Generator().manual_seed(seed)
    out = {}
    for spec in manifest["inputs"]:
        dims = spec.get("dims") or spec["shape"]
        shape = [batch if d == "batch" else seq if isinstance(d, str) or d == -1 else int(d) for d in dims]
        if spec["dtype"] == "int64":
            t = (
                torch.ones(shape, dtype=torch.int64)
                if "mask" in spec["name"]
                else torch.randint(2, vocab, shape, generator=g)
            )
        else:
            t = (torch.rand(shape, generator=g) * 2 - 1).to(DTYPES[spec["dtype"]])
        out[spec["name"]] = t.to(device)
    return out


# ---------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], Any], device: torch.device, iters: int, reps: int) -> list[float]:
    """`reps` measurements of the mean time of one call over `iters` back-to-back calls (CUDA events on a GPU,
    wall clock on the CPU), after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            times.append((time.perf_counter() - t0) / iters)
    return times


@contextlib.contextmanager
def torch_fallback() -> Iterator[None]:
    """jit_embedding.ops without its native paths: every op runs its pure-torch fallback."""
    from jit_embedding import ops

    native = ops._native
    ops._native = lambda t: False
    try:
        yield
    finally:
        ops._native = native


# ---------------------------------------------------------------------------------------------- part 1
def copy_seconds(device: torch.device, nbytes: int, iters: int, reps: int) -> float:
    """The baseline: the median time of dst.copy_(src) for two buffers of nbytes on the device (freed after)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    src.random_(0, 256)
    dst = torch.empty_like(src)
    return statistics.median(seconds_per_call(lambda: dst.copy_(src), device, iters, reps))


def part_bandwidth(device: torch.device, quick: bool) -> dict[str, Any]:
    from jit_embedding import ops

    on_gpu = device.type == "cuda"
    if on_gpu:
        copy_bytes, rows, cols, frames_n, iters, reps = GIB, 65536, 4096, 32, 10, 5
    elif quick:
        copy_bytes, rows, cols, frames_n, iters, reps = 8 * MIB, 256, 1024, 1, 2, 3
    else:
        copy_bytes, rows, cols, frames_n, iters, reps = 256 * MIB, 8192, 1024, 2, 3, 3
    # 1080p -> 512 on the GPU; the same 2.1x downscale at 1/8 the size on a quick CPU run.
    (fh, fw), out_side = ((1080, 1920), 512) if not quick or on_gpu else ((135, 240), 64)
    kind = "CUDA kernels" if on_gpu and ops.has_cuda_kernels() else ("C++ references" if not on_gpu else "NO KERNELS")
    print(f"\n== 1. bandwidth: jit_embedding.ops ({kind}) vs Tensor.copy_ on {device}", flush=True)
    if on_gpu and not ops.has_cuda_kernels():
        print("  this _C has no CUDA kernels: the ops run their torch fallback (build with nvcc and a CUDA torch)")

    # copy_ is measured before and after the ops, and the faster run is the baseline: a GPU still raising its clocks
    # at the first measurement would otherwise give a slow baseline and flatter every op.
    copy_first = copy_seconds(device, copy_bytes, iters, reps)

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, cols, device=device, generator=g)
    codes, scales = ops.quantize_fp8_rowwise(x)
    frames = torch.randint(0, 256, (frames_n, fh, fw, 3), dtype=torch.uint8, device=device, generator=g)
    mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]  # a VAE's [-1, 1] input
    pre_out = frames_n * 3 * out_side * out_side * 4
    cases = [
        ("quantize_fp8_rowwise", f"fp32 {rows}x{cols}", lambda: ops.quantize_fp8_rowwise(x),
         x.nbytes + codes.nbytes + scales.nbytes),
        ("dequantize_fp8_rowwise", f"fp8 {rows}x{cols} -> fp32", lambda: ops.dequantize_fp8_rowwise(codes, scales),
         codes.nbytes + scales.nbytes + x.nbytes),
        ("cast fp32 -> bf16", f"{rows}x{cols}", lambda: ops.cast(x, torch.bfloat16), x.nbytes + x.nbytes // 2),
        ("preprocess bilinear", f"uint8 {frames_n}x{fh}x{fw}x3 -> fp32 {frames_n}x3x{out_side}x{out_side}",
         lambda: ops.preprocess(frames, mean, std, size=out_side, mode="bilinear"), frames.nbytes + pre_out),
    ]  # fmt: skip
    timed = []
    for name, shape, fn, nbytes in cases:
        t = statistics.median(seconds_per_call(fn, device, iters, reps))
        with torch_fallback():
            tf = statistics.median(seconds_per_call(fn, device, max(1, iters // 2), reps))
        timed.append((name, shape, nbytes, t, tf))
    copy_last = copy_seconds(device, copy_bytes, iters, reps)
    copy_t = min(copy_first, copy_last)
    copy_gbs = 2 * copy_bytes / copy_t / 1e9
    print(
        f"  copy_ of {copy_bytes / MIB:.0f} MiB: {copy_gbs:.1f} GB/s (read + write; the faster of "
        f"{2 * copy_bytes / copy_first / 1e9:.1f} before and {2 * copy_bytes / copy_last / 1e9:.1f} after the ops)",
        flush=True,
    )
    rows_out = []
    for name, shape, nbytes, t, tf in timed:
        gbs = nbytes / t / 1e9
        rows_out.append(
            {
                "op": name, "shape": shape, "bytes": nbytes, "seconds": t, "gb_per_s": gbs,
                "fraction_of_copy": gbs / copy_gbs, "fallback_seconds": tf, "fallback_gb_per_s": nbytes / tf / 1e9,
                "speedup_vs_fallback": tf / t,
            }
        )  # fmt: skip
        print(f"  {name}: {gbs:.3g} GB/s = {gbs / copy_gbs:.2f}x copy (torch fallback {nbytes / tf / 1e9:.3g} GB/s)")
    return {
        "device": str(device),
        "implementation": kind,
        "copy": {
            "bytes": copy_bytes,
            "seconds": copy_t,
            "gb_per_s": copy_gbs,
            "seconds_before": copy_first,
            "seconds_after": copy_last,
        },
        "ops": rows_out,
        "min_fraction_of_copy": min(r["fraction_of_copy"] for r in rows_out),
        "note": "bytes = every input byte read once + every output byte written once; copy_ counts read + write",
    }


# ---------------------------------------------------------------------------------------------- part 2: offline
def offline_worker(args_json: str) -> None:
    """Runs in a child process (--offline-worker): the artifact in a tight loop at each batch size, then at the best
    one its busy fraction (CUDA events), its speed with the host copies included, and optionally a profiler trace.
    Prints one JSON object."""
    from jit_embedding.export import load_artifact

    a = json.loads(args_json)
    device = torch.device(a["device"])
    run, manifest = load_artifact(a["artifact"])
    names = [s["name"] for s in manifest["inputs"]]

    def inputs(batch: int, where: str = a["device"]) -> list[torch.Tensor]:
        made = make_inputs(manifest, batch, a["seq"], a["vocab"], "cpu")
        return [made[n].to(where) for n in names]

    sweep = []
    for batch in a["batches"]:
        x = inputs(batch)
        for _ in range(2):
            run(*x)
        sync(device)
        n, dt = run_for(lambda x=x: run(*x), a["seconds"], lambda: sync(device))
        sweep.append({"batch": batch, "samples_per_s": n * batch / dt, "batch_s": dt / n, "iterations": n})
    best = max(sweep, key=lambda r: r["samples_per_s"])
    x = inputs(best["batch"])

    # Busy fraction: time the device spent inside each batch (events around it) over the loop's wall time.
    iters = max(5, int(a["seconds"] / best["batch_s"]))
    sync(device)
    t0 = time.perf_counter()
    if device.type == "cuda":
        events = []
        for _ in range(iters):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            run(*x)
            e.record()
            events.append((s, e))
        sync(device)
        wall = time.perf_counter() - t0
        busy_s = sum(s.elapsed_time(e) for s, e in events) / 1e3
    else:
        busy_s = 0.0
        for _ in range(iters):
            t1 = time.perf_counter()
            run(*x)
            busy_s += time.perf_counter() - t1
        wall = time.perf_counter() - t0

    # With the host copies a server makes: inputs from (pinned) host memory, outputs back to the host.
    host = [t.pin_memory() if device.type == "cuda" else t for t in inputs(best["batch"], "cpu")]

    def with_copies() -> None:
        outs = run(*[t.to(device, non_blocking=True) for t in host])
        for o in outs:
            o.to("cpu")

    n, dt = run_for(with_copies, a["seconds"])
    copies = {"samples_per_s": n * best["batch"] / dt, "iterations": n}

    result = {
        "sweep": sweep,
        "best_batch": best["batch"],
        "samples_per_s": best["samples_per_s"],
        "batch_s": best["batch_s"],
        "busy": {"iterations": iters, "busy_s": busy_s, "wall_s": wall, "fraction": busy_s / wall},
        "with_host_copies": copies,
    }
    if a.get("trace"):
        result["trace"] = write_trace(lambda: [with_copies() for _ in range(5)], device, Path(a["trace"]))
    print(json.dumps(result))


def run_offline(folder: Path, device: str, plan: dict[str, Any], seconds: float, trace: Path | None = None):
    batches = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= plan["max_batch"]]
    args = {
        "artifact": str(folder), "device": device, "batches": batches, "seconds": seconds,
        "seq": plan.get("seq", 1), "vocab": plan.get("vocab", 2), "trace": str(trace) if trace else None,
    }  # fmt: skip
    out = subprocess.run(
        [sys.executable, __file__, "--offline-worker", json.dumps(args)], capture_output=True, text=True, timeout=900
    )
    if out.returncode != 0:
        raise RuntimeError(f"offline worker failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- traces
def profiler_activities(device: torch.device) -> list:
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return acts


def write_trace(body: Callable[[], Any], device: torch.device, path: Path) -> dict[str, Any]:
    """torch.profiler around body() (CPU, and CUDA on a GPU), its chrome trace gzipped to `path`, and what the trace
    shows: the union of kernel intervals, of memcpy intervals, and of their overlap, over the traced span."""
    kwargs: dict[str, Any] = {"activities": profiler_activities(device)}
    with contextlib.suppress(TypeError, AttributeError):  # torch >= 2.6: ops of threads the profiler did not start
        kwargs["experimental_config"] = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    with torch.profiler.profile(**kwargs) as prof:
        body()
        sync(device)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        text = raw.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=6) as f:
        f.write(text)
    return {"path": str(path), "bytes": path.stat().st_size, **trace_summary(json.loads(text))}


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(e - s for s, e in intervals)


def _intersect(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0.0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def trace_summary(trace: dict[str, Any]) -> dict[str, Any]:
    """Kernel and memcpy time in a chrome trace (microseconds): each as a union of intervals, their overlap (a copy
    running while a kernel runs), and the GPU's busy fraction over the span from the first to the last GPU event."""
    kernels, copies = [], []
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") != "X" or "dur" not in ev:
            continue
        cat = str(ev.get("cat", "")).lower()
        span = (float(ev["ts"]), float(ev["ts"]) + float(ev["dur"]))
        if cat == "kernel":
            kernels.append(span)
        elif cat in ("gpu_memcpy", "gpu_memset"):
            copies.append(span)
    k, c = _union(kernels), _union(copies)
    both = _union(kernels + copies)
    span = (both[-1][1] - both[0][0]) if both else 0.0
    return {
        "kernels": len(kernels),
        "copies": len(copies),
        "kernel_us": _length(k),
        "copy_us": _length(c),
        "copy_overlapping_kernels_us": _intersect(k, c),
        "gpu_span_us": span,
        "gpu_busy_fraction": _length(both) / span if span else None,
    }


def trace_worker(args_json: str) -> None:
    """Runs in a child process (--trace-worker): the same config served by jit_embedding.serve.Server in this
    process (the C++ server and the same artifact executor, hosted by Python so that torch.profiler sees its CUDA
    work), jit-loadgen saturating it, and a profiler window of a few batches. Prints one JSON object."""
    from jit_embedding.serve import Server

    a = json.loads(args_json)
    device = torch.device(a["device"])
    if device.type == "cuda":
        torch.cuda.init()
    server = Server(a["config"], host="127.0.0.1", port=0)
    port = server.start()
    url = f"http://127.0.0.1:{port}/v1/encode/{a['encoder']}"
    total = a["warmup"] + a["window"] + 2.0
    cmd = [a["loadgen"], "--url", url, "--body", a["body"], "--concurrency", str(a["concurrency"]),
           "--duration", str(total), "--warmup", "0", "--timeout", "120"]  # fmt: skip
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(a["warmup"])
        summary = write_trace(lambda: time.sleep(a["window"]), device, Path(a["trace"]))
    finally:
        load.wait(timeout=total + 120)
        server.drain()
    print(json.dumps({"kind": "served", **summary}))


# ---------------------------------------------------------------------------------------------- part 2: served
class UtilizationSampler:
    """The GPU's utilization as NVML reports it (percent of time a kernel ran, over its own sample period), sampled
    every 100 ms between start() and stop(); None values where NVML is not there."""

    def __init__(self, device: torch.device):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read: Callable[[], float] | None = None
        if device.type != "cuda":
            return
        with contextlib.suppress(Exception):
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            self._read = lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    def start(self) -> None:
        if self._read is None:
            return

        def loop() -> None:
            while not self._stop.wait(0.1):
                with contextlib.suppress(Exception):
                    self.samples.append(self._read())

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> float | None:
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        return statistics.mean(self.samples) / 100 if self.samples else None


def served_config(name: str, folder: Path, device: str, plan: dict[str, Any], batch: int, concurrency: int) -> dict:
    entry = {
        "name": name,
        "artifact": str(folder),
        "device": device,
        "max_batch_size": batch,
        "max_queue_delay_us": 5000,
        "max_queue_size": max(16 * batch, 2 * concurrency * plan["per_req"]),
        "instances": INSTANCES,
        "cache": False,  # the same request over and over: every batch must be computed
    }
    if plan["family"] == "t5":
        entry["length_buckets"] = [plan["seq"]]
    return {"server": {"threads": concurrency + 16}, "cache": {"enabled": False}, "encoders": [entry]}


def saturate(srv: Any, loadgen: Path, name: str, body: Path, concurrency: int, warmup: float, duration: float,
             sampler: UtilizationSampler) -> dict[str, Any]:  # fmt: skip
    """jit-loadgen for warmup + duration seconds; /metrics is read and NVML sampled over the measured window only."""
    cmd = [str(loadgen), "--url", srv.url(f"/v1/encode/{name}"), "--body", str(body), "--concurrency",
           str(concurrency), "--duration", str(duration), "--warmup", str(warmup), "--timeout", "120"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    margin = min(0.5, duration / 10)
    time.sleep(warmup + margin)
    delta = bench_server.MetricsDelta(srv, name)
    t0 = time.perf_counter()
    sampler.start()
    time.sleep(duration - 2 * margin)
    util = sampler.stop()
    batches = delta.done()
    wall = time.perf_counter() - t0
    out, err = proc.communicate(timeout=duration + warmup + 300)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}: {err.strip()}")
    load = json.loads(out.strip().splitlines()[-1])
    return {
        "loadgen": load,
        "window_s": wall,
        "compute_s": batches["compute_s"],
        "batches": batches["batches"],
        "mean_batch_size": batches["mean_batch_size"],
        "nvml_utilization": util,
    }


def serve_one(name: str, plan: dict[str, Any], device: str, quick: bool, bins: dict[str, Path], trace: Path | None):
    """One model: export, offline sweep, served run, busy fractions (and the trace, for the first model)."""
    on_gpu = device == "cuda"
    offline_s = 0.5 if quick else 1.0
    warmup, duration = (1.0, 3.0) if quick else ((4.0, 12.0) if on_gpu else (3.0, 10.0))
    print(f"\n== 2. served vs offline: {name} ({plan['family']}, {plan['dtype']}, on {device})", flush=True)
    folder = exported(name, plan, device)
    manifest = json.loads((folder / "manifest.json").read_text())
    offline = run_offline(folder, device, plan, offline_s)
    best = offline["best_batch"]
    print(
        f"  offline: best batch {best}, {offline['samples_per_s']:.1f} samples/s "
        f"({offline['with_host_copies']['samples_per_s']:.1f} with host copies)",
        flush=True,
    )
    per_req = min(plan["per_req"], best)
    concurrency = min(256, max(4, 3 * INSTANCES * best // per_req))
    plan = {**plan, "per_req": per_req}
    body = BENCH_DIR / f"gpu-{name}-request.frame"
    from jit_embedding import codec

    body.write_bytes(codec.encode(make_inputs(manifest, per_req, plan.get("seq", 1), plan.get("vocab", 2), "cpu", 1)))
    config = served_config(name, folder, device, plan, best, concurrency)
    sampler = UtilizationSampler(torch.device(device))
    with bench_server.serving(bins["server"], config, BENCH_DIR / f"gpu-server-{name}.log") as srv:
        run = saturate(srv, bins["loadgen"], name, body, concurrency, warmup, duration, sampler)
    # Answered requests only: loadgen's req_per_s counts errors too, and a failing server must not look fast.
    served = run["loadgen"]["ok"] / run["loadgen"]["seconds"] * per_req
    wall = run["window_s"]
    busy = {
        "compute_over_wall": run["compute_s"] / wall,
        "compute_over_wall_per_instance": run["compute_s"] / wall / INSTANCES,
        "nvml_utilization": run["nvml_utilization"],
        "offline_events": offline["busy"]["fraction"],
    }
    print(
        f"  served: {served:.1f} samples/s = {served / offline['samples_per_s']:.2f}x offline ({per_req} samples per "
        f"request, concurrency {concurrency}, mean batch {run['mean_batch_size']:.1f}, errors "
        f"{run['loadgen']['error_count']}); compute/wall {busy['compute_over_wall']:.2f} over {INSTANCES} instances",
        flush=True,
    )
    result = {
        "family": plan["family"],
        "dtype": plan["dtype"],
        "artifact": str(folder),
        "input": {s["name"]: s["shape"] for s in manifest["inputs"]},
        "seq": plan.get("seq"),
        "samples_per_request": per_req,
        "concurrency": concurrency,
        "instances": INSTANCES,
        "offline": offline,
        "offline_samples_per_s": offline["samples_per_s"],
        "served_samples_per_s": served,
        "ratio": served / offline["samples_per_s"],
        "ratio_to_offline_with_host_copies": served / offline["with_host_copies"]["samples_per_s"],
        "served_run": run,
        "busy": busy,
    }
    if trace is not None:
        result["trace"] = trace_served(name, config, device, bins, body, concurrency, folder, plan, trace)
    busy.update(busy_goal(busy, result.get("trace")))
    return result


def busy_goal(busy: dict[str, Any], trace: dict[str, Any] | None) -> dict[str, Any]:
    """What the busy goal is judged on: how much of the time the GPU itself had work. NVML's utilization sampled
    during the saturated window (the share of time a kernel ran); else the served trace's union of kernel and copy
    intervals; else, with no GPU counter at all (a CPU run), compute seconds per instance over wall seconds, a host
    time that only bounds it."""
    if busy.get("nvml_utilization") is not None:
        return {"goal_fraction": busy["nvml_utilization"], "goal_source": "NVML utilization during the window"}
    if trace and trace.get("kind") != "offline" and trace.get("gpu_busy_fraction") is not None:
        return {"goal_fraction": trace["gpu_busy_fraction"], "goal_source": "served trace: kernels + copies / span"}
    return {
        "goal_fraction": busy["compute_over_wall_per_instance"],
        "goal_source": "compute seconds per instance / wall seconds (no GPU counter)",
    }


def trace_served(name, config, device, bins, body, concurrency, folder, plan, trace: Path) -> dict:
    """The served trace (trace_worker); if it cannot be made, a trace of the offline loop, saying which."""
    with tempfile.TemporaryDirectory(prefix="jit-gpu-trace-") as tmp:
        cfg = Path(tmp) / "server.yaml"
        cfg.write_text(json.dumps({**config, "server": {**config["server"], "host": "127.0.0.1", "port": 0}}))
        args = {
            "config": str(cfg), "device": device, "encoder": name, "loadgen": str(bins["loadgen"]), "body": str(body),
            "concurrency": concurrency, "warmup": 3.0, "window": 0.5, "trace": str(trace),
        }  # fmt: skip
        out = subprocess.run(
            [sys.executable, __file__, "--trace-worker", json.dumps(args)], capture_output=True, text=True, timeout=600
        )
    if out.returncode == 0:
        got = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  trace of served batches (in-process server): {trace} ({got['kernels']} kernels)", flush=True)
        return got
    reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
    print(f"  served trace failed ({reason}); tracing the offline loop instead", flush=True)
    offline = run_offline(folder, device, {**plan, "max_batch": 1}, 0.1, trace)
    return {"kind": "offline", "served_trace_error": out.stderr[-2000:], **offline["trace"]}


def part_served(
    device: str, quick: bool, tiny: bool, out_dir: Path, save: Callable[[dict[str, Any]], None]
) -> tuple[dict[str, Any], list[str]]:
    """Each model in turn (the VAE first); `save` gets the results so far after each, so that a run cut short
    still leaves the models it finished in the JSON."""
    bins = {
        "server": find_binary("JIT_SERVER_BINARY", SERVER_CANDIDATES, "run `make build`"),
        "loadgen": find_binary("JIT_LOADGEN_BINARY", bench_server.LOADGEN_CANDIDATES, "run `make build`"),
    }
    print(f"server: {bins['server']}\nloadgen: {bins['loadgen']}")
    results, errors = {}, []
    trace: Path | None = out_dir / "gpu-trace.json.gz"
    for name, plan in model_plans(device, tiny).items():
        try:
            results[name] = serve_one(name, plan, device, quick, bins, trace)
            trace = None  # one trace, of the first model (the VAE: the most bytes to copy per sample)
        except Exception as e:  # one model's failure is reported; the other still runs
            print(f"  {name}: FAILED: {e}", flush=True)
            results[name] = {"error": str(e)}
            errors.append(f"served/{name}: {e}")
        save(results)
    return results, errors


# ---------------------------------------------------------------------------------------------- report
def report(out: dict[str, Any]) -> list[dict[str, Any]]:
    goals: list[dict[str, Any]] = []

    def goal(what: str, value: float | None, target: float, detail: str) -> None:
        met = value is not None and value >= target
        goals.append({"goal": what, "target": target, "value": value, "met": met, "detail": detail})
        shown = "n/a" if value is None else f"{value:.3f}"
        print(f"  [{'MET ' if met else 'MISS'}] {what} >= {target}: {shown} ({detail})")

    b = out.get("bandwidth")
    if b and "ops" in b:
        print_table(
            f"1. bandwidth on {b['device']} ({b['implementation']}); copy_ {b['copy']['gb_per_s']:.1f} GB/s",
            ["op", "shape", "GB/s", "x copy", "fallback GB/s", "x fallback"],
            [[r["op"], r["shape"], f"{r['gb_per_s']:.3g}", f"{r['fraction_of_copy']:.2f}",
              f"{r['fallback_gb_per_s']:.3g}", f"{r['speedup_vs_fallback']:.1f}"] for r in b["ops"]],
        )  # fmt: skip
    served = {k: v for k, v in out.get("served", {}).items() if "ratio" in v}
    if served:
        print_table(
            "2. served (jit-embedding-server, instances 2) vs offline (same artifact, best batch, tight loop)",
            ["model", "best batch", "offline/s", "+copies/s", "served/s", "ratio", "mean batch", "errors"],
            [[k, str(v["offline"]["best_batch"]), f"{v['offline_samples_per_s']:.1f}",
              f"{v['offline']['with_host_copies']['samples_per_s']:.1f}", f"{v['served_samples_per_s']:.1f}",
              f"{v['ratio']:.3f}", f"{v['served_run']['mean_batch_size']:.1f}",
              str(v["served_run"]["loadgen"]["error_count"])] for k, v in served.items()],
        )  # fmt: skip
        busy = out["busy"]
        print_table(
            "3. busy under saturation (compute = jit_compute_seconds: stack, run and split per batch)",
            ["model", "goal value", "from", "compute/wall", "per instance", "NVML util", "offline events"],
            [[k, f"{v['goal_fraction']:.3f}", v["goal_source"].split(":")[0].split(" (")[0],
              f"{v['compute_over_wall']:.3f}", f"{v['compute_over_wall_per_instance']:.3f}",
              "n/a" if v["nvml_utilization"] is None else f"{v['nvml_utilization']:.3f}",
              f"{v['offline_events']:.3f}"] for k, v in busy["models"].items()],
        )  # fmt: skip
    print("\ngoals (measurements, not assertions):")
    if b and "ops" in b:
        for r in b["ops"]:
            goal(f"bandwidth {r['op']}", r["fraction_of_copy"], GOALS["bandwidth"], "fraction of copy_")
    for k, v in served.items():
        goal(f"served {k}", v["ratio"], GOALS["served"], "served / offline samples/s")
        goal(f"busy {k}", v["busy"]["goal_fraction"], GOALS["busy"], v["busy"]["goal_source"])
    return goals


def machine_info(device: torch.device) -> dict[str, Any]:
    info = bench_server.machine_info()
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(
            gpu=p.name, gpu_memory_gib=p.total_memory / GIB, sms=p.multi_processor_count, cuda=torch.version.cuda
        )
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny models, short runs (what the test runs on the CPU)")
    ap.add_argument("--models", choices=["full", "tiny"], help="default: full on cuda, tiny on cpu or with --quick")
    ap.add_argument("--parts", default="bandwidth,served", help="bandwidth and/or served (served includes busy)")
    ap.add_argument("--out-dir", help="trace and default JSON folder (default: $OUT if set, else build/bench/gpu)")
    ap.add_argument("--json", metavar="PATH", help="results (default: OUT_DIR/gpu.json)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu.py: no CUDA device (torch.cuda.is_available() is False); use --device cpu", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir or os.environ.get("OUT") or BENCH_DIR / "gpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else out_dir / "gpu.json"
    tiny = args.models == "tiny" if args.models else (args.quick or args.device == "cpu")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    device = torch.device(args.device)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    info = machine_info(device)
    print("command: " + " ".join(shlex.quote(a) for a in getattr(sys, "orig_argv", [sys.executable, *sys.argv])))
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info.get('gpu', 'no GPU used')}")

    out: dict[str, Any] = {"argv": sys.argv, "machine": info, "device": args.device, "quick": args.quick}
    errors: list[str] = []
    json_path.parent.mkdir(parents=True, exist_ok=True)

    def save(complete: bool = False) -> None:
        """The JSON so far ("complete": false until the end): a run stopped at a time limit keeps what it measured."""
        out["complete"] = complete
        out["errors"] = errors
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps(out, indent=2))
        os.replace(tmp, json_path)

    if "bandwidth" in parts:
        try:
            out["bandwidth"] = part_bandwidth(device, args.quick)
        except Exception as e:
            print(f"  bandwidth: FAILED: {e}", flush=True)
            out["bandwidth"] = {"error": str(e)}
            errors.append(f"bandwidth: {e}")
        save()
    if "served" in parts:

        def save_served(served: dict[str, Any]) -> None:
            out["served"] = served
            ok = {k: v for k, v in served.items() if "busy" in v}
            out["busy"] = {
                "models": {k: v["busy"] for k, v in ok.items()},
                "trace": next((v["trace"] for v in ok.values() if "trace" in v), None),
                "note": f"compute/wall sums the per-batch time of {INSTANCES} instances, so it can exceed 1; per "
                "instance divides by their number; NVML utilization: the driver's share of time with a kernel running",
            }
            save()

        served, errs = part_served(args.device, args.quick, tiny, out_dir, save_served)
        errors += errs
        save_served(served)
    out["goals"] = report(out)
    save(complete=True)
    print(f"\nresults written to {json_path}")
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--export-worker":
        export_worker(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 3 and sys.argv[1] == "--offline-worker":
        offline_worker(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--trace-worker":
        trace_worker(sys.argv[2])
    else:
        sys.exit(main())
