"""jit-loadgen (benchmarks/loadgen.cpp) against the real server binary on 127.0.0.1: the JSON it prints
is self-consistent, success and errors are counted where they belong, and its two baselines run. No
timing is asserted: the machine may be busy."""

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import serving
import torch

from jit_embedding import codec

ROOT = Path(__file__).resolve().parents[2]
LOADGEN = Path(os.environ.get("JIT_LOADGEN_BINARY", ROOT / "build" / "cmake" / "jit-loadgen"))
BINARY = Path(os.environ.get("JIT_SERVER_BINARY", ROOT / "jit_embedding" / "bin" / "jit-embedding-server"))
TIMEOUT_S = 10.0


def start_server(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """The server with no encoders on an ephemeral loopback port (as in test_server_http.py)."""
    running = serving.launch([str(BINARY), "--threads", "16"], tmp_path)
    return running.proc, running.port


def loadgen(*args: str) -> dict:
    out = subprocess.run([str(LOADGEN), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout
    return json.loads(lines[0])


@pytest.fixture
def built():
    if not LOADGEN.exists():
        pytest.skip(f"{LOADGEN} is not built (run `make build`)")


@pytest.fixture
def port(built, tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} is not built (run `make build`)")
    proc, port = start_server(tmp_path)
    try:
        yield port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT_S)


def check_consistent(r: dict, concurrency: int) -> None:
    assert r["mode"] == "closed_loop" and r["concurrency"] == concurrency
    assert r["requests"] > 0
    assert r["requests"] == r["ok"] + r["error_count"] == r["ok"] + sum(r["errors"].values())
    assert r["req_per_s"] == pytest.approx(r["requests"] / r["seconds"], rel=1e-3)
    assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert r["mb_per_s"] == pytest.approx((r["bytes_sent"] + r["bytes_received"]) / r["seconds"] / 1e6, rel=1e-3)
    # One keep-alive connection per thread (more only if the server closed one).
    assert r["connections"] >= concurrency


def test_health_live_has_no_errors(port):
    r = loadgen(
        "--url", f"http://127.0.0.1:{port}/health/live", "--concurrency", "4", "--duration", "1", "--warmup", "0.2"
    )
    check_consistent(r, 4)
    assert r["method"] == "GET" and r["seconds"] == 1
    assert r["ok"] == r["requests"] and r["error_count"] == 0 and r["errors"] == {}
    assert r["bytes_sent"] == 0
    assert r["bytes_received"] > 0 and r["bytes_received"] % r["requests"] == 0  # the same body every time


def test_404_answers_are_counted_as_errors_by_status(port, tmp_path):
    body = tmp_path / "frame"
    body.write_bytes(codec.encode({"x": torch.zeros(2, 16)}))
    url = f"http://127.0.0.1:{port}/v1/encode/no-such-encoder"
    r = loadgen("--url", url, "--body", str(body), "--concurrency", "2", "--duration", "1", "--warmup", "0.1")
    check_consistent(r, 2)
    assert r["method"] == "POST"
    assert r["ok"] == 0 and r["errors"] == {"404": r["requests"]} and r["error_count"] == r["requests"]
    assert r["bytes_sent"] == r["requests"] * body.stat().st_size
    assert r["bytes_received"] > 0  # the JSON error bodies


def test_headers_are_sent(port):
    # An X-Deadline-Ms in the past answers 504 before the frame is even decoded.
    url = f"http://127.0.0.1:{port}/v1/encode/x"
    r = loadgen("--url", url, "--method", "POST", "--header", "X-Deadline-Ms: 1", "--duration", "0.3", "--warmup", "0")
    assert r["requests"] > 0 and r["errors"] == {"504": r["requests"]}


def test_refused_connections_are_transport_errors(built):
    # A port that was just free: nothing listens there.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    r = loadgen("--url", f"http://127.0.0.1:{closed}/health/live", "--duration", "0.3", "--warmup", "0")
    assert r["ok"] == 0 and r["error_count"] > 0
    assert all(k.startswith("transport:") for k in r["errors"]), r["errors"]


def test_raw_tcp_baseline(built):
    r = loadgen("--raw-tcp", "--bytes", str(1 << 20), "--repeat", "4")
    assert r["mode"] == "raw_tcp" and r["bytes"] == 1 << 20 and r["repeat"] == 4
    assert r["seconds"] > 0 and r["gb_per_s"] == pytest.approx(4 * (1 << 20) / r["seconds"] / 1e9, rel=1e-3)
    assert r["best_gb_per_s"] >= r["gb_per_s"] * 0.999


def test_http_upload_posts_the_same_bytes_repeatedly(port, tmp_path):
    body = tmp_path / "frame"
    body.write_bytes(codec.encode({"x": torch.zeros(256, 1024)}))
    url = f"http://127.0.0.1:{port}/v1/encode/no-such-encoder"
    r = loadgen("--http-upload", "--url", url, "--body", str(body), "--repeat", "3")
    assert r["mode"] == "http_upload" and r["bytes"] == body.stat().st_size and r["repeat"] == 3
    assert r["statuses"] == {"404": 3}
    assert r["connections"] == 1
    assert r["gb_per_s"] == pytest.approx(3 * r["bytes"] / r["seconds"] / 1e9, rel=1e-3)


def test_http_upload_to_the_in_process_sink(built):
    r = loadgen("--http-upload", "--sink", "--bytes", str(3 << 20), "--repeat", "3")
    assert r["mode"] == "http_upload" and r["url"] == "sink" and r["bytes"] == 3 << 20
    assert r["statuses"] == {"200": 3} and r["connections"] == 1 and r["bytes_received"] == 0


def test_bad_arguments_exit_2(built):
    bad = (
        ["--nope"],
        ["--url", "https://127.0.0.1:1/"],
        ["--raw-tcp"],
        ["--concurrency", "0"],
        ["--http-upload", "--bytes", "10"],  # neither --url nor --sink
        ["--http-upload", "--sink"],  # neither --bytes nor --body
    )
    for args in bad:
        out = subprocess.run([str(LOADGEN), *args], capture_output=True, text=True, timeout=10)
        assert out.returncode == 2 and out.stderr.startswith("jit-loadgen: "), (args, out.stderr)
