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
import json
import sys
from collections.abc import Callable
from typing import Any

from jit_embedding.cache_warm import _cmd_warm
from jit_embedding.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandError,
    hit_rate_text,
    human_bytes,
    parse_duration,
    parse_servers,
    parse_size,
    positive_arg,
    text_table,
)

# ---------------------------------------------------------------------------------------------------
# cache stats


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
                hit_rate_text(t.get("hits", 0), t.get("misses", 0)),
                f"{t.get('evictions', 0):,}",
                f"{t.get('corrupt', 0):,}",
            ]
            for t in tiers
        ]
        header = ["tier", "entries", "bytes", "hits", "misses", "hit rate", "evictions", "corrupt"]
        lines += ["", *text_table(header, rows)]
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
                hit_rate_text(e.get("rows_hit", 0), e.get("rows_missed", 0)),
                e.get("version", "?"),
            ]
            for e in encoders
        ]
        lines += ["", *text_table(["encoder", "rows hit", "rows missed", "hit rate", "version"], rows, left=1)]
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
        lines += ["", *(text_table(header, rows, left=2) if rows else ["no entries stored"])]
    return "\n".join(lines)


def _cmd_stats(args: argparse.Namespace) -> int:
    positive_arg("--timeout", args.timeout)
    servers = parse_servers(args.server)
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
    positive_arg("--timeout", args.timeout)
    body, what = _prune_body(args)
    servers = parse_servers(args.server)
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
