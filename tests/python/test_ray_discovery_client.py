"""EmbeddingClient(discovery=...) against a plain HTTP registry and real jit-embedding-server
processes, without Ray: new endpoints join the balancer and get traffic, removed ones leave it, a
partial or empty list or a failing registry never shrinks the set, and forked DataLoader workers
refresh on their own threads, so an epoch survives its endpoints being replaced mid-way.

The servers run through jit_embedding.ray.server_process.ServerProcess, the same code a Ray replica
uses (start on a free port, readiness, load, drain), so it is checked here too."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time

import pytest
import ray_fixtures as rf
import torch
import yaml

from jit_embedding.client import ClientError, EmbeddingClient
from jit_embedding.data import JITEmbeddingDataset
from jit_embedding.ray.server_process import ServerProcess, ServerProcessError, parse_load

INTERVAL_S = 0.2


class Registry:
    """A registry on a loopback port whose answer the test sets (status, JSON body)."""

    def __init__(self):
        self.status = 200
        self.body: object = {"endpoints": []}
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                data = json.dumps(registry.body).encode()
                self.send_response(registry.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                # A client that gave up (the timeout test) closed its end already.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/app"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def list(self, endpoints: list[str], complete: bool = True) -> None:
        self.status, self.body = 200, {"endpoints": endpoints, "complete": complete}


def start_server(folder, artifact, name: str) -> ServerProcess:
    config = yaml.safe_load(rf.write_config(folder, artifact, f"{name}.yaml").read_text())
    config["encoders"][0]["artifact"] = str(artifact)
    config["server"]["host"] = "127.0.0.1"
    server = ServerProcess(config, folder / name)
    server.start(timeout_s=120)
    return server


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("discovery")
    artifact = rf.export_affine(folder, 1)
    running = [start_server(folder, artifact, f"s{i}") for i in range(3)]
    yield running
    for s in running:
        s.kill()


def name(server: ServerProcess) -> str:
    return f"127.0.0.1:{server.port}"


def wait_for(what, condition, timeout=60.0):
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def test_the_set_follows_the_registry_and_never_shrinks_on_doubt(servers):
    a, b, c = servers
    reg = Registry()
    reg.list([name(a)])
    client = EmbeddingClient(discovery=reg.url, discovery_interval=INTERVAL_S, timeout=30)
    assert client.endpoints == [name(a)]

    reg.list([name(a), name(b), name(c)])
    assert client.refresh_endpoints()
    assert sorted(client.endpoints) == sorted(map(name, servers))
    hits = {client.encode("affine", {"x": torch.randn(1, rf.WIDTH)})[1]["client"]["endpoint"] for _ in range(60)}
    assert hits == set(map(name, servers)), "a new endpoint got no traffic"

    reg.list([name(c)], complete=False)  # a registry that just restarted: it may not know a and b yet
    assert not client.refresh_endpoints()
    assert sorted(client.endpoints) == sorted(map(name, servers))
    reg.list([name(c)])
    assert client.refresh_endpoints()
    assert client.endpoints == [name(c)]
    for _ in range(20):
        assert client.encode("affine", {"x": torch.ones(1, rf.WIDTH)})[1]["client"]["endpoint"] == name(c)

    reg.list([])  # nothing listed: keep serving on what we have
    assert not client.refresh_endpoints()
    reg.status, reg.body = 500, {"error": "registry down"}
    assert not client.refresh_endpoints()
    reg.status, reg.body = 200, {"nothing": "here"}
    assert not client.refresh_endpoints()
    stats = client.discovery_stats()
    assert client.endpoints == [name(c)] and stats["failures"] >= 2
    assert reg.url in stats["last_error"] and "'endpoints'" in stats["last_error"]

    reg.list([name(a), name(c)])  # the daemon thread picks this up by itself
    wait_for("the refresh thread", lambda: sorted(client.endpoints) == sorted([name(a), name(c)]))


def test_bad_discovery_sources_fail_clearly():
    with pytest.raises(ValueError, match="discovery must be"):
        EmbeddingClient(discovery="consul://x")
    with pytest.raises(ValueError, match="discovery_interval"):
        EmbeddingClient(discovery="http://127.0.0.1:1/x", discovery_interval=0)
    reg = Registry()
    with pytest.raises(ClientError, match="no endpoints within 1 s"):
        EmbeddingClient(discovery=reg.url, timeout=1)


def test_forked_dataloader_workers_refresh_on_their_own(servers):
    a, b, _ = servers
    reg = Registry()
    reg.list([name(a)])
    client = EmbeddingClient(discovery=reg.url, discovery_interval=INTERVAL_S, timeout=60)
    n = 320
    ds = JITEmbeddingDataset(rf.Samples(n), fields={"y": ("affine", rf.prep_x)}, client=client)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=rf.collate_list)
    seen = []
    for i, batch in enumerate(loader):
        for s in batch:
            seen.append(s["idx"])
            torch.testing.assert_close(s["y"], rf.expected(1, s["x"][None])[0], rtol=1e-5, atol=1e-5)
        if i == 5:
            # Replace a by b. The workers forked with [a]; only their own discovery threads can tell
            # them about b, and a is about to go away: a worker that did not refresh would fail.
            reg.list([name(b)])
            wait_for("the workers to reach b", lambda: requests_of(b) >= 8)
            time.sleep(10 * INTERVAL_S)  # ten refresh periods for the other worker's thread
            assert a.drain(timeout_s=30)
    assert sorted(seen) == list(range(n)), "a sample was lost or repeated"


def requests_of(server: ServerProcess) -> float:
    status, body = server._get("/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("jit_requests_total{") and 'outcome="ok"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_server_process_reports_load_and_fails_clearly(tmp_path):
    artifact = rf.export_affine(tmp_path, 1)
    server = start_server(tmp_path, artifact, "one")
    load = server.load()
    assert set(load) == {"jit_http_in_flight", "jit_queue_depth"} and load["jit_queue_depth"] == 0
    assert list(server.encoders()) == ["affine"]
    server.check_alive()
    assert server.drain(timeout_s=30) and server.exit_code() == 0
    with pytest.raises(ServerProcessError, match="exited with status 0"):
        server.check_alive()
    assert parse_load('jit_queue_depth{encoder="a"} 3\njit_queue_depth{encoder="b"} 4\njit_http_in_flight 2\n') == {
        "jit_http_in_flight": 2.0,
        "jit_queue_depth": 7.0,
    }

    config = yaml.safe_load(rf.write_config(tmp_path, artifact, "bad.yaml").read_text())
    config["encoders"][0]["artifact"] = str(tmp_path / "no-such-artifact")
    with pytest.raises(ServerProcessError, match="(?s)exited with status 2 .*no-such-artifact"):
        ServerProcess(config, tmp_path / "bad").start(timeout_s=60)
    with pytest.raises(ServerProcessError, match="cannot start"):
        ServerProcess(config, tmp_path / "nobin", binary=tmp_path / "missing-binary").start(timeout_s=5)
