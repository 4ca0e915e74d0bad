"""The standalone server's HTTP front end, end to end: the real built binary on an ephemeral
loopback port, driven with http.client. Covers health, metrics, the error mapping (404, 400, 413,
504 as JSON), that the server stays healthy after each error, and that SIGTERM drains and exits 0."""

import http.client
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import serving
import torch

from jit_embedding import codec

ROOT = Path(__file__).resolve().parents[2]
# JIT_SERVER_BINARY runs the same tests against another build (a sanitizer build, say).
BINARY = Path(os.environ.get("JIT_SERVER_BINARY", ROOT / "jit_embedding" / "bin" / "jit-embedding-server"))
MAX_BODY_BYTES = 1 << 20
TIMEOUT_S = 10.0


# The running-server handle (request helpers, health checks) shared with the other serving tests.
Server = serving.Running


def start_server(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, int]:
    running = serving.launch([str(BINARY), "--threads", "8", *args], tmp_path)
    return running.proc, running.port


@pytest.fixture
def server(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} is not built (run `make build`)")
    proc, port = start_server(tmp_path, "--max-body-bytes", str(MAX_BODY_BYTES))
    try:
        yield Server(proc, port)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT_S)


def valid_frame() -> bytes:
    return codec.encode({"x": torch.arange(6.0).reshape(2, 3)}, meta={"k": "v"})


def error_of(status_headers_body) -> dict:
    _, headers, body = status_headers_body
    assert headers.get("Content-Type", "").startswith("application/json")
    return json.loads(body)


def test_health_and_metrics(server):
    server.assert_healthy()
    status, headers, body = server.request("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4"
    text = body.decode()
    assert "jit_http_requests_total" in text
    assert 'jit_http_requests_total{code="200",path="/health/live"}' in text
    assert 'jit_http_failures_total{reason="not_found"} 0' in text


def test_encoders_list_is_empty_without_config(server):
    status, _, body = server.request("GET", "/v1/encoders")
    assert status == 200 and json.loads(body) == {"encoders": []}


def test_unknown_encoder_is_404_naming_it(server):
    result = server.request("POST", "/v1/encode/nope", body=valid_frame())
    assert result[0] == 404
    err = error_of(result)
    assert err["code"] == "not_found" and "'nope'" in err["error"]
    server.assert_healthy()


def test_garbage_is_400_naming_the_problem(server):
    for body in (b"garbage, not a frame at all, long enough to have a header.....", b"JE"):
        result = server.request("POST", "/v1/encode/nope", body=body)
        assert result[0] == 400
        err = error_of(result)
        assert err["code"] == "bad_request"
        assert err["error"].startswith(("bad magic", "truncated")), err
    server.assert_healthy()


def test_body_over_max_body_bytes_is_413(server):
    result = server.request("POST", "/v1/encode/nope", body=bytes(MAX_BODY_BYTES + 1))
    assert result[0] == 413
    assert error_of(result)["code"] == "payload_too_large"
    server.assert_healthy()


def test_past_deadline_is_504_and_bad_deadline_is_400(server):
    past_ms = int(time.time() * 1000) - 60_000
    result = server.request("POST", "/v1/encode/nope", body=valid_frame(), headers={"X-Deadline-Ms": str(past_ms)})
    assert result[0] == 504
    assert error_of(result)["code"] == "deadline_exceeded"
    # A deadline in the future lets the request through to the encoder lookup.
    future_ms = int(time.time() * 1000) + 60_000
    result = server.request("POST", "/v1/encode/nope", body=valid_frame(), headers={"X-Deadline-Ms": str(future_ms)})
    assert result[0] == 404
    result = server.request("POST", "/v1/encode/nope", body=valid_frame(), headers={"X-Deadline-Ms": "soon"})
    assert result[0] == 400
    server.assert_healthy()


def test_unknown_route_is_404_json_and_failures_are_counted(server):
    result = server.request("GET", "/no/such/route")
    assert result[0] == 404 and error_of(result)["code"] == "not_found"
    server.request("POST", "/v1/encode/nope", body=b"JE")
    text = server.request("GET", "/metrics")[2].decode()
    assert 'jit_http_failures_total{reason="not_found"} 1' in text
    assert 'jit_http_failures_total{reason="bad_request"} 1' in text
    assert 'jit_http_requests_total{code="404",path="other"} 1' in text
    assert 'jit_http_requests_total{code="400",path="/v1/encode/{encoder}"} 1' in text


def test_keep_alive_connection_serves_many_requests(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_S)
    try:
        for _ in range(20):
            conn.request("POST", "/v1/encode/nope", body=valid_frame())
            resp = conn.getresponse()
            assert resp.status == 404
            resp.read()
    finally:
        conn.close()


def test_sigterm_exits_zero(server):
    server.assert_healthy()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=TIMEOUT_S) == 0
    assert "draining" in server.proc.stderr.read()


