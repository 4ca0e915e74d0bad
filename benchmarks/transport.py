"""Large-body throughput of POST /v1/encode against a raw loopback TCP socket, per body size.

For each size S (default 1, 16 and 64 MiB) the same bytes move three ways, all timed by jit-loadgen in the
same run (each path once per round, rounds interleaved, the median round reported):

  raw TCP   jit-loadgen --raw-tcp --bytes B: B bytes sent R times over a loopback TCP socket, received into a
            reused buffer, 1-byte reply (the physical limit of this machine's loopback)
  sink      jit-loadgen --http-upload --sink --bytes B: the same B bytes POSTed by the same HTTP client to a
            minimal in-process HTTP server (the client's ceiling)
  encode    jit-loadgen --http-upload --body FRAME: a frame (jit_embedding.codec) with one [1, S/4] float32
            tensor POSTed to jit-embedding-server's /v1/encode/rowsum, an encoder that sums its tensor
            (benchmarks/server.py part c's encoder): upload, decode with checksum verification, the batcher,
            one pass over the tensor and the response

B is the frame's size (S plus the frame's header), so the three move exactly as many bytes. R is chosen so
that each measurement moves about --total-mib MiB (at least 3 requests). Reported per size: GB/s (GB = 1e9
bytes) of each path, each as a ratio to raw TCP, and the goal "POST /v1/encode at least 0.5x raw TCP" as
MET or MISS. A measurement, not an assertion: a MISS does not fail the run. jit-loadgen shares the machine's
cores with the server, so the numbers are for this machine as a whole.

The helpers (finding the binaries, exporting the encoder, starting the server, running jit-loadgen) are
benchmarks/server.py's, imported as a module.

    python3 benchmarks/transport.py [--sizes 1,16,64] [--total-mib 1024] [--rounds 3] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from bench_common import load_module  # benchmarks/, the script's folder, is on sys.path

from jit_embedding import codec

GOAL_RATIO = 0.5  # POST /v1/encode GB/s / raw TCP GB/s


# benchmarks/server.py's helpers: finding the binaries, exporting, starting our server, running jit-loadgen.
bench_server = load_module("jit_bench_server", Path(__file__).with_name("server.py"))
MIB = bench_server.MIB
BENCH_DIR = bench_server.BENCH_DIR


def make_frame(size: int, path: Path) -> int:
    """Writes a frame with one [1, size/4] float32 tensor of seeded random values; returns its length."""
    x = torch.rand(1, size // 4, generator=torch.Generator().manual_seed(size))
    data = codec.encode({"x": x})
    path.write_bytes(data)
    return len(data)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median GB/s, with every round's GB/s attached."""
    ordered = sorted(runs, key=lambda r: r["gb_per_s"])
    pick = dict(ordered[(len(ordered) - 1) // 2])
    pick["rounds_gb_per_s"] = [r["gb_per_s"] for r in runs]
    return pick


def measure_size(srv: Any, loadgen: Path, size: int, total_mib: int, rounds: int) -> dict[str, Any]:
    frame_path = BENCH_DIR / f"transport-{size // MIB}mib.frame"
    try:
        nbytes = make_frame(size, frame_path)
        repeat = max(3, (total_mib * MIB) // nbytes)
        cases = {
            "raw_tcp": ["--raw-tcp", "--bytes", str(nbytes), "--repeat", str(repeat)],
            "sink": ["--http-upload", "--sink", "--bytes", str(nbytes), "--repeat", str(repeat)],
            "encode": ["--http-upload", "--url", srv.url("/v1/encode/rowsum"), "--body", str(frame_path),
                       "--repeat", str(repeat), "--timeout", "300"],
        }  # fmt: skip
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in cases}
        for _ in range(rounds):
            for label, args in cases.items():
                runs[label].append(bench_server.run_loadgen(loadgen, *args))
    finally:
        frame_path.unlink(missing_ok=True)
    out: dict[str, Any] = {"size_bytes": size, "body_bytes": nbytes, "repeat": repeat, "rounds": rounds}
    for label, rs in runs.items():
        out[label] = median_run(rs)
    raw = out["raw_tcp"]["gb_per_s"]
    for label in ("sink", "encode"):
        out[label]["ratio_to_raw_tcp"] = out[label]["gb_per_s"] / raw
        statuses = out[label].get("statuses", {})
        out[label]["all_ok"] = set(statuses) == {"200"}
    out["goal_met"] = out["encode"]["all_ok"] and out["encode"]["ratio_to_raw_tcp"] >= GOAL_RATIO
    print(
        f"  {size // MIB} MiB x {repeat}: raw TCP {raw:.2f} GB/s, sink {out['sink']['gb_per_s']:.2f} GB/s, "
        f"encode {out['encode']['gb_per_s']:.2f} GB/s (statuses {out['encode']['statuses']})",
        flush=True,
    )
    return out


def report(results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        raw, sink, enc = r["raw_tcp"], r["sink"], r["encode"]
        rows.append(
            [f"{r['size_bytes'] // MIB} MiB", str(r["repeat"]), f"{raw['gb_per_s']:.2f}", f"{sink['gb_per_s']:.2f}",
             f"{enc['gb_per_s']:.2f}", f"{sink['ratio_to_raw_tcp']:.2f}x", f"{enc['ratio_to_raw_tcp']:.2f}x",
             ", ".join(f"{k}: {v}" for k, v in enc["statuses"].items())]
        )  # fmt: skip
    bench_server.print_table(
        "large bodies over loopback (GB/s, GB = 1e9 bytes; median of the rounds; ratios to raw TCP)",
        ["body", "requests", "raw TCP", "HTTP sink", "POST /v1/encode", "sink/raw", "encode/raw", "encode statuses"],
        rows,
    )
    print()
    for r in results:
        enc = r["encode"]
        verdict = "MET" if r["goal_met"] else "MISS"
        note = "" if enc["all_ok"] else " (not every request answered 200)"
        print(
            f"  [{verdict}] {r['size_bytes'] // MIB} MiB: POST /v1/encode at least {GOAL_RATIO}x raw TCP: "
            f"{enc['ratio_to_raw_tcp']:.2f}x{note}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,16,64", help="body sizes in MiB, comma-separated (default 1,16,64)")
    ap.add_argument("--total-mib", type=int, default=1024, help="MiB moved per measurement (default 1024)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per size; the median is reported (default 3)")
    ap.add_argument("--quick", action="store_true", help="256 MiB per measurement, 1 round")
    ap.add_argument("--json", metavar="PATH", default=str(BENCH_DIR / "transport.json"), help="results (JSON)")
    args = ap.parse_args()
    if args.quick:
        args.total_mib, args.rounds = 256, 1
    sizes = [int(float(s) * MIB) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 4 * 1024 or args.rounds < 1 or args.total_mib < 1:
        ap.error("--sizes must be positive (at least 4 KiB each), --rounds and --total-mib at least 1")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    server_bin = bench_server.find_binary("JIT_SERVER_BINARY", bench_server.SERVER_CANDIDATES, "run `make build`")
    loadgen = bench_server.find_binary(
        "JIT_LOADGEN_BINARY", bench_server.LOADGEN_CANDIDATES, "run `make build` (JIT_BUILD_TESTS or _BENCHMARKS)"
    )
    info = bench_server.machine_info()
    print("command: " + " ".join(shlex.quote(a) for a in getattr(sys, "orig_argv", [sys.executable, *sys.argv])))
    print(
        f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), torch {info['torch']}, "
        f"load average {info['loadavg_at_start'][0]:.2f}\nserver: {server_bin}\nloadgen: {loadgen}"
    )
    folder = bench_server.export_module("row-sum", "row_sum", 2)
    config = {
        # Tuned for its largest body, as a deployment of large uploads would be: each handler thread
        # keeps its body buffer (retain_body_bytes) instead of allocating and faulting in a fresh one.
        "server": {"threads": 8, "max_body_bytes": 2 * max(sizes) + MIB, "retain_body_bytes": 2 * max(sizes) + MIB},
        "encoders": [{"name": "rowsum", "artifact": str(folder), "max_batch_size": 2, "max_queue_delay_us": 0}],
    }
    results = []
    print(f"\n== {', '.join(f'{s // MIB} MiB' for s in sizes)}: raw TCP vs HTTP sink vs POST /v1/encode", flush=True)
    with bench_server.serving(server_bin, config, BENCH_DIR / "transport-server.log") as srv:
        for size in sizes:
            results.append(measure_size(srv, loadgen, size, args.total_mib, args.rounds))
    report(results)
    goal = {
        "target": f"POST /v1/encode >= {GOAL_RATIO}x raw TCP",
        "met": {r["size_bytes"]: r["goal_met"] for r in results},
    }
    with open(args.json, "w") as f:
        json.dump({"argv": sys.argv, "machine": info, "args": vars(args), "sizes": results, "goal": goal}, f, indent=2)
    print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
