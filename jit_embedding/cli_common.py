"""What the ``jit-embedding`` subcommands share: exit statuses, one-line errors, argument values
(durations, sizes), a server's JSON routes, and plain-text tables."""

from __future__ import annotations

import http.client
import importlib
import json
import math
import os
import re
import socket
import sys
from typing import Any

from jit_embedding import security

#: Exit statuses.
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_SIZE_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_DURATION_FACTORS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class CommandError(Exception):
    """A problem to report as one line, with the exit status to leave with."""

    def __init__(self, message: str, status: int = EXIT_FAILED):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------------
# Parsing of the arguments' values


def parse_duration(text: str) -> int:
    """``7d``, ``12h``, ``30m``, ``45s``, ``2w``, combinations such as ``1h30m``, or a plain number of
    seconds; returns whole seconds (fractions round down). Raises CommandError for anything else."""
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+", s):
        return int(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", s)
    if not s or "".join(n + u for n, u in parts) != s:
        raise CommandError(
            f"malformed duration '{text}': use a number with a unit s, m, h, d or w (45s, 30m, 12h, 7d, 1h30m)",
            EXIT_USAGE,
        )
    return int(sum(float(n) * _DURATION_FACTORS[u] for n, u in parts))


def parse_size(text: str) -> int:
    """``1024`` (bytes), ``500K``, ``500M``, ``10G``, ``1.5T`` (binary: K = 1024), with an optional
    ``B``/``iB`` suffix (``10GB``, ``10GiB``); returns bytes. Raises CommandError for anything else."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?", str(text).strip().lower())
    if not m or (m.group(3) == "ib" and not m.group(2)):
        raise CommandError(
            f"malformed size '{text}': use bytes or a number with a unit K, M, G or T (1024, 500M, 10G)", EXIT_USAGE
        )
    value = float(m.group(1)) * _SIZE_FACTORS[m.group(2)]
    if not math.isfinite(value):
        raise CommandError(f"size '{text}' is too large", EXIT_USAGE)
    return int(value)


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``; bytes below 1 KiB stay whole."""
    n = float(n)
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def positive_arg(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise CommandError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value}", EXIT_USAGE)


# ---------------------------------------------------------------------------------------------------
# Talking to a server: the JSON routes over plain http.client


class Server:
    """One ``--server`` value: ``host:port``, ``http://host:port`` or ``https://host:port``, as
    EmbeddingClient takes them. Credentials and the CA bundle come from the environment
    (jit_embedding/security.py): the token on every request, the admin token on admin routes."""

    def __init__(self, url: str):
        s = url.strip()
        self.tls = s.startswith("https://")
        if s.startswith("http://") or self.tls:
            s = s.split("://", 1)[1]
        elif "://" in s:
            raise CommandError(f"--server '{url}': only http:// and https:// servers are supported", EXIT_USAGE)
        s = s.rstrip("/")
        host, _, port = s.rpartition(":")
        if not host or "/" in s or not port.isdigit() or not 0 < int(port) < 65536:
            raise CommandError(f"--server '{url}': expected host:port or http(s)://host:port", EXIT_USAGE)
        self.host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self.port = int(port)
        self.url = f"{'https' if self.tls else 'http'}://{host}:{port}"
        self.endpoint = self.url if self.tls else f"{host}:{port}"  # what EmbeddingClient gets
        try:
            self.token = security.auth_token()
            self.admin_token = security.admin_token()
        except ValueError as e:
            raise CommandError(str(e), EXIT_USAGE) from None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=security.ssl_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _headers(self, method: str, path: str) -> dict[str, str]:
        admin = method == "POST" and (path == "/v1/cache/prune" or path.endswith(("/load", "/unload", "/drain")))
        return security.bearer_headers(self.admin_token if admin and self.admin_token else self.token)

    def request_json(self, method: str, path: str, body: dict | None = None, timeout: float = 60.0) -> Any:
        """One request on a fresh connection; the parsed JSON answer of a 200.

        Raises:
            CommandError: the server is unreachable or slow, answers an error (its message and code
                are shown), or answers something other than JSON.
        """
        conn = self._connection(timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        headers.update(self._headers(method, path))
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            status, answer = resp.status, resp.read()
        except ConnectionRefusedError:
            raise CommandError(f"cannot reach {self.url}: connection refused (is the server running?)") from None
        except socket.timeout:
            raise CommandError(f"{self.url}{path}: no answer within {timeout:g} s (--timeout)") from None
        except (OSError, http.client.HTTPException) as e:
            why = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise CommandError(f"cannot reach {self.url}: {why}") from None
        finally:
            conn.close()
        try:
            parsed = json.loads(answer) if answer else None
        except ValueError:
            parsed = None
        if status != 200:
            if isinstance(parsed, dict) and "error" in parsed:
                code = f" ({parsed['code']})" if parsed.get("code") else ""
                raise CommandError(f"{self.url}{path}: HTTP {status}{code}: {parsed['error']}")
            first = (answer.decode(errors="replace").strip().splitlines() or [""])[0][:200]
            raise CommandError(f"{self.url}{path}: HTTP {status}: {first or 'empty answer'}")
        if parsed is None:
            raise CommandError(f"{self.url}{path}: the answer is not JSON")
        return parsed

    def request_text(self, path: str, timeout: float = 60.0) -> str:
        """GET ``path`` on a fresh connection; the text of a 200 (a /metrics scrape, say).

        Raises:
            CommandError: the server is unreachable or slow, or answers another status.
        """
        conn = self._connection(timeout)
        try:
            conn.request("GET", path, headers=self._headers("GET", path))
            resp = conn.getresponse()
            status, answer = resp.status, resp.read()
        except (OSError, http.client.HTTPException) as e:
            why = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise CommandError(f"cannot reach {self.url}{path}: {why}") from None
        finally:
            conn.close()
        if status != 200:
            hint = " (set JIT_EMBEDDING_AUTH_TOKEN or _FILE)" if status == 401 else ""
            raise CommandError(f"{self.url}{path}: HTTP {status}{hint}")
        return answer.decode(errors="replace")


def parse_servers(urls: list[str]) -> list[Server]:
    servers, seen = [], set()
    for url in urls:
        s = Server(url)
        if s.endpoint not in seen:
            seen.add(s.endpoint)
            servers.append(s)
    return servers


def hit_rate_text(hits: float, misses: float) -> str:
    looked = hits + misses
    return f"{100.0 * hits / looked:.1f}%" if looked else "-"


def text_table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned, the rest right."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list) -> str:
        out = [str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    return [line(header), *(line(r) for r in rows)]


# ---------------------------------------------------------------------------------------------------
# The user's own code, named as module:attribute


def import_target(target: str, flag: str) -> Any:
    """``module:attribute``, importable from the current folder as well as sys.path."""
    mod_name, _, attr = target.partition(":")
    if not mod_name or not attr:
        raise CommandError(f"{flag} must be module:function, got '{target}'", EXIT_USAGE)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the user's own modules next to their data
    try:
        obj = importlib.import_module(mod_name)
    except Exception as e:  # the module's own import errors, too
        raise CommandError(f"{flag} '{target}': cannot import {mod_name}: {type(e).__name__}: {e}", EXIT_USAGE) from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CommandError(f"{flag} '{target}': {mod_name} has no attribute '{attr}'", EXIT_USAGE)
        obj = getattr(obj, part)
    return obj


def call_factory(target: str, flag: str) -> Any:
    factory = import_target(target, flag)
    if not callable(factory):
        raise CommandError(f"{flag} '{target}' is not callable", EXIT_USAGE)
    try:
        return factory()
    except Exception as e:
        raise CommandError(f"{flag} '{target}' failed: {type(e).__name__}: {first_line(e)}") from e


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]