def run_binary(*args: str) -> subprocess.CompletedProcess:
    if not BINARY.exists():
        pytest.skip(f"{BINARY} is not built (run `make build`)")
    return subprocess.run([str(BINARY), *args], capture_output=True, text=True, timeout=TIMEOUT_S)


def test_bad_configs_exit_2_naming_the_problem(tmp_path):
    out = run_binary("--config", str(tmp_path / "x.yaml"))
    assert out.returncode == 2 and "x.yaml: cannot read the config file" in out.stderr
    config = tmp_path / "bad.yaml"
    config.write_text("server: {hots: 0.0.0.0}\n")
    out = run_binary("--config", str(config))
    assert out.returncode == 2 and "server.hots: unknown key" in out.stderr, out.stderr
    config.write_text("encoders:\n  - {name: a, artifact: x}\n  - {name: b, artifact: y, max_batch_size: -3}\n")
    out = run_binary("--config", str(config))
    assert out.returncode == 2 and "encoders[1].max_batch_size: must be a positive integer, got -3" in out.stderr
    config.write_text("encoders:\n  - {name: py, factory: 'mypkg.mod:make'}\n")
    out = run_binary("--config", str(config))
    assert out.returncode == 2 and "jit-embedding serve" in out.stderr, out.stderr


def test_missing_artifact_exits_2_naming_the_encoder(tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text("encoders:\n  - {name: clip, artifact: exports/clip}\n")
    out = run_binary("--config", str(config), "--port", "0")
    assert out.returncode == 2, out.stderr
    assert "encoder 'clip'" in out.stderr or "built without LibTorch" in out.stderr, out.stderr


def test_config_server_keys_apply_and_flags_override_them(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} is not built (run `make build`)")
    config = tmp_path / "server.yaml"
    config.write_text("server: {max_body_bytes: 1000, port: 1}\n")  # port 1 is overridden by --port 0
    for i, (extra, status) in enumerate((((), 413), (("--max-body-bytes", "4096"), 400))):
        (tmp_path / str(i)).mkdir()  # a port file of its own
        proc, port = start_server(tmp_path / str(i), "--config", str(config), *extra)
        try:
            server = Server(proc, port)
            assert server.request("POST", "/v1/encode/x", body=bytes(1500))[0] == status
            server.assert_healthy()
        finally:
            proc.kill()
            proc.wait(timeout=TIMEOUT_S)


def test_load_endpoint_refuses_escapes_and_reports_failures(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} is not built (run `make build`)")
    (tmp_path / "models" / "empty").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    config = tmp_path / "server.yaml"
    config.write_text("server: {artifact_root: models}\n")
    proc, port = start_server(tmp_path, "--config", str(config))
    try:
        server = Server(proc, port)
        for body, status, code in (
            ({"artifact": "../secret"}, 403, "forbidden"),
            ({"artifact": str(tmp_path / "secret")}, 403, "forbidden"),
            ({"artifact": "nope"}, 422, "unprocessable"),
            ({"artifact": "empty"}, 422, "unprocessable"),  # no manifest.json (or no LibTorch)
            ({"artifact": "empty", "max_batch_size": 0}, 400, "bad_request"),
        ):
            result = server.request("POST", "/v1/encoders/clip/load", body=json.dumps(body).encode())
            assert result[0] == status, (body, result)
            assert error_of(result)["code"] == code
            server.assert_healthy()
        result = server.request("POST", "/v1/encoders/clip/load", body=b"{not json")
        assert result[0] == 400 and error_of(result)["code"] == "bad_request"
        assert json.loads(server.request("GET", "/v1/encoders")[2]) == {"encoders": []}
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT_S)


