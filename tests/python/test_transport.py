"""Lossy transport end to end (docs/transport.md) against a real `jit-embedding serve` on loopback.

Each mode's answer, restored by the client, equals the exact answer quantized independently here
with torch (bit for bit); the wire carries the narrow dtypes and the scale entries the meta names;
cache hits travel the same way; submit_many (restored in C++) gives the same bits as submit
(restored in Python) and keeps lossy rows out of the local cache; a DataLoader over
JITEmbeddingDataset(transport=...) delivers the restored embeddings; bad specs get a 400/422 or a
ValueError that names the problem, and the server keeps serving."""

from __future__ import annotations

import json
import os

import client_encoders
import pytest
import serving
import torch
from torch.utils.data import DataLoader

from jit_embedding import codec, transport
from jit_embedding.client import EmbeddingClient
from jit_embedding.data import JITEmbeddingDataset

ENV = {**os.environ, "PYTHONPATH": str(serving.ROOT / "tests" / "python")}
ENCODERS = [
    {"name": "affine", "factory": "python_encoders:affine", "options": {"width": 64, "seed": 3}},
    {"name": "tokens", "factory": "client_encoders:tokens", "options": {"vocab": 50, "width": 32, "seed": 1}},
]
LOSSY = ("bf16", "fp16", "fp8_rowwise", "fp8_tensor", "int8_rowwise")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("transport")
    running = serving.start(serving.write_config(folder, ENCODERS, {"port": 0}), python_hosted=True, env=ENV)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return EmbeddingClient([f"127.0.0.1:{server.port}"], timeout=60)


def quantized(x: torch.Tensor, mode: str) -> torch.Tensor:
    """What the transport `mode` makes of float32 `x` [batch, ...], computed independently with torch:
    scale = finite absmax / qmax (1 when 0), codes = x / scale cast (round to nearest even), back."""
    if mode in ("bf16", "fp16"):
        return x.to(torch.bfloat16 if mode == "bf16" else torch.float16).to(torch.float32)
    if mode == "fp8_tensor":
        rows = x.reshape(x.shape[0], -1)
    else:
        rows = x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(-1, 1)
    qmax = 127.0 if mode == "int8_rowwise" else 448.0
    absmax = torch.where(rows.isfinite(), rows.abs(), torch.zeros_like(rows)).amax(dim=1, keepdim=True)
    scale = absmax / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if mode == "int8_rowwise":
        codes = torch.round(rows / scale).clamp(-127, 127).to(torch.int8)
    else:
        codes = (rows / scale).to(torch.float8_e4m3fn)
    return (codes.to(torch.float32) * scale).reshape(x.shape)


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("mode", LOSSY)
def test_each_mode_restores_to_the_exact_answer_quantized(client, mode):
    x = torch.randn(6, 64) * 3
    exact, _ = client.encode("affine", {"x": x}, transport=None)
    got, meta = client.encode("affine", {"x": x}, transport=mode)
    assert set(got) == set(exact) == {"y", "norm"}
    for name in ("y", "norm"):
        assert got[name].dtype == torch.float32
        assert bits_equal(got[name].contiguous(), quantized(exact[name], mode)), name
    assert set(meta["transport"]) == {"y", "norm"}
    assert meta["transport"]["y"]["mode"] == mode and meta["transport"]["y"]["dtype"] == "float32"


def test_the_wire_carries_codes_and_the_scales_the_meta_names(server):
    x = torch.randn(8, 64)
    body = codec.encode({"x": x}, meta={"transport": "fp8_rowwise", "cache": "bypass"})
    status, _, answer = server.request("POST", "/v1/encode/affine", body)
    assert status == 200
    outputs, meta = codec.decode(answer)
    assert outputs["y"].dtype == torch.float8_e4m3fn and list(outputs["y"].shape) == [8, 64]
    assert outputs["y.scale"].dtype == torch.float32 and list(outputs["y.scale"].shape) == [8]
    assert meta["transport"]["y"] == {"mode": "fp8_rowwise", "dtype": "float32", "scales": "y.scale"}
    exact_status, _, exact = server.request("POST", "/v1/encode/affine", codec.encode({"x": x}))
    assert exact_status == 200
    # y: 8 x 64 floats (2 KiB) become 512 code bytes plus 32 scale bytes.
    y_bytes = codec.describe(answer)["payload_bytes"]
    assert y_bytes < codec.describe(exact)["payload_bytes"]
    assert transport.restore(outputs, meta["transport"])["y"].dtype == torch.float32


def test_per_output_modes_and_the_rest(client):
    x = torch.randn(4, 64)
    exact, _ = client.encode("affine", {"x": x})
    got, meta = client.encode("affine", {"x": x}, transport={"y": "bf16"})
    assert set(meta["transport"]) == {"y"}
    assert bits_equal(got["y"].contiguous(), quantized(exact["y"], "bf16"))
    assert bits_equal(got["norm"], exact["norm"])
    got, meta = client.encode("affine", {"x": x}, transport={"*": "int8_rowwise", "y": "exact"})
    assert set(meta["transport"]) == {"norm"}
    assert bits_equal(got["y"], exact["y"])
    assert bits_equal(got["norm"].contiguous(), quantized(exact["norm"], "int8_rowwise"))


