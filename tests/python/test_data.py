"""jit_embedding.data under a real torch DataLoader against real servers (`jit-embedding serve`).

With 0, 2 and 4 workers, under fork and spawn, every sample arrives exactly once, in the sampler's
order, with embeddings equal to local computation; DistributedSampler works unchanged; the iterable
wrapper shards by worker and keeps order; per-worker stats are readable from the main process; an
epoch survives a server killed with SIGKILL half-way; an unreachable endpoint fails with a clear
error within the deadline."""

from __future__ import annotations

import os
import signal
import time

import client_encoders
import data_fixtures
import pytest
import python_encoders
import serving
import torch
from torch.utils.data import DataLoader, DistributedSampler

from jit_embedding import ClientError, EmbeddingClient
from jit_embedding.data import JITEmbeddingDataset, JITEmbeddingIterableDataset

ENV = {**os.environ, "PYTHONPATH": str(serving.ROOT / "tests" / "python")}
ENCODERS = [
    {
        "name": "affine",
        "factory": "python_encoders:affine",
        "options": {"width": data_fixtures.WIDTH, "seed": 5},
        "max_queue_delay_us": 500,
    },
    {
        "name": "tokens",
        "factory": "client_encoders:tokens",
        "options": {"vocab": data_fixtures.VOCAB, "width": 8, "seed": 2},
        "max_queue_delay_us": 500,
        "length_buckets": [4, 8],
    },
]
FIELDS = {"emb": ("affine", data_fixtures.prep_x), "tok": ("tokens", data_fixtures.prep_ids)}
AFFINE, _ = python_encoders.affine(data_fixtures.WIDTH, 5)
TOKENS, _ = client_encoders.tokens(data_fixtures.VOCAB, 8, 2)
N = 40


def start_servers(folder, n: int) -> list[serving.Running]:
    running = []
    for i in range(n):
        sub = folder / f"server{i}"
        sub.mkdir()
        running.append(serving.start(serving.write_config(sub, ENCODERS, {"port": 0}), python_hosted=True, env=ENV))
    return running


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    running = start_servers(tmp_path_factory.mktemp("data"), 2)
    yield running
    for r in running:
        r.stop()


def client_for(servers, **kw) -> EmbeddingClient:
    return EmbeddingClient([f"127.0.0.1:{s.port}" for s in servers], **kw)


def check_sample(sample: dict) -> None:
    """The sample's embeddings equal the encoders run locally on its own inputs."""
    base = data_fixtures.Numbers(N)[sample["idx"]]
    torch.testing.assert_close(sample["x"], base["x"])
    with torch.no_grad():
        want = AFFINE(base["x"][None])
        tok = TOKENS(base["ids"][None])
    torch.testing.assert_close(sample["emb"]["y"], want["y"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sample["emb"]["norm"], want["norm"][0], rtol=1e-5, atol=1e-5)
    # Padding in the server's batch never reaches the caller: h has the sample's own length.
    assert sample["tok"]["h"].shape == (base["ids"].shape[0], 8)
    torch.testing.assert_close(sample["tok"]["h"], tok["h"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sample["tok"]["pooled"], tok["pooled"][0], rtol=1e-5, atol=1e-5)


def flatten(loader) -> list[dict]:
    return [s for batch in loader for s in batch]


@pytest.mark.parametrize(
    "workers,context", [(0, None), (2, "fork"), (4, "fork"), (2, "spawn"), (4, "spawn")], ids=lambda v: str(v)
)
def test_every_sample_once_in_order_equal_to_local(servers, workers, context):
    ds = JITEmbeddingDataset(data_fixtures.Numbers(N), FIELDS, client_for(servers))
    loader = DataLoader(
        ds,
        batch_size=6,
        num_workers=workers,
        collate_fn=data_fixtures.identity_collate,
        multiprocessing_context=context,
    )
    samples = flatten(loader)
    assert [s["idx"] for s in samples] == list(range(N))
    for s in samples:
        check_sample(s)
    stats = ds.worker_stats()
    assert sum(row["samples"] for row in stats) == N
    # One cache-first request per field per batch, and every sample of every field answered once,
    # from the servers' caches when an earlier case computed it.
    assert sum(row["requests"] for row in stats) == -(-N // 6) * len(FIELDS)
    rows = sum(row["rows_computed"] + row["rows_server_cache"] + row["rows_local_cache"] for row in stats)
    assert rows == N * len(FIELDS)
    assert {row["worker"] for row in stats} == ({-1} if workers == 0 else set(range(workers)))
    assert all(row["bytes_sent"] > 0 and row["latency_s"] > 0 for row in stats)


def test_stats_add_up_over_epochs_with_new_workers_and_later_epochs_hit(tmp_path):
    # A server of its own, so that the first epoch computes everything.
    (server,) = start_servers(tmp_path, 1)
    try:
        ds = JITEmbeddingDataset(data_fixtures.Numbers(N), FIELDS, client_for([server]))
        loader = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=data_fixtures.identity_collate)
        for _epoch in range(2):  # each epoch starts new worker processes (persistent_workers=False)
            for s in flatten(loader):
                check_sample(s)
        stats = ds.worker_stats()
        assert sum(r["samples"] for r in stats) == 2 * N
        computed = sum(r["rows_computed"] for r in stats)
        hits = sum(r["rows_server_cache"] for r in stats)
        assert computed == N * len(FIELDS) and hits == N * len(FIELDS), stats
    finally:
        server.stop()


def test_distributed_sampler_order_is_kept(servers):
    ds = JITEmbeddingDataset(data_fixtures.Numbers(N), FIELDS, client_for(servers))
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=7)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2, collate_fn=data_fixtures.identity_collate)
    samples = flatten(loader)
    assert [s["idx"] for s in samples] == list(sampler)
    for s in samples:
        check_sample(s)


