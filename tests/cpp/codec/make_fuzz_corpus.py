"""Writes the seed corpus of the fuzz_decode target into tests/cpp/codec/fuzz_corpus/.

Seeds are small (< 4 KB) valid frames covering every dtype, both codecs, the shuffle filter, several
chunks per entry, meta, empty and rank-0 tensors, and near-valid frames that differ from a valid one
by a single defect (with every other length and checksum recomputed), so that the fuzzer starts deep
inside the decoder rather than at the header checks.

Run after `make build` (it imports jit_embedding for the valid frames):
    python3 tests/cpp/codec/make_fuzz_corpus.py
Files named valid_* and near_* are rewritten; other files (older seeds, regression inputs) are left alone.
"""

from __future__ import annotations

import struct
from pathlib import Path

import msgpack
import numpy as np
import torch
import xxhash

from jit_embedding import codec

OUT = Path(__file__).resolve().parent / "fuzz_corpus"
# magic, version, flags, reserved16, envelope_nbytes, reserved32, payload_nbytes, header checksum
HEADER = struct.Struct("<4sBBHIIQQ")
MAX_SEED_BYTES = 4096


def align64(n: int) -> int:
    return (n + 63) // 64 * 64


def split(frame: bytes) -> tuple[dict, bytes]:
    """(envelope as a dict, payload region) of a well-formed frame."""
    env_n = HEADER.unpack_from(frame, 0)[4]
    env = msgpack.unpackb(frame[32 : 32 + env_n], raw=False, strict_map_key=False)
    return env, frame[align64(32 + env_n) :]


def join(env: object, payload: bytes, *, version: int = 1, flags: int = 0) -> bytes:
    """Lays out a frame around an envelope value and a payload region; the header checksum is correct."""
    env_bytes = msgpack.packb(env, use_bin_type=True)
    head = HEADER.pack(b"JEMB", version, flags, 0, len(env_bytes), 0, len(payload), 0)
    checksum = xxhash.xxh3_64_intdigest(head[:24] + env_bytes)
    head = head[:24] + struct.pack("<Q", checksum)
    return head + env_bytes + b"\0" * (align64(32 + len(env_bytes)) - 32 - len(env_bytes)) + payload


def smooth(dtype: torch.dtype, n: int) -> torch.Tensor:
    """Slowly varying values: zstd compresses them, so the entry really is stored as zstd."""
    base = torch.arange(n, dtype=torch.float64) // 4 % 50
    if dtype == torch.bool:
        return (base % 2).to(torch.bool)
    if dtype.is_floating_point:
        return (base * 0.25).to(torch.float32).to(dtype)
    return base.to(dtype)


def nested(levels: int) -> object:
    return 1 if levels == 0 else [nested(levels - 1)]


def valid_seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    rich_meta = {
        "encoder": "clip-vit-l14",
        "ids": [1, 2, 2**63],
        "params": {"scale": 1.0, "guidance": 7.5, "neg": -3, "flag": True, "none": None, "raw": b"\x00\xff"},
        "cache": "use",
    }
    seeds = {
        "valid_empty_frame": codec.encode({}),
        "valid_meta_only": codec.encode({}, meta=rich_meta),
        "valid_meta_scalar": codec.encode({}, meta=3.25),
        "valid_none_float32": codec.encode({"x": smooth(torch.float32, 32).reshape(4, 8)}),
        "valid_none_all_int_dtypes": codec.encode(
            {
                "i8": smooth(torch.int8, 5),
                "u8": smooth(torch.uint8, 6),
                "i16": smooth(torch.int16, 7),
                "i32": smooth(torch.int32, 3),
                "i64": smooth(torch.int64, 2),
                "b": smooth(torch.bool, 9),
            }
        ),
        "valid_none_str_bytes": codec.encode({"s": "h\u00e9llo w\u00f6rld", "raw": b"\x00\x01\xfe\xff"}),
        "valid_empty_and_scalar": codec.encode(
            {
                "empty": torch.empty(0),
                "zero_dim": torch.empty(2, 0, 3, dtype=torch.int64),
                "scalar": torch.tensor(1.5),
                "empty_str": "",
                "empty_bytes": b"",
            },
            compression="zstd",
        ),
        "valid_zstd_float32_shuffle_chunks": codec.encode(
            {"x": smooth(torch.float32, 256)}, compression="zstd", chunk_bytes=256
        ),
        "valid_zstd_float16_noshuffle": codec.encode(
            {"h": smooth(torch.float16, 512)}, compression="zstd", shuffle=False, chunk_bytes=300
        ),
        "valid_zstd_bfloat16_chunks": codec.encode(
            {"bf": smooth(torch.bfloat16, 600).reshape(2, 300)}, compression="zstd", chunk_bytes=128
        ),
        "valid_zstd_float8": codec.encode({"f8": smooth(torch.float8_e4m3fn, 700)}, compression="zstd"),
        "valid_zstd_int_dtypes": codec.encode(
            {
                "i8": smooth(torch.int8, 512),
                "u8": smooth(torch.uint8, 512),
                "i16": smooth(torch.int16, 256),
                "i32": smooth(torch.int32, 128),
                "i64": smooth(torch.int64, 64),
                "b": smooth(torch.bool, 512),
            },
            compression="zstd",
        ),
        "valid_zstd_str_bytes_meta": codec.encode(
            {"caption": "a photo of a cat. " * 40, "blob": bytes(range(256)) * 3},
            compression="zstd",
            chunk_bytes=500,
            meta={"encoder": "t5", "ids": ["a", "b"]},
        ),
        "valid_zstd_incompressible_stored_raw": codec.encode(
            {"noise": rng.integers(0, 256, 600, dtype=np.uint8)}, compression="zstd"
        ),
        "valid_zstd_level19": codec.encode({"x": smooth(torch.int32, 300)}, compression="zstd", level=19),
        "valid_many_entries": codec.encode({f"t{i}": smooth(torch.int16, i % 3) for i in range(24)}),
        "valid_deep_meta": codec.encode({}, meta=nested(30)),  # 31 levels with the root map: max_depth is 32
    }
    return seeds


