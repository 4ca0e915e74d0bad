"""Malformed frames, one per defect, each with the error prefix docs/wire-format.md ("Errors") assigns it.

Every frame starts from a valid frame made by jit_embedding.codec.encode and is re-laid-out with
frame_tools, so that the named defect is the ONLY thing wrong: lengths, padding and checksums it does not
concern are recomputed. test_codec_malformed.py runs them through jit_embedding.codec, and
test_independent_decoder.py through the independent decoder; tests/golden/make_golden.py writes the
ones marked `golden` (those that fail under the default limits) to tests/golden/invalid/.

A case's `limits` maps CodecLimits field names to the values to decode with (default limits otherwise).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import frame_tools as ft
import numpy as np
import torch
import zstandard

from jit_embedding import codec

CHUNK = 2048


@functools.cache
def base() -> bytes:
    """a: float32 [4,4] stored raw; s: str; z: bfloat16 [4096], zstd + shuffle in 4 chunks (last payload)."""
    values = {
        "a": torch.arange(16, dtype=torch.float32).reshape(4, 4),
        "s": "text",
        "z": (torch.arange(4096) % 7).to(torch.bfloat16),
    }
    return codec.encode(values, compression="zstd", chunk_bytes=CHUNK, meta={"k": "v"})


@functools.cache
def single() -> bytes:
    """One uncompressed float32 [16] entry."""
    return codec.encode({"a": torch.arange(16, dtype=torch.float32)})


@functools.cache
def two_zstd() -> bytes:
    """Two zstd entries, x and y, of 4 chunks each."""
    values = {n: (torch.arange(4096) % 9).to(torch.float16) for n in ("x", "y")}
    return codec.encode(values, compression="zstd", chunk_bytes=CHUNK)


@functools.cache
def many() -> bytes:
    """64 small entries and one with 16 zstd chunks, so that checks run on several threads."""
    values = {f"t{i:02d}": torch.full((100,), i, dtype=torch.int32) for i in range(64)}
    values["zz"] = (torch.arange(16 * 1024) % 5).to(torch.float16)
    return codec.encode(values, compression="zstd", chunk_bytes=CHUNK)


@dataclass
class Case:
    name: str
    prefix: str
    make: Callable[[], bytes]
    limits: dict = field(default_factory=dict)
    golden: bool = False
    envelope_level: bool = False  # detected from header and msgpack alone, so describe() must raise too

    def frame(self) -> bytes:
        return self.make()

    def codec_limits(self) -> codec.CodecLimits:
        lim = codec.CodecLimits()
        for k, v in self.limits.items():
            setattr(lim, k, v)
        return lim


CASES: dict[str, Case] = {}


def add(name: str, prefix: str, make: Callable[[], bytes], **kw) -> None:
    assert name not in CASES, name
    CASES[name] = Case(name, prefix, make, **kw)


def header_field(frame: bytes) -> dict:
    magic, version, flags, r16, env_n, r32, pay_n, checksum = ft.HEADER.unpack_from(frame)
    return dict(env_n=env_n, pay_n=pay_n, checksum=checksum)


def edit_entry(name: str, fn: Callable[[dict], object], frame: Callable[[], bytes] = base) -> Callable[[], bytes]:
    return lambda: ft.edit(frame(), lambda f: fn(f.entry(name)))


def setter(**kv) -> Callable[[dict], None]:
    return lambda e: e.update(kv)


def deleter(key: str) -> Callable[[dict], None]:
    return lambda e: e.pop(key)


def flip_stored(name: str, index: int = 0) -> Callable[[], bytes]:
    """Flips one stored byte of entry `name` without touching its checksum."""

    def make():
        f = ft.parse(base())
        pos = f.entry(name)["offset"] + index
        f.payload = f.payload[:pos] + bytes([f.payload[pos] ^ 0x01]) + f.payload[pos + 1 :]
        return ft.rebuild(f)

    return make


def with_chunks(chunks_fn: Callable[[list[bytes]], list[bytes]]) -> Callable[[], bytes]:
    """Replaces z's chunks with chunks_fn(chunks), fixing nbytes, chunk lengths and checksum."""

    def make():
        f = ft.parse(base())
        new = chunks_fn(f.chunks("z"))
        ft.replace_stored(f, "z", b"".join(new), [len(c) for c in new])
        return ft.rebuild(f)

    return make


