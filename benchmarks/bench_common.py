"""What the benchmark scripts share: the repository paths, loading one script (or the demo) from another as a module,
finding the built binaries, a free loopback port, a process's memory, and the result tables."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path
from typing import Any

#: The repository, and the folder where benchmarks keep exported artifacts and their results.
ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "build" / "bench"
ARTIFACTS = BENCH_DIR / "artifacts"
#: Where `make build` leaves jit-embedding-server (find_binary takes the newest).
SERVER_CANDIDATES = [
    ROOT / "jit_embedding" / "bin" / "jit-embedding-server",
    ROOT / "build" / "cmake" / "jit-embedding-server",
]


def load_module(name: str, path: Path) -> Any:
    """The file at ``path`` as a module named ``name``, registered in sys.modules (so that its
    classes pickle); loaded once."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def find_binary(env: str, candidates: list[Path], hint: str) -> Path:
    """$env if set, else the newest existing candidate; exits naming the running script otherwise."""
    if os.environ.get(env):
        return Path(os.environ[env])
    found = [p for p in candidates if p.exists()]
    if not found:
        sys.exit(f"{sys.argv[0]}: no {candidates[0].name} (looked in {', '.join(map(str, candidates))}): {hint}")
    return max(found, key=lambda p: p.stat().st_mtime)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of process `pid`, in KiB, from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """The first column left-aligned (labels), the others right-aligned, under a rule."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    print(f"\n{title}\n{line(header)}\n{'  '.join('-' * w for w in widths)}")
    for r in rows:
        print(line(r))