def test_load_endpoint_is_off_without_an_artifact_root(server):
    result = server.request("POST", "/v1/encoders/clip/load", body=b'{"artifact": "x"}')
    assert result[0] == 403 and "no artifact_root" in error_of(result)["error"]
    server.assert_healthy()


def test_512_concurrent_keep_alive_connections_are_all_served(tmp_path):
    """Each keep-alive connection holds one server thread for its life (cpp-httplib 0.11.4), so the
    default --threads 512 must serve 512 clients that all keep their connections open at once. A
    server with too few threads leaves the extra connections waiting until an idle one times out
    (keep_alive_timeout, 5 s), which the 3 s client timeout turns into a failure."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} is not built (run `make build`)")
    proc, port = start_server(tmp_path, "--threads", "512")
    conns = []
    try:
        for _ in range(512):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3.0)
            conn.request("GET", "/health/live")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
            conns.append(conn)  # kept open: its server thread stays taken
        # A second request on every held connection: each is still served, on the same connection.
        for conn in conns:
            conn.request("GET", "/health/ready")
            resp = conn.getresponse()
            assert resp.status in (200, 503)
            resp.read()
            assert resp.getheader("Connection", "").lower() != "close"
    finally:
        for conn in conns:
            conn.close()
        proc.kill()
        proc.wait(timeout=TIMEOUT_S)


def test_listen_backlog_is_raised_past_httplibs_five(tmp_path):
    # Debian's httplib listens with a backlog of 5; a burst of DataLoader workers connecting at once
    # would overflow it. ss shows a listening socket's backlog in its Send-Q column.
    import shutil

    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed, so the listen backlog cannot be read")
    proc, port = start_server(tmp_path)
    try:
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
        backlog = int(out.split()[2])
        want = min(4096, int(Path("/proc/sys/net/core/somaxconn").read_text()))
        assert backlog == want, out
    finally:
        proc.terminate()
        assert proc.wait(timeout=TIMEOUT_S) == 0


def _post_raw(sock, path: str, body: bytes, pieces: int = 1, pause_s: float = 0.0) -> None:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    sock.sendall(head)
    step = -(-len(body) // pieces)
    for i in range(0, len(body), step):
        sock.sendall(body[i : i + step])
        time.sleep(pause_s)


def _read_response(f) -> tuple[int, bytes]:
    status = int(f.readline().split()[1])
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, f.read(length)


def test_large_bodies_in_pieces_on_one_keep_alive_connection(tmp_path):
    # Bodies of 1 MiB and more are read straight from the socket after httplib's first piece: the
    # pieces arrive with pauses between them, and the next request on the connection must start
    # exactly where the body ended.
    import socket

    if not BINARY.exists():
        pytest.skip(f"{BINARY} is not built (run `make build`)")
    proc, port = start_server(tmp_path, "--max-body-bytes", str(8 << 20))
    server = Server(proc, port)
    big = codec.encode({"x": torch.arange(600_000, dtype=torch.float32).reshape(2, -1)})
    assert len(big) > (1 << 20)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        f = sock.makefile("rb")
        for pieces in (1, 7):
            _post_raw(sock, "/v1/encode/nope", big, pieces=pieces, pause_s=0.02)
            status, body = _read_response(f)
            assert status == 404 and "'nope'" in json.loads(body)["error"]  # decoded whole, then routed
        _post_raw(sock, "/v1/encode/nope", valid_frame())
        assert _read_response(f)[0] == 404
    # A client that leaves mid-body costs the server nothing.
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(f"POST /v1/encode/nope HTTP/1.1\r\nHost: x\r\nContent-Length: {len(big)}\r\n\r\n".encode())
        sock.sendall(big[: len(big) // 2])
    server.assert_healthy()
    proc.kill()
    proc.wait(timeout=TIMEOUT_S)
