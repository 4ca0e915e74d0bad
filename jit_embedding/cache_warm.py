"""``jit-embedding cache warm``: run a dataset through the servers once, cache-first, so that training
later finds every embedding cached; resumable after an interruption (docs/cache.md)."""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jit_embedding.cli_common import (
    EXIT_USAGE,
    CommandError,
    Server,
    call_factory,
    first_line,
    hit_rate_text,
    import_target,
    parse_servers,
    positive_arg,
)

#: State file format written by ``warm`` (bumped when the meaning of a key changes).
STATE_FORMAT = 1


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
    positive_arg("--batch-size", args.batch_size)
    positive_arg("--concurrency", args.concurrency)
    positive_arg("--timeout", args.timeout)
    positive_arg("--save-every", args.save_every)
    positive_arg("--grace", args.grace, allow_zero=True)
    if args.limit is not None:
        positive_arg("--limit", args.limit, allow_zero=True)
    servers = parse_servers(args.server)

    dataset = call_factory(args.dataset, "--dataset")
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise CommandError(
            f"--dataset '{args.dataset}' returned a {type(dataset).__name__}, not a map-style dataset (len and [i])",
            EXIT_USAGE,
        )
    fields = call_factory(args.fields, "--fields")
    if not isinstance(fields, dict) or not fields:
        raise CommandError(
            f"--fields '{args.fields}' must return a non-empty dict {{name: (encoder, prep)}},"
            f" got {type(fields).__name__}",
            EXIT_USAGE,
        )
    sample_key = import_target(args.sample_key, "--sample-key") if args.sample_key else None
    try:
        size = len(dataset)
    except Exception as e:
        raise CommandError(f"--dataset '{args.dataset}': len() failed: {type(e).__name__}: {first_line(e)}") from e
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
                raise CommandError(f"dataset[{i}]: {type(e).__name__}: {first_line(e)}") from e
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
                    failed = CommandError(first_line(e))
                    failed.__cause__ = e
                    break
                except Exception as e:  # the prep functions or sample_key, on one of these samples
                    failed = CommandError(f"samples {lo}..{hi - 1}: {type(e).__name__}: {first_line(e)}")
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
                raise CommandError(f"samples {lo}..{hi - 1}: {first_line(e)}") from e
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
        return hit_rate_text(self.cached, self.computed)

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
