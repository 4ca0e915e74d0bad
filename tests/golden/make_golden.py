#!/usr/bin/env python3
"""Writes the golden frames in tests/golden/ and the invalid ones in tests/golden/invalid/.

    python3 tests/golden/make_golden.py            # rewrite in place
    python3 tests/golden/make_golden.py --out DIR  # write elsewhere (test_golden.py compares the two)

For each valid frame NAME it writes NAME.jemb (made by jit_embedding.codec.encode) and NAME.json: the
encode options, the meta, and every entry's dtype, shape and raw little-endian bytes in hex (plus the
values as numbers where they are all finite), and how each entry is stored ("stored": codec, filter, chunk count).
test_golden.py rebuilds the inputs from the JSON alone, so the JSON is the source of truth: the frame must
decode to it, and re-encoding it with the same options must give the same bytes.

invalid/ holds frames that must fail to decode under the default limits, cut from valid frames with
tests/python/malformed_cases.py, and invalid/expected.json maps each file to its error prefix.

Regenerate only on purpose: a change in these bytes is a wire-format change (or a zstd upgrade that
changed compressed output, which decoders do not care about but which test (c) of test_golden.py reports).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

import frame_tools  # noqa: E402
import malformed_cases  # noqa: E402

from jit_embedding import codec  # noqa: E402


def bits(dtype: torch.dtype, shape, fn) -> torch.Tensor:
    """A tensor whose element i has the raw bits fn(i): exact on every platform and library version."""
    size = torch.empty(0, dtype=dtype).element_size()
    raw = b"".join((fn(i) & ((1 << 8 * size) - 1)).to_bytes(size, "little") for i in range(math.prod(shape)))
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape).clone()


def cases() -> dict:
    """name -> (values, encode options, meta)."""
    return {
        "float32_none": (
            {
                "x": torch.tensor([[0.0, 1.5, -2.0], [3.25, 1e-3, 65504.0]], dtype=torch.float32),
                "special": bits(
                    torch.float32, [6], lambda i: [0x7FC00001, 0xFF800000, 0x80000000, 1, 0x7F7FFFFF, 0][i]
                ),
            },
            {"compression": "none"},
            None,
        ),
        "bfloat16_zstd_shuffle_chunks": (
            {"latent": bits(torch.bfloat16, [64, 48], lambda i: 0x3F80 + (i * 7) % 61 - 30 + ((i % 5 == 0) << 15))},
            {"compression": "zstd", "shuffle": True, "level": 3, "chunk_bytes": 1024},
            {"encoder": "vae", "version": "sd15", "scale": 0.18215},
        ),
        "mixed_dtypes_zstd": (
            {
                "f32": bits(torch.float32, [200], lambda i: 0x3F800000 + (i % 9) * 0x100000),
                "f16": bits(torch.float16, [3, 4], lambda i: 0x3C00 + i * 0x40),
                "bf16": bits(torch.bfloat16, [300], lambda i: 0xBF80 + i % 3),
                "f8": bits(torch.float8_e4m3fn, [4, 4], lambda i: (i * 9) % 0x7E),
                "i8": bits(torch.int8, [600], lambda i: i % 3 - 1),
                "u8": bits(torch.uint8, [5], lambda i: 250 + i),
                "i16": bits(torch.int16, [2, 3], lambda i: -30000 + 12345 * i),
                "i32": bits(torch.int32, [4], lambda i: [-(2**31), -1, 0, 2**31 - 1][i]),
                "i64": bits(torch.int64, [100], lambda i: (i % 4) * (1 << 40) - 7),
                "mask": bits(torch.bool, [2, 5], lambda i: i % 3 == 0),
                "caption": "a photo of a cat, 猫の写真",
                "jpeg": b"\xff\xd8\xff\xe0" + bytes(range(16)) + b"\xff\xd9",
                "prompt_repeated": "masterpiece, " * 60,
            },
            {"compression": "zstd", "shuffle": False, "chunk_bytes": 512},
            {
                "encoder": "clip-vit-l",
                "ids": [17, 42],
                "inputs": {"resolution": [512, 512], "crop": None},
                "params": {"normalize": True, "layers": [-1, -2]},
                "cache": "use",
            },
        ),
        "empty_and_scalar": (
            {
                "empty_f32": torch.empty(0, dtype=torch.float32),
                "empty_3d": torch.empty(3, 0, 2, dtype=torch.int16),
                "scalar_f32": torch.tensor(-0.5, dtype=torch.float32),
                "scalar_i64": torch.tensor(-(2**62), dtype=torch.int64),
                "scalar_bool": torch.tensor(True),
                "scalar_bf16": bits(torch.bfloat16, [], lambda i: 0x4049),
                "scalar_f8": bits(torch.float8_e4m3fn, [], lambda i: 0x38),
                "empty_str": "",
                "empty_bytes": b"",
            },
            {"compression": "zstd", "shuffle": True},
            None,
        ),
        "meta_only": (
            {},
            {"compression": "none"},
            {"encoder": "t5-xxl", "version": 3, "outputs": {}, "cache_hits": [True, False], "timings": {"ms": 12}},
        ),
    }


def entry_json(name: str, value) -> dict:
    if isinstance(value, str):
        return {"name": name, "dtype": "str", "value": value}
    if isinstance(value, bytes):
        return {"name": name, "dtype": "bytes", "hex": value.hex()}
    wire = {v: k for k, v in codec.DTYPES.items()}[value.dtype]
    raw = value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b""
    out = {"name": name, "dtype": wire, "shape": list(value.shape), "hex": raw.hex()}
    if value.numel() > 64:
        return out  # the hex says it all; numbers are for people reading small entries
    if not value.dtype.is_floating_point:
        out["values"] = value.tolist()
    elif bool(torch.isfinite(value.float()).all()):
        out["values"] = value.float().tolist()
    return out


def stored_json(frame: bytes) -> dict:
    f = frame_tools.parse(frame)
    return {
        e["name"]: {"codec": e["codec"], "filter": e.get("filter", "none"), "chunks": len(e.get("chunks", []))}
        for e in f.entries
    }


def to_json(doc: dict) -> str:
    """Pretty enough to review in a diff: one line per top-level key, one line per entry."""
    lines = []
    for key, value in doc.items():
        if key == "entries" and value:
            body = ",\n".join("  " + json.dumps(e, ensure_ascii=False) for e in value)
            lines.append(f"{json.dumps(key)}: [\n{body}\n ]")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n " + ",\n ".join(lines) + "\n}\n"


def write(out: Path) -> list[Path]:
    written = []
    out.mkdir(parents=True, exist_ok=True)
    for name, (values, options, meta) in cases().items():
        frame = codec.encode(values, meta=meta, **options)
        stored = stored_json(frame)
        doc = {
            "frame": f"{name}.jemb",
            "options": options,
            "meta": meta,
            "entries": [{**entry_json(k, v), "stored": stored[k]} for k, v in values.items()],
        }
        (out / f"{name}.jemb").write_bytes(frame)
        (out / f"{name}.json").write_text(to_json(doc))
        written += [out / f"{name}.jemb", out / f"{name}.json"]
    invalid = out / "invalid"
    invalid.mkdir(exist_ok=True)
    expected = {}
    for case in malformed_cases.CASES.values():
        if case.golden:
            assert not case.limits, case.name
            (invalid / f"{case.name}.jemb").write_bytes(case.frame())
            expected[f"{case.name}.jemb"] = case.prefix
            written.append(invalid / f"{case.name}.jemb")
    (invalid / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    written.append(invalid / "expected.json")
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    for path in write(args.out):
        print(path)


if __name__ == "__main__":
    main()
