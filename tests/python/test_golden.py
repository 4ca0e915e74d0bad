"""The committed golden frames in tests/golden/ pin the wire format down byte for byte.

Proves: (a) each golden frame decodes with jit_embedding.codec to exactly the contents in its JSON (dtype,
shape, raw bytes, values, str/bytes, meta) and is stored as the JSON says (codec, filter, chunk count);
(b) the independent decoder, written from docs/wire-format.md alone, decodes it to the same contents;
(c) re-encoding the JSON's inputs with the JSON's options reproduces the golden bytes exactly (the encoder
is deterministic, and today's encoder writes what yesterday's wrote); (d) every frame in tests/golden/invalid/
fails in both decoders with the error prefix listed in invalid/expected.json; (e) make_golden.py, run
afresh, writes exactly the committed files.

If (c) or (e) fails after a libzstd upgrade while (a), (b) and (d) pass, compressed bytes changed but the
format did not: regenerate with `python3 tests/golden/make_golden.py` and say so in the commit.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import frame_tools as ft
import independent_decoder as ind
import pytest
import torch

from jit_embedding import codec

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
INVALID = GOLDEN / "invalid"
DOCS = sorted(GOLDEN.glob("*.json"))
EXPECTED_INVALID = json.loads((INVALID / "expected.json").read_text())


def load(doc_path: Path) -> tuple[dict, bytes]:
    doc = json.loads(doc_path.read_text())
    return doc, (GOLDEN / doc["frame"]).read_bytes()


def to_input(entry: dict):
    """Rebuilds an encoder input from its JSON entry."""
    if entry["dtype"] == "str":
        return entry["value"]
    raw = bytes.fromhex(entry["hex"])
    if entry["dtype"] == "bytes":
        return raw
    dtype = codec.DTYPES[entry["dtype"]]
    if not raw:
        return torch.empty(entry["shape"], dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(entry["shape"])


def raw_of(t: torch.Tensor) -> bytes:
    fresh = torch.empty(t.shape, dtype=t.dtype)
    fresh.copy_(t)
    return fresh.reshape(-1).view(torch.uint8).numpy().tobytes()


def test_golden_set_is_complete():
    names = {p.stem for p in DOCS}
    assert names == {p.stem for p in GOLDEN.glob("*.jemb")}
    assert {"float32_none", "bfloat16_zstd_shuffle_chunks", "mixed_dtypes_zstd", "empty_and_scalar"} <= names
    dtypes = {e["dtype"] for p in DOCS for e in json.loads(p.read_text())["entries"]}
    assert dtypes == set(codec.DTYPES) | {"str", "bytes"}, "the golden frames cover every dtype"
    stored = [e["stored"] for p in DOCS for e in json.loads(p.read_text())["entries"]]
    assert any(s["filter"] == "shuffle" and s["chunks"] > 1 for s in stored)
    assert any(s["codec"] == "zstd" and s["filter"] == "none" for s in stored)


@pytest.mark.parametrize("doc_path", DOCS, ids=[p.stem for p in DOCS])
def test_a_golden_frame_decodes_to_expected_content(doc_path):
    doc, frame = load(doc_path)
    values, meta = codec.decode(frame)
    assert meta == doc["meta"]
    assert list(values) == [e["name"] for e in doc["entries"]]
    for e in doc["entries"]:
        got = values[e["name"]]
        if e["dtype"] == "str":
            assert type(got) is str and got == e["value"]
        elif e["dtype"] == "bytes":
            assert type(got) is bytes and got.hex() == e["hex"]
        else:
            assert got.dtype == codec.DTYPES[e["dtype"]] and list(got.shape) == e["shape"]
            assert raw_of(got).hex() == e["hex"]
            if "values" in e:
                numbers = got.float().tolist() if got.dtype.is_floating_point else got.tolist()
                assert numbers == e["values"]
    stored = {x["name"]: x for x in ft.parse(frame).entries}
    for e in doc["entries"]:
        s = stored[e["name"]]
        assert (s["codec"], s.get("filter", "none"), len(s.get("chunks", []))) == (
            e["stored"]["codec"],
            e["stored"]["filter"],
            e["stored"]["chunks"],
        )


@pytest.mark.parametrize("doc_path", DOCS, ids=[p.stem for p in DOCS])
def test_b_golden_frame_decodes_with_independent_decoder(doc_path):
    doc, frame = load(doc_path)
    values, meta = ind.decode(frame, strict=True)
    assert meta == doc["meta"]
    assert list(values) == [e["name"] for e in doc["entries"]]
    for e in doc["entries"]:
        got = values[e["name"]]
        if e["dtype"] == "str":
            assert got == e["value"]
        elif e["dtype"] == "bytes":
            assert got.hex() == e["hex"]
        else:
            assert got.dtype == e["dtype"] and list(got.array.shape) == e["shape"]
            assert got.array.tobytes().hex() == e["hex"]


@pytest.mark.parametrize("doc_path", DOCS, ids=[p.stem for p in DOCS])
def test_c_reencoding_reproduces_golden_bytes(doc_path):
    doc, frame = load(doc_path)
    inputs = {e["name"]: to_input(e) for e in doc["entries"]}
    again = codec.encode(inputs, meta=doc["meta"], **doc["options"])
    assert again == frame
    assert codec.encode(inputs, meta=doc["meta"], threads=1, **doc["options"]) == frame


def test_d_invalid_folder_matches_expected_json():
    assert set(EXPECTED_INVALID) == {p.name for p in INVALID.glob("*.jemb")}
    assert len(set(EXPECTED_INVALID.values())) == 13, "every row of the Errors table has a golden frame"


@pytest.mark.parametrize("name", sorted(EXPECTED_INVALID))
def test_d_invalid_golden_frame_fails_with_expected_prefix(name):
    frame = (INVALID / name).read_bytes()
    prefix = EXPECTED_INVALID[name]
    with pytest.raises(codec.CodecError, match=rf"^{prefix}: "):
        codec.decode(frame)
    with pytest.raises(ind.FrameError, match=rf"^{prefix}: "):
        ind.decode(frame)


def test_e_generator_writes_the_committed_files(tmp_path):
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_golden", module)
    spec.loader.exec_module(module)
    written = module.write(tmp_path)
    assert written
    for path in written:
        rel = path.relative_to(tmp_path)
        assert path.read_bytes() == (GOLDEN / rel).read_bytes(), f"{rel} differs from the committed file"
    committed = {p.relative_to(GOLDEN) for p in GOLDEN.rglob("*") if p.is_file() and p.suffix in (".jemb", ".json")}
    assert committed == {p.relative_to(tmp_path) for p in written}
