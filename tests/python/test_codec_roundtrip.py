"""Round trips through jit_embedding.codec are exact, and the encoder keeps its documented promises.

Proves: every wire dtype (float32 ... bool) survives encode -> decode bit for bit (NaN payloads and
-0.0 included) with compression "none" and "zstd", shuffle on and off, in any shape (rank 0 and empty
dimensions included), from contiguous or strided torch tensors and from NumPy arrays; str, bytes and
meta values come back equal and of the same type; uncompressed payloads decode as zero-copy views
that keep their frame alive; zstd shrinks compressible data and leaves incompressible data exactly as
"none" would; payloads spanning many chunks decode; the output bytes do not depend on the thread count;
decode(verify=False) skips only the payload checksums; describe() returns the envelope.
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
import subprocess
import sys
import warnings

import msgpack
import numpy as np
import pytest
import torch
from codec_testing import (
    FLOAT_DTYPES,
    ITEMSIZE,
    NUMPY_DTYPES,
    as_bits,
    assert_bit_equal,
    large_values,
    make_tensor,
    raw_bytes,
    roundtrip,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from jit_embedding import codec

ALL_DTYPES = sorted(codec.DTYPES)
COMPRESSIONS = [("none", False), ("zstd", False), ("zstd", True)]


def test_dtype_table_matches_the_document():
    documented = ["float32", "float16", "bfloat16", "float8_e4m3fn", "int8", "uint8", "int16", "int32", "int64", "bool"]
    assert sorted(documented) == ALL_DTYPES
    assert ITEMSIZE == {
        "float32": 4,
        "float16": 2,
        "bfloat16": 2,
        "float8_e4m3fn": 1,
        "int8": 1,
        "uint8": 1,
        "int16": 2,
        "int32": 4,
        "int64": 8,
        "bool": 1,
    }
    assert issubclass(codec.CodecError, ValueError)


# ---------------------------------------------------------------- property test over the whole space


def _strided_like(x: torch.Tensor, layout: str):
    """A value with the same logical contents as contiguous `x` but another memory layout."""
    if layout == "transposed" and x.dim() >= 2:
        return x.mT.contiguous().mT
    if layout == "stepped" and x.dim() >= 1 and x.numel() != 1:  # numel 1: test_one_element_strided_views
        return torch.stack([x, torch.ones_like(x)], dim=-1).flatten(-2)[..., ::2]
    if layout == "numpy":
        return x.numpy()
    if layout == "numpy_transposed" and x.dim() >= 2:
        return np.ascontiguousarray(x.numpy().T).T
    return x


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from(ALL_DTYPES),
    shape=st.lists(st.integers(0, 7), min_size=0, max_size=4),
    compression=st.sampled_from(COMPRESSIONS),
    alphabet=st.sampled_from([3, 256]),
    chunk_bytes=st.sampled_from([64, 4096, 1 << 20]),
    layout=st.sampled_from(["contiguous", "transposed", "stepped", "numpy", "numpy_transposed"]),
    seed=st.integers(0, 2**16),
)
def test_roundtrip_is_bit_exact(dtype, shape, compression, alphabet, chunk_bytes, layout, seed):
    if layout.startswith("numpy") and (dtype not in NUMPY_DTYPES or not shape):
        layout = "contiguous"  # NumPy has no bfloat16/float8; rank-0 NumPy has its own test below
    want = make_tensor(dtype, shape, seed, alphabet)
    value = _strided_like(want, layout)
    before = raw_bytes(torch.as_tensor(value))
    kind, shuffle = compression
    got, meta, frame = roundtrip({"t": value}, compression=kind, shuffle=shuffle, chunk_bytes=chunk_bytes)
    assert list(got) == ["t"] and meta is None
    assert_bit_equal(got["t"], want)
    assert raw_bytes(torch.as_tensor(value)) == before, "encode modified its input"


# ---------------------------------------------------------------- every dtype x compression, explicitly


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("compression,shuffle", COMPRESSIONS)
def test_every_dtype_roundtrips_and_compresses(dtype, compression, shuffle):
    want = make_tensor(dtype, (16, 64), seed=1, alphabet=4)  # >= 1 KiB of low-entropy bytes
    got, _, frame = roundtrip({"t": want}, compression=compression, shuffle=shuffle)
    assert_bit_equal(got["t"], want)
    entry = codec.describe(frame)["envelope"]["tensors"][0]
    assert entry["dtype"] == dtype and entry["shape"] == [16, 64]
    assert entry["raw_nbytes"] == want.numel() * ITEMSIZE[dtype]
    assert entry["codec"] == compression
    # Shuffling one-byte elements changes nothing, and the document says encoders then write "none";
    # the encoder shuffles floating-point data only (encode's docstring).
    shuffled = compression == "zstd" and shuffle and dtype in FLOAT_DTYPES and ITEMSIZE[dtype] > 1
    assert entry["filter"] == ("shuffle" if shuffled else "none")
    if compression == "zstd":
        assert entry["nbytes"] < entry["raw_nbytes"]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("compression,shuffle", COMPRESSIONS)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (0, 4, 5), (1,), (1, 1, 1), (2, 0, 0, 3)])
def test_empty_and_rank0_shapes(dtype, compression, shuffle, shape):
    want = make_tensor(dtype, shape, seed=2)
    got, _, frame = roundtrip({"t": want, "after": torch.arange(3)}, compression=compression, shuffle=shuffle)
    assert_bit_equal(got["t"], want)
    assert torch.equal(got["after"], torch.arange(3))
    assert codec.describe(frame)["envelope"]["tensors"][0]["shape"] == list(shape)


def test_frame_with_no_entries():
    got, meta, frame = roundtrip({}, meta={"only": "meta"})
    assert got == {} and meta == {"only": "meta"}
    got, meta, frame = roundtrip({})
    assert got == {} and meta is None and len(frame) == 64  # header + tiny envelope, padded to 64


def test_special_float_values_survive():
    bits = torch.tensor([0x7FC00001, 0xFFC00000, 0x7F800000, 0xFF800000, 0x80000000, 0x00000001], dtype=torch.int64)
    want = bits.to(torch.int32).view(torch.float32)  # NaN payloads, infinities, -0.0, a subnormal
    for compression in ("none", "zstd"):
        got, _, _ = roundtrip({"t": want.repeat(200)}, compression=compression)
        assert torch.equal(as_bits(got["t"]), as_bits(want.repeat(200)))


# ---------------------------------------------------------------- non-contiguous and foreign inputs


NONCONTIGUOUS = {
    "transposed": lambda x: x.t(),
    "sliced_with_steps": lambda x: x[::2, 1::3],
    "negative_step_flip": lambda x: x.flip(0),
    "expanded_stride0": lambda x: x[:1].expand(5, -1),
    "storage_offset": lambda x: x[3:7],
    "permuted_3d": lambda x: x.reshape(4, 5, 6).permute(2, 0, 1),
    "channels_last": lambda x: x.reshape(2, 3, 4, 5).to(memory_format=torch.channels_last),
    "diagonal": lambda x: x[:, :12].diagonal(),
}


@pytest.mark.parametrize("layout", sorted(NONCONTIGUOUS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int64", "bool", "float8_e4m3fn"])
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_noncontiguous_torch_inputs(layout, dtype, compression):
    base = make_tensor(dtype, (12, 10), seed=3, alphabet=5)
    value = NONCONTIGUOUS[layout](base)
    want = value.contiguous()
    got, _, _ = roundtrip({"t": value}, compression=compression, chunk_bytes=64)
    assert_bit_equal(got["t"], want)


def test_one_element_strided_views():
    """One element picked with a step, like batch[:, 0] with batch size 1: torch calls these contiguous
    although their stride is not 1, so a flat byte view of them needs a copy first."""
    for dtype in ("uint8", "bfloat16", "int16", "float32", "int64"):
        base = make_tensor(dtype, (1, 4), seed=14)
        for value in (base[:, 0], base[0, ::4], base[:, ::4]):
            assert value.numel() == 1 and value.stride()[-1] != 1
            got, _, _ = roundtrip({"t": value})
            assert_bit_equal(got["t"], value.clone())


def test_requires_grad_and_views_of_autograd_tensors():
    x = torch.arange(12.0, requires_grad=True)
    y = (x * 2).reshape(3, 4).t()
    got, _, _ = roundtrip({"y": y})
    assert torch.equal(got["y"], y.detach())


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_numpy_inputs(dtype, compression):
    want = make_tensor(dtype, (6, 40), seed=4, alphabet=3)
    arrays = {
        "c_order": want.numpy(),
        "fortran": np.asfortranarray(want.numpy()),
        "strided": np.ascontiguousarray(np.repeat(want.numpy(), 2, axis=1))[:, ::2],
        "reversed": np.ascontiguousarray(want.numpy()[::-1])[::-1],
    }
    got, _, _ = roundtrip(arrays, compression=compression)
    for name in arrays:
        assert_bit_equal(got[name], want)


def test_numpy_rank0_keeps_rank0():
    """A 0-d NumPy array is a rank-0 value like a 0-d torch tensor: its shape must stay []."""
    for dtype in NUMPY_DTYPES:
        want = make_tensor(dtype, (), seed=5)
        got, _, _ = roundtrip({"t": want.numpy()})
        assert_bit_equal(got["t"], want)


def test_readonly_numpy_input_encodes_without_warnings():
    """Encoding never writes to its input, so a read-only array (np.frombuffer of bytes) needs no warning."""
    arr = np.frombuffer(bytes(range(16)), dtype=np.int32)
    assert not arr.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = codec.encode({"t": arr})
    assert codec.decode(frame)[0]["t"].tolist() == arr.tolist()


def test_non_native_byte_order_numpy_is_converted_or_refused_with_codec_error():
    """The wire is little-endian; a big-endian int32 array must round-trip by value or raise CodecError."""
    arr = np.arange(5, dtype=">i4")
    try:
        frame = codec.encode({"t": arr})
    except codec.CodecError:
        return
    assert codec.decode(frame)[0]["t"].tolist() == arr.tolist()


# ---------------------------------------------------------------- str, bytes, names, meta


STRINGS = ["", "a", "héllo wörld", "日本語テキスト", "emoji 😀 and \x00 NUL", "line\nbreak\ttab"]


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_str_and_bytes_values(compression):
    values = {f"s{i}": s for i, s in enumerate(STRINGS)}
    values.update(
        b_empty=b"",
        b_all=bytes(range(256)),
        b_bytearray=bytearray(b"\x00\xff" * 10),
        b_memoryview=memoryview(b"view me"),
        long_str="compressible text " * 500,
        long_bytes=b"\x89PNG" + bytes(5000),
    )
    got, _, frame = roundtrip(values, compression=compression)
    assert list(got) == list(values)
    for name, value in values.items():
        if isinstance(value, str):
            assert type(got[name]) is str and got[name] == value
        else:
            assert type(got[name]) is bytes and got[name] == bytes(value)
    entries = {e["name"]: e for e in codec.describe(frame)["envelope"]["tensors"]}
    assert entries["s2"]["dtype"] == "str" and entries["s2"]["shape"] == [len("héllo wörld".encode())]
    assert entries["b_all"]["dtype"] == "bytes" and entries["b_all"]["shape"] == [256]
    assert entries["long_str"]["codec"] == compression and entries["long_bytes"]["codec"] == compression


def test_names_keep_order_and_text():
    names = ["zeta", "alpha", "ünïcode", "", "with space", "a/b.c:d", "x" * 300]
    values = {n: torch.tensor([i]) for i, n in enumerate(names)}
    got, _, _ = roundtrip(values)
    assert list(got) == names
    assert [int(got[n]) for n in names] == list(range(len(names)))
    got, _, _ = roundtrip({7: torch.ones(1)})
    assert list(got) == ["7"]


META = {
    "none": None,
    "zero": 0,
    "false": False,
    "empty_str": "",
    "empty_map": {},
    "empty_list": [],
    "request": {
        "encoder": "vae",
        "ids": [1, 2, 3],
        "inputs": {"prompt": "a cat", "image": b"\x89PNG\r\n"},
        "params": {"scale": 0.18215, "steps": None, "flags": [True, False]},
        "cache": "use",
    },
    "nested": {"a": [{"b": [None, [1, [2, [3, {"c": {}}]]]]}], "ü": "ñ"},
    "ints": [0, 1, -1, 127, 128, -32, -33, 255, 256, 2**32, 2**63 - 1, -(2**63), 2**64 - 1],
    "floats": [1.5, -2.25, 1e300, -1e-300, 2.0**70, math.inf, -math.inf, math.nan],
    "integral_floats": {"scale": 1.0, "zero": 0.0, "negative_zero": -0.0, "guidance": 7.0, "neg": -3.0},
    "int_keys": {1: "one", -2: "minus two"},
    "bytes": b"\x00\x01\xff",
}


@pytest.mark.parametrize("key", sorted(META))
def test_meta_values(key):
    meta = META[key]
    got, out, _ = roundtrip({"x": torch.ones(1)}, meta=meta)
    if meta is None:
        assert out is None
    else:
        # Compare msgpack encodings, so NaN equals NaN, -0.0 differs from 0.0, and types must match.
        assert msgpack.packb(out, use_bin_type=True) == msgpack.packb(meta, use_bin_type=True)


def test_meta_tuple_comes_back_as_list():
    assert roundtrip({}, meta=(1, (2, 3)))[1] == [1, [2, 3]]


# ---------------------------------------------------------------- zero copy and lifetime


def _address_range(buf: bytearray) -> tuple[int, int]:
    start = np.frombuffer(buf, dtype=np.uint8).ctypes.data
    return start, start + len(buf)


def test_uncompressed_decode_is_zero_copy_view_of_bytearray():
    want = make_tensor("float32", (8, 16), seed=6)
    frame = bytearray(codec.encode({"a": want, "b": torch.arange(10), "s": "text"}))
    got, _ = codec.decode(frame)
    start, end = _address_range(frame)
    for name in ("a", "b"):
        t = got[name]
        assert start <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= end, name
        assert (t.data_ptr() - start) % 64 == 0, "payloads sit at multiples of 64 from the frame start"
    # Writing through the bytearray shows in the tensor, and the other way round: one memory.
    pos = got["a"].data_ptr() - start
    frame[pos : pos + 4] = np.float32(42.0).tobytes()
    assert got["a"][0, 0].item() == 42.0
    got["b"][0] = -7
    pos = got["b"].data_ptr() - start
    assert int.from_bytes(frame[pos : pos + 8], "little", signed=True) == -7


def test_views_keep_the_frame_alive_and_pinned():
    frame = bytearray(codec.encode({"a": torch.arange(1000.0)}))
    a = codec.decode(frame)[0]["a"]
    with pytest.raises(BufferError):
        frame.extend(b"x")  # the view pins the buffer: resizing would leave `a` dangling
    del a
    gc.collect()
    frame.extend(b"x")  # released with the last view
    b = codec.decode(codec.encode({"b": torch.arange(1000.0)}))[0]["b"]  # the bytes frame is gone
    gc.collect()
    assert b.sum().item() == sum(range(1000))


def test_compressed_decode_owns_its_memory():
    want = torch.zeros(10_000)
    frame = bytearray(codec.encode({"z": want}, compression="zstd"))
    assert codec.describe(frame)["envelope"]["tensors"][0]["codec"] == "zstd"
    got = codec.decode(frame)[0]["z"]
    start, end = _address_range(frame)
    assert not start <= got.data_ptr() < end
    del frame
    gc.collect()
    assert torch.equal(got, want)


# ---------------------------------------------------------------- compression, chunks, threads


def test_compressed_frames_are_smaller_for_compressible_data():
    values = {"zeros": torch.zeros(50_000), "ints": torch.arange(50_000) % 7, "text": "abc" * 5000}
    plain = codec.encode(values)
    packed = codec.encode(values, compression="zstd")
    assert len(packed) < len(plain) / 10
    got, _ = codec.decode(packed)
    assert torch.equal(got["zeros"], values["zeros"]) and torch.equal(got["ints"], values["ints"])


def test_incompressible_and_small_payloads_are_stored_raw():
    """zstd that would not shrink a payload is skipped; the frame is then byte-identical to "none"."""
    values = {"noise": make_tensor("float32", (4096,), seed=7), "tiny": torch.zeros(4)}
    assert codec.encode(values, compression="zstd") == codec.encode(values)


@pytest.mark.parametrize("level", [-5, 1, 3, 19])
def test_zstd_levels(level):
    want = make_tensor("bfloat16", (300, 40), seed=8, alphabet=6)
    got, _, frame = roundtrip({"t": want}, compression="zstd", level=level, chunk_bytes=4096)
    assert_bit_equal(got["t"], want)
    assert codec.describe(frame)["envelope"]["tensors"][0]["codec"] == "zstd"


@pytest.mark.parametrize(
    "dtype,chunk_bytes,want_chunk_size",
    [
        ("float32", 4096, 4096),
        ("int64", 4099, 4096),  # rounded down to a multiple of the itemsize
        ("float16", 1000, 1000),
        ("uint8", 4096, 4096),
    ],
)
@pytest.mark.parametrize("shuffle", [False, True])
def test_multi_chunk_payloads(dtype, chunk_bytes, want_chunk_size, shuffle):
    numel = 100_000 // ITEMSIZE[dtype] + 3  # not a whole number of chunks
    want = make_tensor(dtype, (numel,), seed=9, alphabet=4)
    got, _, frame = roundtrip({"t": want}, compression="zstd", shuffle=shuffle, chunk_bytes=chunk_bytes)
    assert_bit_equal(got["t"], want)
    entry = codec.describe(frame)["envelope"]["tensors"][0]
    raw = want.numel() * ITEMSIZE[dtype]
    assert entry["codec"] == "zstd"
    assert entry["chunk_size"] == want_chunk_size
    assert len(entry["chunks"]) == math.ceil(raw / want_chunk_size) > 20
    assert sum(entry["chunks"]) == entry["nbytes"]


def _mixed_values():
    return {
        "big_raw": make_tensor("float32", (1_100_000,), seed=10),  # > 4 MiB: the parallel copy path
        "big_zstd": make_tensor("bfloat16", (400_000,), seed=11, alphabet=5),
        "ints": make_tensor("int64", (3000,), seed=12, alphabet=3),
        **{f"small{i}": make_tensor("float16", (i, 17), seed=i, alphabet=9) for i in range(20)},
        "s": "text",
    }


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_thread_count_does_not_change_the_bytes(compression):
    values = _mixed_values()
    kw = dict(compression=compression, chunk_bytes=16 * 1024)
    one = codec.encode(values, threads=1, **kw)
    assert codec.encode(values, **kw) == one
    assert codec.encode(values, threads=2, **kw) == one
    assert codec.encode(values, threads=7, **kw) == one
    for threads in (1, 0, 3):
        got, _ = codec.decode(one, threads=threads)
        for name, want in values.items():
            if isinstance(want, str):
                assert got[name] == want
            else:
                assert_bit_equal(got[name], want)


def test_thread_count_does_not_change_the_bytes_at_default_chunking():
    """A frame is a function of its inputs and options only: threads=1, the default pool and any other
    count give the same bytes, so frames (and golden files) do not depend on the machine's core count."""
    values = large_values()
    one = codec.encode(values, compression="zstd", threads=1)
    for threads in (0, 2, 3, 16):
        frame = codec.encode(values, compression="zstd", threads=threads)
        if frame != one:
            chunks = [(e["name"], e.get("chunk_size")) for e in codec.describe(frame)["envelope"]["tensors"]]
            ones = [(e["name"], e.get("chunk_size")) for e in codec.describe(one)["envelope"]["tensors"]]
            pytest.fail(f"threads={threads} gives other bytes than threads=1; chunk sizes {chunks} vs {ones}")


