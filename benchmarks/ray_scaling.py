"""jit-embedding on Ray Serve: how fast the replicas follow the load, and what an update costs.

On a local Ray cluster (started and stopped here, CPU only) the script deploys one autoscaled app
(jit_embedding.ray) serving a tiny TorchScript encoder through the real C++ server, then:

  1. scaling   a closed-loop load generator (``--concurrency`` threads, one-sample requests through
               ``EmbeddingClient(discovery=...)``) runs until Serve has ``--peak`` replicas and
               every one of them has answered, then stops; the script waits until Serve is back at
               min_replicas. Printed: when Serve's running-replica count changed, when the registry
               listed the change, when the client adopted it, and the request counts.
  2. update    under the same load, ``jit_embedding.ray.app.update`` rolls a second encoder version
               across the replicas. Printed: answers per version, failed requests, and answers whose
               output is not their version's (a mixed or stale answer).

The test encoder and the load generator are the Ray tests' own (tests/python/ray_fixtures.py), so
the numbers describe what the tests check. A measurement, not an assertion: the exit status is 0
unless the run could not complete.

    python3 benchmarks/ray_scaling.py [--concurrency 12] [--target 4] [--peak 3] [--max-replicas 4]
                                      [--upscale-delay-s 1] [--downscale-delay-s 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_common import ROOT, free_port, load_module, print_table  # benchmarks/, the script's folder, is on sys.path

rf = load_module("ray_fixtures", ROOT / "tests" / "python" / "ray_fixtures.py")
WAIT_S = 300.0


def listing(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def running(serve, app_name: str) -> int:
    s = serve.status().applications.get(app_name)
    return 0 if s is None else sum(d.replica_states.get("RUNNING", 0) for d in s.deployments.values())


class Recorder:
    """Serve's running-replica count, the registry's endpoint count and the client's endpoint
    count, each change with its time since t0."""

    def __init__(self, serve, app_name: str, url: str, client):
        self.serve, self.app_name, self.url, self.client = serve, app_name, url, client
        self.t0 = time.monotonic()
        self.events: list[tuple[float, str, int]] = []
        self._last: dict[str, int] = {}

    def poll(self) -> None:
        for what, value in (
            ("serve replicas running", running(self.serve, self.app_name)),
            ("registry endpoints", len(listing(self.url)["endpoints"])),
            ("client endpoints", len(self.client.endpoints)),
        ):
            if self._last.get(what) != value:
                self._last[what] = value
                self.events.append((time.monotonic() - self.t0, what, value))

    def until(self, what: str, condition) -> None:
        give_up = time.monotonic() + WAIT_S
        while True:
            self.poll()
            if condition():
                return
            if time.monotonic() > give_up:
                sys.exit(f"ray_scaling.py: gave up after {WAIT_S:.0f} s waiting for {what}")
            time.sleep(0.1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, default=12, help="load generator threads (default 12)")
    p.add_argument("--target", type=float, default=4.0, help="target_ongoing_requests per replica (default 4)")
    p.add_argument("--peak", type=int, default=3, help="replicas to reach before the load stops (default 3)")
    p.add_argument("--max-replicas", type=int, default=4)
    p.add_argument("--upscale-delay-s", type=float, default=1.0)
    p.add_argument("--downscale-delay-s", type=float, default=3.0)
    p.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the local Ray cluster (default 8)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    import ray
    from ray import serve

    from jit_embedding.client import EmbeddingClient
    from jit_embedding.ray import app
    from jit_embedding.ray.settings import RaySettings

    folder = Path(tempfile.mkdtemp(prefix="jit-ray-bench-"))
    configs = {s: rf.write_config(folder, rf.export_affine(folder, s), f"server-v{s}.yaml") for s in (1, 2)}
    versions = {json.loads((folder / f"affine-{s}" / "manifest.json").read_text())["version"]: s for s in (1, 2)}
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    interval = 0.4
    settings = RaySettings(
        app="bench",
        host="127.0.0.1",
        http_host="127.0.0.1",
        http_port=port,
        min_replicas=1,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target,
        upscale_delay_s=args.upscale_delay_s,
        downscale_delay_s=args.downscale_delay_s,
        metrics_interval_s=0.25,
        look_back_period_s=1.0,
        heartbeat_s=0.25,
        registry_ttl_s=1.5,
        drain_delay_s=2 * interval,
    )
    try:
        url = app.deploy(settings, configs[1])
        client = EmbeddingClient(discovery=url, discovery_interval=interval, timeout=60)
        rec = Recorder(serve, "bench", url, client)
        rec.until("the first replica", lambda: running(serve, "bench") == 1)

        # 1. scaling
        load = rf.LoadGenerator(client, concurrency=args.concurrency).start()
        started = time.monotonic() - rec.t0
        rec.until(f"{args.peak} replicas", lambda: running(serve, "bench") >= args.peak)
        rec.until("the registry", lambda: len(listing(url)["endpoints"]) >= args.peak)
        peak = listing(url)["endpoints"]
        rec.until("traffic on each replica", lambda: all(load.endpoints[e] >= 100 for e in peak))
        load.stop()
        stopped = time.monotonic() - rec.t0
        rec.until("back to 1 replica", lambda: running(serve, "bench") == 1 and len(client.endpoints) == 1)
        print_table(
            f"scaling (load from t={started:.1f} s to t={stopped:.1f} s, concurrency {args.concurrency},"
            f" target {args.target:g} per replica)",
            ["t (s)", "what", "count"],
            [[f"{t:.1f}", what, str(n)] for t, what, n in rec.events],
        )
        print(f"requests: {load.ok} answered, {len(load.failed)} failed")

        # 2. rolling update under load
        roll = rf.LoadGenerator(client, seeds_by_version=versions, concurrency=args.concurrency).start()
        while roll.ok < 50:
            time.sleep(0.05)
        t = time.monotonic()
        app.update("bench", configs[2])
        update_s = time.monotonic() - t
        roll.stop()
        print_table(
            "rolling update under load",
            ["version", "answers"],
            [[f"v{versions[v]} {v[:19]}", str(n)] for v, n in roll.versions.items()],
        )
        print(f"update took {update_s:.1f} s; {len(roll.failed)} failed requests, {len(roll.wrong)} wrong answers")
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "scaling_events": rec.events,
                        "scaling_failed": len(load.failed),
                        "scaling_answered": load.ok,
                        "update_s": update_s,
                        "update_failed": len(roll.failed),
                        "update_wrong": len(roll.wrong),
                        "update_versions": dict(roll.versions),
                    },
                    indent=2,
                )
            )
        app.shutdown("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
