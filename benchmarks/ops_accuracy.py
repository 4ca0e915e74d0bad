"""Accuracy and CPU throughput of jit_embedding.ops (the lossy transports and preprocessing), in one run.

Part 1, accuracy: a standard Gaussian [4096, 1024] float32 matrix (seeded) goes through each transport and back:

  fp8 rowwise      quantize_fp8_rowwise -> dequantize_fp8_rowwise      (1 byte per element + one fp32 scale per row)
  fp8 per-tensor   quantize_fp8_per_tensor -> dequantize_fp8_per_tensor (1 byte per element + one fp32 scale)
  int8 rowwise     quantize_int8_rowwise -> dequantize_int8_rowwise    (1 byte per element + one fp32 scale per row)
  bf16, fp16       cast to the 16-bit dtype (the error is that of the narrowing; widening back is exact)

and the script prints, per transport, bytes per element on the wire, the size as a fraction of fp32, the relative
RMS error ||y - x|| / ||x||, and the largest error relative to the row's absmax. docs/kernels.md quotes this table.

Part 2, throughput: each op on the CPU, ours (the C++ reference that CPU tensors run: single-threaded, one element
at a time, GIL released) against torch doing the same job with its own ops, side by side: every op and its
baseline run round-robin for --repeats rounds after one warm-up each, and the median is reported. The warm-up's
outputs are compared (codes and scales bit for bit, floats to 1e-5), so both sides do the same work. GB/s counts
the input's bytes (1e9 per GB); "ours / torch" > 1 means ours is faster. torch runs on --torch-threads threads
(default 1, like our reference; pass 0 to leave torch's default).

    python3 benchmarks/ops_accuracy.py                   # about 10 s on 2 cores
    python3 benchmarks/ops_accuracy.py --quick           # [1024, 1024], 3 rounds
    python3 benchmarks/ops_accuracy.py --repeats 9 --torch-threads 0 --json build/bench/ops_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from bench_common import print_table  # benchmarks/, the script's folder, is on sys.path

from jit_embedding import ops

FP8 = torch.float8_e4m3fn
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# ---- part 1: accuracy ---------------------------------------------------------------------------------------------


def accuracy(x: torch.Tensor) -> list[dict[str, Any]]:
    rows, cols = x.shape
    transports: list[tuple[str, Callable[[], torch.Tensor], float]] = [
        ("fp8 rowwise", lambda: ops.dequantize_fp8_rowwise(*ops.quantize_fp8_rowwise(x)), 1 + 4 / cols),
        ("fp8 per-tensor", lambda: ops.dequantize_fp8_per_tensor(*ops.quantize_fp8_per_tensor(x)), 1 + 4 / x.numel()),
        ("int8 rowwise", lambda: ops.dequantize_int8_rowwise(*ops.quantize_int8_rowwise(x)), 1 + 4 / cols),
        ("bf16", lambda: ops.cast(x, torch.bfloat16).float(), 2.0),
        ("fp16", lambda: ops.cast(x, torch.float16).float(), 2.0),
    ]
    x64 = x.double()
    row_absmax = x64.abs().amax(dim=1, keepdim=True)
    results = []
    for name, roundtrip, bytes_per_element in transports:
        err = roundtrip().double() - x64
        results.append(
            {
                "transport": name,
                "bytes_per_element": bytes_per_element,
                "fraction_of_fp32": bytes_per_element / 4,
                "rel_rms_error": float(err.pow(2).mean().sqrt() / x64.pow(2).mean().sqrt()),
                "max_error_over_row_absmax": float((err.abs() / row_absmax).max()),
            }
        )
    return results


# ---- part 2: throughput, ours vs torch ------------------------------------------------------------------------------


def torch_fp8_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fp8 rowwise contract in torch ops: absmax over finite values, scale rule, saturate, NaN -> 0x7F."""
    absmax = torch.where(torch.isfinite(x), x.abs(), torch.zeros_like(x)).amax(dim=-1)
    scales = absmax / torch.full_like(absmax, ops.FP8_MAX)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = x / scales[:, None]
    codes = q.clamp(-ops.FP8_MAX, ops.FP8_MAX).to(FP8).view(torch.uint8)
    return torch.where(torch.isnan(q), torch.full_like(codes, 0x7F), codes).view(FP8), scales


def torch_fp8_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    codes, scale = torch_fp8_rowwise(x.reshape(1, -1))
    return codes.reshape(x.shape), scale


def torch_int8_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    absmax = torch.where(torch.isfinite(x), x.abs(), torch.zeros_like(x)).amax(dim=-1)
    scales = absmax / torch.full_like(absmax, ops.INT8_MAX)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.nan_to_num(x / scales[:, None], nan=0.0, posinf=ops.INT8_MAX, neginf=-ops.INT8_MAX)
    return torch.round(q).clamp(-ops.INT8_MAX, ops.INT8_MAX).to(torch.int8), scales


