"""``jit-embedding cache``: fill, inspect and prune the servers' embedding caches (docs/cache.md).

    jit-embedding cache warm --dataset pkg.mod:make_dataset --fields pkg.mod:make_fields --server URL ...
    jit-embedding cache stats --server URL [--json]
    jit-embedding cache prune --server URL (--stale | --version V [--encoder E] | --older-than 7d | --max-bytes 10G)

``warm`` runs a dataset through the servers once, cache-first (EmbeddingClient.submit_many, as the
DataLoader integration sends it), so that training later finds every embedding cached. It keeps
``--concurrency`` batches in flight, shows progress with the hit rate, and records the completed
prefix of the dataset in a state file so that an interrupted run resumes where it stopped.

``stats`` and ``prune`` call GET /v1/cache/stats and POST /v1/cache/prune on each server.

Every problem is one line on stderr: exit status 2 for a bad argument, 1 for a failure (an
unreachable server, a server error, an exception in the dataset), 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import http.client
import importlib
import json
import math
import os
import re
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Exit statuses.
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

#: State file format written by ``warm`` (bumped when the meaning of a key changes).
STATE_FORMAT = 1

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


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise CommandError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value}", EXIT_USAGE)


# ---------------------------------------------------------------------------------------------------
# Talking to a server: the JSON routes over plain http.client


class Server:
    """One ``--server`` value: ``host:port`` or ``http://host:port``, as EmbeddingClient takes them."""

    def __init__(self, url: str):
        s = url.strip()
        if s.startswith("http://"):
            s = s[len("http://") :]
        elif "://" in s:
            raise CommandError(f"--server '{url}': only http:// servers are supported", EXIT_USAGE)
        s = s.rstrip("/")
        host, _, port = s.rpartition(":")
        if not host or "/" in s or not port.isdigit() or not 0 < int(port) < 65536:
            raise CommandError(f"--server '{url}': expected host:port or http://host:port", EXIT_USAGE)
        self.host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self.port = int(port)
        self.endpoint = f"{host}:{port}"  # what EmbeddingClient gets
        self.url = f"http://{self.endpoint}"

    def request_json(self, method: str, path: str, body: dict | None = None, timeout: float = 60.0) -> Any:
        """One request on a fresh connection; the parsed JSON answer of a 200.

        Raises:
            CommandError: the server is unreachable or slow, answers an error (its message and code
                are shown), or answers something other than JSON.
        """
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
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


def _servers(urls: list[str]) -> list[Server]:
    servers, seen = [], set()
    for url in urls:
        s = Server(url)
        if s.endpoint not in seen:
            seen.add(s.endpoint)
            servers.append(s)
    return servers


# ---------------------------------------------------------------------------------------------------
# cache stats


