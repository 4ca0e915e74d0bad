"""Security end to end with the real binaries (docs/security.md): tokens from files and the
environment, admin routes, loopback-only binding, tokens never taken as flag values, and TLS with
a self-signed certificate made here, through EmbeddingClient and the CLI."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import serving
import torch

from jit_embedding import codec
from jit_embedding.client import ClientError, EmbeddingClient

TOKEN = "user-token-" + "a1b2c3d4" * 4
ADMIN = "admin-token-" + "e5f6a7b8" * 4
# The Python-hosted server serves a factory encoder, so these tests need no export.
ENCODERS = [{"name": "tok", "factory": "client_encoders:tokens", "max_batch_size": 16}]
TESTS_DIR = Path(__file__).resolve().parent


def python_env(**extra: str) -> dict:
    """The environment for `jit-embedding serve`: the test folder importable, no inherited tokens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_EMBEDDING_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


@pytest.fixture
def token_files(tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "admin").write_text(ADMIN + "\n")
    return tmp_path / "token", tmp_path / "admin"


@pytest.fixture
def binary():
    if not serving.BINARY.exists():
        pytest.skip(f"{serving.BINARY} is not built (run `make build`)")
    return str(serving.BINARY)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_token_files_protect_every_route_but_liveness(tmp_path, token_files, binary):
    token, admin = token_files
    server = serving.launch(
        [binary, "--auth-token-file", str(token), "--admin-token-file", str(admin)], tmp_path, python_env()
    )
    try:
        assert server.request("GET", "/health/live")[0] == 200
        for path in ("/health/ready", "/metrics", "/v1/encoders", "/v1/cache/stats", "/v1/trace?duration_ms=1"):
            status, headers, body = server.request("GET", path)
            assert status == 401, path
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert json.loads(body)["code"] == "unauthorized"
            assert server.request("GET", path, headers=bearer("x" * 32))[0] == 401
        assert server.request("GET", "/health/ready", headers=bearer(TOKEN))[0] == 200
        status, _, body = server.request("POST", "/v1/encode/none", codec.encode({"x": torch.ones(1, 2)}))
        assert status == 401
        # Admin routes: the user token is refused with 403, the admin token accepted.
        assert server.request("POST", "/v1/encoders/x/unload", b"", bearer(TOKEN))[0] == 403
        assert server.request("POST", "/v1/encoders/x/unload", b"", bearer(ADMIN))[0] == 404
        assert server.request("POST", "/v1/admin/drain", b"", bearer(TOKEN))[0] == 403
        status, _, body = server.request("POST", "/v1/admin/drain", b"", bearer(ADMIN))
        assert status == 202 and json.loads(body) == {"status": "draining"}
        assert server.proc.wait(timeout=30) == 0
        assert "draining" in server.proc.stderr.read()
    finally:
        server.stop()


def test_tokens_from_the_environment(tmp_path, binary):
    server = serving.launch([binary], tmp_path, python_env(JIT_EMBEDDING_AUTH_TOKEN=TOKEN))
    try:
        assert server.request("GET", "/metrics")[0] == 401
        assert server.request("GET", "/metrics", headers=bearer(TOKEN))[0] == 200
        # A token but no admin token: administration is closed, not open.
        status, _, body = server.request("POST", "/v1/admin/drain", b"", bearer(TOKEN))
        assert status == 403 and "no admin token" in json.loads(body)["error"]
    finally:
        server.stop()


def test_bad_token_settings_fail_at_start_with_the_setting_named(tmp_path, binary):
    (tmp_path / "short").write_text("abc\n")
    for args, env, expected in [
        (["--auth-token-file", str(tmp_path / "short")], {}, "--auth-token-file"),
        (["--auth-token-file", str(tmp_path / "missing")], {}, "cannot read"),
        ([], {"JIT_EMBEDDING_AUTH_TOKEN": "short"}, "JIT_EMBEDDING_AUTH_TOKEN"),
        # A token is never a flag value: there is no such flag.
        (["--auth-token", TOKEN], {}, "unknown argument"),
    ]:
        proc = subprocess.run([binary, *args], capture_output=True, text=True, timeout=30, env=python_env(**env))
        assert proc.returncode == 2, (args, proc.stderr)
        assert expected in proc.stderr, (args, proc.stderr)


