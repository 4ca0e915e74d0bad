"""Frames from the C++ encoder match docs/wire-format.md, as read by a decoder written from the document alone.

Proves: for every dtype, both compressions, shuffle on and off, empty/rank-0/multi-chunk payloads and the
large-payload parallel copy path, independent_decoder.py (msgpack + zstandard + xxhash + numpy, no
jit_embedding) verifies the header and payload checksums of jit_embedding.codec.encode's frames and decodes
them to the same bytes, names, shapes, dtypes and meta; the encoder writes what the document requires of
encoders (zero padding, zstd content sizes, "none" filters for one-byte elements, entry order); the
independent decoder raises the same error prefix as the C++ decoder for every malformed case; and a frame
built by hand from the document (shuffle and zstd done in Python) decodes in jit_embedding.codec.
"""

from __future__ import annotations

import frame_tools as ft
import independent_decoder as ind
import msgpack
import numpy as np
import pytest
import torch
import zstandard
from codec_testing import FLOAT_DTYPES, ITEMSIZE, make_tensor, raw_bytes
from hypothesis import given, settings
from hypothesis import strategies as st
from malformed_cases import CASES

from jit_embedding import codec

ALL_DTYPES = sorted(codec.DTYPES)
COMPRESSIONS = [("none", False), ("zstd", False), ("zstd", True)]


def assert_same(frame: bytes, values: dict, meta=None) -> None:
    """Decodes `frame` with the independent decoder (strictly) and compares it with the encoder's input."""
    got, got_meta = ind.decode(frame, strict=True)
    assert list(got) == [str(k) for k in values]
    for name, want in values.items():
        g = got[str(name)]
        if isinstance(want, str):
            assert g == want
        elif isinstance(want, (bytes, bytearray, memoryview)):
            assert g == bytes(want)
        else:
            want = torch.as_tensor(want)
            wire = {v: k for k, v in codec.DTYPES.items()}[want.dtype]
            assert isinstance(g, ind.Tensor) and g.dtype == wire
            assert g.array.shape == tuple(want.shape)
            assert g.array.tobytes() == raw_bytes(want)
    assert msgpack.packb(got_meta) == msgpack.packb(meta)
    # And the C++ decoder agrees with the independent one.
    cpp, _ = codec.decode(frame)
    for name, g in got.items():
        if isinstance(g, ind.Tensor):
            assert raw_bytes(cpp[name]) == g.array.tobytes()
        else:
            assert cpp[name] == g


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("compression,shuffle", COMPRESSIONS)
def test_every_dtype(dtype, compression, shuffle):
    values = {
        "lowentropy": make_tensor(dtype, (20, 70), seed=1, alphabet=4),
        "noise": make_tensor(dtype, (33, 7), seed=2),
        "scalar": make_tensor(dtype, (), seed=3),
        "empty": make_tensor(dtype, (0, 5), seed=4),
        "chunks": make_tensor(dtype, (5000,), seed=5, alphabet=6),
    }
    frame = codec.encode(values, compression=compression, shuffle=shuffle, chunk_bytes=1000)
    assert_same(frame, values)
    entries = {e.name: e for e, _ in ind.decode_entries(frame)[0]}
    if compression == "zstd":
        assert entries["chunks"].codec == "zstd" and len(entries["chunks"].chunks) > 4
        want_filter = "shuffle" if shuffle and dtype in FLOAT_DTYPES and ITEMSIZE[dtype] > 1 else "none"
        assert entries["chunks"].filter == want_filter
        assert entries["noise"].codec == "none", "incompressible data is stored raw"


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(ALL_DTYPES),
    shape=st.lists(st.integers(0, 9), max_size=4),
    compression=st.sampled_from(COMPRESSIONS),
    chunk_bytes=st.sampled_from([64, 100, 4096]),
    alphabet=st.sampled_from([2, 17, 256]),
    level=st.sampled_from([1, 5]),
)
def test_random_frames(dtype, shape, compression, chunk_bytes, alphabet, level):
    values = {"t": make_tensor(dtype, shape, seed=7, alphabet=alphabet), "s": "str", "b": b"\x00\x01"}
    kind, shuffle = compression
    frame = codec.encode(values, compression=kind, shuffle=shuffle, chunk_bytes=chunk_bytes, level=level)
    assert_same(frame, values)