def torch_preprocess(f: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    v = f.permute(0, 3, 1, 2).float()
    if mode == "bilinear":
        v = F.interpolate(v, size=size, mode="bilinear", align_corners=False, antialias=False)
    elif mode == "area":
        v = F.adaptive_avg_pool2d(v, size)
    m = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((v / 255 - m) / s).contiguous()


def same(a: Any, b: Any) -> bool:
    """Outputs agree: integer and fp8 tensors bit for bit, floats to 1e-5 (resizes round differently)."""
    if isinstance(a, tuple):
        return all(same(p, q) for p, q in zip(a, b))
    if a.dtype in (FP8, torch.int8, torch.bfloat16, torch.float16) or (a.dtype == torch.float32 and a.dim() < 3):
        width = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[a.element_size()]
        return a.dtype == b.dtype and torch.equal(a.view(width), b.view(width))
    return torch.allclose(a, b, rtol=0, atol=1e-5)


def throughput_cases(x: torch.Tensor, images: torch.Tensor) -> list[tuple[str, int, Callable, Callable]]:
    """(name, input bytes, ours, torch) per op."""
    c8, s8 = ops.quantize_fp8_rowwise(x)
    ci, si = ops.quantize_int8_rowwise(x)
    xb = x.to(torch.bfloat16)
    n = x.numel()
    return [
        ("quantize fp8 rowwise", 4 * n, lambda: ops.quantize_fp8_rowwise(x), lambda: torch_fp8_rowwise(x)),
        ("quantize fp8 per-tensor", 4 * n, lambda: ops.quantize_fp8_per_tensor(x), lambda: torch_fp8_per_tensor(x)),
        ("quantize int8 rowwise", 4 * n, lambda: ops.quantize_int8_rowwise(x), lambda: torch_int8_rowwise(x)),
        ("dequantize fp8 rowwise", n, lambda: ops.dequantize_fp8_rowwise(c8, s8), lambda: c8.float() * s8[:, None]),
        ("dequantize int8 rowwise", n, lambda: ops.dequantize_int8_rowwise(ci, si), lambda: ci.float() * si[:, None]),
        ("cast fp32 -> bf16", 4 * n, lambda: ops.cast(x, torch.bfloat16), lambda: x.to(torch.bfloat16)),
        ("cast fp32 -> fp16", 4 * n, lambda: ops.cast(x, torch.float16), lambda: x.to(torch.float16)),
        ("cast bf16 -> fp32", 2 * n, lambda: ops.cast(xb, torch.float32), lambda: xb.to(torch.float32)),
        *[
            (
                f"preprocess {mode} {images.shape[1]}->{size[0]}",
                images.numel(),
                lambda mode=mode, size=size: ops.preprocess(images, CLIP_MEAN, CLIP_STD, size=size, mode=mode),
                lambda mode=mode, size=size: torch_preprocess(images, size, mode),
            )
            for mode, size in (("none", tuple(images.shape[1:3])), ("bilinear", (224, 224)), ("area", (128, 128)))
        ],
    ]


def throughput(x: torch.Tensor, images: torch.Tensor, repeats: int) -> list[dict[str, Any]]:
    cases = throughput_cases(x, images)
    for name, _, ours, baseline in cases:  # warm-up, and the check that both sides compute the same thing
        if not same(ours(), baseline()):
            raise SystemExit(f"ops_accuracy.py: {name}: ours and the torch baseline disagree")
    times: dict[str, dict[str, list[float]]] = {name: {"ours": [], "torch": []} for name, *_ in cases}
    for _ in range(repeats):
        for name, _, ours, baseline in cases:
            for side, fn in (("ours", ours), ("torch", baseline)):
                start = time.perf_counter()
                fn()
                times[name][side].append(time.perf_counter() - start)
    results = []
    for name, nbytes, _, _ in cases:
        ours_s, torch_s = statistics.median(times[name]["ours"]), statistics.median(times[name]["torch"])
        results.append(
            {
                "op": name,
                "input_bytes": nbytes,
                "ours_gb_s": nbytes / ours_s / 1e9,
                "torch_gb_s": nbytes / torch_s / 1e9,
                "ours_over_torch": torch_s / ours_s,
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="[1024, 1024] throughput inputs, 3 rounds")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per op (default 7, --quick 3)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch's intra-op threads (0: torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)

    x = torch.randn(4096, 1024, generator=torch.Generator().manual_seed(0))
    acc = accuracy(x)
    print_table(
        "Accuracy: standard Gaussian [4096, 1024] fp32, round trip through each transport",
        ["transport", "bytes/elem", "of fp32", "rel RMS error", "max err / row absmax"],
        [
            [
                r["transport"],
                f"{r['bytes_per_element']:.4f}",
                f"{r['fraction_of_fp32']:.3f}",
                f"{100 * r['rel_rms_error']:.4f}%",
                f"{100 * r['max_error_over_row_absmax']:.3f}%",
            ]
            for r in acc
        ],
    )

    tx = x[:1024] if args.quick else x
    images = torch.randint(0, 256, (4 if args.quick else 16, 256, 256, 3), dtype=torch.uint8)
    tp = throughput(tx, images, repeats)
    print_table(
        f"CPU throughput: ours (C++ reference, 1 thread) vs torch ({torch.get_num_threads()} thread(s)), "
        f"median of {repeats}; fp32 [{tx.shape[0]}, {tx.shape[1]}], images uint8 {list(images.shape)}",
        ["op", "ours GB/s", "torch GB/s", "ours / torch"],
        [[r["op"], f"{r['ours_gb_s']:.2f}", f"{r['torch_gb_s']:.2f}", f"{r['ours_over_torch']:.2f}x"] for r in tp],
    )
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nGB/s counts input bytes. ours / torch > 1: ours is faster. Load average at the end: {load}.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"accuracy": acc, "throughput": tp, "torch_threads": torch.get_num_threads(), "repeats": repeats}
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
