"""jit_embedding.ray on a real local Ray cluster (CPU only, started and stopped here): Serve's own
autoscaler with our policy scales the replicas 1 -> 3+ under load and back to 1 when idle; the
client's discovery follows every change within one refresh; a replica killed mid-epoch costs the
DataLoader no sample and Serve replaces it; a rolling update under load fails no request and no
answer mixes versions. Every server is the real C++ binary serving a TorchScript artifact.

Run with ``-s`` to see the scaling timeline and the request counts (the lead's report quotes them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import ray_fixtures as rf
import torch

ray = pytest.importorskip("ray", reason="Ray is the optional extra jit-embedding[ray] (scripts/setup.sh installs it)")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is part of the optional extra jit-embedding[ray]")

from jit_embedding.client import EmbeddingClient  # noqa: E402
from jit_embedding.data import JITEmbeddingDataset  # noqa: E402
from jit_embedding.ray import app  # noqa: E402
from jit_embedding.ray.settings import RaySettings  # noqa: E402

# jit_embedding.ray.app explains why the field is used despite its deprecation; pytest resets the
# module's own filter for each test.
pytestmark = pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field:DeprecationWarning")
WAIT_S = 180.0  # the longest any state change may take on a loaded 2-core machine before we give up
DISCOVERY_INTERVAL_S = 0.4


def fast_settings(http_port: int, **overrides) -> RaySettings:
    """Short delays and intervals, so a test sees Serve scale, drain and roll within seconds."""
    values = dict(
        host="127.0.0.1",
        http_host="127.0.0.1",
        http_port=http_port,
        ray_actor_options={"num_cpus": 1},
        upscale_delay_s=1.0,
        downscale_delay_s=3.0,
        metrics_interval_s=0.25,
        look_back_period_s=1.0,
        health_check_period_s=1.0,
        heartbeat_s=0.25,
        registry_ttl_s=1.5,
        drain_delay_s=2 * DISCOVERY_INTERVAL_S,
        startup_timeout_s=120.0,
    )
    values.update(overrides)
    return RaySettings(**values)


def wait_for(what: str, condition, timeout: float = WAIT_S, every: float = 0.1):
    give_up = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def listing(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def running_replicas(app_name: str) -> int:
    s = serve.status().applications.get(app_name)
    if s is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in s.deployments.values())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster with Serve's HTTP proxy on a free loopback port, and the test encoder in
    two versions. Stopped when the module's tests are done."""
    folder = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    port = rf.free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    configs = {seed: rf.write_config(folder, rf.export_affine(folder, seed), f"server-v{seed}.yaml") for seed in (1, 2)}
    versions = {json.loads((folder / f"affine-{s}" / "manifest.json").read_text())["version"]: s for s in (1, 2)}
    yield {"port": port, "configs": configs, "versions": versions, "folder": folder}
    serve.shutdown()
    ray.shutdown()


class Timeline:
    """Polls Serve's replica count and the registry's endpoint list; keeps every change."""

    def __init__(self, app_name: str, url: str):
        self.app_name, self.url = app_name, url
        self.t0 = time.monotonic()
        self.replicas: list[tuple[float, int]] = []
        self.listed: list[tuple[float, float, tuple]] = []  # (t, wall time, endpoints)

    def poll(self) -> None:
        n = running_replicas(self.app_name)
        if not self.replicas or self.replicas[-1][1] != n:
            self.replicas.append((time.monotonic() - self.t0, n))
        endpoints = tuple(listing(self.url)["endpoints"])
        if not self.listed or self.listed[-1][2] != endpoints:
            self.listed.append((time.monotonic() - self.t0, time.time(), endpoints))

    def until(self, what: str, condition) -> None:
        def check():
            self.poll()
            return condition()

        wait_for(what, check, every=0.2)