def test_str_bytes_and_meta():
    meta = {"encoder": "t5", "ids": [1, 2], "inputs": {"img": b"\xff\xd8"}, "none": None, "f": 0.5, "neg": -3}
    values = {"s": "héllo", "empty": "", "long": "abc" * 1000, "b": bytes(range(256)), "e": b""}
    for compression in ("none", "zstd"):
        assert_same(codec.encode(values, compression=compression, meta=meta), values, meta)


def test_large_uncompressed_payload_checksum():
    """Payloads of 4 MiB and more are hashed and copied by separate tasks; the checksum must still be right."""
    values = {"big": make_tensor("float32", (1_200_000,), seed=8), "after": torch.arange(10)}
    assert_same(codec.encode(values), values)


def test_many_entries():
    values = {f"e{i}": make_tensor(ALL_DTYPES[i % len(ALL_DTYPES)], (i % 5, 3), seed=i, alphabet=3) for i in range(200)}
    assert_same(codec.encode(values, compression="zstd"), values)


def test_empty_frame():
    assert_same(codec.encode({}), {})
    assert_same(codec.encode({}, meta=[1, "x"]), {}, [1, "x"])


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_independent_decoder_gives_the_same_error(case):
    with pytest.raises(ind.FrameError, match=rf"^{case.prefix}: "):
        ind.decode(case.frame(), limits=ind.Limits(**case.limits))


def test_independent_decoder_catches_tampering():
    frame = bytearray(codec.encode({"a": torch.arange(100.0)}, meta={"k": 1}))
    frame[-1] ^= 1
    with pytest.raises(ind.FrameError, match="^bad checksum"):
        ind.decode(frame)
    assert ind.decode(frame, verify=False)[0]["a"].array[-1] != 99.0


def test_shuffle_matches_the_document():
    """Byte j of element i goes to position j * n + i."""
    data = bytes(range(12))  # three 4-byte elements
    assert ind.shuffle(data, 4) == bytes([0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11])
    assert ind.unshuffle(ind.shuffle(data, 4), 4) == data
    assert ind.shuffle(data, 1) == data


def _hand_built_frame() -> tuple[bytes, dict]:
    """A frame made from the document with Python only: a shuffled multi-chunk zstd float32 entry, a
    plain int16 entry, a str, and meta; payloads at 64-byte offsets."""
    f32 = (np.arange(3000, dtype="<f4") % 11).astype("<f4")
    i16 = np.arange(-50, 50, dtype="<i2").reshape(10, 10)
    text = "hand-built ✓".encode()
    chunk = 1024
    raw = f32.tobytes()
    chunks = [
        zstandard.ZstdCompressor(level=3).compress(ind.shuffle(raw[i : i + chunk], 4))
        for i in range(0, len(raw), chunk)
    ]
    stored = [b"".join(chunks), i16.tobytes(), text]
    payload, offsets = b"", []
    for s in stored:
        offsets.append(len(payload))
        payload += s + bytes(-len(s) % 64)
    base = {"codec": "none", "filter": "none"}
    envelope = {
        "tensors": [
            {
                "name": "f",
                "dtype": "float32",
                "shape": [3000],
                "offset": offsets[0],
                "nbytes": len(stored[0]),
                "codec": "zstd",
                "raw_nbytes": len(raw),
                "checksum": ft.xxh3(stored[0]),
                "filter": "shuffle",
                "chunk_size": chunk,
                "chunks": [len(c) for c in chunks],
            },
            {
                "name": "i",
                "dtype": "int16",
                "shape": [10, 10],
                "offset": offsets[1],
                "nbytes": 200,
                "raw_nbytes": 200,
                "checksum": ft.xxh3(stored[1]),
                **base,
            },
            {
                "name": "t",
                "dtype": "str",
                "shape": [len(text)],
                "offset": offsets[2],
                "nbytes": len(text),
                "raw_nbytes": len(text),
                "checksum": ft.xxh3(stored[2]),
                **base,
            },
        ],
        "meta": {"made": "by hand"},
    }
    payload = payload[: offsets[2] + len(text)]
    return ft.build(envelope, payload), {"f": f32, "i": i16, "t": text.decode()}


def test_hand_built_frame_decodes_in_both_decoders():
    frame, want = _hand_built_frame()
    values, meta = codec.decode(frame)
    assert meta == {"made": "by hand"}
    assert values["f"].numpy().tobytes() == want["f"].tobytes()
    assert values["i"].numpy().tobytes() == want["i"].tobytes() and values["i"].shape == (10, 10)
    assert values["t"] == want["t"]
    got, _ = ind.decode(frame, strict=True)
    assert got["f"].array.tobytes() == want["f"].tobytes() and got["t"] == want["t"]
