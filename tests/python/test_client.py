"""jit_embedding.client.EmbeddingClient against real servers (`jit-embedding serve` with Python factory
encoders from python_encoders.py and client_encoders.py) on loopback.

Served results equal the modules run locally, through submit/encode and packed encode_many; waiting
releases the GIL (an in-process server's Python encoder runs while the caller waits); a client made
before fork() or pickled for spawn works in the child; a server killed with SIGKILL mid-run fails
over to the other with every request answered once; errors name the endpoint, encoder and cause."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import client_encoders
import numpy as np
import pytest
import python_encoders
import serving
import torch

from jit_embedding.client import ClientError, EmbeddingClient
from jit_embedding.serve import Server

ENV = {**os.environ, "PYTHONPATH": str(serving.ROOT / "tests" / "python")}
ENCODERS = [
    {"name": "affine", "factory": "python_encoders:affine", "options": {"width": 16, "seed": 3}},
    {"name": "tokens", "factory": "client_encoders:tokens", "options": {"vocab": 50, "width": 8, "seed": 1}},
]
AFFINE, _ = python_encoders.affine(16, 3)
TOKENS, _ = client_encoders.tokens(50, 8, 1)


def start_servers(tmp_path, n: int) -> list[serving.Running]:
    running = []
    for i in range(n):
        folder = tmp_path / f"server{i}"
        folder.mkdir()
        cfg = serving.write_config(folder, ENCODERS, {"port": 0})
        running.append(serving.start(cfg, python_hosted=True, env=ENV))
    return running


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    running = start_servers(tmp_path_factory.mktemp("client"), 2)
    yield running
    for r in running:
        r.stop()


def endpoints_of(servers) -> list[str]:
    return [f"127.0.0.1:{s.port}" for s in servers]


def assert_affine(x: torch.Tensor, out: dict) -> None:
    x = torch.as_tensor(x)
    with torch.no_grad():
        want = AFFINE(x)
    # Batched and unbatched float32 matmuls round differently; the error grows with |x|.
    atol = 1e-5 * max(1.0, 16 * float(x.abs().max()))
    torch.testing.assert_close(out["y"], want["y"], rtol=1e-5, atol=atol)
    torch.testing.assert_close(out["norm"], want["norm"], rtol=1e-5, atol=atol)


def test_results_equal_local_computation(servers):
    client = EmbeddingClient(endpoints_of(servers), timeout=60)
    xs = [torch.randn(1 + i % 4, 16) for i in range(24)]
    futures = [client.submit("affine", {"x": x}, key=f"s{i}") for i, x in enumerate(xs)]
    used = set()
    for x, f in zip(xs, futures):
        out, meta = f.result(timeout=60)
        assert_affine(x, out)
        assert meta["version"].startswith("sha256:")
        assert meta["client"]["attempts"] == 1
        used.add(meta["client"]["endpoint"])
    assert used <= set(endpoints_of(servers))
    out, _ = client.encode("affine", {"x": np.ones((2, 16), dtype=np.float32)})
    assert_affine(torch.ones(2, 16), out)

    stats = client.stats()
    assert set(stats) == set(endpoints_of(servers))
    assert sum(s["responses"] for s in stats.values()) == 25
    assert sum(s["failures"] for s in stats.values()) == 0
    assert all(s["bytes_sent"] > 0 and s["healthy"] for s in stats.values() if s["requests"])


def test_encode_many_packs_pads_and_splits(servers):
    client = EmbeddingClient(endpoints_of(servers), timeout=60)
    samples = [{"x": torch.randn(n, 16)} for n in (1, 3, 2)]
    results = client.encode_many("affine", samples, keys=["a", "b", "c"])
    assert len(results) == 3
    for s, (out, _) in zip(samples, results):
        assert out["y"].shape == (s["x"].shape[0], 16)
        assert_affine(s["x"], out)

    lengths = [3, 7, 1, 5]
    samples = [{"ids": torch.randint(1, 50, (1 + i % 2, n))} for i, n in enumerate(lengths)]
    results = client.encode_many("tokens", samples)
    with torch.no_grad():
        for s, (out, _) in zip(samples, results):
            want = TOKENS(s["ids"])
            assert out["h"].shape == want["h"].shape  # cut back to the sample's own length
            torch.testing.assert_close(out["h"], want["h"], rtol=0, atol=1e-6)
            torch.testing.assert_close(out["pooled"], want["pooled"], rtol=0, atol=1e-5)

    with pytest.raises(ValueError, match="sample 1 has inputs"):
        client.encode_many("affine", [{"x": torch.ones(1, 16)}, {"z": torch.ones(1, 16)}])
    with pytest.raises(ClientError, match="'nope' is not served"):
        client.encode_many("nope", [{"x": torch.ones(1, 16)}])


def test_result_waits_with_the_gil_released(tmp_path):
    # The server runs in this process and its encoder is a Python module: it needs the GIL to
    # answer. If result() held the GIL while waiting, the request could not complete.
    cfg = serving.write_config(tmp_path, [ENCODERS[0]], {"port": 0})
    with Server(str(cfg)) as server:
        client = EmbeddingClient([f"127.0.0.1:{server.port}"], timeout=60)
        x = torch.randn(4, 16)
        future = client.submit("affine", {"x": x})
        out, _ = future.result(timeout=60)
        assert_affine(x, out)
        assert future.done()


def _child_encode(client: EmbeddingClient, queue) -> None:
    try:
        x = torch.full((2, 16), 0.5)
        futures = [client.submit("affine", {"x": x * i}) for i in range(8)]
        for i, f in enumerate(futures):
            out, _ = f.result(timeout=60)
            assert_affine(x * i, out)
        queue.put(("ok", os.getpid()))
    except BaseException as e:  # reported to the parent, which fails the test
        queue.put(("error", repr(e)))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_client_made_in_the_parent_works_in_a_child(servers, method):
    client = EmbeddingClient(endpoints_of(servers), timeout=60)
    client.encode("affine", {"x": torch.ones(1, 16)})  # the parent now holds connections and threads
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    children = [ctx.Process(target=_child_encode, args=(client, queue)) for _ in range(2)]
    for c in children:
        c.start()
    try:
        outcomes = [queue.get(timeout=120) for _ in children]
    finally:
        for c in children:
            c.join(timeout=60)
            if c.is_alive():
                c.kill()
    assert [o[0] for o in outcomes] == ["ok", "ok"], outcomes
    assert all(c.exitcode == 0 for c in children), [c.exitcode for c in children]
    # The parent's client still works after its children used their copies.
    out, _ = client.encode("affine", {"x": torch.ones(3, 16)})
    assert_affine(torch.ones(3, 16), out)


def test_a_killed_server_fails_over_and_every_request_is_answered_once(tmp_path):
    a, b = start_servers(tmp_path, 2)
    try:
        client = EmbeddingClient(
            endpoints_of([a, b]), timeout=60, retries=6, health_interval=0.2, backoff_base=0.01, workers=8
        )
        xs = [torch.full((1, 16), float(i)) for i in range(300)]
        futures = []
        for i, x in enumerate(xs):
            futures.append(client.submit("affine", {"x": x}))
            if i == 100:
                futures[50].result(timeout=60)  # the run is under way on both servers
                a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=30)
        results = [f.result(timeout=120) for f in futures]
        for x, (out, _) in zip(xs, results):
            assert_affine(x, out)
        endpoint_b = f"127.0.0.1:{b.port}"
        assert all(meta["client"]["endpoint"] == endpoint_b for _, meta in results[101:])
        stats = client.stats()
        assert sum(s["responses"] for s in stats.values()) == len(xs), stats
        assert not stats[f"127.0.0.1:{a.port}"]["healthy"]
        assert stats[f"127.0.0.1:{a.port}"]["ejections"] >= 1
    finally:
        a.stop()
        b.stop()


def test_errors_name_the_endpoint_the_encoder_and_the_cause(servers):
    client = EmbeddingClient(endpoints_of(servers[:1]), timeout=30)
    endpoint = endpoints_of(servers[:1])[0]
    with pytest.raises(ClientError) as err:
        client.encode("no_such_encoder", {"x": torch.ones(1, 16)})
    assert isinstance(err.value, RuntimeError)
    message = str(err.value)
    assert endpoint in message and "'no_such_encoder'" in message and "HTTP 404" in message, message

    with pytest.raises(ClientError) as err:
        client.encode("affine", {"wrong": torch.ones(1, 16)})
    message = str(err.value)
    assert endpoint in message and "'affine'" in message and "HTTP 4" in message, message
    assert client.stats()[endpoint]["requests"] == 2  # neither was retried

    dead = EmbeddingClient(["127.0.0.1:1"], timeout=2, retries=2, backoff_base=0.01)
    with pytest.raises(ClientError, match=r"127\.0\.0\.1:1.*connection refused"):
        dead.encode("affine", {"x": torch.ones(1, 16)})

    with pytest.raises(ClientError, match="unknown balancer"):
        EmbeddingClient(["127.0.0.1:1"], balancer="random")


def test_concurrent_callers_share_one_client(servers):
    client = EmbeddingClient(endpoints_of(servers), timeout=60, max_connections_per_endpoint=2)
    errors = []

    def worker(seed: int) -> None:
        try:
            for i in range(10):
                x = torch.full((1, 16), float(seed * 100 + i))
                assert_affine(x, client.encode("affine", {"x": x})[0])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(s["connections_opened"] <= 2 for s in client.stats().values())