@pytest.fixture(scope="module")
def scaling_run(cluster):
    """One run of the load generator against an autoscaled app: load until Serve reaches 3+
    replicas, then idle until it is back at 1. Returns what both scaling tests check."""
    settings = fast_settings(cluster["port"], app="scale", min_replicas=1, max_replicas=4, target_ongoing_requests=4)
    url = app.deploy(settings, cluster["configs"][1])
    client = EmbeddingClient(discovery=url, discovery_interval=DISCOVERY_INTERVAL_S, timeout=60)
    timeline = Timeline("scale", url)
    timeline.until("the first replica", lambda: running_replicas("scale") == 1)
    load = rf.LoadGenerator(client, concurrency=12).start()
    load_started = time.monotonic() - timeline.t0
    timeline.until("3 replicas under load", lambda: running_replicas("scale") >= 3)
    timeline.until("the registry to list 3+", lambda: len(timeline.listed[-1][2]) >= 3)
    peak = set(timeline.listed[-1][2])
    # Balanced load on the scaled-up set: every replica answers its share before the load stops.
    timeline.until("traffic on every new replica", lambda: all(load.endpoints[e] >= 100 for e in peak))
    load.stop()
    load_stopped = time.monotonic() - timeline.t0
    timeline.until("back to 1 replica when idle", lambda: running_replicas("scale") == 1)
    timeline.until("the registry to list 1", lambda: len(timeline.listed[-1][2]) == 1)
    final = set(timeline.listed[-1][2])
    wait_for("the client to follow", lambda: set(client.endpoints) == final)
    out = {
        "timeline": timeline,
        "load": load,
        "load_started": load_started,
        "load_stopped": load_stopped,
        "peak": peak,
        "final": final,
        "discovery": client.discovery_stats(),
    }
    app.shutdown("scale")
    return out


def test_replicas_scale_up_under_load_and_back_down_when_idle(scaling_run):
    tl = scaling_run["timeline"]
    counts = [n for _, n in tl.replicas]
    window = f"{scaling_run['load_started']:.1f} .. {scaling_run['load_stopped']:.1f}"
    print(f"\nscaling timeline (s since deploy; load from {window}):")
    for t, n in tl.replicas:
        print(f"  t={t:6.1f}  running replicas {n}")
    load = scaling_run["load"]
    print(f"requests: {load.ok} answered, {len(load.failed)} failed, per endpoint {dict(load.endpoints)}")
    assert max(counts) >= 3, counts
    peak_at = next(t for t, n in tl.replicas if n >= 3)
    assert scaling_run["load_started"] <= peak_at <= scaling_run["load_stopped"], "scaled up without load"
    assert counts[-1] == 1
    assert all(t >= scaling_run["load_stopped"] for t, n in tl.replicas if n < max(counts) and t > peak_at)
    assert load.failed == [], load.failed[:3]
    assert load.ok > 0


def test_discovery_follows_scale_up_and_down(scaling_run):
    history = scaling_run["discovery"]["history"]
    assert history, "the discovery thread never refreshed"
    # Every refresh adopted exactly what the registry listed at that moment: a change is picked up
    # by the first refresh after it, i.e. within one discovery_interval.
    for h in history:
        assert h["endpoints"] == h["listed"], h
    adopted = [set(h["endpoints"]) for h in history]
    assert any(len(a) >= 3 for a in adopted), "the client never saw the scaled-up set"
    assert scaling_run["peak"] in adopted
    assert adopted[-1] == scaling_run["final"]
    # New replicas joined the balancer: each one the registry listed at the peak got requests.
    assert all(scaling_run["load"].endpoints[e] > 0 for e in scaling_run["peak"])
    lags = []
    for _t, wall, endpoints in scaling_run["timeline"].listed:
        seen = next((h["time"] for h in history if h["time"] >= wall and set(h["endpoints"]) == set(endpoints)), None)
        if seen is not None:
            lags.append(seen - wall)
    print(f"\ndiscovery: {len(history)} refreshes, lag after a registry change (s): {[round(x, 2) for x in lags]}")


