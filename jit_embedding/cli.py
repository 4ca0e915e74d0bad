"""The ``jit-embedding`` command line.

Subcommands arrive with the layers they drive; today:

    jit-embedding inspect FRAME      print a frame's header and envelope (no payload decoding)
    jit-embedding version            print the package, torch and native-core versions
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jit_embedding import _C, __version__, codec


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


def _cmd_version(_: argparse.Namespace) -> int:
    import torch

    print(f"jit-embedding {__version__}")
    print(f"torch {torch.__version__} (cuda {torch.version.cuda or 'none'})")
    print(f"native threads {_C.parallel_threads()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jit-embedding", description="Frozen encoders served to training jobs.")
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="print a frame's header and envelope")
    ins.add_argument("frame", help="path to a file holding one frame")
    ins.add_argument("--decode", action="store_true", help="also decode payloads and print min/max/mean")
    ins.set_defaults(func=_cmd_inspect)
    ver = sub.add_parser("version", help="print versions")
    ver.set_defaults(func=_cmd_version)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
