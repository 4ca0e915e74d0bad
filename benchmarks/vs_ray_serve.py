"""jit-embedding-server against Ray Serve: the same exported encoder, the same batching, the same load.

  ours  jit-embedding-server --config: the artifact, max_batch_size B, max_queue_delay_us W,
        intra_op_threads T, one instance, cache disabled; requests are frames (jit_embedding.codec)
  Ray   a Ray Serve deployment written the way its documentation shows: a class that loads the same .pt2
        once (torch.set_num_threads(T)), a method under @serve.batch(max_batch_size=B,
        batch_wait_timeout_s=W), and an HTTP ingress __call__(request) that reads a NumPy array
        (np.save bytes) and answers one; one replica on a local Ray (ray.init(num_cpus=...))

Both are driven by the same closed-loop load generator (jit-loadgen: a prebuilt body POSTed as
application/octet-stream over keep-alive connections, one sample per request) at each concurrency level,
ours then Ray at each level, both servers up for the whole run. Reported per level: requests/s, p50 and p99
for both, ours/Ray throughput ("throughput x") and ours/Ray p99 ("p99 1/x"), and whether the issue's goal
(>= 3x the throughput and <= 1/3 of the p99 at concurrency >= 8) was met. A measurement, not an assertion:
a MISS does not fail the run. Once, before the load: both answer the same input with the same embedding.

    python3 benchmarks/vs_ray_serve.py [--encoder minilm|vae] [--concurrency 1,8,32,64] [--duration 5]
                                       [--threads T] [--max-batch B] [--max-queue-delay-us W]

Needs Ray Serve (pip install "ray[serve]"; `make bench` installs it when missing) and the built
jit-embedding-server and jit-loadgen (see benchmarks/server.py). The encoders are the demo's
(examples/train_text_to_image.py), exported into build/demo/artifacts/ on first use.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_common import BENCH_DIR, ROOT, load_module  # benchmarks/, the script's folder, is on sys.path

from jit_embedding import codec

DEMO_PATH = ROOT / "examples" / "train_text_to_image.py"
DEMO_MODULE = "train_text_to_image"
DEMO_IMAGE_SIZE = 32
GOAL_THROUGHPUT_X = 3.0  # the goal at concurrency >= GOAL_MIN_CONCURRENCY
GOAL_P99_FRACTION = 1 / 3
GOAL_MIN_CONCURRENCY = 8


# benchmarks/server.py's helpers: finding the binaries, starting our server, running jit-loadgen.
bench_server = load_module("jit_bench_server", Path(__file__).with_name("server.py"))


# ---------------------------------------------------------------------------------------------- inputs
def encoder_artifact(name: str) -> Path:
    """The demo's artifact folder for `name` ("minilm" or "vae"), exported by the demo when missing."""
    found = sorted((ROOT / "build" / "demo" / "artifacts").glob(f"{name}-aoti-*/manifest.json"))
    if found:
        return max(found, key=lambda p: p.stat().st_mtime).parent
    print("  exporting the demo's encoders (first run only) ...", flush=True)
    demo = load_module(DEMO_MODULE, DEMO_PATH)
    return demo.prepare_encoders(DEMO_IMAGE_SIZE, "aoti")[name]


def sample_inputs(manifest: dict[str, Any], seq: int) -> dict[str, np.ndarray]:
    """One sample (batch 1) for each of the manifest's inputs: token ids and a mask of ones for a text
    encoder, standard normal values for float inputs."""
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for spec in manifest["inputs"]:
        dims = spec.get("dims") or spec["shape"]
        shape = [1 if d == "batch" else seq if isinstance(d, str) else int(d) for d in dims]
        if spec["dtype"] == "int64":
            if "mask" in spec["name"]:
                out[spec["name"]] = np.ones(shape, dtype=np.int64)
            else:
                out[spec["name"]] = rng.integers(1000, 20000, size=shape, dtype=np.int64)
        else:
            out[spec["name"]] = rng.standard_normal(shape).astype(spec["dtype"])
    return out