def test_a_replica_killed_mid_epoch_loses_no_sample_and_is_replaced(cluster):
    settings = fast_settings(cluster["port"], app="kill", num_replicas=2)
    app.deploy(settings, cluster["configs"][1])
    url = f"http://127.0.0.1:{cluster['port']}/kill"
    wait_for("2 listed endpoints", lambda: len(listing(url)["endpoints"]) == 2)
    client = EmbeddingClient(discovery="ray://kill", discovery_interval=DISCOVERY_INTERVAL_S, timeout=120)
    n = 480
    ds = JITEmbeddingDataset(rf.Samples(n), fields={"y": ("affine", rf.prep_x)}, client=client)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, collate_fn=rf.collate_list)
    seen: list[int] = []
    victim = None
    for b, batch in enumerate(loader):
        for sample in batch:
            seen.append(sample["idx"])
            torch.testing.assert_close(sample["y"], rf.expected(1, sample["x"][None])[0], rtol=1e-5, atol=1e-5)
        if b == 10:
            victim = listing(url)["replicas"][0]
            # The whole replica at once, as a lost node would: its actor and its server.
            os.kill(victim["pid"], signal.SIGKILL)
            os.kill(victim["server_pid"], signal.SIGKILL)
    assert victim is not None and sorted(seen) == list(range(n)), "a sample was lost or repeated"
    stats = ds.worker_stats()
    retries = sum(s["retries"] for s in stats)
    failed_attempts = sum(s["failures"] for s in stats)
    replaced = wait_for(
        "Serve to replace the killed replica",
        lambda: (lambda e: e if len(e) == 2 and victim["endpoint"] not in e else None)(listing(url)["endpoints"]),
    )
    wait_for("2 running replicas", lambda: running_replicas("kill") == 2)
    print(
        f"\nkill: epoch of {n} samples complete; {failed_attempts:.0f} failed attempts retried"
        f" ({retries:.0f} retries), 0 failed requests; replica {victim['replica_id']} replaced: {replaced}"
    )
    app.shutdown("kill")


def test_a_rolling_update_under_load_fails_no_request(cluster):
    settings = fast_settings(cluster["port"], app="roll", num_replicas=2)
    url = app.deploy(settings, cluster["configs"][1])
    wait_for("2 listed endpoints", lambda: len(listing(url)["endpoints"]) == 2)
    client = EmbeddingClient(discovery=url, discovery_interval=DISCOVERY_INTERVAL_S, timeout=60)
    load = rf.LoadGenerator(client, seeds_by_version=cluster["versions"], concurrency=6).start()
    wait_for("load on the old version", lambda: load.ok >= 50)
    started = time.monotonic()
    app.update("roll", cluster["configs"][2])
    v2 = next(v for v, s in cluster["versions"].items() if s == 2)

    def all_v2() -> bool:
        lst = listing(url)
        return len(lst["replicas"]) == 2 and all(r["versions"].get("affine") == v2 for r in lst["replicas"])

    wait_for("every listed replica on the new version", all_v2)
    wait_for("the client to drop the old replicas", lambda: set(client.endpoints) == set(listing(url)["endpoints"]))
    switched = time.monotonic()
    wait_for("load on the new version", lambda: sum(1 for s, _, v in list(load.log) if s > switched and v == v2) >= 50)
    load.stop()
    print(
        f"\nrolling update: {load.ok} answered, {len(load.failed)} failed, {len(load.wrong)} wrong,"
        f" by version {dict(load.versions)}, took {switched - started:.1f} s"
    )
    assert load.failed == [], load.failed[:3]
    assert load.wrong == [], load.wrong[:3]
    assert set(load.versions) == set(cluster["versions"]), "the load did not span the update"
    assert all(v == v2 for s, _, v in load.log if s > switched), "an old replica answered after it left"
    app.shutdown("roll")


def test_the_cli_deploys_reports_updates_and_shuts_down(cluster):
    address = ray.get_runtime_context().gcs_address

    def cli(*args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "jit_embedding.cli", "ray", *args, "--app", "cli", "--address", address],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    port = str(cluster["port"])
    flags = ["--num-replicas", "1", "--host", "127.0.0.1", "--http-host", "127.0.0.1", "--http-port", port]
    out = cli("deploy", "--config", str(cluster["configs"][1]), *flags, "--drain-delay-s", "0.5")
    assert f"discovery: http://127.0.0.1:{port}/cli" in out
    version = {s: v for v, s in cluster["versions"].items()}
    state = json.loads(cli("status", "--json"))
    assert state["serve"]["cli"]["deployments"]["EmbeddingServer"]["replicas"] == {"RUNNING": 1}
    assert [r["versions"]["affine"] for r in state["discovery"]["replicas"]] == [version[1]]
    assert "rolled out" in cli("update", "--config", str(cluster["configs"][2]))
    wait_for("the old replica to leave", lambda: len(listing(f"http://127.0.0.1:{port}/cli")["replicas"]) == 1)
    text = cli("status")
    assert "EmbeddingServer: HEALTHY (running 1)" in text and version[2][:19] in text
    assert "shut down 'cli'" in cli("shutdown")
    assert "cli" not in serve.status().applications
