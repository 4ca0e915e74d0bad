"""The embedding cache end to end: EmbeddingClient.submit_many against real servers (`jit-embedding
serve` with the token encoder of client_encoders.py) whose cache has a memory tier and RocksDB.

A second pass is served from the cache and uploads only digests; a restarted server finds its
entries in RocksDB; the client's local cache serves repeats without a request, in every DataLoader
worker process; an in-place update to a new version is never answered from an old entry; params
and user sample keys decide what is the same sample."""

from __future__ import annotations

import json
import os
import time

import client_encoders
import pytest
import serving
import torch

from jit_embedding.client import EmbeddingClient

ENV = {**os.environ, "PYTHONPATH": str(serving.ROOT / "tests" / "python")}


def tokens_entry(seed: int = 1) -> dict:
    return {"name": "tokens", "factory": "client_encoders:tokens", "options": {"vocab": 50, "width": 8, "seed": seed}}


def start(folder, cache: dict, seed: int = 1) -> serving.Running:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = serving.write_config(folder, [tokens_entry(seed)], {"port": 0}, cache)
    return serving.start(cfg, python_hosted=True, env=ENV)


def samples(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"ids": torch.randint(1, 50, (1, 2 + int(torch.randint(0, 9, (1,), generator=g))), generator=g)}
        for _ in range(n)
    ]


def check(results, batch, seed: int = 1) -> None:
    model, _ = client_encoders.tokens(50, 8, seed)
    with torch.no_grad():
        for s, out in zip(batch, results):
            want = model(s["ids"])
            assert out["h"].shape == want["h"].shape  # cut back to the sample's own length
            torch.testing.assert_close(out["h"], want["h"], rtol=0, atol=1e-6)
            torch.testing.assert_close(out["pooled"], want["pooled"], rtol=0, atol=1e-5)


def sent(client: EmbeddingClient) -> int:
    return sum(int(e["bytes_sent"]) for e in client.stats().values())


def stats(server: serving.Running) -> dict:
    status, _, body = server.request("GET", "/v1/cache/stats")
    assert status == 200, body
    return json.loads(body)


def test_second_pass_is_served_from_the_cache_and_uploads_only_digests(tmp_path):
    server = start(tmp_path / "s", {"memory_mb": 64, "rocksdb": {"path": str(tmp_path / "db")}})
    try:
        client = EmbeddingClient([f"127.0.0.1:{server.port}"], timeout=60)
        batch = samples(48)
        first, meta1 = client.submit_many("tokens", batch).result()
        check(first, batch)
        assert meta1["sources"] == ["computed"] * 48
        sent1 = sent(client)

        second, meta2 = client.submit_many("tokens", batch).result()
        check(second, batch)
        assert meta2["sources"] == ["server_cache"] * 48 and meta2["exchanges"] == 1
        assert meta2["version"] == meta1["version"]
        # The second pass uploads one 16-byte digest per sample (plus msgpack and frame framing),
        # whatever the inputs weigh; these token inputs are tiny, the demo's images are not.
        sent2 = sent(client) - sent1
        assert sent2 <= 20 * 48 + 128, (sent1, sent2)
        assert client.cache_stats() == {"rows_local_cache": 0, "rows_server_cache": 48, "rows_computed": 48}

        # Half new, half seen: only the new half is computed, and the answers keep their order.
        mixed = batch[:24] + samples(24, seed=1)
        out, meta = client.submit_many("tokens", mixed).result()
        check(out, mixed)
        assert meta["sources"] == ["server_cache"] * 24 + ["computed"] * 24
        tiers = {t["tier"]: t for t in stats(server)["tiers"]}
        assert tiers["memory"]["hits"] >= 72 and tiers["memory"]["entries"] == 72
    finally:
        assert server.stop() == 0

    # A new server on the same folder: the memory tier is empty, RocksDB answers, and fills memory.
    server = start(tmp_path / "s2", {"memory_mb": 64, "rocksdb": {"path": str(tmp_path / "db")}})
    try:
        client = EmbeddingClient([f"127.0.0.1:{server.port}"], timeout=60)
        out, meta = client.submit_many("tokens", batch).result()
        check(out, batch)
        assert meta["sources"] == ["server_cache"] * 48
        tiers = {t["tier"]: t for t in stats(server)["tiers"]}
        assert tiers["rocksdb"]["hits"] == 48 and tiers["memory"]["entries"] == 48
    finally:
        assert server.stop() == 0


def test_cache_modes_params_and_sample_keys(tmp_path):
    server = start(tmp_path / "s", {"memory_mb": 64})
    try:
        client = EmbeddingClient([f"127.0.0.1:{server.port}"], timeout=60)
        batch = samples(4)
        _, meta = client.submit_many("tokens", batch, cache="bypass").result()
        assert meta["sources"] == ["computed"] * 4
        _, meta = client.submit_many("tokens", batch).result()
        assert meta["sources"] == ["computed"] * 4, "bypass must not have stored anything"
        _, meta = client.submit_many("tokens", batch, cache="refresh").result()
        assert meta["sources"] == ["computed"] * 4
        _, meta = client.submit_many("tokens", batch).result()
        assert meta["sources"] == ["server_cache"] * 4

        # Params are part of the digest: other params, other samples.
        _, meta = client.submit_many("tokens", batch, params={"max_length": 16}).result()
        assert meta["sources"] == ["computed"] * 4
        _, meta = client.submit_many("tokens", batch, params={"max_length": 16}).result()
        assert meta["sources"] == ["server_cache"] * 4

        # A user's sample keys stand for the content: the same keys are the same samples.
        keyed = [f"file-{i}.txt" for i in range(4)]
        first, meta = client.submit_many("tokens", batch, keys=keyed).result()
        assert meta["sources"] == ["computed"] * 4
        again, meta = client.submit_many("tokens", samples(4, seed=9), keys=keyed).result()
        assert meta["sources"] == ["server_cache"] * 4
        for a, b in zip(first, again):
            torch.testing.assert_close(a["h"], b["h"], rtol=0, atol=0)
        with pytest.raises(ValueError, match="3 keys for 4 samples"):
            client.submit_many("tokens", batch, keys=keyed[:3])
        with pytest.raises(ValueError, match="cache must be one of"):
            client.submit_many("tokens", batch, cache="sometimes")
    finally:
        assert server.stop() == 0


