"""Writes the seed corpus of the fuzz_http target into tests/cpp/server/fuzz_http_corpus/.

Each seed is one raw HTTP/1.1 request, as fuzz_http.cpp feeds it to HttpServer::handle_raw() of
an App serving "affine" (float32 x [rows, cols]), "tokens" (int64 input_ids and attention_mask
[rows, len], length buckets 4/8/16) and "nocache" (affine, not cached), with the bearer tokens
below. The seeds reach every route with and without the right token (valid encodes with cache
meta, chunked and compressed bodies, cache lookups by key and digest, loads, unloads, the drain,
trace, metrics, health) and then the HTTP layer's edge cases (Content-Length mismatches, bad
chunk sizes, oversized headers, Expect: 100-continue, multipart, odd request lines), so that the
fuzzer starts from requests that get deep into the server rather than from a 400.

Run after `make build` (it imports jit_embedding for the frames):
    python3 tests/cpp/server/make_fuzz_http_corpus.py
Files named seed-* are rewritten; others (regress-* inputs from crashes, libFuzzer's additions)
are left alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jit_embedding import codec

OUT = Path(__file__).resolve().parent / "fuzz_http_corpus"
# Both known to fuzz_http.cpp and fuzz_http.dict.
USER_TOKEN = "fuzz-user-token-0123456789abcdef"
ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"
MAX_SEED_BYTES = 10000  # the oversized-header seeds need a little over 8 KiB
FRAME_TYPE = "application/x-jit-embedding-frame"


def request(
    method: str,
    target: str,
    body: bytes = b"",
    *,
    token: str | None = USER_TOKEN,
    headers: dict[str, str] | None = None,
    length: int | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    """A raw request; Content-Length is the body's unless `length` says otherwise (or -1: none)."""
    lines = [f"{method} {target} {version}", "Host: 127.0.0.1"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    n = len(body) if length is None else length
    if method == "POST" and n >= 0 and "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {n}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(body: bytes, size: int) -> bytes:
    """`body` in chunked transfer encoding, `size` bytes a chunk."""
    out = b""
    for i in range(0, len(body), size):
        part = body[i : i + size]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


def affine_frame(rows: int = 2, cols: int = 4, meta: object = None, **kw) -> bytes:
    x = (np.arange(rows * cols, dtype=np.float32) * 0.5).reshape(rows, cols)
    return codec.encode({"x": x}, meta=meta, **kw)


def token_frame(lengths: list[int], width: int, meta: object = None) -> bytes:
    ids = np.full((len(lengths), width), 7, dtype=np.int64)
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    for r, n in enumerate(lengths):
        ids[r, :n] = 100 + np.arange(n) + 10 * r
        mask[r, :n] = 1
    return codec.encode({"input_ids": ids, "attention_mask": mask}, meta=meta)


def encode_seeds() -> dict[str, bytes]:
    frame = affine_frame()
    post = {"Content-Type": FRAME_TYPE}
    return {
        "seed-encode-affine": request("POST", "/v1/encode/affine", frame, headers=post),
        "seed-encode-affine-admin-token": request("POST", "/v1/encode/affine", frame, token=ADMIN_TOKEN),
        "seed-encode-no-token": request("POST", "/v1/encode/affine", frame, token=None),
        "seed-encode-wrong-token": request("POST", "/v1/encode/affine", frame, token="x" * 32),
        "seed-encode-keys": request(
            "POST", "/v1/encode/affine", affine_frame(meta={"keys": ["k1", "k2"], "cache": "use"})
        ),
        "seed-encode-refresh-params": request(
            "POST", "/v1/encode/affine", affine_frame(meta={"cache": "refresh", "params": "crop=1"})
        ),
        "seed-encode-bypass": request("POST", "/v1/encode/affine", affine_frame(meta={"cache": "bypass"})),
        "seed-encode-nocache": request("POST", "/v1/encode/nocache", affine_frame(3, 2)),
        "seed-encode-zstd": request(
            "POST", "/v1/encode/affine", affine_frame(8, 64, compression="zstd", chunk_bytes=512)
        ),
        "seed-encode-chunked": request(
            "POST",
            "/v1/encode/affine",
            chunked(frame, 100),
            headers={"Transfer-Encoding": "chunked"},
        ),
        "seed-encode-tokens": request("POST", "/v1/encode/tokens", token_frame([3, 5], 5, meta={"lengths": [3, 5]})),
        "seed-encode-tokens-keys": request(
            "POST", "/v1/encode/tokens", token_frame([2], 9, meta={"keys": ["t"], "lengths": [2]})
        ),
        "seed-encode-tokens-wrong-dtype": request(
            "POST", "/v1/encode/tokens", codec.encode({"input_ids": np.ones((1, 4), np.int32)})
        ),
        "seed-encode-wrong-input": request("POST", "/v1/encode/affine", codec.encode({"y": np.ones(3, np.float32)})),
        "seed-encode-too-many-rows": request("POST", "/v1/encode/affine", affine_frame(9, 1)),
        "seed-encode-unknown-encoder": request("POST", "/v1/encode/nope", frame),
        "seed-encode-deadline-passed": request("POST", "/v1/encode/affine", frame, headers={"X-Deadline-Ms": "1000"}),
        "seed-encode-deadline-far": request(
            "POST", "/v1/encode/affine", frame, headers={"X-Deadline-Ms": "4102444800000"}
        ),
        "seed-encode-deadline-bad": request("POST", "/v1/encode/affine", frame, headers={"X-Deadline-Ms": "-5"}),
        "seed-encode-not-a-frame": request("POST", "/v1/encode/affine", b'{"x": [1, 2]}'),
        "seed-encode-empty-body": request("POST", "/v1/encode/affine"),
    }


def cache_seeds() -> dict[str, bytes]:
    digests = [bytes(range(16)), "0123456789abcdef0123456789abcdef"]
    return {
        "seed-lookup-keys": request(
            "POST", "/v1/cache/lookup", codec.encode({}, meta={"encoder": "affine", "keys": ["k1", "zz"]})
        ),
        "seed-lookup-digests": request(
            "POST", "/v1/cache/lookup", codec.encode({}, meta={"encoder": "tokens", "digests": digests})
        ),
        "seed-lookup-unknown-encoder": request(
            "POST", "/v1/cache/lookup", codec.encode({}, meta={"encoder": "nope", "keys": ["a"]})
        ),
        "seed-cache-stats": request("GET", "/v1/cache/stats"),
        "seed-cache-stats-versions": request("GET", "/v1/cache/stats?versions=1"),
        "seed-cache-prune": request(
            "POST", "/v1/cache/prune", json.dumps({"encoder": "affine", "stale": True}).encode(), token=ADMIN_TOKEN
        ),
        "seed-cache-prune-user-token": request(
            "POST", "/v1/cache/prune", json.dumps({"max_bytes": 0}).encode(), token=USER_TOKEN
        ),
    }


def admin_seeds() -> dict[str, bytes]:
    def load(name: str, body: object, token: str = ADMIN_TOKEN) -> bytes:
        return request("POST", f"/v1/encoders/{name}/load", json.dumps(body).encode(), token=token)

    return {
        "seed-load-affine": load("affine", {"options": {"scale": 3.0}}),
        "seed-load-tokens-buckets": load("tokens", {"length_buckets": [2, 32], "max_batch_size": 4}),
        "seed-load-new-name": load("extra", {"factory": "tests:counting", "options": {"scale": 1.5}}),
        "seed-load-artifact": load("affine", {"artifact": "a"}),
        "seed-load-artifact-escape": load("affine", {"artifact": "../../etc"}),
        "seed-load-bad-key": load("affine", {"colour": "red"}),
        "seed-load-empty-body": request("POST", "/v1/encoders/affine/load", token=ADMIN_TOKEN),
        "seed-load-user-token": load("affine", {}, token=USER_TOKEN),
        "seed-unload": request("POST", "/v1/encoders/nocache/unload", token=ADMIN_TOKEN),
        "seed-unload-unknown": request("POST", "/v1/encoders/nope/unload", token=ADMIN_TOKEN),
        "seed-drain": request("POST", "/v1/admin/drain", token=ADMIN_TOKEN),
        "seed-drain-no-token": request("POST", "/v1/admin/drain", token=None),
    }


def read_seeds() -> dict[str, bytes]:
    return {
        "seed-health-live": request("GET", "/health/live", token=None),
        "seed-health-live-head": request("HEAD", "/health/live", token=None),
        "seed-health-ready": request("GET", "/health/ready"),
        "seed-metrics": request("GET", "/metrics"),
        "seed-encoders": request("GET", "/v1/encoders"),
        "seed-trace": request("GET", "/v1/trace?duration_ms=1"),
        "seed-trace-bad-duration": request("GET", "/v1/trace?duration_ms=0x10"),
        "seed-unknown-route": request("GET", "/v2/nothing"),
    }


def malformed_seeds() -> dict[str, bytes]:
    frame = affine_frame()
    enc = "/v1/encode/affine"
    bad_chunk = f"{len(frame):x}\r\n".encode() + frame[:10] + b"\r\nzz\r\n"
    return {
        "seed-length-over-body": request("POST", enc, frame, length=len(frame) + 50),
        "seed-length-under-body": request("POST", enc, frame, length=len(frame) - 8),
        "seed-length-negative": request("POST", enc, frame, length=-1, headers={"Content-Length": "-1"}),
        "seed-length-huge": request("POST", enc, frame, length=-1, headers={"Content-Length": "99999999999999999999"}),
        "seed-length-over-limit": request("POST", enc, b"", length=(1 << 20) + 1),
        "seed-length-twice": request("POST", enc, frame, headers={"Content-Length": "3"}),
        "seed-chunked-bad-size": request("POST", enc, bad_chunk, headers={"Transfer-Encoding": "chunked"}),
        "seed-chunked-and-length": request(
            "POST", enc, chunked(frame, 64), headers={"Transfer-Encoding": "chunked", "Content-Length": "5"}
        ),
        "seed-gzip-body": request("POST", enc, b"\x1f\x8b\x08\x00garbage", headers={"Content-Encoding": "gzip"}),
        "seed-expect-continue": request("POST", enc, frame, headers={"Expect": "100-continue"}),
        "seed-multipart": request(
            "POST", enc, b"--b\r\n\r\nx\r\n--b--\r\n", headers={"Content-Type": "multipart/form-data; boundary=b"}
        ),
        "seed-header-line-too-long": request("GET", "/v1/encoders", headers={"X-Pad": "p" * 8300}),
        "seed-header-too-large": request("GET", "/v1/encoders", headers={f"X-Pad-{i}": "p" * 3000 for i in range(3)}),
        "seed-http10": request("GET", "/health/ready", version="HTTP/1.0"),
        "seed-lowercase-method": request("post", enc, frame),
        "seed-absolute-uri": request("GET", "http://127.0.0.1/v1/encoders"),
        "seed-percent-path": request("POST", "/v1/encode/aff%69ne", frame),
        "seed-no-version": b"GET /health/live\r\n\r\n",
        "seed-bare-lf": b"GET /v1/encoders HTTP/1.1\nAuthorization: Bearer " + USER_TOKEN.encode() + b"\n\n",
        "seed-bearer-lowercase": request(
            "GET", "/v1/encoders", token=None, headers={"Authorization": "bearer " + USER_TOKEN}
        ),
        "seed-garbage": b"\x00\xff\r\n\r\n",
        "seed-range": request("GET", "/v1/encoders", headers={"Range": "bytes=0-10,20-30"}),
        "seed-accept-gzip": request("GET", "/v1/encoders", headers={"Accept-Encoding": "gzip"}),
        "seed-accept-br-error": request("GET", "/v1/nothing", token=None, headers={"Accept-Encoding": "br"}),
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for old in OUT.iterdir():
        if old.name.startswith("seed-"):
            old.unlink()
    seeds = {**encode_seeds(), **cache_seeds(), **admin_seeds(), **read_seeds(), **malformed_seeds()}
    for name, raw in sorted(seeds.items()):
        assert len(raw) < MAX_SEED_BYTES, (name, len(raw))
        (OUT / name).write_bytes(raw)
    print(f"wrote {len(seeds)} seeds to {OUT}")


if __name__ == "__main__":
    main()