def ray_body(inputs: dict[str, np.ndarray]) -> bytes:
    """np.save bytes: the one input, or the inputs stacked on a new first axis (MiniLM: [2, batch, seq])."""
    arrays = list(inputs.values())
    buf = io.BytesIO()
    np.save(buf, arrays[0] if len(arrays) == 1 else np.stack(arrays))
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- Ray Serve
def ray_app(artifact: Path, n_inputs: int, threads: int, max_batch: int, wait_s: float, max_ongoing: int):
    """The Ray Serve application: what a Ray Serve user writes for this encoder."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(
        num_replicas=1,
        max_ongoing_requests=max_ongoing,  # >= max_batch_size, as Ray's batching guide asks
        ray_actor_options={"num_cpus": threads},
    )
    class Encoder:
        def __init__(self):
            from jit_embedding.export import load_artifact

            torch.set_num_threads(threads)
            self.model, _ = load_artifact(artifact)

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_s)
        async def embed(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
            axis = 0 if n_inputs == 1 else 1
            batch = np.concatenate(arrays, axis=axis)
            inputs = [batch] if n_inputs == 1 else list(batch)
            (out,) = self.model(*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs))[:1]
            out = out.numpy()
            sizes = np.cumsum([a.shape[axis] for a in arrays])[:-1]
            return np.split(out, sizes)

        async def __call__(self, request: Request) -> Response:
            x = np.load(io.BytesIO(await request.body()))
            y = await self.embed(x)
            buf = io.BytesIO()
            np.save(buf, y)
            return Response(buf.getvalue(), media_type="application/octet-stream")

    return Encoder.bind()


@contextlib.contextmanager
def ray_serving(artifact: Path, n_inputs: int, args: argparse.Namespace, max_ongoing: int):
    """Ray Serve on a local Ray with the app at http://127.0.0.1:PORT/embed; yields the port."""
    import ray
    from ray import serve

    port = bench_server.free_port()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the driver's "Started Serve ..." lines
    ray.init(
        num_cpus=max(2, args.threads),
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            logging_config={"log_level": "WARNING", "enable_access_log": False},
        )
        app = ray_app(artifact, n_inputs, args.threads, args.max_batch, args.max_queue_delay_us / 1e6, max_ongoing)
        serve.run(
            app,
            name="encoder",
            route_prefix="/embed",
            logging_config={"log_level": "WARNING", "enable_access_log": False},
        )
        yield port
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


# ---------------------------------------------------------------------------------------------- measuring
def post(port: int, path: str, body: bytes) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST {path} answered {resp.status}: {data[:500]!r}")
        return data
    finally:
        conn.close()


