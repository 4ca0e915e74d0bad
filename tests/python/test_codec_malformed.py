"""jit_embedding.codec rejects every malformed frame with the error docs/wire-format.md names, and survives it.

Proves: each row of the document's "Errors" table (truncated, trailing data, bad magic, bad version, bad
checksum, bad envelope, size mismatch, out of range, over limit, unknown dtype, unknown codec, duplicate
name, corrupt payload) is raised as a CodecError (a ValueError) whose message starts with that prefix, for
frames whose only defect is the one named (see malformed_cases.py); every CodecLimits field rejects a frame
one unit over it and accepts one exactly at it; every prefix of a frame is "truncated"; a flipped bit
anywhere outside the padding is caught, and padding is ignored; keys a decoder does not know are ignored;
encode() refuses unsupported input with the documented exception; and after every error the process still
encodes and decodes normally.
"""

from __future__ import annotations

import frame_tools as ft
import pytest
import torch
from codec_testing import make_tensor
from malformed_cases import CASES, LIMIT_CASES, base, many

from jit_embedding import codec

PREFIXES = [
    "truncated",
    "trailing data",
    "bad magic",
    "bad version",
    "bad checksum",
    "bad envelope",
    "size mismatch",
    "out of range",
    "over limit",
    "unknown dtype",
    "unknown codec",
    "duplicate name",
    "corrupt payload",
]


@pytest.fixture(autouse=True)
def codec_still_works_afterwards():
    """Runs each test, then checks that a normal encode/decode still works (no poisoned thread or state)."""
    yield
    values = {"x": make_tensor("float32", (64, 64), seed=99, alphabet=4), "s": "ok"}
    for compression in ("none", "zstd"):
        got, meta = codec.decode(codec.encode(values, compression=compression, chunk_bytes=1024, meta=[1]))
        assert torch.equal(got["x"].view(torch.int32), values["x"].view(torch.int32))
        assert got["s"] == "ok" and meta == [1]


def test_every_error_prefix_has_cases():
    assert sorted({c.prefix for c in CASES.values()}) == sorted(PREFIXES)
    assert issubclass(codec.CodecError, ValueError)


def test_base_frames_are_valid():
    """The frames the cases are cut from decode, so each case's failure comes from its own defect."""
    for frame in (base(), many()):
        codec.decode(frame)
        codec.decode(ft.rebuild(ft.parse(frame)))  # and re-packing alone breaks nothing


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_malformed_frame_is_rejected(case):
    frame = case.frame()
    with pytest.raises(codec.CodecError, match=rf"^{case.prefix}: "):
        codec.decode(frame, limits=case.codec_limits())
    with pytest.raises(codec.CodecError, match=rf"^{case.prefix}: "):
        codec.decode(bytearray(frame), limits=case.codec_limits(), verify=True, threads=1)


@pytest.mark.parametrize("case", [c for c in CASES.values() if c.envelope_level], ids=lambda c: c.name)
def test_describe_rejects_header_and_envelope_defects(case):
    with pytest.raises(codec.CodecError, match=rf"^{case.prefix}: "):
        codec.describe(case.frame(), limits=case.codec_limits())


@pytest.mark.parametrize("name", ["bad_checksum_payload_raw_entry", "bad_checksum_entry_field"])
def test_payload_checksum_is_skipped_by_verify_false(name):
    frame = CASES[name].frame()
    values, _ = codec.decode(frame, verify=False)
    assert set(values) == {"a", "s", "z"}
    assert torch.equal(values["z"], (torch.arange(4096) % 7).to(torch.bfloat16))


@pytest.mark.parametrize("field", sorted(LIMIT_CASES))
def test_each_limit_accepts_exactly_its_value(field):
    lim = codec.CodecLimits()
    setattr(lim, field, LIMIT_CASES[field]())
    values, meta = codec.decode(base(), limits=lim)
    assert list(values) == ["a", "s", "z"] and meta == {"k": "v"}
    codec.describe(base(), limits=lim)
    setattr(lim, field, LIMIT_CASES[field]() - 1)
    with pytest.raises(codec.CodecError, match=r"^over limit: "):
        codec.decode(base(), limits=lim)


