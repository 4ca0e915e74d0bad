"""The trainer's view of JIT embeddings against encoders run in the training process and precomputed ones.

Runs the demo (examples/train_text_to_image.py --compare) twice as a subprocess on the same fresh cache
folder: cold (an empty embedding cache: every sample the JIT mode sees is computed by the server) and warm
(the same samples again: the server answers from its cache). Each run trains the same denoiser three ways:

  jit          a DataLoader over JITEmbeddingDataset: the workers ask jit-embedding-server for the embeddings
  onthefly     the same exported encoders loaded in the training process and run on each batch in the
               training step (the baseline this project replaces)
  precomputed  every embedding computed first (timed apart, not in the step times) and read from disk:
               the floor for the trainer's step time

The script parses the demo's "side by side" tables and prints, per run and mode, the step time, the fraction
of it the trainer waited on its DataLoader, the trainer's CPU seconds (and the workers' and server's), and
the step time and trainer CPU as ratios to precomputed. Ratios, not bare times, are the result: both the
baseline and ours run in the same demo process, back to back.

Why these settings (image 32, batch 16, dataset = steps x batch): the comparison is meaningful when the
trainer's own step costs about as much as computing the batch's embeddings; if the trainer step were 10x
the encoders, every mode would look the same, and if it were 10x smaller, on-the-fly would look arbitrarily
bad. At the demo's 32x32 images and batch 16 on a 2-core CPU, a denoiser step is ~100 ms and the VAE +
MiniLM cost for a batch ~80 ms (the demo's precompute pass: 512 samples in 2.6 s); the script measures both
in every run (trainer step = precomputed step time minus its wait; encoder cost per batch = precompute
seconds x batch / dataset size) and prints their ratio, so the choice is checked, not assumed. Larger images
grow both, smaller ones make the MiniLM cost dominate. 32 is also the size the demo's artifacts are exported
for by default, so no export is needed. The dataset has steps x batch samples, so the cold run sees each
sample once (misses, except for captions that repeat: the dataset has few distinct captions, so
about 45% of the cold run's lookups are text hits) and the warm run sees exactly the same samples (all hits).

Runtime: about 3.5 minutes on 2 cores with the defaults (200 steps); --quick (60 steps) about 1.5 minutes.
Nothing here asserts a timing; the demo's own PASS/FAIL (the loss fell) is reported.

    python3 benchmarks/vs_in_process.py [--quick] [--steps N] [--batch-size B] [--image-size S]
                                        [--dataset-size N] [--workers W] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "build" / "bench"
DEMO = ROOT / "examples" / "train_text_to_image.py"
MODES = ("jit", "onthefly", "precomputed")
COLUMNS = ("step_ms", "steps_per_s", "wait_pct", "trainer_cpu_s", "workers_cpu_s", "server_cpu_s")
ROW = re.compile(r"^(jit|onthefly|precomputed)\s+" + r"\s+".join([r"([-\d.]+)"] * len(COLUMNS)) + r"\s+(\S+)\s*$")
PRECOMPUTE = re.compile(r"^precompute pass\s+([\d.]+) s")
CACHE = re.compile(r"^embedding cache\s+(\d+)/(\d+) embeddings from the cache")
TOTAL = re.compile(r"^total ([\d.]+) s; (PASS|FAIL)")


def parse(output: str) -> dict[str, Any]:
    """The side-by-side table, the precompute time, the JIT mode's cache hits and the demo's verdict."""
    modes: dict[str, dict[str, float]] = {}
    out: dict[str, Any] = {"modes": modes}
    in_table = False
    for line in output.splitlines():
        if line.startswith("== side by side =="):
            in_table = True
        elif in_table and (m := ROW.match(line)):
            modes[m.group(1)] = {c: float(v) for c, v in zip(COLUMNS, m.groups()[1:-1])}
        elif m := PRECOMPUTE.match(line):
            out["precompute_s"] = float(m.group(1))
        elif m := CACHE.match(line):
            out["cache_hits"], out["cache_lookups"] = int(m.group(1)), int(m.group(2))
        elif m := TOTAL.match(line):
            out["total_s"], out["verdict"] = float(m.group(1)), m.group(2)
    missing = [m for m in MODES if m not in modes]
    if missing or "precompute_s" not in out:
        raise RuntimeError(f"could not parse the demo's side-by-side table (missing {missing or 'precompute'})")
    base = modes["precomputed"]
    for row in modes.values():
        row["step_vs_precomputed"] = row["step_ms"] / base["step_ms"]
        row["trainer_cpu_vs_precomputed"] = row["trainer_cpu_s"] / base["trainer_cpu_s"]
    return out


def run_demo(label: str, args: argparse.Namespace, workdir: Path, cache_dir: Path) -> dict[str, Any]:
    cmd = [
        sys.executable, str(DEMO), "--compare", "--steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--image-size", str(args.image_size), "--dataset-size", str(args.dataset_size),
        "--workers", str(args.workers), "--workdir", str(workdir / label), "--cache-dir", str(cache_dir),
        "--plot", str(workdir / f"{label}.png"), "--log-every", "0",
    ]  # fmt: skip
    print(f"\n-- {label}: {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    wall = time.perf_counter() - t0
    log = workdir / f"{label}.log"
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode not in (0, 1):  # 1: the loss did not fall in some mode, still a measurement
        raise RuntimeError(f"the demo exited {proc.returncode} (log: {log}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    result = parse(proc.stdout)
    result["wall_s"], result["log"] = wall, str(log)
    base = result["modes"]["precomputed"]
    result["trainer_step_ms"] = base["step_ms"] * (1 - base["wait_pct"] / 100)
    result["encoder_ms_per_batch"] = 1e3 * result["precompute_s"] * args.batch_size / args.dataset_size
    result["encoder_to_trainer"] = result["encoder_ms_per_batch"] / result["trainer_step_ms"]
    hits = f", JIT cache hits {result['cache_hits']}/{result['cache_lookups']}" if "cache_lookups" in result else ""
    print(f"   {wall:.0f} s, demo verdict {result.get('verdict', '?')}{hits}", flush=True)
    return result


def report(runs: dict[str, dict[str, Any]]) -> None:
    header = ["run", "mode", "step ms", "wait %", "trainer CPU s", "workers CPU s", "server CPU s",
              "step x precomp.", "trainer CPU x precomp."]  # fmt: skip
    rows = []
    for label, r in runs.items():
        for mode in MODES:
            m = r["modes"][mode]
            rows.append(
                [label, mode, f"{m['step_ms']:.1f}", f"{m['wait_pct']:.1f}", f"{m['trainer_cpu_s']:.1f}",
                 f"{m['workers_cpu_s']:.1f}", f"{m['server_cpu_s']:.1f}", f"{m['step_vs_precomputed']:.2f}x",
                 f"{m['trainer_cpu_vs_precomputed']:.2f}x"]
            )  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = lambda c: "  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths)))  # noqa: E731
    print("\ntrainer-side view, cold and warm embedding cache (ratios to precomputed in the same run)")
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    print()
    for label, r in runs.items():
        hits = r.get("cache_hits", 0) / r["cache_lookups"] if r.get("cache_lookups") else float("nan")
        print(
            f"  {label}: trainer step {r['trainer_step_ms']:.1f} ms (precomputed, less its wait), encoders "
            f"{r['encoder_ms_per_batch']:.1f} ms per batch (precompute pass {r['precompute_s']:.1f} s) -> "
            f"encoders / trainer = {r['encoder_to_trainer']:.2f}; JIT cache hits {100 * hits:.1f}%"
        )
    if "cold" in runs and "warm" in runs:
        c, w = runs["cold"]["modes"]["jit"], runs["warm"]["modes"]["jit"]
        print(
            f"  JIT warm / cold step time {w['step_ms'] / c['step_ms']:.2f}, wait {c['wait_pct']:.1f}% -> "
            f"{w['wait_pct']:.1f}%, server CPU {c['server_cpu_s']:.1f} s -> {w['server_cpu_s']:.1f} s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200, help="training steps per mode (default 200)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=32, help="the demo's image size (default 32: no re-export)")
    ap.add_argument("--dataset-size", type=int, default=0, help="samples (default steps x batch: each seen once)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    ap.add_argument("--quick", action="store_true", help="60 steps")
    ap.add_argument("--workdir", type=Path, default=BENCH_DIR / "vs_in_process", help="demo workdirs and logs")
    ap.add_argument("--json", metavar="PATH", default=str(BENCH_DIR / "vs_in_process.json"), help="results (JSON)")
    args = ap.parse_args()
    if args.quick:
        args.steps = 60
    if args.steps < 1 or args.batch_size < 1:
        ap.error("--steps and --batch-size must be positive")
    args.dataset_size = args.dataset_size or args.steps * args.batch_size
    workdir = args.workdir.resolve()
    cache_dir = workdir / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)  # cold: a fresh cache folder
    workdir.mkdir(parents=True, exist_ok=True)
    print("command: " + " ".join(shlex.quote(a) for a in getattr(sys, "orig_argv", [sys.executable, *sys.argv])))
    print(
        f"machine: {len(os.sched_getaffinity(0))} usable cores, load average {os.getloadavg()[0]:.2f}; "
        f"image {args.image_size}, batch {args.batch_size}, {args.steps} steps, {args.dataset_size} samples, "
        f"{args.workers} workers"
    )
    runs = {label: run_demo(label, args, workdir, cache_dir) for label in ("cold", "warm")}
    report(runs)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    with open(args.json, "w") as f:
        json.dump({"argv": sys.argv, "settings": settings, "runs": runs}, f, indent=2)
    print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
