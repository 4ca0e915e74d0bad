"""Real components for the fault and overload tests: the C++ server on a fixed loopback port (so that it
can be killed and started again on the same port), a redis-server, a tiny tmpfs, and the encoder of
benchmarks/overload.py (a seeded tanh MLP exported as TorchScript) with its local reference.

    artifact = work_artifact()                          # cached under build/test-artifacts/
    server = BinaryServer(tmp_path / "s", encoders=[work_entry(artifact)], cache={...})
    server.kill(); server.start()                       # SIGKILL, then the same port again
    with RedisServer(tmp_path) as redis: ...            # redis.url, redis.kill(), redis.start()

``tmpfs(folder, "4m")`` mounts a 4 MiB tmpfs on `folder` for a with-block; where mounting is not
permitted, it skips the calling test and names the reason.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import data_fixtures
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("JIT_SERVER_BINARY", ROOT / "jit_embedding" / "bin" / "jit-embedding-server"))
START_TIMEOUT_S = 60.0
DEPTH = 2  # the fault tests' encoder: cheap; faults, not compute, are under test


def overload_module():
    """benchmarks/overload.py as a module (its folder goes on sys.path for its bench_common import)."""
    bench = str(ROOT / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import bench_common

    return bench_common.load_module("jit_bench_overload", ROOT / "benchmarks" / "overload.py")


def work_artifact(width: int = data_fixtures.WIDTH, depth: int = DEPTH, max_batch: int = 32) -> Path:
    """The Work(width, depth) encoder exported as TorchScript, cached under build/test-artifacts/."""
    return overload_module().export_work(width, depth, max_batch, root=ROOT / "build" / "test-artifacts")


def reference(x: torch.Tensor, width: int = data_fixtures.WIDTH, depth: int = DEPTH) -> torch.Tensor:
    """Work(width, depth) run locally on one sample's x [width]."""
    module = _modules.get((width, depth))
    if module is None:
        module = _modules[(width, depth)] = overload_module().Work(width, depth).eval()
    with torch.no_grad():
        return module(x[None])[0]


_modules: dict[tuple[int, int], torch.nn.Module] = {}


def work_entry(artifact: Path, **overrides: Any) -> dict[str, Any]:
    return {"name": "work", "artifact": str(artifact), "max_batch_size": 32, "max_queue_delay_us": 500, **overrides}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_request(port: int, method: str, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class BinaryServer:
    """jit-embedding-server on one loopback port for its whole life, restarts included. Its stdout and
    stderr go to `folder`/server.log (appended across restarts)."""

    def __init__(self, folder: Path, encoders: list[dict], cache: dict | None = None, server: dict | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        config: dict[str, Any] = {"server": {"threads": 32, **(server or {})}, "encoders": encoders}
        if cache is not None:
            config["cache"] = cache
        self.config = folder / "server.yaml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = folder / "server.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts the binary on self.port and returns once /health/ready answers 200."""
        with open(self.log, "a") as log:
            cmd = [str(BINARY), "--config", str(self.config), "--port", str(self.port)]
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if http_request(self.port, "GET", "/health/ready", timeout=2.0)[0] == 200:
                    return
            assert time.monotonic() < deadline, f"server not ready in {START_TIMEOUT_S} s: {self.log.read_text()}"
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None, "the server is not running"
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and waits until the process is gone (the port is free again)."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def metrics(self) -> str:
        status, body = http_request(self.port, "GET", "/metrics")
        assert status == 200, status
        return body.decode()

    def stop(self) -> int | None:
        """SIGCONT (in case it was stopped), SIGTERM, and the exit code (None if it was not running)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the server did not drain within 60 s of SIGTERM") from None


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in Prometheus text (None when absent)."""
    for line in text.splitlines():
        if line.startswith(name + ("{" if labels else " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


class RedisServer:
    """A redis-server without persistence on a fixed loopback port; `kill()` is an outage, `start()`
    brings it back (empty) on the same port."""

    def __init__(self, folder: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (make setup installs it)")
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [self.binary, *args, "--dir", str(self.folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: "4m") mounted on `folder` for the block; skips the test,
    saying why, where mounting is not permitted (not root, or no CAP_SYS_ADMIN in a container)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {out.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_disk(folder: Path) -> int:
    """Writes one file in `folder` until its file system is full; returns the bytes written."""
    written = 0
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (1 << 20, 64 << 10, 4 << 10, 1):  # big pieces first, then what is left of the last page
            with contextlib.suppress(OSError):
                while True:
                    written += f.write(b"\0" * size)
    return written


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)
