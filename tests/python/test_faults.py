"""Faults during a real DataLoader epoch (2 workers) against the real server binary (issue 8, "Faults").

Each test runs an epoch of JITEmbeddingDataset (or the iterable wrapper) over data_fixtures.Numbers,
injects one fault part-way through, and then requires one of two outcomes: every sample index arrives
exactly once with the embedding the encoder gives when run locally on that sample, or the loader
raises an exception that names the problem. The faults:

  - the server is killed with SIGKILL and started again on the same port (the client retries);
  - a server stops answering (SIGSTOP): with a second replica the epoch completes by failing over
    after `attempt_timeout`; with only that one it fails with a deadline error naming the endpoint;
  - Redis (the server's shared cache tier) is killed: lookups miss, rows are recomputed, and Redis is
    used again once it is back;
  - the RocksDB cache folder's disk (a small tmpfs) fills up: writes fail and are counted in
    jit_cache_write_errors_total, answers stay correct, and the server keeps serving.

Each test also asserts that the fault reached the requests (failed attempts, misses, write errors), so
that none can pass without its fault happening.
"""

from __future__ import annotations

import collections
import signal
import threading
import time

import data_fixtures
import fault_fixtures as ff
import pytest
import torch
from torch.utils.data import DataLoader

from jit_embedding import ClientError, EmbeddingClient
from jit_embedding.data import JITEmbeddingDataset, JITEmbeddingIterableDataset

N = 64  # samples per epoch
BATCH = 4
FIELDS = {"emb": ("work", data_fixtures.prep_x)}

pytestmark = pytest.mark.skipif(not ff.BINARY.exists(), reason=f"{ff.BINARY} is not built (run `make build`)")


@pytest.fixture(scope="module")
def artifact():
    return ff.work_artifact()


def make_dataset(kind: str, client: EmbeddingClient):
    base = data_fixtures.Numbers(N)
    if kind == "map":
        return JITEmbeddingDataset(base, FIELDS, client)
    return JITEmbeddingIterableDataset(base, FIELDS, client, window=4)


def run_epoch(ds, on_batch=None) -> list[dict]:
    """One epoch with 2 workers; on_batch(i) runs in the main process after batch i arrived."""
    loader = DataLoader(ds, batch_size=BATCH, num_workers=2, collate_fn=data_fixtures.identity_collate)
    samples = []
    for i, batch in enumerate(loader):
        samples.extend(batch)
        if on_batch is not None:
            on_batch(i)
    return samples


def check_epoch(samples: list[dict]) -> None:
    """Every index of the epoch exactly once, each with its own inputs and the locally computed embedding."""
    counts = collections.Counter(s["idx"] for s in samples)
    lost = sorted(set(range(N)) - set(counts))
    repeated = sorted(i for i, c in counts.items() if c > 1)
    assert not lost and not repeated and len(samples) == N, f"lost {lost}, duplicated {repeated}"
    for s in samples:
        base = data_fixtures.Numbers(N)[s["idx"]]
        torch.testing.assert_close(s["x"], base["x"])
        torch.testing.assert_close(s["emb"], ff.reference(base["x"]), rtol=1e-5, atol=1e-5)


def worker_total(ds, name: str) -> float:
    return sum(row[name] for row in ds.worker_stats())


