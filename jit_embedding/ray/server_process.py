"""One jit-embedding server as a child process of a Ray Serve replica: started on a free port,
probed until ready, scraped for its load, and drained on the way out.

Nothing here imports Ray: the replica class (``deployment.py``) drives it, and it can be tested on
its own. The server is the C++ binary (``jit_embedding/bin/jit-embedding-server``), or
``jit-embedding serve`` when the config has Python ``factory:`` encoders.

The child dies with the replica: it is started with ``PR_SET_PDEATHSIG`` = SIGTERM from a keeper
thread that lives exactly as long as the child (the signal fires when the *thread* that forked
exits, so the fork must not happen on a pool thread that Serve may retire). A replica killed
outright therefore still lets its server drain: it stops admitting (``/health/ready`` 503) and
finishes the requests in flight before it exits.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

#: Bytes of the server's stderr kept for error messages.
STDERR_TAIL_BYTES = 4000
#: Seconds one probe or scrape of the local server may take.
PROBE_TIMEOUT_S = 5.0

_PR_SET_PDEATHSIG = 1


class ServerProcessError(RuntimeError):
    """The server did not start, did not become ready, or exited; the message says which, with
    the tail of its stderr."""


def default_binary() -> Path:
    """The C++ server shipped in the package (``JIT_SERVER_BINARY`` overrides it)."""
    env = os.environ.get("JIT_SERVER_BINARY")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "bin" / "jit-embedding-server"


def _die_with_parent_hook():
    """A preexec_fn asking the kernel to SIGTERM the child when its parent thread exits. The libc
    function is resolved here, before any fork, so the child only makes the call."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the replica's __del__ still stops the server
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return hook