def zstd_frame(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=True).compress(data)


def edit_meta(meta) -> Callable[[], bytes]:
    return lambda: ft.edit(base(), lambda f: f.envelope.__setitem__("meta", meta))


def nested(depth: int):
    m = None
    for _ in range(depth):
        m = [m]
    return m


# ------------------------------------------------------------------------------------------ truncated
add("truncated_empty", "truncated", lambda: b"", golden=True, envelope_level=True)
add("truncated_inside_header", "truncated", lambda: base()[:20], golden=True, envelope_level=True)
add("truncated_header_only", "truncated", lambda: base()[:32], envelope_level=True)
add("truncated_inside_envelope", "truncated", lambda: base()[:100], golden=True, envelope_level=True)
add(
    "truncated_inside_padding",
    "truncated",
    lambda: base()[: 32 + header_field(base())["env_n"] + 1],
    envelope_level=True,
)
add("truncated_last_payload_byte", "truncated", lambda: base()[:-1], golden=True, envelope_level=True)
add(
    "truncated_payload_nbytes_too_big",
    "truncated",
    lambda: ft.rebuild(ft.parse(base()), payload_nbytes=len(ft.parse(base()).payload) + 64),
    envelope_level=True,
)
add(
    "truncated_payload_nbytes_overflows",
    "truncated",
    lambda: ft.rebuild(ft.parse(base()), payload_nbytes=2**64 - 1),
    golden=True,
    envelope_level=True,
)
add(
    "truncated_envelope_nbytes_past_end",
    "truncated",
    lambda: ft.rebuild(ft.parse(base()), envelope_nbytes=1000),
    envelope_level=True,
)

# ------------------------------------------------------------------------------------------ trailing data
add("trailing_one_byte", "trailing data", lambda: base() + b"\x00", golden=True, envelope_level=True)
add("trailing_block", "trailing data", lambda: base() + bytes(64), envelope_level=True)
add(
    "trailing_payload_nbytes_too_small",
    "trailing data",
    lambda: ft.rebuild(ft.parse(base()), payload_nbytes=len(ft.parse(base()).payload) - 1),
    envelope_level=True,
)
add("trailing_second_frame", "trailing data", lambda: single() + single(), envelope_level=True)

# ------------------------------------------------------------------------------------------ bad magic
for _name, _magic in [("jemx", b"JEMX"), ("lowercase", b"jemb"), ("zeros", bytes(4)), ("zip", b"PK\x03\x04")]:
    add(f"bad_magic_{_name}", "bad magic", functools.partial(lambda m: base().replace(b"JEMB", m, 1), _magic))
CASES["bad_magic_jemx"].golden = True
add("bad_magic_short_frame", "bad magic", lambda: b"JEMX" + bytes(60))

# ------------------------------------------------------------------------------------------ bad version
for _v in (0, 2, 255):
    add(f"bad_version_{_v}", "bad version", functools.partial(lambda v: ft.rebuild(ft.parse(base()), version=v), _v))
for _bit in range(8):
    add(
        f"bad_version_flag_bit{_bit}",
        "bad version",
        functools.partial(lambda b: ft.rebuild(ft.parse(base()), flags=1 << b), _bit),
    )
for _v in (1, 0x8000):
    add(
        f"bad_version_reserved16_{_v:#x}",
        "bad version",
        functools.partial(lambda v: ft.rebuild(ft.parse(base()), reserved16=v), _v),
    )
for _v in (1, 0xFFFFFFFF):
    add(
        f"bad_version_reserved32_{_v:#x}",
        "bad version",
        functools.partial(lambda v: ft.rebuild(ft.parse(base()), reserved32=v), _v),
    )
for _n in ("bad_version_2", "bad_version_flag_bit0", "bad_version_reserved16_0x1", "bad_version_reserved32_0x1"):
    CASES[_n].golden = True
    CASES[_n].envelope_level = True