_SUBPROCESS_ENCODE = """
import hashlib, sys, torch
sys.path.insert(0, {here!r})
from codec_testing import large_values
from jit_embedding import codec
print(hashlib.sha256(codec.encode(large_values(), compression="zstd")).hexdigest())
"""


def test_pool_size_does_not_change_the_bytes():
    """The same frame from processes whose thread pools differ (JIT_NUM_THREADS=1 and 8)."""
    here = os.path.dirname(os.path.abspath(__file__))
    want = hashlib.sha256(codec.encode(large_values(), compression="zstd", threads=1)).hexdigest()
    for n in ("1", "8"):
        out = subprocess.run(
            [sys.executable, "-c", _SUBPROCESS_ENCODE.format(here=here)],
            env={**os.environ, "JIT_NUM_THREADS": n},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == want, f"JIT_NUM_THREADS={n}"


def test_verify_false_decodes_and_skips_only_payload_checksums():
    values = {"a": torch.arange(64.0), "z": torch.zeros(5000)}
    frame = codec.encode(values, compression="zstd")
    got, _ = codec.decode(frame, verify=False)
    assert torch.equal(got["a"], values["a"]) and torch.equal(got["z"], values["z"])

    info = codec.describe(frame)
    entry = info["envelope"]["tensors"][0]
    assert entry["codec"] == "none"
    pos = len(frame) - info["payload_bytes"] + entry["offset"]
    bad = bytearray(frame)
    bad[pos] ^= 0x01  # corrupts a[0], which the header checksum does not cover
    with pytest.raises(codec.CodecError, match=r"^bad checksum"):
        codec.decode(bad)
    got, _ = codec.decode(bad, verify=False)
    assert got["a"][0].item() != 0.0 and torch.equal(got["a"][1:], values["a"][1:])
    bad[5] = 1  # a reserved flag: header checks still run
    with pytest.raises(codec.CodecError, match=r"^bad version"):
        codec.decode(bad, verify=False)
    bad[5] = 0
    bad[40] ^= 0xFF  # the envelope: the header checksum is always checked
    with pytest.raises(codec.CodecError, match=r"^bad checksum"):
        codec.decode(bad, verify=False)


def test_describe_returns_sizes_and_envelope():
    meta = {"encoder": "clip", "ids": [1, 2], "nested": {"none": None}}
    values = {"lat": torch.zeros(4, 100), "emb": make_tensor("float16", (3,), seed=13), "s": "hi"}
    frame = codec.encode(values, compression="zstd", meta=meta)
    info = codec.describe(frame)
    env_n = int.from_bytes(frame[8:12], "little")
    pay_n = int.from_bytes(frame[16:24], "little")
    assert info["frame_bytes"] == len(frame)
    assert info["envelope_bytes"] == env_n and info["payload_bytes"] == pay_n
    assert info["envelope"]["meta"] == meta
    entries = info["envelope"]["tensors"]
    assert [e["name"] for e in entries] == ["lat", "emb", "s"]
    assert [e["dtype"] for e in entries] == ["float32", "float16", "str"]
    assert [e["shape"] for e in entries] == [[4, 100], [3], [2]]
    assert [e["codec"] for e in entries] == ["zstd", "none", "none"]
    assert entries[0]["raw_nbytes"] == 1600 and entries[0]["filter"] == "shuffle"
    assert entries[0]["chunk_size"] > 0 and sum(entries[0]["chunks"]) == entries[0]["nbytes"]
    assert all(e["offset"] % 64 == 0 for e in entries)
    assert "meta" not in codec.describe(codec.encode({}))["envelope"]


@pytest.mark.parametrize(
    "meta",
    [{"f": math.nan}, {"f": math.inf}, {"f": -math.inf}, {1: "int key"}],
    ids=["nan", "inf", "-inf", "int_key"],
)
def test_describe_handles_any_meta_the_codec_carries(meta):
    """describe() must not fail on a frame that encode() made and decode() reads."""
    frame = codec.encode({"x": torch.ones(1)}, meta=meta)
    info = codec.describe(frame)
    assert info["envelope"]["tensors"][0]["name"] == "x"