def near_valid_seeds() -> dict[str, bytes]:
    """Frames one defect away from a valid frame: everything else, header checksum included, is correct."""
    zstd_frame = codec.encode(
        {"a": smooth(torch.uint8, 100), "b": smooth(torch.float32, 256)}, compression="zstd", chunk_bytes=512
    )
    env, payload = split(zstd_frame)
    a, b = env["tensors"]
    assert a["codec"] == "none" and b["codec"] == "zstd" and len(b["chunks"]) == 2, env

    def edit(change) -> bytes:
        e, p = split(zstd_frame)
        new_payload = change(e, p)
        return join(e, new_payload if isinstance(new_payload, bytes) else p)

    def set_field(entry: int, key: str, value):
        return lambda e, p: e["tensors"][entry].__setitem__(key, value)

    def del_field(entry: int, key: str):
        return lambda e, p: e["tensors"][entry].pop(key)

    def corrupt_chunk(e, p):
        bb = e["tensors"][1]
        start = bb["offset"]
        garbage = bytes((i * 37) & 0xFF for i in range(bb["chunks"][0]))
        p = p[:start] + garbage + p[start + len(garbage) :]
        bb["checksum"] = xxhash.xxh3_64_intdigest(p[start : start + bb["nbytes"]])
        return p

    def flip_payload_byte(e, p):
        return p[:5] + bytes([p[5] ^ 1]) + p[6:]

    def unknown_keys(e, p):
        e["x-future"] = {"nested": [1, 2, 3]}
        e["tensors"][0]["x-entry"] = [1.5, "v"]

    def duplicate_name(e, p):
        e["tensors"][1]["name"] = "a"

    seeds = {
        "near_unknown_keys_valid": edit(unknown_keys),
        "near_filter_absent_valid": edit(del_field(0, "filter")),
        "near_bad_payload_checksum": edit(flip_payload_byte),
        "near_corrupt_zstd_chunk": edit(corrupt_chunk),
        "near_chunk_lengths_off": edit(set_field(1, "chunks", [b["chunks"][0] + 1, b["chunks"][1] - 1])),
        "near_chunk_count_off": edit(set_field(1, "chunk_size", 128)),
        "near_unaligned_offset": edit(set_field(1, "offset", b["offset"] - 8)),
        "near_unknown_dtype": edit(set_field(0, "dtype", "float64")),
        "near_unknown_codec": edit(set_field(1, "codec", "lz4")),
        "near_raw_nbytes_off": edit(set_field(0, "raw_nbytes", 101)),
        "near_missing_checksum": edit(del_field(1, "checksum")),
        "near_raw_with_shuffle": edit(set_field(0, "filter", "shuffle")),
        "near_duplicate_name": edit(duplicate_name),
        "near_decompression_bomb": edit(set_field(1, "shape", [1 << 40])),
        "near_bad_version": join(env, payload, version=2),
        "near_trailing_byte": zstd_frame + b"\0",
        "near_truncated": zstd_frame[:-1],
    }
    return seeds


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for old in OUT.iterdir():
        if old.name.startswith(("valid_", "near_")):
            old.unlink()
    seeds = {**valid_seeds(), **near_valid_seeds()}
    for name, frame in sorted(seeds.items()):
        assert len(frame) < MAX_SEED_BYTES, (name, len(frame))
        valid = name.startswith("valid_") or name.endswith("_valid")
        try:
            codec.decode(frame)
            ok = True
        except codec.CodecError:
            ok = False
        assert ok == valid, f"{name}: decodes={ok}, expected {valid}"
        (OUT / name).write_bytes(frame)
    print(f"wrote {len(seeds)} seeds to {OUT}")


if __name__ == "__main__":
    main()