# ------------------------------------------------------------------------------------------ bad checksum
add(
    "bad_checksum_header_field",
    "bad checksum",
    lambda: ft.rebuild(ft.parse(base()), header_checksum=header_field(base())["checksum"] ^ 1),
    golden=True,
    envelope_level=True,
)
add(
    "bad_checksum_envelope_byte",  # meta "v" -> "w", header checksum left as it was
    "bad checksum",
    lambda: ft.build(
        None,
        ft.parse(base()).payload,
        envelope_bytes=ft.parse(base()).envelope_bytes.replace(b"\xa1v", b"\xa1w"),
        header_checksum=header_field(base())["checksum"],
    ),
    golden=True,
    envelope_level=True,
)
add("bad_checksum_payload_raw_entry", "bad checksum", flip_stored("a", 5), golden=True)
add("bad_checksum_payload_str_entry", "bad checksum", flip_stored("s", 0))
add("bad_checksum_payload_zstd_entry", "bad checksum", flip_stored("z", 40), golden=True)
add("bad_checksum_entry_field", "bad checksum", edit_entry("a", lambda e: e.update(checksum=e["checksum"] ^ 1)))
add(
    "bad_checksum_one_of_many_entries",
    "bad checksum",
    edit_entry("t37", lambda e: e.update(checksum=e["checksum"] ^ 1 << 63), frame=many),
)

# ------------------------------------------------------------------------------------------ bad envelope


def _raw_envelope(env: bytes) -> Callable[[], bytes]:
    return lambda: ft.build(None, ft.parse(base()).payload, envelope_bytes=env)


add("bad_envelope_not_msgpack", "bad envelope", _raw_envelope(b"\xc1"), golden=True, envelope_level=True)
add("bad_envelope_empty", "bad envelope", _raw_envelope(b""), envelope_level=True)
add("bad_envelope_msgpack_cut_short", "bad envelope", _raw_envelope(b"\x82\xa7tensors\x90"), envelope_level=True)
add(
    "bad_envelope_bytes_after_the_map",
    "bad envelope",
    lambda: ft.build(None, ft.parse(base()).payload, envelope_bytes=ft.parse(base()).envelope_bytes + b"\xc0"),
    envelope_level=True,
)
add("bad_envelope_is_array", "bad envelope", _raw_envelope(ft.pack_envelope([])), golden=True, envelope_level=True)
add("bad_envelope_is_int", "bad envelope", _raw_envelope(ft.pack_envelope(7)), envelope_level=True)
add("bad_envelope_is_str", "bad envelope", _raw_envelope(ft.pack_envelope("tensors")), envelope_level=True)
add("bad_envelope_no_tensors", "bad envelope", lambda: ft.build({"meta": {"k": "v"}}, b""), golden=True)
add("bad_envelope_tensors_is_map", "bad envelope", lambda: ft.build({"tensors": {}}, b""))
add("bad_envelope_tensors_is_nil", "bad envelope", lambda: ft.build({"tensors": None}, b""))
add("bad_envelope_entry_not_map", "bad envelope", lambda: ft.build({"tensors": [5]}, b""))
for _key in ("name", "dtype", "shape", "offset", "nbytes", "codec", "raw_nbytes", "checksum"):
    add(f"bad_envelope_missing_{_key}", "bad envelope", edit_entry("a", deleter(_key)))
for _key in ("chunk_size", "chunks"):
    add(f"bad_envelope_missing_{_key}", "bad envelope", edit_entry("z", deleter(_key)))
CASES["bad_envelope_missing_dtype"].golden = True
CASES["bad_envelope_missing_chunks"].golden = True
_WRONG_TYPES = {
    "name": [7, b"a", None],
    "dtype": [4, b"float32"],
    "shape": ["4,4", {"0": 4}, 16],
    "offset": [-64, "0", 0.0],
    "nbytes": [-1, "64", 64.0],
    "raw_nbytes": ["64", -64, 64.0],
    "checksum": [-1, "x", None, 1.5],
    "codec": [0, b"none", None],
    "filter": [0, True],
}
for _key, _vals in _WRONG_TYPES.items():
    for _i, _v in enumerate(_vals):
        add(f"bad_envelope_{_key}_wrong_type_{_i}", "bad envelope", edit_entry("a", setter(**{_key: _v})))
