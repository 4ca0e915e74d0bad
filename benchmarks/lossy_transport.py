"""Lossy transport (docs/transport.md): bytes on the wire, accuracy and end-to-end throughput per mode.

A `jit-embedding serve` process hosts two encoders whose outputs have the shapes of the real ones but
cost almost nothing to compute, so the measurement is the transport itself:

  t5      ids [B, 77] int64 -> h [B, 77, 4096] float32 (a T5-XXL last hidden state; an embedding lookup)
  latent  x [B, 4, 64, 64] float32 -> z [B, 4, 64, 64] float32 (an SD-VAE latent of a 512^2 image; x * 0.18)

For each encoder and each mode (exact, bf16, fp16, fp8_rowwise, fp8_tensor, int8_rowwise) the client
(EmbeddingClient.encode with ``transport=``, cache bypassed) runs the same requests; the modes take
turns within each round and the median round is reported. Per mode: response bytes per sample and
their ratio to exact, relative RMS error of the restored outputs against exact, and samples/s as a
ratio to exact. On loopback the wire is nearly free, so the quantize and restore passes show as a cost
here; across a network link the ratio of bytes is what bounds throughput. A measurement, not an
assertion.

    python3 benchmarks/lossy_transport.py [--batch 16] [--rounds 5] [--requests 8] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from jit_embedding import codec
from jit_embedding.client import EmbeddingClient

HERE = Path(__file__).resolve().parent
MODES = ("exact", "bf16", "fp16", "fp8_rowwise", "fp8_tensor", "int8_rowwise")


class T5Like(torch.nn.Module):
    """h[b, t] = E[ids[b, t]]: a [B, 77, 4096] float32 output for the price of a gather."""

    def __init__(self, vocab: int = 512, width: int = 4096):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, width, generator=torch.Generator().manual_seed(0)))

    def forward(self, ids: torch.Tensor):
        return {"h": self.table[ids]}


class LatentLike(torch.nn.Module):
    def forward(self, x: torch.Tensor):
        return {"z": x * 0.18215}


def t5_like():
    spec = {
        "inputs": [{"name": "ids", "dtype": "int64", "shape": [-1, 77]}],
        "outputs": [{"name": "h", "dtype": "float32", "shape": [-1, 77, 4096]}],
    }
    return T5Like(), spec


def latent_like():
    spec = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4, 64, 64]}],
        "outputs": [{"name": "z", "dtype": "float32", "shape": [-1, 4, 64, 64]}],
    }
    return LatentLike(), spec


def start_server(folder: Path, batch: int) -> tuple[subprocess.Popen, int]:
    batching = {"max_batch_size": batch, "max_queue_delay_us": 0}
    config = {
        "server": {},
        "cache": {"enabled": False},
        "encoders": [
            {"name": "t5", "factory": "lossy_transport:t5_like", **batching},
            {"name": "latent", "factory": "lossy_transport:latent_like", **batching},
        ],
    }
    cfg = folder / "server.yaml"
    cfg.write_text(yaml.safe_dump(config))
    port_file = folder / "port"
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(folder / "server.log", "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "jit_embedding.cli", "serve", "--config", str(cfg), "--port", "0"]
            + ["--port-file", str(port_file)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"server did not start; see {folder / 'server.log'}")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def response_bytes(port: int, encoder: str, inputs: dict, mode: str) -> int:
    """The size of one response frame, asked over plain HTTP."""
    import http.client

    meta = {"cache": "bypass", **({"transport": mode} if mode != "exact" else {})}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", f"/v1/encode/{encoder}", body=codec.encode(inputs, meta=meta))
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise SystemExit(f"{encoder} {mode}: HTTP {resp.status}: {body[:300]!r}")
        return len(body)
    finally:
        conn.close()


def rel_rms(exact: torch.Tensor, got: torch.Tensor) -> float:
    return float((got.double() - exact.double()).pow(2).mean().sqrt() / exact.double().pow(2).mean().sqrt())


def measure(client: EmbeddingClient, port: int, encoder: str, inputs: dict, batch: int, args) -> list[dict]:
    exact, _ = client.encode(encoder, inputs)
    out_name = next(iter(exact))
    rows = {}
    for mode in MODES:
        got, _ = client.encode(encoder, inputs, transport=None if mode == "exact" else mode)
        rows[mode] = {
            "mode": mode,
            "bytes_per_sample": response_bytes(port, encoder, inputs, mode) / batch,
            "rel_rms": rel_rms(exact[out_name], got[out_name]),
            "rounds": [],
        }
    for _ in range(args.rounds):
        for mode in MODES:
            t0 = time.perf_counter()
            for _ in range(args.requests):
                client.encode(encoder, inputs, transport=None if mode == "exact" else mode)
            rows[mode]["rounds"].append(args.requests * batch / (time.perf_counter() - t0))
    base = statistics.median(rows["exact"]["rounds"])
    for r in rows.values():
        r["samples_per_s"] = statistics.median(r["rounds"])
        r["throughput_vs_exact"] = r["samples_per_s"] / base
        r["bytes_vs_exact"] = r["bytes_per_sample"] / rows["exact"]["bytes_per_sample"]
    return list(rows.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=8, help="requests per mode per round")
    ap.add_argument("--quick", action="store_true", help="batch 4, 2 rounds of 2 requests")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.batch, args.rounds, args.requests = 4, 2, 2
    gen = torch.Generator().manual_seed(1)
    workloads = {
        "t5": {"ids": torch.randint(0, 512, (args.batch, 77), generator=gen)},
        "latent": {"x": torch.randn(args.batch, 4, 64, 64, generator=gen) * 5},
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="jit-lossy-") as tmp:
        proc, port = start_server(Path(tmp), args.batch)
        try:
            client = EmbeddingClient([f"127.0.0.1:{port}"], timeout=300)
            for encoder, inputs in workloads.items():
                results[encoder] = measure(client, port, encoder, inputs, args.batch, args)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"lossy transport, batch {args.batch}, median of {args.rounds} rounds x {args.requests} requests, loopback")
    for encoder, rows in results.items():
        print(f"\n{encoder}")
        head = ("mode", "KiB/sample", "bytes vs exact", "rel RMS", "samples/s", "vs exact")
        print(f"  {head[0]:<13} {head[1]:>10} {head[2]:>15} {head[3]:>9} {head[4]:>10} {head[5]:>9}")
        for r in rows:
            print(
                f"  {r['mode']:<13} {r['bytes_per_sample'] / 1024:>10.1f} {r['bytes_vs_exact']:>15.3f}"
                f" {r['rel_rms'] * 100:>8.3f}% {r['samples_per_s']:>10.1f} {r['throughput_vs_exact']:>9.2f}"
            )
    if args.json:
        args.json.write_text(json.dumps({"batch": args.batch, "results": results}, indent=2))


if __name__ == "__main__":
    main()