def test_limits_have_documented_defaults():
    lim = codec.CodecLimits()
    assert lim.max_frame_bytes == 4 << 30
    assert lim.max_envelope_bytes == 16 << 20
    assert lim.max_entries == 4096
    assert lim.max_rank == 8
    assert lim.max_tensor_bytes == 2 << 30
    assert lim.max_decompressed_bytes == 4 << 30
    assert lim.max_depth == 32
    assert lim.max_chunks == 1 << 20
    assert lim.max_array_length == 65536


def test_default_limits_accept_their_boundaries():
    """Rank 8, 4096 entries and meta nested to the default depth decode under the default limits."""
    values = {f"t{i}": torch.zeros([1] * 8) for i in range(4096)}
    nested = None
    for _ in range(31):  # the envelope map is one more level
        nested = [nested]
    got, meta = codec.decode(codec.encode(values, meta=nested))
    assert len(got) == 4096 and got["t0"].shape == (1,) * 8
    with pytest.raises(codec.CodecError, match=r"^over limit: "):
        codec.decode(codec.encode({**values, "one_more": torch.zeros(1)}))


def test_uncompressed_entries_do_not_count_as_decompressed():
    lim = codec.CodecLimits()
    lim.max_decompressed_bytes = 0
    values, _ = codec.decode(codec.encode({"a": torch.zeros(10_000)}), limits=lim)
    assert values["a"].shape == (10_000,)


def test_every_prefix_is_truncated():
    frame = base()
    for n in range(len(frame)):
        with pytest.raises(codec.CodecError, match=r"^truncated: "):
            codec.decode(frame[:n])


def _padding_positions(frame: bytes) -> set[int]:
    covered = set()
    for start, end in ft.covered_ranges(frame):
        covered.update(range(start, end))
    return set(range(len(frame))) - covered


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_changed_byte_is_caught_and_padding_is_ignored(mask):
    frame = base()
    padding = _padding_positions(frame)
    assert len(padding) > 32, "the base frame should have padding to exercise"
    want, want_meta = codec.decode(frame)
    for pos in range(len(frame)):
        bad = bytearray(frame)
        bad[pos] ^= mask
        if pos in padding:
            got, meta = codec.decode(bad)  # decoders ignore padding content
            assert meta == want_meta and got["s"] == want["s"]
            assert torch.equal(got["a"], want["a"]) and torch.equal(got["z"], want["z"])
        else:
            with pytest.raises(codec.CodecError):
                codec.decode(bad)


def test_unknown_keys_are_ignored():
    def add_keys(f: ft.Frame):
        f.envelope["future_top_level"] = {"x": [1, 2]}
        f.envelope[7] = "non-str key"
        for e in f.entries:
            e["future_entry_key"] = [None, b"bytes"]

    values, meta = codec.decode(ft.edit(base(), add_keys))
    assert list(values) == ["a", "s", "z"] and meta == {"k": "v"}


def test_documented_optional_fields_may_be_absent_or_nil():
    def drop(f: ft.Frame):
        f.envelope["meta"] = None
        for e in f.entries:
            if e["filter"] == "none":
                del e["filter"]

    values, meta = codec.decode(ft.edit(base(), drop))
    assert meta is None and values["a"].shape == (4, 4)
    values, meta = codec.decode(ft.build({"tensors": []}, b""))
    assert values == {} and meta is None


def test_shuffle_filter_on_one_byte_elements_changes_nothing():
    """An encoder writes "none" there, but the document defines "shuffle" with k == 1 as a no-op."""
    want = (torch.arange(5000) % 3).to(torch.uint8)
    frame = codec.encode({"u": want}, compression="zstd")
    assert codec.describe(frame)["envelope"]["tensors"][0]["filter"] == "none"
    got, _ = codec.decode(ft.edit(frame, lambda f: f.entry("u").update(filter="shuffle")))
    assert torch.equal(got["u"], want)