for _i, _v in enumerate([[4, -4], [4, 4.0], [4, "4"], [4, None], [True, 4, 4]]):
    add(f"bad_envelope_shape_dim_{_i}", "bad envelope", edit_entry("a", setter(shape=_v)))
for _i, _v in enumerate(["2048", -2048, 2048.0]):
    add(f"bad_envelope_chunk_size_wrong_type_{_i}", "bad envelope", edit_entry("z", setter(chunk_size=_v)))
add("bad_envelope_chunks_is_map", "bad envelope", edit_entry("z", setter(chunks={"0": 132})))
add(
    "bad_envelope_chunk_negative",
    "bad envelope",
    edit_entry("z", lambda e: e.update(chunks=[-1, *e["chunks"][1:]])),
)
add("bad_envelope_chunk_str", "bad envelope", edit_entry("z", lambda e: e.update(chunks=["33", *e["chunks"][1:]])))
add("bad_envelope_raw_payload_with_shuffle", "bad envelope", edit_entry("a", setter(filter="shuffle")), golden=True)


def _invalid_utf8_name():
    env = ft.parse(base()).envelope_bytes.replace(b"\xa1s", b"\xa1\xff", 1)  # entry "s" -> name b"\xff"
    assert env != ft.parse(base()).envelope_bytes
    return ft.build(None, ft.parse(base()).payload, envelope_bytes=env)


def _invalid_utf8_meta():
    env = ft.parse(base()).envelope_bytes.replace(b"\xa1v", b"\xa1\xff", 1)  # meta {"k": "v"} -> {"k": "\xff"}
    return ft.build(None, ft.parse(base()).payload, envelope_bytes=env)


# A msgpack str holds UTF-8; one that does not is invalid msgpack, hence "bad envelope".
add("bad_envelope_name_not_utf8", "bad envelope", _invalid_utf8_name)
add("bad_envelope_meta_not_utf8", "bad envelope", _invalid_utf8_meta)

# ------------------------------------------------------------------------------------------ size mismatch
add("size_mismatch_raw_nbytes_plus_one", "size mismatch", edit_entry("a", setter(raw_nbytes=65)), golden=True)
add("size_mismatch_raw_nbytes_minus_item", "size mismatch", edit_entry("a", setter(raw_nbytes=60)))
add("size_mismatch_raw_nbytes_zstd", "size mismatch", edit_entry("z", setter(raw_nbytes=4096)))
add("size_mismatch_shape_vs_raw", "size mismatch", edit_entry("a", setter(shape=[4, 5])))
add("size_mismatch_str_shape", "size mismatch", edit_entry("s", setter(shape=[5])))


def _raw_nbytes_not_nbytes(n: int) -> Callable[[], bytes]:
    def fn(f: ft.Frame):
        e = f.entry("a")
        e["nbytes"] = n
        e["checksum"] = ft.xxh3(f.payload[e["offset"] : e["offset"] + n])

    return lambda: ft.edit(base(), fn)


add("size_mismatch_none_nbytes_short", "size mismatch", _raw_nbytes_not_nbytes(60), golden=True)
add("size_mismatch_none_nbytes_long", "size mismatch", _raw_nbytes_not_nbytes(68))
add(
    "size_mismatch_too_few_chunks",
    "size mismatch",
    edit_entry("z", lambda e: e.update(chunks=[e["chunks"][0] + e["chunks"][1], *e["chunks"][2:]])),
    golden=True,
)
add(
    "size_mismatch_too_many_chunks",
    "size mismatch",
    edit_entry("z", lambda e: e.update(chunks=[e["chunks"][0] - 1, 1, *e["chunks"][1:]])),
)
add(
    "size_mismatch_chunks_sum_short",
    "size mismatch",
    edit_entry("z", lambda e: e.update(chunks=[*e["chunks"][:-1], e["chunks"][-1] - 1])),
    golden=True,
)
add(
    "size_mismatch_chunks_sum_long",
    "size mismatch",
    edit_entry("z", lambda e: e.update(chunks=[*e["chunks"][:-1], e["chunks"][-1] + 1])),
)
add(
    "size_mismatch_chunk_overflow",
    "size mismatch",
    edit_entry("z", lambda e: e.update(chunks=[2**64 - 1, 2, *e["chunks"][2:]])),
)
add("size_mismatch_chunk_size_zero", "size mismatch", edit_entry("z", setter(chunk_size=0)))
add("size_mismatch_chunk_size_odd", "size mismatch", edit_entry("z", setter(chunk_size=CHUNK - 1)), golden=True)
add("size_mismatch_chunk_size_doubled", "size mismatch", edit_entry("z", setter(chunk_size=2 * CHUNK)))

