"""A second decoder for jit-embedding frames, written from docs/wire-format.md alone.

It imports nothing from jit_embedding: only the PyPI packages msgpack, zstandard, xxhash and numpy. The
tests decode frames made by the C++ encoder (and the golden frames in tests/golden/) with it, so a
change that makes the encoder disagree with the document, or the document with the encoder, fails.

    values, meta = decode(frame)

``values`` maps each entry's name to a ``Tensor(dtype, array)`` (``array`` is a NumPy array; bfloat16
and float8_e4m3fn, which NumPy lacks, come back as their raw uint16 / uint8 bits), or to a ``str`` or
``bytes``. Malformed frames raise ``FrameError`` (a ``ValueError``) whose message starts with the
prefix from the document's "Errors" table. With ``strict=True`` it also checks what the document says
an encoder writes (zero padding, zstd content sizes, ``"none"`` filters for one-byte elements).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, NamedTuple

import msgpack
import numpy as np
import xxhash
import zstandard

HEADER_BYTES = 32
ALIGN = 64

# name -> (itemsize, NumPy dtype of the element or of its raw bits)
DTYPES: dict[str, tuple[int, str]] = {
    "float32": (4, "<f4"),
    "float16": (2, "<f2"),
    "bfloat16": (2, "<u2"),
    "float8_e4m3fn": (1, "u1"),
    "int8": (1, "i1"),
    "uint8": (1, "u1"),
    "int16": (2, "<i2"),
    "int32": (4, "<i4"),
    "int64": (8, "<i8"),
    "bool": (1, "?"),
    "str": (1, "u1"),
    "bytes": (1, "u1"),
}


class FrameError(ValueError):
    """A malformed frame; str(error) starts with the prefix from the "Errors" table."""

    def __init__(self, prefix: str, detail: str):
        super().__init__(f"{prefix}: {detail}")
        self.prefix = prefix


class Tensor(NamedTuple):
    dtype: str
    array: np.ndarray


@dataclasses.dataclass
class Limits:
    """The decoder limits of the "Limits" table, with their documented defaults."""

    max_frame_bytes: int = 4 << 30
    max_envelope_bytes: int = 16 << 20
    max_entries: int = 4096
    max_rank: int = 8
    max_tensor_bytes: int = 2 << 30
    max_decompressed_bytes: int = 4 << 30
    max_depth: int = 32
    max_chunks: int = 1 << 20
    max_array_length: int = 65536


def _fail(prefix: str, detail: str):
    raise FrameError(prefix, detail)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _depth(v: Any) -> int:
    """Nesting depth of containers: a scalar is 0, [] is 1, [[1]] is 2."""
    if isinstance(v, (list, tuple)):
        return 1 + max((_depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((max(_depth(k), _depth(x)) for k, x in v.items()), default=0)
    return 0


def _get(m: dict, key: str, kind: str, where: str) -> Any:
    if key not in m:
        _fail("bad envelope", f"{where} has no '{key}'")
    v = m[key]
    ok = {"str": isinstance(v, str), "uint": _is_uint(v), "list": isinstance(v, list)}[kind]
    if not ok:
        _fail("bad envelope", f"{where}: '{key}' is {type(v).__name__}, expected {kind}")
    return v


@dataclasses.dataclass
class Entry:
    name: str
    dtype: str
    shape: tuple
    offset: int
    nbytes: int
    raw_nbytes: int
    checksum: int
    codec: str
    filter: str
    chunk_size: int = 0
    chunks: tuple = ()


def read_header(frame: bytes, limits: Limits) -> tuple[int, int, int]:
    """Checks the fixed header and the frame length; returns (envelope_nbytes, payload_base, payload_nbytes)."""
    n = len(frame)
    if n < HEADER_BYTES:
        _fail("truncated", f"{n} bytes, the header needs {HEADER_BYTES}")
    magic, version, flags, reserved16, env_n, reserved32, pay_n, checksum = struct.unpack_from("<4sBBHIIQQ", frame)
    if magic != b"JEMB":
        _fail("bad magic", f"{magic!r}")
    if version != 1:
        _fail("bad version", f"version {version}")
    if flags or reserved16 or reserved32:
        _fail("bad version", f"reserved flags {flags:#x}, fields {reserved16:#x} {reserved32:#x}")
    if n > limits.max_frame_bytes:
        _fail("over limit", f"frame of {n} bytes")
    if env_n > limits.max_envelope_bytes:
        _fail("over limit", f"envelope of {env_n} bytes")
    base = _align(HEADER_BYTES + env_n)
    if HEADER_BYTES + env_n > n or base + pay_n > n:
        _fail("truncated", f"{n} bytes, the header needs {base + pay_n}")
    if base + pay_n < n:
        _fail("trailing data", f"{n} bytes, the header accounts for {base + pay_n}")
    if xxhash.xxh3_64_intdigest(bytes(frame[:24]) + bytes(frame[HEADER_BYTES : HEADER_BYTES + env_n])) != checksum:
        _fail("bad checksum", "header")
    return env_n, base, pay_n


def read_envelope(frame: bytes, env_n: int, limits: Limits) -> dict:
    raw = bytes(frame[HEADER_BYTES : HEADER_BYTES + env_n])
    lim = limits.max_array_length
    try:
        env = msgpack.unpackb(raw, raw=False, strict_map_key=False, max_array_len=lim, max_map_len=lim)
    except ValueError as e:  # ExtraData, FormatError, StackError, UnicodeDecodeError are ValueErrors too
        if "exceeds max_" in str(e):
            _fail("over limit", f"envelope: {e}")
        _fail("bad envelope", f"not valid msgpack: {type(e).__name__}: {e}")
    except Exception as e:  # anything else msgpack raises is a malformed envelope too
        _fail("bad envelope", f"not valid msgpack: {type(e).__name__}: {e}")
    if _depth(env) > limits.max_depth:
        _fail("over limit", f"envelope nesting depth {_depth(env)}")
    if not isinstance(env, dict):
        _fail("bad envelope", f"envelope is a {type(env).__name__}, not a map")
    return env


def read_entry(m: Any, index: int, pay_n: int, limits: Limits) -> Entry:
    where = f"entry {index}"
    if not isinstance(m, dict):
        _fail("bad envelope", f"{where} is not a map")
    name = _get(m, "name", "str", where)
    where = f"tensor '{name}'"
    dtype = _get(m, "dtype", "str", where)
    if dtype not in DTYPES:
        _fail("unknown dtype", f"{where}: '{dtype}'")
    itemsize = DTYPES[dtype][0]
    shape = _get(m, "shape", "list", where)
    if len(shape) > limits.max_rank:
        _fail("over limit", f"{where}: rank {len(shape)}")
    if not all(_is_uint(d) for d in shape):
        _fail("bad envelope", f"{where}: shape {shape}")
    raw = itemsize * int(np.prod(shape, dtype=object)) if shape else itemsize
    if raw > limits.max_tensor_bytes:
        _fail("over limit", f"{where}: {raw} bytes")
    raw_nbytes = _get(m, "raw_nbytes", "uint", where)
    if raw_nbytes != raw:
        _fail("size mismatch", f"{where}: raw_nbytes {raw_nbytes}, shape x itemsize {raw}")
    offset = _get(m, "offset", "uint", where)
    nbytes = _get(m, "nbytes", "uint", where)
    checksum = _get(m, "checksum", "uint", where)
    if offset % ALIGN:
        _fail("out of range", f"{where}: offset {offset}")
    if offset + nbytes > pay_n:
        _fail("out of range", f"{where}: [{offset}, {offset + nbytes}) past {pay_n}")
    codec = _get(m, "codec", "str", where)
    filt = m.get("filter", "none")
    if not isinstance(filt, str):
        _fail("bad envelope", f"{where}: 'filter' is {type(filt).__name__}")
    if filt not in ("none", "shuffle"):
        _fail("unknown codec", f"{where}: filter '{filt}'")
    e = Entry(name, dtype, tuple(shape), offset, nbytes, raw, checksum, codec, filt)
    if codec == "none":
        if filt != "none":
            _fail("bad envelope", f"{where}: an uncompressed payload has filter '{filt}'")
        if nbytes != raw:
            _fail("size mismatch", f"{where}: nbytes {nbytes} != raw_nbytes {raw}")
        return e
    if codec != "zstd":
        _fail("unknown codec", f"{where}: codec '{codec}'")
    e.chunk_size = _get(m, "chunk_size", "uint", where)
    if e.chunk_size == 0 or e.chunk_size % itemsize:
        _fail("size mismatch", f"{where}: chunk_size {e.chunk_size}")
    chunks = _get(m, "chunks", "list", where)
    if len(chunks) > limits.max_chunks:
        _fail("over limit", f"{where}: {len(chunks)} chunks")
    if len(chunks) != -(-raw // e.chunk_size):
        _fail("size mismatch", f"{where}: {len(chunks)} chunks for {raw} bytes in chunks of {e.chunk_size}")
    if not all(_is_uint(c) for c in chunks):
        _fail("bad envelope", f"{where}: chunks {chunks}")
    if sum(chunks) != nbytes:
        _fail("size mismatch", f"{where}: chunks add up to {sum(chunks)}, nbytes {nbytes}")
    e.chunks = tuple(chunks)
    return e


def unshuffle(data: bytes, itemsize: int) -> bytes:
    """Inverse of the byte shuffle: shuffled byte j * n + i is byte j of element i."""
    if itemsize == 1 or not data:
        return data
    return np.frombuffer(data, np.uint8).reshape(itemsize, -1).T.tobytes()


def shuffle(data: bytes, itemsize: int) -> bytes:
    if itemsize == 1 or not data:
        return data
    return np.frombuffer(data, np.uint8).reshape(-1, itemsize).T.tobytes()


def _decompress(e: Entry, stored: bytes, strict: bool) -> bytes:
    itemsize = DTYPES[e.dtype][0]
    out, pos = [], 0
    for i, clen in enumerate(e.chunks):
        chunk = stored[pos : pos + clen]
        pos += clen
        want = min(e.chunk_size, e.raw_nbytes - i * e.chunk_size)
        if strict:
            size = zstandard.frame_content_size(chunk)
            assert size == want, f"tensor '{e.name}' chunk {i}: zstd content size {size}, expected {want}"
        try:
            dobj = zstandard.ZstdDecompressor().decompressobj()
            raw = dobj.decompress(chunk)
        except zstandard.ZstdError as err:
            _fail("corrupt payload", f"tensor '{e.name}' chunk {i}: {err}")
        if not dobj.eof or dobj.unused_data:
            _fail("corrupt payload", f"tensor '{e.name}' chunk {i} is not exactly one complete zstd frame")
        if len(raw) != want:
            _fail("corrupt payload", f"tensor '{e.name}' chunk {i}: {len(raw)} bytes, expected {want}")
        out.append(unshuffle(raw, itemsize) if e.filter == "shuffle" else raw)
    return b"".join(out)


def decode_entries(
    frame: bytes, *, verify: bool = True, limits: Limits | None = None, strict: bool = False
) -> tuple[list[tuple[Entry, bytes]], Any]:
    """Returns ([(entry, raw C-order bytes)], meta) in frame order."""
    limits = limits or Limits()
    frame = bytes(frame)
    env_n, base, pay_n = read_header(frame, limits)
    env = read_envelope(frame, env_n, limits)
    tensors = _get(env, "tensors", "list", "envelope")
    if len(tensors) > limits.max_entries:
        _fail("over limit", f"{len(tensors)} entries")
    entries, names, decompressed = [], set(), 0
    for i, m in enumerate(tensors):
        e = read_entry(m, i, pay_n, limits)
        if e.name in names:
            _fail("duplicate name", f"'{e.name}'")
        names.add(e.name)
        if e.codec == "zstd":
            decompressed += e.raw_nbytes
            if decompressed > limits.max_decompressed_bytes:
                _fail("over limit", f"compressed entries expand to {decompressed} bytes")
        entries.append(e)
    payload = frame[base:]
    if verify:
        for e in entries:
            if xxhash.xxh3_64_intdigest(payload[e.offset : e.offset + e.nbytes]) != e.checksum:
                _fail("bad checksum", f"payload of tensor '{e.name}'")
    if strict:
        _check_encoder_conformance(frame, env_n, base, payload, entries)
    out = []
    for e in entries:
        stored = payload[e.offset : e.offset + e.nbytes]
        out.append((e, stored if e.codec == "none" else _decompress(e, stored, strict)))
    return out, env.get("meta")


def _check_encoder_conformance(frame: bytes, env_n: int, base: int, payload: bytes, entries: list) -> None:
    """What the document says an encoder writes, beyond what a decoder must accept."""
    assert frame[HEADER_BYTES + env_n : base] == bytes(base - HEADER_BYTES - env_n), "envelope padding is not zero"
    used = np.zeros(len(payload), dtype=bool)
    for e in entries:
        used[e.offset : e.offset + e.nbytes] = True
        if DTYPES[e.dtype][0] == 1:
            assert e.filter == "none", f"tensor '{e.name}': one-byte elements with filter '{e.filter}'"
    pad = np.frombuffer(payload, np.uint8)[~used]
    assert not pad.any(), "payload padding is not zero"
    offsets = [e.offset for e in entries]
    assert offsets == sorted(offsets), "payloads are not in entry order"


def decode(
    frame: bytes, *, verify: bool = True, limits: Limits | None = None, strict: bool = False
) -> tuple[dict[str, Any], Any]:
    """Decodes a frame into ({name: Tensor | str | bytes}, meta)."""
    entries, meta = decode_entries(frame, verify=verify, limits=limits, strict=strict)
    values: dict[str, Any] = {}
    for e, raw in entries:
        if e.dtype == "str":
            try:
                values[e.name] = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                _fail("corrupt payload", f"tensor '{e.name}' is not UTF-8: {err}")
        elif e.dtype == "bytes":
            values[e.name] = raw
        else:
            values[e.name] = Tensor(e.dtype, np.frombuffer(raw, dtype=DTYPES[e.dtype][1]).reshape(e.shape))
    return values, meta