def test_cache_hits_travel_the_same_way(client):
    x = torch.randn(3, 64)
    first, meta1 = client.encode("affine", {"x": x}, transport="fp8_rowwise")
    second, meta2 = client.encode("affine", {"x": x}, transport="fp8_rowwise")
    assert meta2.get("cache_hits") == [0, 1, 2]
    assert bits_equal(first["y"], second["y"])
    exact, meta3 = client.encode("affine", {"x": x})
    assert "transport" not in meta3 and meta3.get("cache_hits") == [0, 1, 2]
    assert bits_equal(first["y"].contiguous(), quantized(exact["y"], "fp8_rowwise"))


def test_submit_many_restores_in_cpp_with_the_same_bits(server, tmp_path):
    local = EmbeddingClient([f"127.0.0.1:{server.port}"], local_cache_dir=str(tmp_path / "local"))
    samples = [{"ids": torch.randint(1, 50, (1, n))} for n in (3, 9, 5)]
    exact = local.encode_many("tokens", samples, cache="bypass")
    lossy = local.encode_many("tokens", samples, transport="fp8_rowwise")
    for (e, _), (q, _), s in zip(exact, lossy, samples):
        assert q["h"].shape == e["h"].shape == (1, s["ids"].shape[1], 32)
        assert bits_equal(q["h"].contiguous(), quantized(e["h"], "fp8_rowwise"))
        assert bits_equal(q["pooled"].contiguous(), quantized(e["pooled"], "fp8_rowwise"))
    # The lossy rows were not cached locally: exact answers come back, from the server's cache.
    before = local.cache_stats()
    again = local.encode_many("tokens", samples)
    after = local.cache_stats()
    assert after["rows_local_cache"] == before["rows_local_cache"]
    for (e, _), (a, _) in zip(exact, again):
        assert bits_equal(a["h"], e["h"])
    # Exact rows are cached locally and served from there next time.
    local.encode_many("tokens", samples)
    assert local.cache_stats()["rows_local_cache"] == after["rows_local_cache"] + 3


def test_a_dataloader_delivers_restored_embeddings(client):
    base = [{"ids": torch.randint(1, 50, (7,))} for _ in range(8)]
    fields = {"emb": ("tokens", lambda s: {"ids": s["ids"]})}
    loader = DataLoader(
        JITEmbeddingDataset(base, fields, client, transport="bf16"),
        batch_size=4,
        num_workers=2,
        collate_fn=lambda b: b,
    )
    seen = 0
    for batch in loader:
        for sample in batch:
            exact, _ = client.encode("tokens", {"ids": sample["ids"].unsqueeze(0)}, transport=None)
            want = quantized(exact["pooled"], "bf16").reshape(sample["emb"]["pooled"].shape)
            assert bits_equal(sample["emb"]["pooled"].contiguous(), want)
            seen += 1
    assert seen == len(base)


def test_bad_specs_name_the_problem_and_the_server_keeps_serving(server, client):
    x = torch.randn(2, 64)
    cases = [
        ("fp4", 400, "meta.transport must be one of"),
        ({"nope": "bf16"}, 422, "not an output of the encoder"),
        ({"y": 7}, 400, 'meta.transport["y"] must be a string'),
        (["bf16"], 400, "meta.transport must be a string"),
    ]
    for spec, status, words in cases:
        got = server.request("POST", "/v1/encode/affine", codec.encode({"x": x}, meta={"transport": spec}))
        assert got[0] == status, (spec, got)
        assert words in json.loads(got[2])["error"], (spec, got)
    with pytest.raises(ValueError, match="is not one of"):
        client.encode("affine", {"x": x}, transport="fp4")
    with pytest.raises(TypeError, match="transport must"):
        client.encode("affine", {"x": x}, transport=["bf16"])
    server.assert_healthy()
    assert client.encode("affine", {"x": x}, transport="bf16")[0]["y"].shape == (2, 64)
    assert "jit_transport_saved_bytes_total" in server.metrics()


def test_integer_outputs_cannot_be_asked_lossy(tmp_path):
    assert client_encoders.argmax()[1]["outputs"][1]["dtype"] == "int64"
    folder = tmp_path / "ints"
    folder.mkdir()
    cfg = serving.write_config(folder, [{"name": "argmax", "factory": "client_encoders:argmax", "options": {}}])
    running = serving.start(cfg, python_hosted=True, env=ENV)
    try:
        body = codec.encode({"x": torch.randn(2, 5)}, meta={"transport": {"index": "fp8_rowwise"}})
        status, _, answer = running.request("POST", "/v1/encode/argmax", body)
        assert status == 422 and "not floating-point" in json.loads(answer)["error"]
        # One mode for all applies to the float outputs only: the int64 index travels exactly.
        body = codec.encode({"x": torch.randn(2, 5)}, meta={"transport": "fp8_rowwise"})
        status, _, answer = running.request("POST", "/v1/encode/argmax", body)
        outputs, meta = codec.decode(answer)
        assert status == 200 and outputs["index"].dtype == torch.int64 and set(meta["transport"]) == {"max"}
    finally:
        running.stop()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_restore_on_the_gpu_equals_the_cpu(client):
    x = torch.randn(5, 64)
    cpu, _ = client.encode("affine", {"x": x}, transport="fp8_rowwise")
    gpu, _ = client.encode("affine", {"x": x}, transport="fp8_rowwise", device="cuda")
    assert gpu["y"].device.type == "cuda"
    assert bits_equal(gpu["y"].cpu(), cpu["y"])