# ------------------------------------------------------------------------------------------ out of range
add(
    "out_of_range_offset_past_payload",
    "out of range",
    edit_entry("s", lambda e: e.update(offset=ft.align64(header_field(base())["pay_n"]) + 64)),
    golden=True,
)
add("out_of_range_end_past_payload", "out of range", edit_entry("z", lambda e: e.update(offset=e["offset"] + 64)))
add(
    "out_of_range_none_nbytes_past_end",
    "out of range",
    lambda: ft.edit(single(), lambda f: f.entry("a").update(offset=64)),
)
add("out_of_range_offset_overflow", "out of range", edit_entry("a", setter(offset=2**64 - 64)))


def _unaligned(shift: int) -> Callable[[], bytes]:
    """Moves the only payload `shift` bytes forward: the bytes and checksum still match, only the offset is odd."""

    def fn(f: ft.Frame):
        f.payload = bytes(shift) + f.payload
        f.entry("a")["offset"] = shift

    return lambda: ft.edit(single(), fn)


add("out_of_range_unaligned_offset_8", "out of range", _unaligned(8), golden=True)
add("out_of_range_unaligned_offset_1", "out of range", _unaligned(1))
add("out_of_range_unaligned_offset_32", "out of range", _unaligned(32))

# ------------------------------------------------------------------------------------------ over limit
# Limit just below what the base frame needs; test_codec_malformed checks that the exact value passes.
LIMIT_CASES = {
    "max_frame_bytes": lambda: len(base()),
    "max_envelope_bytes": lambda: header_field(base())["env_n"],
    "max_entries": lambda: 3,
    "max_rank": lambda: 2,
    "max_tensor_bytes": lambda: 8192,
    "max_decompressed_bytes": lambda: 8192,
    "max_depth": lambda: 4,  # map > tensors array > entry map > shape array
    "max_chunks": lambda: 4,
    "max_array_length": lambda: 11,  # the zstd entry's map has 11 keys
}
for _field, _need in LIMIT_CASES.items():
    add(
        f"over_limit_{_field}",
        "over limit",
        base,
        limits={_field: _need() - 1},
        envelope_level=_field in ("max_frame_bytes", "max_envelope_bytes", "max_depth", "max_array_length"),
    )