def test_iterable_wrapper_shards_by_worker_and_keeps_order(servers):
    ds = JITEmbeddingIterableDataset(data_fixtures.Numbers(N), FIELDS, client_for(servers), window=5)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=data_fixtures.identity_collate)
    batches = [[s["idx"] for s in b] for b in loader]
    # Worker w yields w, w + 2, ...; the loader takes whole batches from the workers in turn.
    shards = [list(range(w, N, 2)) for w in range(2)]
    want = []
    for k in range(max(len(s) for s in shards) // 4 + 1):
        for shard in shards:
            if shard[k * 4 : k * 4 + 4]:
                want.append(shard[k * 4 : k * 4 + 4])
    assert batches == want
    samples = [s for b in loader for s in b]
    assert sorted(s["idx"] for s in samples) == list(range(N))
    for s in samples:
        check_sample(s)


def test_an_epoch_survives_a_server_killed_mid_way(tmp_path):
    servers = start_servers(tmp_path, 2)
    try:
        ds = JITEmbeddingDataset(data_fixtures.Numbers(N), FIELDS, client_for(servers, retries=5))
        loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=data_fixtures.identity_collate)
        samples = []
        for i, batch in enumerate(loader):
            samples.extend(batch)
            if i == 5:
                servers[0].proc.send_signal(signal.SIGKILL)
        assert [s["idx"] for s in samples] == list(range(N))
        for s in samples:
            check_sample(s)
    finally:
        for s in servers:
            s.stop()


def test_an_unreachable_endpoint_fails_clearly_within_the_deadline():
    client = EmbeddingClient(["127.0.0.1:1"], timeout=2.0, retries=2)
    ds = JITEmbeddingDataset(data_fixtures.Numbers(4), FIELDS, client)
    start = time.monotonic()
    with pytest.raises(ClientError) as err:
        ds[0]
    assert time.monotonic() - start < 30, "the client hung past its deadline"
    assert "127.0.0.1:1" in str(err.value) and "affine" in str(err.value)


def test_fields_are_checked():
    with pytest.raises(TypeError, match="field 'emb'"):
        JITEmbeddingDataset(data_fixtures.Numbers(4), {"emb": "affine"}, client=None)
    with pytest.raises(ValueError, match="at least one"):
        JITEmbeddingDataset(data_fixtures.Numbers(4), {}, client=None)
