"""The jit-embedding wire codec: tensors plus an envelope in one frame.

A frame is the body of every request and response and the value of every cache entry. The format
is specified byte by byte in ``docs/wire-format.md``. All the work (layout, checksums, zstd, byte
shuffle) runs in C++ with the GIL released; this module only converts between Python objects and
the native entry list.

Example::

    from jit_embedding import codec
    frame = codec.encode({"latent": torch.randn(4, 4, 64, 64)}, compression="zstd", meta={"id": 7})
    tensors, meta = codec.decode(frame)

Decoding an uncompressed payload copies nothing: the returned tensors are views into the frame
and keep it alive. If the frame is an immutable ``bytes`` object, treat those tensors as
read-only (pass a ``bytearray`` to get writable views).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

import msgpack
import numpy as np
import torch

from jit_embedding import _C

CodecError = _C.CodecError
CodecLimits = _C.CodecLimits

__all__ = ["CodecError", "CodecLimits", "Value", "decode", "describe", "encode", "DTYPES"]

#: A value a frame can carry: a tensor (torch or NumPy), a string, or bytes.
Value = Union[torch.Tensor, np.ndarray, str, bytes]

#: Wire dtype names (docs/wire-format.md) and their torch dtypes.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
_TORCH_TO_WIRE = {v: k for k, v in DTYPES.items()}
_NUMPY_TO_WIRE = {np.dtype(n): n for n in ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool")}
_EMPTY = np.empty(0, dtype=np.uint8)


def _to_item(name: str, value: Value) -> tuple:
    """Returns (name, wire dtype, shape, contiguous uint8 buffer) for one value."""
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return (name, "str", [len(raw)], raw)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = memoryview(value).cast("B")
        return (name, "bytes", [raw.nbytes], raw)
    if isinstance(value, np.ndarray):
        return _numpy_item(name, value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"codec.encode: value '{name}' is a {type(value).__name__}; expected a tensor, str or bytes")
    wire = _TORCH_TO_WIRE.get(value.dtype)
    if wire is None:
        raise CodecError(
            f"unknown dtype: tensor '{name}' has dtype {value.dtype}, which the wire format does not carry"
        )
    t = value.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    shape = list(t.shape)
    t = t.resolve_conj().resolve_neg().contiguous().reshape(-1)
    if t.numel() == 1 and t.stride(0) != 1:
        # A one-element view counts as contiguous whatever its stride; .view(uint8) needs stride 1.
        t = t.clone(memory_format=torch.contiguous_format)
    buf = t.view(torch.uint8).numpy() if t.numel() else _EMPTY
    return (name, wire, shape, buf)


def _numpy_item(name: str, value: np.ndarray) -> tuple:
    """NumPy arrays go straight to the buffer protocol (no torch): read-only arrays work without
    torch's warning, and non-native byte orders are converted to the wire's little-endian."""
    if not value.dtype.isnative:
        value = value.astype(value.dtype.newbyteorder("="))
    wire = _NUMPY_TO_WIRE.get(value.dtype)
    if wire is None:
        raise CodecError(f"unknown dtype: array '{name}' has dtype {value.dtype}, which the wire format does not carry")
    shape = list(value.shape)
    if not value.flags.c_contiguous:
        value = np.ascontiguousarray(value)
    buf = value.reshape(-1).view(np.uint8) if value.size else _EMPTY
    return (name, wire, shape, buf)


def encode(
    tensors: Mapping[str, Value],
    *,
    compression: str = "none",
    level: int = 1,
    shuffle: bool = True,
    meta: Any = None,
    chunk_bytes: int = 1 << 20,
    threads: int = 0,
) -> bytes:
    """Encodes named values and an optional envelope into one frame.

    Args:
        tensors: name -> value. Tensors may be torch (any device; copied to the CPU) or NumPy,
            contiguous or not, of a dtype in ``DTYPES``. ``str`` and ``bytes`` values are carried
            as UTF-8 text and opaque bytes.
        compression: ``"none"`` (fastest; right for loopback and fast LANs) or ``"zstd"``.
        level: zstd level; 1 is fast, higher is smaller and slower.
        shuffle: byte-shuffle floating-point payloads before zstd (better ratio, usually faster).
        meta: any msgpack-serialisable value (dicts, lists, str, bytes, numbers, bool, None).
        chunk_bytes: raw bytes per independently compressed chunk (the unit of parallelism).
        threads: native threads to use; 0 means the process pool (``JIT_NUM_THREADS`` or all cores).

    Returns:
        The frame as ``bytes``.

    Raises:
        CodecError: an unsupported dtype, a duplicate name, or an unknown compression.
        TypeError: a value that is not a tensor, str or bytes, or meta that msgpack cannot pack.
    """
    items = [_to_item(str(name), value) for name, value in tensors.items()]
    meta_bytes = b"" if meta is None else msgpack.packb(meta, use_bin_type=True)
    return _C.encode(items, meta_bytes, compression, int(level), bool(shuffle), int(chunk_bytes), int(threads))


def _to_value(dtype: str, shape: list[int], buf: Any, offset: int, nbytes: int) -> Any:
    if dtype == "str":
        try:
            return bytes(memoryview(buf)[offset : offset + nbytes]).decode("utf-8", errors="strict")
        except UnicodeDecodeError as e:
            raise CodecError(f"bad envelope: a str payload is not UTF-8 ({e})") from None
    if dtype == "bytes":
        return bytes(memoryview(buf)[offset : offset + nbytes])
    torch_dtype = DTYPES[dtype]
    if nbytes == 0:
        return torch.empty(shape, dtype=torch_dtype)
    flat = torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=offset)
    return flat.view(torch_dtype).reshape(shape)


def decode(
    frame: bytes | bytearray | memoryview,
    *,
    verify: bool = True,
    limits: CodecLimits | None = None,
    threads: int = 0,
) -> tuple[dict[str, Any], Any]:
    """Decodes a frame.

    Args:
        frame: any buffer-protocol object holding exactly one frame.
        verify: check every payload's XXH3-64 checksum (one fast pass over the stored bytes).
            The header checksum is always checked. With ``verify=False`` decoding an uncompressed
            frame does no work proportional to its size.
        limits: decoder limits for untrusted input; defaults as documented in docs/wire-format.md.
        threads: native threads to use; 0 means the process pool.

    Returns:
        ``(values, meta)``: ``values`` maps each name to a torch tensor (a zero-copy view for
        uncompressed payloads), a ``str`` or ``bytes``, in frame order; ``meta`` is the envelope's
        meta value or ``None``.

    Raises:
        CodecError: the frame is malformed; the message starts with the problem's name
            (``truncated``, ``bad checksum``, ``over limit``, ...).
    """
    entries, meta_bytes = _C.decode(frame, bool(verify), limits or _DEFAULT_LIMITS, int(threads))
    values = {name: _to_value(dtype, shape, buf, off, n) for name, dtype, shape, buf, off, n in entries}
    return values, _unpack_meta(meta_bytes)


def _unpack_meta(meta_bytes: bytes):
    if not meta_bytes:
        return None
    try:
        # Keys may be ints (ids): msgpack allows any key type, and so do we.
        return msgpack.unpackb(meta_bytes, raw=False, strict_map_key=False)
    except (UnicodeDecodeError, ValueError, TypeError) as e:
        raise CodecError(f"bad envelope: meta cannot be read ({e})") from None


def describe(frame: bytes | bytearray | memoryview, *, limits: CodecLimits | None = None) -> dict:
    """Returns a frame's sizes and envelope (names, dtypes, shapes, codecs, meta) without decoding payloads.

    Raises:
        CodecError: the header, its checksum or the envelope is malformed, or a limit is exceeded.
    """
    frame_bytes, envelope_bytes, payload_bytes, envelope = _C.describe(frame, limits or _DEFAULT_LIMITS)
    return {
        "frame_bytes": frame_bytes,
        "envelope_bytes": envelope_bytes,
        "payload_bytes": payload_bytes,
        "envelope": msgpack.unpackb(envelope, raw=False, strict_map_key=False, unicode_errors="replace"),
    }


_DEFAULT_LIMITS = CodecLimits()
