"""Helpers for taking frames apart and putting them back together, written from docs/wire-format.md.

Used by the malformed-frame tests and by tests/golden/make_golden.py to craft frames whose ONLY defect
is the one under test: every length, padding and checksum the defect does not concern is recomputed.
This module uses msgpack and xxhash only; it does not import jit_embedding.
"""

from __future__ import annotations

import copy
import struct
from dataclasses import dataclass
from typing import Any, Callable

import msgpack
import xxhash

# magic, version, flags, reserved16, envelope_nbytes, reserved32, payload_nbytes, header_checksum
HEADER = struct.Struct("<4sBBHIIQQ")
HEADER_BYTES = 32
ALIGN = 64


def align64(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def xxh3(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


@dataclass
class Frame:
    """A frame split into its parts; `envelope` is the unpacked msgpack value (usually a dict)."""

    envelope: Any
    payload: bytes
    magic: bytes = b"JEMB"
    version: int = 1
    flags: int = 0
    reserved16: int = 0
    reserved32: int = 0
    envelope_bytes: bytes | None = None  # the envelope exactly as stored

    @property
    def entries(self) -> list:
        return self.envelope["tensors"]

    def entry(self, name: str) -> dict:
        return next(e for e in self.entries if e["name"] == name)

    def stored(self, name: str) -> bytes:
        e = self.entry(name)
        return self.payload[e["offset"] : e["offset"] + e["nbytes"]]

    def chunks(self, name: str) -> list[bytes]:
        e = self.entry(name)
        out, pos = [], e["offset"]
        for n in e["chunks"]:
            out.append(self.payload[pos : pos + n])
            pos += n
        return out


def parse(frame: bytes) -> Frame:
    """Splits a well-formed frame into header fields, unpacked envelope and payload region."""
    magic, version, flags, r16, env_n, r32, payload_n, _ = HEADER.unpack_from(frame, 0)
    env_bytes = bytes(frame[HEADER_BYTES : HEADER_BYTES + env_n])
    base = align64(HEADER_BYTES + env_n)
    assert len(frame) == base + payload_n, "frame_tools.parse wants a well-formed frame"
    envelope = msgpack.unpackb(env_bytes, raw=False, strict_map_key=False)
    return Frame(envelope, bytes(frame[base:]), magic, version, flags, r16, r32, env_bytes)


def pack_envelope(envelope: Any) -> bytes:
    return msgpack.packb(envelope, use_bin_type=True)


def build(
    envelope: Any,
    payload: bytes,
    *,
    envelope_bytes: bytes | None = None,
    magic: bytes = b"JEMB",
    version: int = 1,
    flags: int = 0,
    reserved16: int = 0,
    reserved32: int = 0,
    envelope_nbytes: int | None = None,
    payload_nbytes: int | None = None,
    header_checksum: int | None = None,
    padding: bytes | None = None,
) -> bytes:
    """Lays out a frame: header, envelope, zero padding to 64, payload region.

    The header checksum is computed over the header fields actually written, so a modified version,
    flag or length is the only defect unless `header_checksum` is given. `envelope_bytes` overrides
    the packing of `envelope` (for invalid msgpack); `envelope_nbytes`/`payload_nbytes` override the
    header's lengths without changing the layout.
    """
    env = pack_envelope(envelope) if envelope_bytes is None else envelope_bytes
    env_n = len(env) if envelope_nbytes is None else envelope_nbytes
    pay_n = len(payload) if payload_nbytes is None else payload_nbytes
    head = HEADER.pack(magic, version, flags, reserved16, env_n, reserved32, pay_n, 0)[:24]
    checksum = xxh3(head + env) if header_checksum is None else header_checksum
    pad_n = align64(HEADER_BYTES + len(env)) - HEADER_BYTES - len(env)
    pad = bytes(pad_n) if padding is None else padding
    return head + struct.pack("<Q", checksum) + env + pad + payload


def rebuild(f: Frame, **overrides) -> bytes:
    kw = dict(magic=f.magic, version=f.version, flags=f.flags, reserved16=f.reserved16, reserved32=f.reserved32)
    kw.update(overrides)
    return build(f.envelope, f.payload, **kw)


def edit(frame: bytes, fn: Callable[[Frame], Any], **overrides) -> bytes:
    """Re-packs `frame` after `fn` has edited a deep copy of its parts in place (envelope, payload, header
    fields); every checksum not pinned by `overrides` is recomputed, except payload checksums, which
    stay as the envelope says (use `fix_checksums` for those)."""
    f = parse(frame)
    f = copy.deepcopy(f)
    fn(f)
    return rebuild(f, **overrides)


def edit_entry(frame: bytes, index: int, fn: Callable[[dict], Any]) -> bytes:
    return edit(frame, lambda f: fn(f.entries[index]))


def fix_checksums(f: Frame) -> None:
    """Recomputes every entry's payload checksum from the bytes its offset and nbytes point at."""
    for e in f.entries:
        e["checksum"] = xxh3(f.payload[e["offset"] : e["offset"] + e["nbytes"]])


def replace_stored(f: Frame, name: str, stored: bytes, chunks: list[int] | None = None) -> None:
    """Replaces entry `name`'s stored bytes (it must be the last payload), fixing nbytes, payload length and
    its checksum; `chunks`, when given, replaces the chunk list."""
    e = f.entry(name)
    assert e["offset"] + e["nbytes"] == len(f.payload), "replace_stored works on the last payload"
    f.payload = f.payload[: e["offset"]] + stored
    e["nbytes"] = len(stored)
    e["checksum"] = xxh3(stored)
    if chunks is not None:
        e["chunks"] = chunks


def covered_ranges(frame: bytes) -> list[tuple[int, int]]:
    """Byte ranges of a frame that a decoder must check: header, envelope and each stored payload."""
    f = parse(frame)
    env_n = len(f.envelope_bytes)
    base = align64(HEADER_BYTES + env_n)
    ranges = [(0, HEADER_BYTES + env_n)]
    ranges += [(base + e["offset"], base + e["offset"] + e["nbytes"]) for e in f.entries]
    return ranges
