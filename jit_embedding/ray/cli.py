"""``jit-embedding ray deploy|status|update|shutdown``: a jit-embedding app on a Ray cluster
(docs/ray.md).

    jit-embedding ray deploy   --config server.yaml [--app NAME] [--settings ray.yaml] [flags]
    jit-embedding ray update   [--app NAME] [--config new.yaml] [flags]     # rolling, zero failures
    jit-embedding ray status   [--app NAME] [--json]
    jit-embedding ray shutdown [--app NAME]

Settings come from ``--settings`` (a YAML mapping of RaySettings fields), then the flags; an update
starts from the settings the app was last deployed with. Every command connects to the cluster at
``--address`` (default ``$RAY_ADDRESS``, else ``auto``). Problems are one line on stderr; the exit
status is 1 (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from jit_embedding.cli_common import EXIT_FAILED, EXIT_USAGE, CommandError, text_table
from jit_embedding.ray.settings import RaySettings

#: Flags that set a RaySettings field: (flag, field, type, help).
_SETTING_FLAGS: list[tuple[str, str, type, str]] = [
    ("--min-replicas", "min_replicas", int, "fewest replicas (autoscaling)"),
    ("--max-replicas", "max_replicas", int, "most replicas (autoscaling)"),
    ("--num-replicas", "num_replicas", int, "a fixed replica count instead of autoscaling"),
    ("--target-ongoing-requests", "target_ongoing_requests", float, "load per replica the autoscaler aims at"),
    ("--upscale-delay-s", "upscale_delay_s", float, "seconds a scale-up decision must hold"),
    ("--downscale-delay-s", "downscale_delay_s", float, "seconds a scale-down decision must hold"),
    ("--host", "host", str, "address the servers bind and publish ('' = each node's IP)"),
    ("--drain-delay-s", "drain_delay_s", float, "seconds a leaving replica serves after deregistering"),
    ("--http-host", "http_host", str, "Serve's HTTP proxy host (discovery only)"),
    ("--http-port", "http_port", int, "Serve's HTTP proxy port (discovery only)"),
]


def _settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "settings", None):
        try:
            loaded = yaml.safe_load(Path(args.settings).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise CommandError(f"cannot read --settings {args.settings}: {e}", EXIT_USAGE) from e
        if not isinstance(loaded, dict):
            raise CommandError(f"--settings {args.settings} must hold a mapping of settings", EXIT_USAGE)
        out.update(loaded)
    for _flag, field, _type, _help in _SETTING_FLAGS:
        value = getattr(args, field, None)
        if value is not None:
            out[field] = value
    resources = dict(out.get("ray_actor_options") or {})
    if args.num_cpus is not None:
        resources["num_cpus"] = args.num_cpus
    if args.num_gpus is not None:
        resources["num_gpus"] = args.num_gpus
    if resources:
        out["ray_actor_options"] = resources
    return out


def _cmd_deploy(args: argparse.Namespace) -> int:
    from jit_embedding.ray import app

    try:
        settings = RaySettings.from_mapping({"app": args.app, **_settings_overrides(args)})
    except (TypeError, ValueError) as e:
        raise CommandError(str(e), EXIT_USAGE) from e
    url = app.deploy(settings, args.config, address=args.address, wait=not args.no_wait)
    print(f"deployed '{settings.app}'")
    print(f"discovery: {url}")
    print(f'client:    EmbeddingClient(discovery="ray://{settings.app}")  or  discovery="{url}"')
    return 0


def _cmd_update(args: argparse.Namespace) -> int:
    from jit_embedding.ray import app

    try:
        overrides = _settings_overrides(args)
    except (TypeError, ValueError) as e:
        raise CommandError(str(e), EXIT_USAGE) from e
    settings = app.update(args.app, args.config, overrides, address=args.address, wait=not args.no_wait)
    done = "rolled out" if not args.no_wait else "rolling out"
    print(f"updated '{settings.app}': {done}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from jit_embedding.ray import app

    state = app.status(args.app, address=args.address)
    if args.json:
        print(json.dumps(state, indent=2, default=str))
        return 0
    for name, s in state["serve"].items():
        for dep, d in s["deployments"].items():
            replicas = ", ".join(f"{k.lower()} {v}" for k, v in sorted(d["replicas"].items())) or "none"
            print(f"{name}/{dep}: {d['status']} ({replicas})")
    listing = state.get("discovery", {})
    if "error" in listing:
        print(f"discovery: unavailable ({listing['error']})")
        return 0
    print(f"discovery: {listing.get('url')} (generation {listing.get('generation')})")
    rows = [
        [r["endpoint"], r["replica_id"], ", ".join(f"{k} {v[:19]}" for k, v in sorted(r.get("versions", {}).items()))]
        for r in listing.get("replicas", [])
    ]
    for line in text_table(["endpoint", "replica", "encoders (version)"], rows, left=3):
        print(line)
    return 0


def _cmd_shutdown(args: argparse.Namespace) -> int:
    from jit_embedding.ray import app

    app.shutdown(args.app, address=args.address)
    print(f"shut down '{args.app}'")
    return 0


def _run(func: Any, name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            import ray  # noqa: F401  (the optional extra)
        except ImportError:
            print(f"jit-embedding ray {name}: needs Ray: pip install 'jit-embedding[ray]'", file=sys.stderr)
            return EXIT_FAILED
        try:
            return func(args)
        except CommandError as e:
            print(f"jit-embedding ray {name}: {e}", file=sys.stderr)
            return e.status
        except (ValueError, ConnectionError) as e:
            print(f"jit-embedding ray {name}: {e}", file=sys.stderr)
            return EXIT_FAILED

    return run


def add_parser(sub: Any) -> None:
    """Adds ``ray deploy|status|update|shutdown`` to the ``jit-embedding`` subcommands."""
    ray_cmd = sub.add_parser(
        "ray",
        help="run the servers on a Ray cluster, managed by Ray Serve",
        description="Deploy, update, inspect and remove a jit-embedding app on Ray Serve (docs/ray.md).",
    )
    cmds = ray_cmd.add_subparsers(dest="ray_command", required=True, metavar="{deploy,status,update,shutdown}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--app", default="jit-embedding", help="the app's name (default jit-embedding)")
        p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray address (default auto)")

    def setting_flags(p: argparse.ArgumentParser) -> None:
        for flag, field, typ, text in _SETTING_FLAGS:
            p.add_argument(flag, dest=field, type=typ, help=text)
        p.add_argument("--num-cpus", type=float, help="CPUs per replica (ray_actor_options)")
        p.add_argument("--num-gpus", type=float, help="GPUs per replica, e.g. 0.5 to share one")
        p.add_argument("--no-wait", action="store_true", help="return before the rollout finishes")

    deploy = cmds.add_parser("deploy", help="start the servers and their registry on the cluster")
    common(deploy)
    deploy.add_argument("--config", required=True, help="server YAML config (csrc/server/config.h)")
    deploy.add_argument("--settings", help="YAML mapping of Ray settings (docs/ray.md, 'Settings')")
    setting_flags(deploy)
    deploy.set_defaults(func=_run(_cmd_deploy, "deploy"))

    update = cmds.add_parser("update", help="roll a new config or new settings across the replicas")
    common(update)
    update.add_argument("--config", help="the new server config (default: the deployed one, re-read)")
    update.add_argument("--settings", help="YAML mapping of Ray settings to change")
    setting_flags(update)
    update.set_defaults(func=_run(_cmd_update, "update"))

    status = cmds.add_parser("status", help="replicas, their endpoints and encoder versions")
    common(status)
    status.add_argument("--json", action="store_true", help="everything, as JSON")
    status.set_defaults(func=_run(_cmd_status, "status"))

    shutdown = cmds.add_parser("shutdown", help="drain and remove the servers and their registry")
    common(shutdown)
    shutdown.set_defaults(func=_run(_cmd_shutdown, "shutdown"))