def _local_pass(args) -> dict:
    endpoint, folder, seed = args
    client = EmbeddingClient([endpoint], timeout=60, local_cache_dir=folder, local_cache_version_ttl=60)
    batch = samples(16, seed=seed)
    client.submit_many("tokens", batch).result()  # confirms the version, fills the local cache
    before = sent(client)
    out, meta = client.submit_many("tokens", batch).result()
    check(out, batch)
    return {"sources": meta["sources"], "sent": sent(client) - before}


def test_local_cache_serves_repeats_without_a_request_in_every_process(tmp_path):
    import multiprocessing

    server = start(tmp_path / "s", {"memory_mb": 64})
    endpoint = f"127.0.0.1:{server.port}"
    folder = str(tmp_path / "local")
    try:
        # Four processes on one local folder at once, as DataLoader workers are.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(4) as pool:
            results = pool.map(_local_pass, [(endpoint, folder, seed) for seed in range(4)])
        for r in results:
            assert r == {"sources": ["local_cache"] * 16, "sent": 0}

        # A later process finds what the others stored, once a server has confirmed the version.
        client = EmbeddingClient([endpoint], timeout=60, local_cache_dir=folder, local_cache_version_ttl=60)
        client.encoders(refresh=True)
        warm = samples(1, seed=100)
        client.submit_many("tokens", warm).result()  # a lookup: confirms the version
        before = sent(client)
        batch = samples(16, seed=2)
        out, meta = client.submit_many("tokens", batch).result()
        check(out, batch)
        assert meta["sources"] == ["local_cache"] * 16 and sent(client) == before
    finally:
        assert server.stop() == 0


def test_an_in_place_update_is_never_answered_from_an_old_entry(tmp_path):
    server = start(tmp_path / "s", {"memory_mb": 64, "rocksdb": {"path": str(tmp_path / "db")}})
    try:
        client = EmbeddingClient(
            [f"127.0.0.1:{server.port}"],
            timeout=60,
            local_cache_dir=str(tmp_path / "local"),
            local_cache_version_ttl=0.2,
        )
        batch = samples(8)
        out, meta = client.submit_many("tokens", batch).result()
        check(out, batch, seed=1)
        old = meta["version"]
        _, meta = client.submit_many("tokens", batch).result()
        assert meta["sources"] == ["local_cache"] * 8

        body = json.dumps({"options": {"vocab": 50, "width": 8, "seed": 2}}).encode()
        status, _, answer = server.request("POST", "/v1/encoders/tokens/load", body)
        assert status == 200, answer
        new = json.loads(answer)["version"]
        assert new != old
        time.sleep(0.3)  # past local_cache_version_ttl: local entries need a server's word again

        out, meta = client.submit_many("tokens", batch).result()
        check(out, batch, seed=2)
        assert meta["version"] == new and meta["sources"] == ["computed"] * 8
        out, meta = client.submit_many("tokens", batch).result()
        check(out, batch, seed=2)
        assert meta["sources"] == ["local_cache"] * 8

        # The old version's entries are stale: prune removes them, and keeps the new ones.
        status, _, answer = server.request("POST", "/v1/cache/prune", json.dumps({"stale": True}).encode())
        assert status == 200, answer
        assert json.loads(answer)["entries"] >= 8  # memory and RocksDB each held the 8 old entries
        server.request("POST", "/v1/cache/prune", b"{}")  # an empty selection is an error...
        status, _, answer = server.request("POST", "/v1/cache/prune", b"{}")
        assert status == 400 and "at least one of" in json.loads(answer)["error"]
        fresh = EmbeddingClient([f"127.0.0.1:{server.port}"], timeout=60)
        out, meta = fresh.submit_many("tokens", batch).result()
        check(out, batch, seed=2)
        assert meta["sources"] == ["server_cache"] * 8
    finally:
        assert server.stop() == 0


def test_a_server_without_a_cache_still_answers_cache_first_clients(tmp_path):
    server = start(tmp_path / "s", {"enabled": False})
    try:
        client = EmbeddingClient([f"127.0.0.1:{server.port}"], timeout=60)
        batch = samples(6)
        for _ in range(2):
            out, meta = client.submit_many("tokens", batch).result()
            check(out, batch)
            assert meta["sources"] == ["computed"] * 6
        status, _, body = server.request("GET", "/v1/cache/stats")
        assert status == 404 and "no cache" in json.loads(body)["error"]
    finally:
        assert server.stop() == 0