def load(loadgen: Path, url: str, body: Path, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    return bench_server.run_loadgen(
        loadgen,
        "--url", url, "--body", str(body), "--concurrency", str(concurrency),
        "--duration", str(args.duration), "--warmup", str(args.warmup), "--timeout", "120",
    )  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", choices=["minilm", "vae"], default="minilm")
    p.add_argument("--concurrency", default="1,8,32,64", help="comma-separated levels (default 1,8,32,64)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per level and server")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each measurement")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="intra-op threads")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    p.add_argument("--seq", type=int, default=16, help="MiniLM tokens per sample (capped by the export)")
    p.add_argument("--json", type=Path, default=BENCH_DIR / "vs_ray_serve.json")
    args = p.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        print(
            'benchmarks/vs_ray_serve.py needs Ray Serve: pip install "ray[serve]" (or run `make bench`)',
            file=sys.stderr,
        )
        return 2
    import ray

    server_bin = bench_server.find_binary(
        "JIT_SERVER_BINARY", bench_server.SERVER_CANDIDATES, "build it with `make build`"
    )
    loadgen = bench_server.find_binary(
        "JIT_LOADGEN_BINARY", bench_server.LOADGEN_CANDIDATES, "configure with -DJIT_BUILD_BENCHMARKS=ON"
    )
    BENCH_DIR.mkdir(parents=True, exist_ok=True)

    folder = encoder_artifact(args.encoder)
    manifest = json.loads((folder / "manifest.json").read_text())
    seq_max = manifest.get("dynamic_dims", {}).get("seq", [1, args.seq])[1]
    seq = min(args.seq, seq_max)
    inputs = sample_inputs(manifest, seq)
    max_batch = min(args.max_batch, manifest.get("max_batch_size") or args.max_batch)
    args.max_batch = max_batch
    out_name = manifest["outputs"][0]["name"]
    shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in inputs.items())

    ours_body = BENCH_DIR / f"vs-ray-{args.encoder}.frame"
    ours_body.write_bytes(codec.encode({k: torch.from_numpy(v) for k, v in inputs.items()}))
    ray_body_path = BENCH_DIR / f"vs-ray-{args.encoder}.npy"
    ray_body_path.write_bytes(ray_body(inputs))

    print(
        f"jit-embedding-server vs Ray Serve {ray.__version__}: {args.encoder} ({folder.relative_to(ROOT)}), "
        f"one sample per request ({shapes})\n"
        f"  both: max batch {max_batch}, batch wait {args.max_queue_delay_us} us, {args.threads} intra-op "
        f"thread(s), 1 instance/replica; ours: cache disabled\n"
        f"  load: jit-loadgen, closed loop, {args.duration:g} s per level (+{args.warmup:g} s warm-up), "
        f"concurrency {args.levels}\n"
        f"  machine: {os.cpu_count()} CPUs, {platform.machine()}, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, torch {torch.__version__}",
        flush=True,
    )

    entry: dict[str, Any] = {
        "name": args.encoder,
        "artifact": str(folder),
        "max_batch_size": max_batch,
        "max_queue_delay_us": args.max_queue_delay_us,
        "max_queue_size": 16 * max(args.levels) + 1024,
        "instances": 1,
        "intra_op_threads": args.threads,
        "cache": False,
    }
    if "seq" in manifest.get("dynamic_dims", {}):
        entry["length_buckets"] = [seq]
    config = {"server": {"threads": 2 * max(args.levels) + 16}, "cache": {"enabled": False}, "encoders": [entry]}

    levels: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with (
        bench_server.serving(server_bin, config, BENCH_DIR / "vs-ray-server.log") as srv,
        ray_serving(folder, len(inputs), args, max_ongoing=max(max_batch, max(args.levels))) as ray_port,
    ):
        print(f"  servers up in {time.perf_counter() - t0:.1f} s", flush=True)
        ours_url = srv.url(f"/v1/encode/{args.encoder}")
        ray_url = f"http://127.0.0.1:{ray_port}/embed"

        # The same input, the same embedding.
        ours_out = codec.decode(post(srv.port, f"/v1/encode/{args.encoder}", ours_body.read_bytes()))[0][out_name]
        ray_out = np.load(io.BytesIO(post(ray_port, "/embed", ray_body_path.read_bytes())))
        ours_np = ours_out.numpy()
        same_shape = ours_np.shape == ray_out.shape
        max_diff = float(np.abs(ours_np - ray_out).max()) if same_shape else float("inf")
        allclose = bool(same_shape and np.allclose(ours_np, ray_out, rtol=1e-4, atol=1e-5))
        print(
            f"  same input, same output: {'yes' if allclose else 'NO'} (allclose rtol 1e-4 atol 1e-5; ours "
            f"{list(ours_np.shape)}, Ray {list(ray_out.shape)}, max |diff| {max_diff:.3g})\n",
            flush=True,
        )

        header = (
            f"{'conc':>5} | {'ours req/s':>10} {'p50 ms':>7} {'p99 ms':>7} | {'Ray req/s':>10} {'p50 ms':>7} "
            f"{'p99 ms':>7} | {'throughput x':>12} {'p99 1/x':>8} | goal (>=3x, <=1/3 p99)"
        )
        print(header)
        print("-" * len(header), flush=True)
        for c in args.levels:
            ours = load(loadgen, ours_url, ours_body, c, args)
            theirs = load(loadgen, ray_url, ray_body_path, c, args)
            tput_x = ours["req_per_s"] / theirs["req_per_s"] if theirs["req_per_s"] else float("inf")
            p99_inv = theirs["p99_ms"] / ours["p99_ms"] if ours["p99_ms"] else float("inf")
            if c >= GOAL_MIN_CONCURRENCY:
                met = tput_x >= GOAL_THROUGHPUT_X and p99_inv >= 1 / GOAL_P99_FRACTION
                verdict = f"{'MET' if met else 'MISS'} ({tput_x:.2f}x, p99 1/{p99_inv:.2f})"
            else:
                met, verdict = None, "(not a goal level)"
            errors = {k: v for k, v in (("ours", ours["errors"]), ("Ray", theirs["errors"])) if v}
            print(
                f"{c:>5} | {ours['req_per_s']:>10.1f} {ours['p50_ms']:>7.2f} {ours['p99_ms']:>7.2f} | "
                f"{theirs['req_per_s']:>10.1f} {theirs['p50_ms']:>7.2f} {theirs['p99_ms']:>7.2f} | "
                f"{tput_x:>11.2f}x {'1/' + format(p99_inv, '.2f'):>8} | {verdict}"
                + (f"  errors: {errors}" if errors else ""),
                flush=True,
            )
            levels.append(
                {
                    "concurrency": c,
                    "ours": ours,
                    "ray": theirs,
                    "throughput_x": tput_x,
                    "p99_ratio_ray_over_ours": p99_inv,
                    "goal_met": met,
                }
            )

    goal_levels = [lv for lv in levels if lv["goal_met"] is not None]
    print(
        f"\n  throughput x = ours req/s / Ray req/s; p99 1/x: ours p99 = Ray p99 / x. Goal at concurrency >= "
        f"{GOAL_MIN_CONCURRENCY}: met at {sum(bool(lv['goal_met']) for lv in goal_levels)} of "
        f"{len(goal_levels)} levels (a measurement; nothing here fails on a miss)."
    )
    result = {
        "encoder": args.encoder,
        "artifact": str(folder),
        "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in inputs.items()},
        "max_batch_size": max_batch,
        "max_queue_delay_us": args.max_queue_delay_us,
        "intra_op_threads": args.threads,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "cpus": os.cpu_count(),
        "same_output": {"allclose": allclose, "max_abs_diff": max_diff},
        "goal": {
            "throughput_x": GOAL_THROUGHPUT_X,
            "p99_fraction": GOAL_P99_FRACTION,
            "min_concurrency": GOAL_MIN_CONCURRENCY,
        },
        "levels": levels,
    }
    # One file for both encoders: each run replaces its own encoder's entry.
    old: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        old = json.loads(args.json.read_text())
    if not isinstance(old, dict) or "encoders" not in old:
        old = {"encoders": {}}
    old["encoders"][args.encoder] = result
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(old, indent=2))
    print(f"  results: {args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