def _rate(hits: float, misses: float) -> str:
    looked = hits + misses
    return f"{100.0 * hits / looked:.1f}%" if looked else "-"


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned, the rest right."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list) -> str:
        out = [str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    return [line(header), *(line(r) for r in rows)]


def format_stats(url: str, stats: dict) -> str:
    """GET /v1/cache/stats as a readable report."""
    lines = [f"cache of {url}"]
    tiers = stats.get("tiers") or []
    if tiers:
        rows = [
            [
                t.get("tier", "?"),
                f"{t.get('entries', 0):,}",
                human_bytes(t.get("bytes", 0)),
                f"{t.get('hits', 0):,}",
                f"{t.get('misses', 0):,}",
                _rate(t.get("hits", 0), t.get("misses", 0)),
                f"{t.get('evictions', 0):,}",
                f"{t.get('corrupt', 0):,}",
            ]
            for t in tiers
        ]
        header = ["tier", "entries", "bytes", "hits", "misses", "hit rate", "evictions", "corrupt"]
        lines += ["", *_table(header, rows)]
    else:
        lines += ["", "no cache tiers"]
    lines += [
        "",
        f"write queue: {stats.get('write_queue_depth', 0):,} waiting, {stats.get('dropped_writes', 0):,} dropped",
        f"pending:     {stats.get('pending_entries', 0):,} computed rows not yet stored"
        f" ({human_bytes(stats.get('pending_bytes', 0))})",
    ]
    encoders = stats.get("encoders") or []
    if encoders:
        rows = [
            [
                e.get("name", "?"),
                f"{e.get('rows_hit', 0):,}",
                f"{e.get('rows_missed', 0):,}",
                _rate(e.get("rows_hit", 0), e.get("rows_missed", 0)),
                e.get("version", "?"),
            ]
            for e in encoders
        ]
        lines += ["", *_table(["encoder", "rows hit", "rows missed", "hit rate", "version"], rows, left=1)]
    versions = stats.get("versions")
    if versions is not None:
        rows = [
            [
                v.get("tier", "?"),
                v.get("encoder", "?"),
                f"{v.get('entries', 0):,}",
                human_bytes(v.get("bytes", 0)),
                "serving" if v.get("serving") else "stale",
                v.get("version", "?"),
            ]
            for v in versions
        ]
        header = ["tier", "encoder", "entries", "bytes", "state", "version"]
        lines += ["", *(_table(header, rows, left=2) if rows else ["no entries stored"])]
    return "\n".join(lines)


def _cmd_stats(args: argparse.Namespace) -> int:
    _positive("--timeout", args.timeout)
    servers = _servers(args.server)
    path = "/v1/cache/stats" + ("?versions=1" if args.versions else "")
    answers = [(s, s.request_json("GET", path, timeout=args.timeout)) for s in servers]
    if args.json:
        doc = answers[0][1] if len(answers) == 1 else {s.url: a for s, a in answers}
        print(json.dumps(doc, indent=2))
    else:
        print("\n\n".join(format_stats(s.url, a) for s, a in answers))
    return 0


# ---------------------------------------------------------------------------------------------------
# cache prune


def _prune_body(args: argparse.Namespace) -> tuple[dict, str]:
    """The prune request and a description of what it selects, from exactly one selection."""
    chosen = [
        flag
        for flag, given in (
            ("--stale", args.stale),
            ("--version", args.version is not None),
            ("--older-than", args.older_than is not None),
            ("--max-bytes", args.max_bytes is not None),
        )
        if given
    ]
    if len(chosen) != 1:
        what = "none" if not chosen else " and ".join(chosen)
        raise CommandError(
            f"give exactly one of --stale, --version, --older-than, --max-bytes (got {what})", EXIT_USAGE
        )
    if args.encoder is not None and args.version is None:
        raise CommandError("--encoder narrows --version: give --version too", EXIT_USAGE)
    if args.stale:
        return {"stale": True}, "entries of versions no encoder serves now"
    if args.version is not None:
        if not args.version:
            raise CommandError("--version must not be empty", EXIT_USAGE)
        body = {"version": args.version}
        if args.encoder is not None:
            body["encoder"] = args.encoder
        scope = f" of encoder '{args.encoder}'" if args.encoder is not None else ""
        return body, f"entries{scope} under version {args.version}"
    if args.older_than is not None:
        seconds = parse_duration(args.older_than)
        return {"older_than_s": seconds}, f"entries older than {args.older_than} ({seconds:,} s)"
    limit = parse_size(args.max_bytes)
    return {"max_bytes": limit}, f"the oldest entries beyond {human_bytes(limit)} per tier"


def _cmd_prune(args: argparse.Namespace) -> int:
    _positive("--timeout", args.timeout)
    body, what = _prune_body(args)
    servers = _servers(args.server)
    total_entries = total_bytes = 0
    for s in servers:
        r = s.request_json("POST", "/v1/cache/prune", body, timeout=args.timeout)
        entries, nbytes = int(r.get("entries", 0)), int(r.get("bytes", 0))
        total_entries += entries
        total_bytes += nbytes
        print(f"{s.url}: removed {entries:,} entries ({human_bytes(nbytes)}): {what}")
    if len(servers) > 1:
        print(f"total: removed {total_entries:,} entries ({human_bytes(total_bytes)})")
    return 0


# ---------------------------------------------------------------------------------------------------
# cache warm


def _import(target: str, flag: str) -> Any:
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


def _call_factory(target: str, flag: str) -> Any:
    factory = _import(target, flag)
    if not callable(factory):
        raise CommandError(f"{flag} '{target}' is not callable", EXIT_USAGE)
    try:
        return factory()
    except Exception as e:
        raise CommandError(f"{flag} '{target}' failed: {type(e).__name__}: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def default_state_path(dataset: str, fields: str, servers: list[Server]) -> Path:
    """``<cwd>/.jit-warm-<hash>.json``, the hash over the dataset, the fields and the servers."""
    ident = json.dumps({"dataset": dataset, "fields": fields, "servers": sorted(s.endpoint for s in servers)})
    return Path.cwd() / f".jit-warm-{hashlib.sha256(ident.encode()).hexdigest()[:12]}.json"


def _write_state(path: Path, state: dict) -> None:
    """Atomically: a reader sees the old file or the new one, never a torn one."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with_suffix = f" ({e.strerror})" if e.strerror else ""
        raise CommandError(f"cannot write the state file {path}{with_suffix}") from e


def _read_state(path: Path, identity: dict) -> dict | None:
    """The recorded state, None when there is none. Raises CommandError for an unreadable file or
    one written for another dataset, fields or sample key."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CommandError(f"cannot read the state file {path}: {e} (--restart ignores it)") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or not isinstance(state.get("next"), int):
        raise CommandError(f"{path} is not a warm state file of this version (--restart ignores it)")
    recorded = {k: state.get(k) for k in identity}
    if recorded != identity:
        diff = ", ".join(f"{k} {recorded[k]!r} (now {identity[k]!r})" for k in identity if recorded[k] != identity[k])
        raise CommandError(f"the state file {path} was written for {diff}; --restart ignores it")
    return state


class _Interrupts:
    """SIGINT/SIGTERM while warming: the first stops submitting, a second abandons the batches in
    flight. Restores the previous handlers on exit."""

    def __init__(self) -> None:
        self.count = 0
        self.name = ""
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        # Only flags: the warm loop reacts between its short waits (printing here could meet a lock
        # the interrupted code holds).
        self.count += 1
        if self.count == 1:
            self.name = signal.Signals(signum).name

    @property
    def status(self) -> int:
        return 128 + (signal.SIGTERM if self.name == "SIGTERM" else signal.SIGINT)


def _cmd_warm(args: argparse.Namespace) -> int:
    _positive("--batch-size", args.batch_size)
    _positive("--concurrency", args.concurrency)
    _positive("--timeout", args.timeout)
    _positive("--save-every", args.save_every)
    _positive("--grace", args.grace, allow_zero=True)
    if args.limit is not None:
        _positive("--limit", args.limit, allow_zero=True)
    servers = _servers(args.server)

    dataset = _call_factory(args.dataset, "--dataset")
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise CommandError(
            f"--dataset '{args.dataset}' returned a {type(dataset).__name__}, not a map-style dataset (len and [i])",
            EXIT_USAGE,
        )
    fields = _call_factory(args.fields, "--fields")
    if not isinstance(fields, dict) or not fields:
        raise CommandError(
            f"--fields '{args.fields}' must return a non-empty dict {{name: (encoder, prep)}},"
            f" got {type(fields).__name__}",
            EXIT_USAGE,
        )
    sample_key = _import(args.sample_key, "--sample-key") if args.sample_key else None
    try:
        size = len(dataset)
    except Exception as e:
        raise CommandError(f"--dataset '{args.dataset}': len() failed: {type(e).__name__}: {_first_line(e)}") from e
    total = size if args.limit is None else min(size, args.limit)

    from jit_embedding.client import ClientError, EmbeddingClient
    from jit_embedding.data import _Fetcher

    client = EmbeddingClient([s.endpoint for s in servers], timeout=args.timeout)
    try:
        # The fetcher checks the fields and prepares, keys and submits a batch as the DataLoader
        # integration does, so the embeddings warmed here are the ones training looks up.
        fetcher = _Fetcher(fields, client, None, None, sample_key)
    except (TypeError, ValueError) as e:
        raise CommandError(f"--fields '{args.fields}': {e}", EXIT_USAGE) from e
    _check_servers(servers, fields, args.timeout)

    state_path = Path(args.state) if args.state else default_state_path(args.dataset, args.fields, servers)
    identity = {"dataset": args.dataset, "fields": args.fields, "sample_key": args.sample_key}
    state = None if args.restart else _read_state(state_path, identity)
    start = min(state["next"], total) if state else 0
    if state:
        say(
            f"resuming at sample {start:,} of {total:,} from {state_path}"
            f" ({start:,} already warmed; --restart starts over)"
        )

    record = {
        "format": STATE_FORMAT,
        **identity,
        "servers": [s.url for s in servers],
        "samples": total,
        "next": start,
        "computed": int(state.get("computed", 0)) if state else 0,
        "cached": int(state.get("cached", 0)) if state else 0,
    }
    run = _WarmRun(args, dataset, fetcher, start, total, fields)
    saved_at = [time.monotonic()]

    def save() -> None:
        record.update(
            next=run.done,
            computed=record["computed"] + run.computed - run.saved_computed,
            cached=record["cached"] + run.cached - run.saved_cached,
            updated_unix=round(time.time(), 3),
        )
        run.saved_computed, run.saved_cached = run.computed, run.cached
        _write_state(state_path, record)
        saved_at[0] = time.monotonic()

    def maybe_save() -> None:
        if time.monotonic() - saved_at[0] >= args.save_every:
            save()

    if start < total:
        save()  # the file exists from the start: a crash before the first interval leaves it too
    with _Interrupts() as interrupts:
        run.interrupts = interrupts
        try:
            run.loop(maybe_save)
        except CommandError as e:
            save()
            run.close()
            user_code = e.__cause__ is not None and not isinstance(e.__cause__, ClientError)
            if user_code and args.verbose:
                traceback.print_exception(type(e.__cause__), e.__cause__, e.__cause__.__traceback__)
            more = " (--verbose shows the traceback)" if user_code and not args.verbose else ""
            raise CommandError(
                f"{e}{more}; stopped at sample {run.done:,} of {total:,}; {_resume_hint(state_path)}"
            ) from e
        except BaseException:
            save()
            run.close()
            raise
        run.close()
        if interrupts.count and run.done < total:  # (a signal after the last answer changes nothing)
            save()
            say(
                f"interrupted ({interrupts.name}) at sample {run.done:,} of {total:,}"
                + (
                    f"; abandoned {run.abandoned} batch(es) in flight (the servers still finish and cache them)"
                    if run.abandoned
                    else ""
                )
            )
            say(f"state saved in {state_path}; {_resume_hint(state_path)}")
            say(run.summary("so far: warmed"))
            if run.abandoned:
                # The client would wait for the abandoned requests at exit; leave now.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(interrupts.status)
            return interrupts.status
    if state_path.exists():
        state_path.unlink()  # done: the next run warms (and checks) everything again
    print(run.summary("warmed"))
    return 0


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _resume_hint(state_path: Path) -> str:
    default = state_path.parent == Path.cwd() and state_path.name.startswith(".jit-warm-")
    return "rerun the same command to resume" + ("" if default else f" (with --state {state_path})")


def _check_servers(servers: list[Server], fields: dict, timeout: float) -> None:
    """Every reachable server serves every field's encoder; at least one is reachable."""
    reachable = []
    problems = []
    for s in servers:
        try:
            listed = s.request_json("GET", "/v1/encoders", timeout=timeout)
        except CommandError as e:
            problems.append(str(e))
            continue
        served = {e.get("name") for e in listed.get("encoders", [])} if isinstance(listed, dict) else set()
        for name, (encoder, _prep) in fields.items():
            if encoder not in served:
                raise CommandError(
                    f"field '{name}': encoder '{encoder}' is not served at {s.url}"
                    f" (served: {', '.join(sorted(served)) or 'none'})"
                )
        reachable.append(s)
    if not reachable:
        raise CommandError("; ".join(problems))
    for p in problems:
        print(f"jit-embedding cache warm: warning: {p}; warming through the other servers", file=sys.stderr)


class _WarmRun:
    """The warm loop: ``--concurrency`` batches in flight, answers taken in order, so that ``done``
    is always the end of the completed prefix."""

    def __init__(self, args: argparse.Namespace, dataset: Any, fetcher: Any, start: int, total: int, fields: dict):
        from tqdm import tqdm

        self.args = args
        self.dataset = dataset
        self.fetcher = fetcher
        self.start = self.done = self.next = start
        self.total = total
        self.n_fields = len(fields)
        self.computed = self.cached = 0
        self.saved_computed = self.saved_cached = 0
        self.abandoned = 0
        self.interrupts: _Interrupts | None = None
        self.began = time.monotonic()
        self.elapsed = 0.0
        self.bar = tqdm(
            total=total,
            initial=start,
            unit="sample",
            desc="warm",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=args.no_progress,
            smoothing=0.05,
        )

    def _stopping(self) -> bool:
        return self.interrupts is not None and self.interrupts.count > 0

    def _prepare(self, lo: int, hi: int) -> list:
        samples = []
        for i in range(lo, hi):
            try:
                samples.append(self.dataset[i])
            except Exception as e:
                raise CommandError(f"dataset[{i}]: {type(e).__name__}: {_first_line(e)}") from e
        return samples

    def loop(self, tick: Callable[[], None]) -> None:
        from jit_embedding.client import ClientError

        inflight: collections.deque = collections.deque()  # (lo, hi, [(field, future, t)])
        answers: dict[int, dict] = {}  # field index in the head batch -> its answer's meta, as they come in
        stop_deadline = None
        failed: CommandError | None = None  # a sample that cannot be prepared: stop after the batches before it
        while True:
            while (
                failed is None
                and not self._stopping()
                and len(inflight) < self.args.concurrency
                and self.next < self.total
            ):
                lo, hi = self.next, min(self.next + self.args.batch_size, self.total)
                try:
                    pending = self.fetcher.submit(self._prepare(lo, hi))
                except CommandError as e:
                    failed = e
                    break
                except ClientError as e:
                    failed = CommandError(_first_line(e))
                    failed.__cause__ = e
                    break
                except Exception as e:  # the prep functions or sample_key, on one of these samples
                    failed = CommandError(f"samples {lo}..{hi - 1}: {type(e).__name__}: {_first_line(e)}")
                    failed.__cause__ = e
                    break
                inflight.append((lo, hi, pending))
                self.next = hi
            if not inflight:
                if failed is not None:
                    raise failed
                break
            if self._stopping():
                if stop_deadline is None:
                    stop_deadline = time.monotonic() + self.args.grace
                    self.bar.write(
                        f"{self.interrupts.name}: finishing {len(inflight)} batch(es) in flight (up to"
                        f" {self.args.grace:g} s, --grace); interrupt again to abandon them",
                        file=sys.stderr,
                    )
                if self.interrupts.count > 1 or time.monotonic() >= stop_deadline:
                    self.abandoned = len(inflight)
                    break
            lo, hi, pending = inflight[0]
            try:
                complete = self._collect(pending, answers)
            except ClientError as e:
                self.abandoned = len(inflight)
                raise CommandError(f"samples {lo}..{hi - 1}: {_first_line(e)}") from e
            if complete:
                for meta in answers.values():
                    for source in meta["sources"]:
                        if source == "computed":
                            self.computed += 1
                        else:
                            self.cached += 1
                answers.clear()
                inflight.popleft()
                self.done = hi
                self.bar.update(hi - lo)
                self.bar.set_postfix_str(f"hit rate {self._hit_rate()}", refresh=False)
            tick()
        self.elapsed = time.monotonic() - self.began

    @staticmethod
    def _collect(pending: list, answers: dict, slice_s: float = 0.2) -> bool:
        """Waits up to ``slice_s`` (signal handlers run between slices) for the head batch's answers;
        True once every field's answer is in ``answers``."""
        for k, (_name, future, _t) in enumerate(pending):
            if k in answers:
                continue
            try:
                _, meta = future.result(timeout=slice_s)
            except TimeoutError:
                return False
            answers[k] = meta
        return True

    def _hit_rate(self) -> str:
        return _rate(self.cached, self.computed)

    def close(self) -> None:
        if not self.elapsed:
            self.elapsed = time.monotonic() - self.began
        self.bar.close()

    def summary(self, verb: str) -> str:
        samples = self.done - self.start
        rows = self.computed + self.cached
        per_s = samples / self.elapsed if self.elapsed > 0 else 0.0
        what = f"{samples:,} samples"
        if self.n_fields > 1:
            what += f" ({rows:,} embeddings, {self.n_fields} fields)"
        if self.start:
            what += f" from sample {self.start:,}"
        return (
            f"{verb} {what} in {self.elapsed:.{1 if self.elapsed >= 1 else 2}f} s ({per_s:,.1f} samples/s):"
            f" {self.computed:,} computed, {self.cached:,} already cached (hit rate {self._hit_rate()})"
        )


# ---------------------------------------------------------------------------------------------------
# Wiring


def _run(func: Callable[[argparse.Namespace], int], name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CommandError as e:
            print(f"jit-embedding cache {name}: {e}", file=sys.stderr)
            return e.status
        except KeyboardInterrupt:  # before warm's own handling starts, or in stats/prune
            print(f"jit-embedding cache {name}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return run


def add_parser(sub: Any) -> None:
    """Adds ``cache warm|stats|prune`` to the ``jit-embedding`` subcommands."""
    cache = sub.add_parser(
        "cache",
        help="warm, inspect and prune the servers' embedding caches",
        description="Warm, inspect and prune the servers' embedding caches (docs/cache.md).",
    )
    cmds = cache.add_subparsers(dest="cache_command", required=True, metavar="{warm,stats,prune}")

    warm = cmds.add_parser(
        "warm",
        help="precompute a dataset's embeddings into the servers' caches (resumable)",
        description="Run a dataset through the servers cache-first, so that training finds every embedding"
        " cached. Ctrl-C stops cleanly; rerunning the same command resumes.",
    )
    warm.add_argument("--dataset", required=True, metavar="MODULE:FACTORY", help="returns a map-style dataset")
    warm.add_argument(
        "--fields",
        required=True,
        metavar="MODULE:FACTORY",
        help="returns {name: (encoder, prep)}, as JITEmbeddingDataset takes",
    )
    warm.add_argument("--server", required=True, action="append", metavar="URL", help="host:port (repeatable)")
    warm.add_argument("--batch-size", type=int, default=64, help="samples per request (default 64)")
    warm.add_argument("--concurrency", type=int, default=4, help="batches in flight (default 4)")
    warm.add_argument("--limit", type=int, help="warm only the first N samples")
    warm.add_argument(
        "--sample-key", metavar="MODULE:FN", help="sample -> str, a stable cache key instead of the content digest"
    )
    warm.add_argument("--state", metavar="PATH", help="state file (default ./.jit-warm-<hash>.json)")
    warm.add_argument("--restart", action="store_true", help="ignore the state file and start at sample 0")
    warm.add_argument("--save-every", type=float, default=5.0, help="seconds between state writes (default 5)")
    warm.add_argument(
        "--grace", type=float, default=30.0, help="seconds to finish in-flight batches after Ctrl-C (default 30)"
    )
    warm.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    warm.add_argument("--no-progress", action="store_true", help="no progress bar")
    warm.add_argument("--verbose", action="store_true", help="print tracebacks of dataset and prep errors")
    warm.set_defaults(func=_run(_cmd_warm, "warm"))

    stats = cmds.add_parser(
        "stats", help="print the caches' tiers and counters", description="GET /v1/cache/stats, as a table."
    )
    stats.add_argument("--server", required=True, action="append", metavar="URL", help="host:port (repeatable)")
    stats.add_argument("--json", action="store_true", help="print the server's JSON as it is")
    stats.add_argument(
        "--versions",
        action="store_true",
        help="also entries and bytes per encoder version and tier (scans every entry: slow on a large cache)",
    )
    stats.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    stats.set_defaults(func=_run(_cmd_stats, "stats"))

    prune = cmds.add_parser(
        "prune",
        help="remove cache entries",
        description="POST /v1/cache/prune: remove stale versions, one version, old entries, or down to a size.",
    )
    prune.add_argument("--server", required=True, action="append", metavar="URL", help="host:port (repeatable)")
    prune.add_argument("--stale", action="store_true", help="entries of versions no encoder serves now")
    prune.add_argument("--version", metavar="V", help="entries of this encoder version (sha256:...)")
    prune.add_argument("--encoder", metavar="E", help="with --version: only this encoder's entries")
    prune.add_argument("--older-than", metavar="DURATION", help="entries created longer ago: 45s, 30m, 12h, 7d")
    prune.add_argument("--max-bytes", metavar="SIZE", help="the oldest entries beyond this size per tier: 500M, 10G")
    prune.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600: pruning scans the tiers)")
    prune.set_defaults(func=_run(_cmd_prune, "prune"))