def test_public_addresses_need_the_explicit_flag(tmp_path, binary):
    proc = subprocess.run(
        [binary, "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=30, env=python_env()
    )
    assert proc.returncode != 0
    assert "not a loopback address" in proc.stderr and "--public" in proc.stderr
    server = serving.launch([binary, "--host", "0.0.0.0", "--public"], tmp_path, python_env())
    try:
        assert server.request("GET", "/health/live")[0] == 200
    finally:
        server.stop()
    assert "no auth token" in server.proc.stderr.read()  # a public server without tokens is warned about


@pytest.fixture
def certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line tool is not installed")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def https_get(port: int, path: str, cert: Path, token: str | None = None) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)
    try:
        conn.request("GET", path, headers=bearer(token) if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_tls_with_tokens_through_the_client_and_the_cli(tmp_path, token_files, certificate, monkeypatch):
    token, admin = token_files
    cert, key = certificate
    config = serving.write_config(tmp_path, ENCODERS)
    cmd = [sys.executable, "-m", "jit_embedding.cli", "serve", "--config", str(config)]
    cmd += ["--auth-token-file", str(token), "--admin-token-file", str(admin)]
    cmd += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    server = serving.launch(cmd, tmp_path, python_env())
    try:
        assert https_get(server.port, "/health/live", cert) == (200, b'{"status": "live"}')
        assert https_get(server.port, "/metrics", cert)[0] == 401
        assert https_get(server.port, "/metrics", cert, TOKEN)[0] == 200
        # Plain HTTP to the TLS port gets no HTTP answer.
        with pytest.raises((http.client.HTTPException, OSError)):
            server.request("GET", "/health/live")

        ids = torch.tensor([[3, 4, 0], [5, 6, 7]])
        endpoint = f"https://localhost:{server.port}"
        client = EmbeddingClient([endpoint], auth_token=TOKEN, tls_ca_file=str(cert), retries=0)
        outputs, _ = client.encode("tok", {"ids": ids})
        from client_encoders import tokens

        module, _ = tokens()
        torch.testing.assert_close(outputs["pooled"], module(ids)["pooled"])

        # The token from the environment, as DataLoader workers inherit it.
        monkeypatch.setenv("JIT_EMBEDDING_AUTH_TOKEN_FILE", str(token))
        client = EmbeddingClient([endpoint], tls_ca_file=str(cert), retries=0)
        assert client.encode("tok", {"ids": ids})[0]["pooled"].shape == (2, 8)
        monkeypatch.delenv("JIT_EMBEDDING_AUTH_TOKEN_FILE")
        client = EmbeddingClient([endpoint], tls_ca_file=str(cert), retries=0)
        with pytest.raises(ClientError, match="401"):
            client.encode("tok", {"ids": ids})
        # A client that does not trust the certificate never talks to the server.
        client = EmbeddingClient([endpoint], auth_token=TOKEN, retries=0, timeout=5)
        with pytest.raises(ClientError):
            client.encode("tok", {"ids": ids})

        # The CLI: the token and CA bundle from the environment, the admin token on prune.
        env = python_env(
            JIT_EMBEDDING_AUTH_TOKEN=TOKEN, JIT_EMBEDDING_ADMIN_TOKEN=ADMIN, JIT_EMBEDDING_TLS_CA_FILE=str(cert)
        )
        cli = [sys.executable, "-m", "jit_embedding.cli", "cache"]
        stats = subprocess.run([*cli, "stats", "--server", endpoint], capture_output=True, text=True, env=env)
        assert stats.returncode == 0, stats.stderr
        prune = subprocess.run(
            [*cli, "prune", "--server", endpoint, "--stale"], capture_output=True, text=True, env=env, timeout=60
        )
        assert prune.returncode == 0, prune.stderr
        env.pop("JIT_EMBEDDING_ADMIN_TOKEN")
        refused = subprocess.run(
            [*cli, "prune", "--server", endpoint, "--stale"], capture_output=True, text=True, env=env, timeout=60
        )
        assert refused.returncode != 0 and "403" in refused.stderr, refused.stderr
    finally:
        server.stop()