def test_payloads_in_any_order_and_keys_in_any_order():
    def reorder(f: ft.Frame):
        a, s = f.entry("a"), f.entry("s")
        sa, ss = f.stored("a"), f.stored("s")
        z = f.stored("z")
        f.payload = ss.ljust(64, b"\0") + sa.ljust(64, b"\0") + f.payload[128 : f.entry("z")["offset"]] + z
        s["offset"], a["offset"] = 0, 64
        f.envelope["tensors"] = [dict(reversed(list(e.items()))) for e in f.entries]
        f.envelope = dict(reversed(list(f.envelope.items())))

    values, _ = codec.decode(ft.edit(base(), reorder))
    assert values["s"] == "text" and torch.equal(values["a"], torch.arange(16.0).reshape(4, 4))


def test_invalid_utf8_in_a_str_payload_raises_codec_error():
    """A str entry whose bytes are not UTF-8 is a malformed frame, so it must surface as CodecError."""

    def corrupt(f: ft.Frame):
        pos = f.entry("s")["offset"]
        f.payload = f.payload[:pos] + b"\xff" + f.payload[pos + 1 :]
        ft.fix_checksums(f)

    frame = ft.edit(base(), corrupt)
    with pytest.raises(codec.CodecError):
        codec.decode(frame)


def test_corruption_in_many_threads_is_reported_once_and_cleanly():
    for name in ("bad_checksum_one_of_many_entries", "corrupt_payload_in_one_of_many_chunks"):
        frame = CASES[name].frame()
        for threads in (0, 1, 2, 8):
            with pytest.raises(codec.CodecError, match=rf"^{CASES[name].prefix}: "):
                codec.decode(frame, threads=threads)


# ------------------------------------------------------------------------------------------ encode input


@pytest.mark.parametrize(
    "value",
    [
        torch.zeros(2, dtype=torch.float64),
        torch.zeros(2, dtype=torch.complex64),
        torch.zeros(2, dtype=torch.uint16),
        torch.zeros(2, dtype=torch.float8_e5m2),
        torch.zeros(2).numpy().astype("float64"),
        torch.zeros(2).numpy().astype("complex128"),
        torch.zeros(2).numpy().astype("uint32"),
    ],
    ids=["torch_float64", "torch_complex64", "torch_uint16", "torch_float8_e5m2", "np_float64", "np_c128", "np_u32"],
)
def test_encode_rejects_unsupported_dtypes(value):
    with pytest.raises(codec.CodecError, match=r"^unknown dtype"):
        codec.encode({"t": value})


@pytest.mark.parametrize("value", [1, 1.5, None, [1, 2], {"a": 1}, (torch.zeros(1),), object()])
def test_encode_rejects_values_that_are_not_tensors_str_or_bytes(value):
    with pytest.raises(TypeError):
        codec.encode({"t": value})


@pytest.mark.parametrize("compression", ["lz4", "ZSTD", "", "gzip", "None"])
def test_encode_rejects_unknown_compression(compression):
    with pytest.raises(codec.CodecError, match=r"^unknown codec"):
        codec.encode({"t": torch.zeros(2)}, compression=compression)


def test_encode_rejects_duplicate_names_after_str():
    with pytest.raises(codec.CodecError, match=r"^duplicate name"):
        codec.encode({1: torch.zeros(1), "1": torch.zeros(1)})


def test_encode_rejects_meta_msgpack_cannot_pack():
    with pytest.raises(TypeError):
        codec.encode({}, meta={"x": object()})


@pytest.mark.parametrize("frame", [b"not a frame", "JEMB as text", 12345, None])
def test_decode_rejects_wrong_frame_objects(frame):
    with pytest.raises((codec.CodecError, TypeError)):
        codec.decode(frame)
