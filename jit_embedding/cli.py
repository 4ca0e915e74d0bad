"""The ``jit-embedding`` command line.

Subcommands arrive with the layers they drive; today:

    jit-embedding inspect FRAME      print a frame's header and envelope (no payload decoding)
    jit-embedding bench ...          load-test a deployment: throughput and latency (docs/bench.md)
    jit-embedding cache ...          warm, inspect and prune the servers' embedding caches (docs/cache.md)
    jit-embedding export ...         export an encoder into an artifact folder (docs/export.md)
    jit-embedding serve --config F   run the server in this process, with Python factories (docs/serving.md)
    jit-embedding ray ...            run the servers on a Ray cluster under Ray Serve (docs/ray.md)
    jit-embedding version            print the package, torch and native-core versions
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback
import warnings
from pathlib import Path

from jit_embedding import _C, __version__, bench_cli, cache_cli, codec
from jit_embedding.ray import cli as ray_cli


def _cmd_inspect(args: argparse.Namespace) -> int:
    data = Path(args.frame).read_bytes()
    try:
        info = codec.describe(data)
    except codec.CodecError as e:
        print(f"jit-embedding inspect: {args.frame}: {e}", file=sys.stderr)
        return 1
    if args.decode:
        values, _ = codec.decode(data)
        for entry in info["envelope"].get("tensors", []):
            v = values[entry["name"]]
            if hasattr(v, "float") and v.numel():
                f = v.float()
                entry["stats"] = {"min": f.min().item(), "max": f.max().item(), "mean": f.mean().item()}
    print(json.dumps(info, indent=2, default=str))
    return 0


@contextlib.contextmanager
def _quiet_libraries():
    """Silences library chatter (load reports, progress bars, tracer and deprecation warnings) that
    would hide the one line that matters; restores every setting on the way out."""
    import importlib
    import logging

    restore = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_log = logging.getLogger("torch")
        restore.append(lambda level=torch_log.level: torch_log.setLevel(level))
        torch_log.setLevel(logging.ERROR)
        for lib in ("transformers", "diffusers"):
            try:
                lib_logging = importlib.import_module(f"{lib}.utils.logging")
            except ImportError:
                continue
            level, bars = lib_logging.get_verbosity(), lib_logging.is_progress_bar_enabled()
            restore.append(lambda m=lib_logging, v=level, b=bars: (m.set_verbosity(v), b and m.enable_progress_bar()))
            lib_logging.set_verbosity_error()
            lib_logging.disable_progress_bar()
        try:
            yield
        finally:
            for undo in reversed(restore):
                undo()


def _cmd_export(args: argparse.Namespace) -> int:
    """Runs jit_embedding.export.export; a problem is one line on stderr and exit status 1."""
    from jit_embedding.export import ExportError, export

    if args.family is None and args.module is None:
        families = "{vae,clip_text,t5,minilm}"
        print(f"jit-embedding export: give --family {families} or --module pkg.mod:factory", file=sys.stderr)
        return 1
    try:
        with contextlib.nullcontext() if args.verbose else _quiet_libraries():
            result = export(
                args.family or "module",
                args.checkpoint,
                args.out,
                module=args.module,
                format=args.format,
                name=args.name,
                device=args.device,
                dtype=args.dtype,
                max_batch_size=args.max_batch_size,
                max_seq_len=args.max_seq_len,
                image_size=args.image_size,
            )
    except ExportError as e:
        print(f"jit-embedding export: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # anything torch or the model raises, as one line
        if args.verbose:
            traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"jit-embedding export: failed: {type(e).__name__}: {first} (--verbose shows more)", file=sys.stderr)
        return 1
    m = result.manifest
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    print(f"exported {m['family']} '{m['name']}' to {result.out} ({m['artifact']}, {m['dtype']}, {m['device']})")
    print(f"version {m['version']}")
    print(f"took {steps}")
    return 0


def _cmd_version(_: argparse.Namespace) -> int:
    import torch

    print(f"jit-embedding {__version__}")
    print(f"torch {torch.__version__} (cuda {torch.version.cuda or 'none'})")
    print(f"native threads {_C.parallel_threads()}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from jit_embedding.serve import serve

    try:
        return serve(
            args.config,
            host=args.host,
            port=args.port,
            port_file=args.port_file,
            allow_public=args.public,
            auth_token_file=args.auth_token_file,
            admin_token_file=args.admin_token_file,
            tls_cert_file=args.tls_cert_file,
            tls_key_file=args.tls_key_file,
        )
    except (ValueError, RuntimeError) as e:
        # Config and load errors name the key or the encoder; a traceback adds nothing for users.
        print(f"jit-embedding serve: {e}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jit-embedding", description="Frozen encoders served to training jobs.")
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="print a frame's header and envelope")
    ins.add_argument("frame", help="path to a file holding one frame")
    ins.add_argument("--decode", action="store_true", help="also decode payloads and print min/max/mean")
    ins.set_defaults(func=_cmd_inspect)
    exp = sub.add_parser(
        "export",
        help="export an encoder into an artifact folder (model.pt2 or model.pt + manifest.json)",
        description="Export an encoder for jit-embedding-server (docs/export.md).",
    )
    exp.add_argument("--family", help="vae, clip_text, t5 or minilm (or use --module)")
    exp.add_argument("--module", help="your own encoder: pkg.mod:factory returning (nn.Module, spec dict)")
    exp.add_argument("--checkpoint", help="Hugging Face model folder (config.json + *.safetensors)")
    exp.add_argument("--out", required=True, help="artifact folder to write (created)")
    exp.add_argument("--format", default="aoti", help="aoti (model.pt2, default) or torchscript (model.pt, deprecated)")
    exp.add_argument("--name", help="the encoder's name in the manifest (default: the family)")
    exp.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    exp.add_argument("--dtype", default="float32", help="compute dtype: float32 (default), bfloat16 or float16")
    exp.add_argument("--max-batch-size", type=int, default=256, help="upper bound of the batch dim (default 256)")
    exp.add_argument("--max-seq-len", type=int, help="upper bound of the seq dim (default: the checkpoint's)")
    exp.add_argument("--image-size", help="vae: H or HxW (default: the config's sample_size)")
    exp.add_argument("--verbose", action="store_true", help="keep library warnings and print tracebacks")
    exp.set_defaults(func=_cmd_export)
    srv = sub.add_parser(
        "serve",
        help="run the server in this process (exported artifacts and Python nn.Module factories)",
        description="Serve the encoders of a YAML config (docs/serving.md) until SIGTERM or SIGINT, then drain.",
    )
    srv.add_argument("--config", required=True, help="server YAML config")
    srv.add_argument("--host", help="override server.host")
    srv.add_argument("--port", type=int, help="override server.port (0: a free port)")
    srv.add_argument("--port-file", help="write the bound port here once listening")
    srv.add_argument("--public", action="store_true", help="allow a --host that is not a loopback address")
    srv.add_argument("--auth-token-file", help="file holding the bearer token every route but /health/live needs")
    srv.add_argument("--admin-token-file", help="file holding the token of the admin routes (load, unload, drain)")
    srv.add_argument("--tls-cert-file", help="serve HTTPS with this PEM certificate (needs --tls-key-file)")
    srv.add_argument("--tls-key-file", help="the certificate's PEM private key")
    srv.set_defaults(func=_cmd_serve)
    bench_cli.add_parser(sub)
    cache_cli.add_parser(sub)
    ray_cli.add_parser(sub)
    ver = sub.add_parser("version", help="print versions")
    ver.set_defaults(func=_cmd_version)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
