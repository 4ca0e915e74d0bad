"""Helpers for end-to-end serving tests: start a real server (the C++ binary or `jit-embedding
serve`) from a YAML config on an ephemeral loopback port, send frames, read /metrics."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from jit_embedding import codec

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("JIT_SERVER_BINARY", ROOT / "jit_embedding" / "bin" / "jit-embedding-server"))
TIMEOUT_S = 60.0


class Running:
    """A started server process: its port, requests over fresh connections, and a clean stop."""

    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc = proc
        self.port = port

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """One request on a fresh connection; returns (status, headers, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT_S)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def encode(self, encoder: str, inputs: dict, headers: dict | None = None):
        """POSTs `inputs` as a frame; returns (outputs, meta) on 200, raises AssertionError otherwise."""
        status, _, body = self.request("POST", f"/v1/encode/{encoder}", codec.encode(inputs), headers)
        assert status == 200, f"{encoder}: HTTP {status}: {body[:500]!r}"
        return codec.decode(body)

    def metrics(self) -> str:
        status, _, body = self.request("GET", "/metrics")
        assert status == 200
        return body.decode()

    def assert_healthy(self) -> None:
        status, _, body = self.request("GET", "/health/live")
        assert status == 200 and json.loads(body) == {"status": "live"}
        status, _, body = self.request("GET", "/health/ready")
        assert status == 200 and json.loads(body) == {"status": "ready"}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def write_config(folder: Path, encoders: list[dict], server: dict | None = None, cache: dict | None = None) -> Path:
    path = folder / "server.yaml"
    config = {"server": server or {}, "encoders": encoders}
    if cache is not None:
        config["cache"] = cache
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start(config: Path, *, python_hosted: bool = False, env: dict | None = None) -> Running:
    """Starts the C++ binary (or `jit-embedding serve` when python_hosted) on a free port."""
    if python_hosted:
        cmd = [sys.executable, "-m", "jit_embedding.cli", "serve", "--config", str(config)]
    else:
        cmd = [str(BINARY), "--config", str(config), "--threads", "64"]
    return launch(cmd, config.parent, env)


def launch(cmd: list[str], folder: Path, env: dict | None = None) -> Running:
    """Runs a server command with --port 0 and a port file in `folder`; returns once it listens."""
    port_file = folder / f"port-{time.monotonic_ns()}"
    cmd = [*cmd, "--port", "0", "--port-file", str(port_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + TIMEOUT_S
    while not port_file.exists():
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("server did not write its port file in time")
        time.sleep(0.02)
    return Running(proc, int(port_file.read_text()))


def histogram(metrics_text: str, name: str, encoder: str) -> tuple[float, float]:
    """(sum, count) of a histogram series for one encoder in Prometheus text."""
    values = {}
    for suffix in ("sum", "count"):
        m = re.search(rf'^{name}_{suffix}\{{[^}}]*encoder="{re.escape(encoder)}"[^}}]*\}} (\S+)$', metrics_text, re.M)
        assert m, f"no {name}_{suffix} for {encoder}"
        values[suffix] = float(m.group(1))
    return values["sum"], values["count"]


def counter(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one counter series (0 when absent)."""
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def error_of(status_headers_body) -> dict:
    status, headers, body = status_headers_body
    assert headers.get("Content-Type", "").startswith("application/json"), headers
    return {"status": status, **json.loads(body)}