def claim(raw: int) -> Callable[[dict], None]:
    """Makes a zstd entry claim `raw` uint8 bytes, with a chunk_size that keeps its chunk count consistent."""

    def fn(e: dict) -> None:
        n = len(e["chunks"])
        size = -(-raw // n)
        assert -(-raw // size) == n
        e.update(dtype="uint8", shape=[raw], raw_nbytes=raw, chunk_size=size, filter="none")

    return fn


add("over_limit_decompression_bomb", "over limit", edit_entry("z", claim(2**31 + 1)), golden=True)
add(
    "over_limit_bomb_split_over_entries",  # two 1.5 GiB zstd entries: each fits, together they pass 2 GiB
    "over limit",
    lambda: ft.edit(two_zstd(), lambda f: [claim(3 << 29)(f.entry(n)) for n in ("x", "y")]),
    limits={"max_decompressed_bytes": 2 << 30},
)
add("over_limit_rank9", "over limit", edit_entry("a", setter(shape=[1] * 7 + [4, 4])), golden=True)
add("over_limit_shape_overflow", "over limit", edit_entry("a", setter(shape=[2**32, 2**32, 2**32])))
add("over_limit_depth33", "over limit", edit_meta(nested(32)), golden=True, envelope_level=True)
add("over_limit_raw_overflow", "over limit", edit_entry("z", setter(shape=[2**62, 4])))  # 2**64 bytes
add(
    "over_limit_huge_array_header",  # an array32 header claiming 4 billion entries in a 13-byte envelope
    "over limit",
    _raw_envelope(b"\x81\xa7tensors\xdd\xff\xff\xff\xff"),
    golden=True,
    envelope_level=True,
)
add("over_limit_huge_map_header", "over limit", _raw_envelope(b"\xdf\xff\xff\xff\xff"), envelope_level=True)
add(
    "over_limit_long_meta_array",
    "over limit",
    edit_meta(list(range(100))),
    limits={"max_array_length": 99},
    envelope_level=True,
)

# ------------------------------------------------------------------------------------------ unknown dtype
for _n, _d in [
    ("float64", "float64"),
    ("complex64", "complex64"),
    ("upper_case", "FLOAT32"),
    ("empty", ""),
    ("trailing_space", "float32 "),
    ("uint16", "uint16"),
    ("float8_e5m2", "float8_e5m2"),
]:
    add(f"unknown_dtype_{_n}", "unknown dtype", edit_entry("a", setter(dtype=_d)))
CASES["unknown_dtype_float64"].golden = True

# ------------------------------------------------------------------------------------------ unknown codec
for _c in ("lz4", "ZSTD", "", "gzip"):
    add(f"unknown_codec_{_c or 'empty'}", "unknown codec", edit_entry("a", setter(codec=_c)))
for _c in ("bitshuffle", "SHUFFLE", ""):
    add(f"unknown_filter_{_c or 'empty'}", "unknown codec", edit_entry("z", setter(filter=_c)))
CASES["unknown_codec_lz4"].golden = True
CASES["unknown_filter_bitshuffle"].golden = True

# ------------------------------------------------------------------------------------------ duplicate name
add("duplicate_name_raw", "duplicate name", edit_entry("s", setter(name="a")), golden=True)
add("duplicate_name_zstd", "duplicate name", edit_entry("z", setter(name="a")))
add("duplicate_name_last_of_many", "duplicate name", edit_entry("zz", setter(name="t00"), frame=many))

# ------------------------------------------------------------------------------------------ corrupt payload


def _garbage(f_chunks: list[bytes]) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, len(c), dtype=np.uint8).tobytes() for c in f_chunks]


add("corrupt_payload_garbage_with_right_checksum", "corrupt payload", with_chunks(_garbage), golden=True)
add(
    "corrupt_payload_third_chunk_garbage",
    "corrupt payload",
    with_chunks(lambda c: [c[0], c[1], _garbage([c[2]])[0], c[3]]),
)
add("corrupt_payload_chunk_cut_short", "corrupt payload", with_chunks(lambda c: [c[0][:-4], *c[1:]]), golden=True)
add(
    "corrupt_payload_chunk_decompresses_short",
    "corrupt payload",
    with_chunks(lambda c: [zstd_frame(bytes(CHUNK - 2)), *c[1:]]),
    golden=True,
)
add(
    "corrupt_payload_chunk_decompresses_long",
    "corrupt payload",
    with_chunks(lambda c: [zstd_frame(bytes(CHUNK + 2)), *c[1:]]),
)
add(
    "corrupt_payload_last_chunk_short",
    "corrupt payload",
    with_chunks(lambda c: [*c[:-1], zstd_frame(bytes(CHUNK - 64))]),
)
add("corrupt_payload_not_zstd_magic", "corrupt payload", with_chunks(lambda c: [b"\x00" * len(c[0]), *c[1:]]))


def _many_corrupt():
    f = ft.parse(many())
    e = f.entry("zz")
    chunks = f.chunks("zz")
    chunks[11] = bytes(len(chunks[11]))
    ft.replace_stored(f, "zz", b"".join(chunks), [len(c) for c in chunks])
    assert e["nbytes"] == sum(e["chunks"])
    return ft.rebuild(f)


add("corrupt_payload_in_one_of_many_chunks", "corrupt payload", _many_corrupt)