class ServerProcess:
    """A started server. Construct with the per-replica config; ``start()`` returns once it
    listens and ``/health/ready`` answers 200.

    Args:
        config: the server config (the YAML's mapping), already made absolute and given its
            ``server.host`` (see ``settings.replica_config``).
        workdir: a folder of this replica's own: its config file, port file and stderr log.
        binary: the C++ server; ignored when ``python_hosted``.
        python_hosted: run ``python -m jit_embedding.cli serve`` (needed for ``factory:`` encoders).
        auth_token: sent on this object's own probes and scrapes when the server wants one.
        env: extra environment for the server (e.g. ``JIT_EMBEDDING_AUTH_TOKEN``).
    """

    def __init__(
        self,
        config: dict,
        workdir: Path,
        *,
        binary: Path | None = None,
        python_hosted: bool = False,
        auth_token: str | None = None,
        env: dict[str, str] | None = None,
    ):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "server.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port_file = self.workdir / "port"
        self.stderr_path = self.workdir / "stderr.log"
        self.host = str(config.get("server", {}).get("host", "127.0.0.1"))
        self.auth_token = auth_token
        self.env = {**os.environ, **(env or {})}
        if python_hosted:
            self.cmd = [sys.executable, "-m", "jit_embedding.cli", "serve", "--config", str(self.config_path)]
        else:
            self.cmd = [str(binary or default_binary()), "--config", str(self.config_path)]
        self.cmd += ["--port", "0", "--port-file", str(self.port_file)]
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._keeper: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float) -> int:
        """Starts the server and waits until it is ready. Returns its port.

        Raises:
            ServerProcessError: it exited, or was not ready within ``timeout_s`` (then it is
                killed); the message holds the tail of its stderr.
        """
        self.port_file.unlink(missing_ok=True)
        started = threading.Event()
        failure: list[BaseException] = []
        hook = _die_with_parent_hook()

        def keep() -> None:
            try:
                with open(self.stderr_path, "wb") as err:
                    self._proc = subprocess.Popen(
                        self.cmd, stdout=subprocess.DEVNULL, stderr=err, env=self.env, preexec_fn=hook
                    )
            except OSError as e:
                failure.append(e)
                started.set()
                return
            started.set()
            self._proc.wait()  # the thread (and so PDEATHSIG's trigger) lives as long as the server

        self._keeper = threading.Thread(target=keep, name="jit-server-keeper", daemon=True)
        self._keeper.start()
        started.wait()
        if failure:
            raise ServerProcessError(f"cannot start {self.cmd[0]}: {failure[0]}")
        deadline = time.monotonic() + timeout_s
        while not self.port_file.exists() or not self.port_file.read_text().strip():
            self._raise_if_exited("before listening")
            if time.monotonic() > deadline:
                self.kill()
                raise ServerProcessError(f"the server did not listen within {timeout_s:.0f} s{self._stderr_note()}")
            time.sleep(0.02)
        self.port = int(self.port_file.read_text())
        while True:
            self._raise_if_exited("before it was ready")
            status = self._get_status("/health/ready")
            if status == 200:
                return self.port
            if time.monotonic() > deadline:
                self.kill()
                raise ServerProcessError(
                    f"the server was not ready within {timeout_s:.0f} s (last /health/ready: {status})"
                    f"{self._stderr_note()}"
                )
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc else 0

    def exit_code(self) -> int | None:
        """None while it runs."""
        return None if self._proc is None else self._proc.poll()

    def check_alive(self) -> None:
        """Raises ServerProcessError when the server has exited (Serve's health check)."""
        self._raise_if_exited("")

    def drain(self, timeout_s: float) -> bool:
        """SIGTERM: the server stops admitting (``/health/ready`` 503, new requests 503), finishes
        the requests in flight and exits. Waits up to ``timeout_s``, then kills it. Returns True
        when it exited by itself."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return True
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=max(0.0, timeout_s))
            return True
        except subprocess.TimeoutExpired:
            self.kill()
            return False

    def kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    # ------------------------------------------------------------------ probes
    def load(self) -> dict[str, float]:
        """``{"jit_http_in_flight", "jit_queue_depth"}`` from ``/metrics``; queue depth summed over
        encoders. Raises ServerProcessError when the server does not answer."""
        status, body = self._get("/metrics")
        if status != 200:
            raise ServerProcessError(f"GET /metrics answered {status}")
        return parse_load(body.decode("utf-8", "replace"))

    def encoders(self) -> dict[str, str]:
        """Encoder name -> version, from ``GET /v1/encoders``; {} when it does not answer."""
        import json

        try:
            status, body = self._get("/v1/encoders")
        except ServerProcessError:
            return {}
        if status != 200:
            return {}
        return {e["name"]: e.get("version", "") for e in json.loads(body).get("encoders", [])}

    def ready(self) -> bool:
        return self._get_status("/health/ready") == 200

    def _get_status(self, path: str) -> int:
        try:
            return self._get(path)[0]
        except ServerProcessError:
            return 0

    def _get(self, path: str) -> tuple[int, bytes]:
        probe_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        conn = http.client.HTTPConnection(probe_host, self.port, timeout=PROBE_TIMEOUT_S)
        headers = {"Authorization": f"Bearer {self.auth_token}"} if self.auth_token else {}
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError as e:
            raise ServerProcessError(f"GET {path} on port {self.port}: {e}") from e
        finally:
            conn.close()

    def _raise_if_exited(self, when: str) -> None:
        code = self.exit_code()
        if code is not None:
            raise ServerProcessError(
                f"the server exited with status {code}{' ' + when if when else ''}{self._stderr_note()}"
            )

    def _stderr_note(self) -> str:
        try:
            data = self.stderr_path.read_bytes()[-STDERR_TAIL_BYTES:]
        except OSError:
            return ""
        text = data.decode("utf-8", "replace").strip()
        return f"; its stderr ends with:\n{text}" if text else ""


_GAUGE_LINE = re.compile(r"^(jit_http_in_flight|jit_queue_depth)(\{[^}]*\})?\s+(\S+)\s*$", re.M)


def parse_load(metrics_text: str) -> dict[str, float]:
    """Sums the ``jit_http_in_flight`` and ``jit_queue_depth`` series of Prometheus text (absent
    series count 0)."""
    out = {"jit_http_in_flight": 0.0, "jit_queue_depth": 0.0}
    for name, _labels, value in _GAUGE_LINE.findall(metrics_text):
        try:
            out[name] += float(value)
        except ValueError:
            continue
    return out