def later(seconds: float, fn) -> threading.Thread:
    """Runs fn after `seconds` on a thread, so that the loader keeps asking while the fault lasts."""
    t = threading.Thread(target=lambda: (time.sleep(seconds), fn()), daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("kind", ["map", "iterable"])
def test_sigkill_and_restart_on_the_same_port(tmp_path, artifact, kind):
    server = ff.BinaryServer(tmp_path / "server", [ff.work_entry(artifact)])
    try:
        # The retries' backoff (up to 1 s each) spans the restart: about a second on this machine.
        client = EmbeddingClient([server.endpoint], timeout=60.0, retries=20, backoff_max=1.0)
        ds = make_dataset(kind, client)
        restarts = []

        def kill_and_restart():
            server.kill()
            time.sleep(0.3)  # the loader's requests meanwhile are refused
            server.start()

        def on_batch(i):
            if i == 2:
                restarts.append(later(0.0, kill_and_restart))

        samples = run_epoch(ds, on_batch)
        restarts[0].join(timeout=60)
        check_epoch(samples)
        # The fault reached the workers' requests: some attempts failed and were retried.
        assert worker_total(ds, "failures") > 0 and worker_total(ds, "retries") > 0, ds.worker_stats()
        assert server.proc.poll() is None
    finally:
        server.stop()


def test_sigstop_with_a_second_replica_fails_over(tmp_path, artifact):
    a = ff.BinaryServer(tmp_path / "a", [ff.work_entry(artifact)])
    b = ff.BinaryServer(tmp_path / "b", [ff.work_entry(artifact)])
    try:
        # attempt_timeout bounds one attempt: a replica that stops answering costs that much, then the
        # request goes to the other one, well within its deadline.
        client = EmbeddingClient([a.endpoint, b.endpoint], timeout=30.0, retries=4, attempt_timeout=1.0)
        ds = make_dataset("map", client)
        samples = run_epoch(ds, lambda i: a.signal(signal.SIGSTOP) if i == 2 else None)
        check_epoch(samples)
        assert worker_total(ds, "failures") > 0, "no request reached the stopped replica"
        assert b.proc.poll() is None
    finally:
        a.stop()
        b.stop()


def test_sigstop_of_the_only_replica_fails_with_a_deadline_error(tmp_path, artifact):
    server = ff.BinaryServer(tmp_path / "server", [ff.work_entry(artifact)])
    try:
        client = EmbeddingClient([server.endpoint], timeout=3.0, retries=3)
        ds = make_dataset("map", client)
        start = time.monotonic()
        with pytest.raises(ClientError) as err:
            run_epoch(ds, lambda i: server.signal(signal.SIGSTOP) if i == 2 else None)
        message = str(err.value)
        assert "deadline exceeded" in message and "no answer before the deadline" in message, message
        assert server.endpoint in message and "'work'" in message, message
        # The deadline is 3 s; the loader then stops its workers. Generous: the point is "no hang".
        assert time.monotonic() - start < 60
        assert server.stop() == 0, server.log.read_text()[-3000:]  # SIGCONT, then a clean drain
    finally:
        server.stop()


def test_redis_outage_mid_epoch(tmp_path, artifact):
    with ff.RedisServer(tmp_path) as redis:
        # No memory tier: every lookup goes to Redis, so the outage is what the epoch sees.
        cache = {"memory_mb": 0, "redis": {"url": redis.url, "retry_after_ms": 300, "io_timeout_ms": 200}}
        server = ff.BinaryServer(tmp_path / "server", [ff.work_entry(artifact)], cache=cache)
        try:
            client = EmbeddingClient([server.endpoint], timeout=30.0)
            ds = make_dataset("map", client)
            check_epoch(run_epoch(ds))  # computes every row and stores it in Redis
            wait_for(lambda: ff.metric(server.metrics(), "jit_cache_write_queue_depth") == 0, "writes to Redis")
            computed = worker_total(ds, "rows_computed")
            assert computed == N

            check_epoch(run_epoch(ds, lambda i: redis.kill() if i == 3 else None))
            hits = worker_total(ds, "rows_server_cache")
            recomputed = worker_total(ds, "rows_computed") - computed
            assert hits > 0 and recomputed > 0 and hits + recomputed == N, ds.worker_stats()
            text = server.metrics()
            assert ff.metric(text, "jit_cache_tier_up", tier="redis") == 0
            assert "redis at 127.0.0.1" in server.log.read_text() and "unreachable" in server.log.read_text()

            # Back (empty) on the same port: the server tries it again retry_after_ms after its last
            # failure, on the next lookup, so lookups are what brings it back.
            redis.start()
            probe = [data_fixtures.prep_x(data_fixtures.Numbers(N)[0])]
            probe = [{k: v[None] for k, v in p.items()} for p in probe]

            def redis_back() -> bool:
                client.submit_many("work", probe).result()
                return ff.metric(server.metrics(), "jit_cache_tier_up", tier="redis") == 1

            wait_for(redis_back, "Redis back")
            assert "is back; using it again" in server.log.read_text()
            check_epoch(run_epoch(ds))
            assert server.proc.poll() is None
            assert server.stop() == 0, server.log.read_text()[-3000:]
        finally:
            server.stop()


def test_full_cache_disk_mid_epoch(tmp_path, artifact):
    with ff.tmpfs(tmp_path / "disk", "8m") as disk:
        cache = {"memory_mb": 0, "rocksdb": {"path": str(disk / "db")}}
        server = ff.BinaryServer(tmp_path / "server", [ff.work_entry(artifact)], cache=cache)
        try:
            client = EmbeddingClient([server.endpoint], timeout=30.0)
            ds = make_dataset("map", client)
            filled = []
            check_epoch(run_epoch(ds, lambda i: filled.append(ff.fill_disk(disk)) if i == 3 else None))
            assert filled and filled[0] > 0
            wait_for(lambda: ff.metric(server.metrics(), "jit_cache_write_queue_depth") == 0, "cache writes")
            errors = ff.metric(server.metrics(), "jit_cache_write_errors_total", tier="rocksdb")
            assert errors is not None and errors > 0, "the failed writes were not counted"
            # Still serving, from the entries written before the disk filled and by computing the rest.
            check_epoch(run_epoch(ds))
            assert worker_total(ds, "rows_server_cache") > 0, ds.worker_stats()
            assert "rocksdb" in server.log.read_text()  # the failure is logged, once
            assert server.proc.poll() is None
            status, _ = ff.http_request(server.port, "GET", "/health/ready")
            assert status == 200
            assert server.stop() == 0, server.log.read_text()[-3000:]
        finally:
            server.stop()


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_attempt_timeout_is_checked():
    with pytest.raises(ClientError, match="attempt_timeout must be >= 0"):
        EmbeddingClient(["127.0.0.1:1"], attempt_timeout=-1.0)
