"""What the benchmark scripts share: the repository paths, loading one script (or the demo) from another as a module,
exported artifacts kept between runs, finding the built binaries, a free loopback port, a process's memory, and the
result tables."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
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


def artifact_folder(name: str, key: Any, sources: Iterable[Any], root: Path = ARTIFACTS) -> Path:
    """``root``/<name>-<digest>, where an export is kept between runs. The digest covers ``key`` (JSON; callers put
    torch's version in it), jit_embedding's exporter and the source of each object in ``sources`` (what the export
    depends on besides the exporter), so any change to them names a new folder."""
    import jit_embedding

    pkg = Path(jit_embedding.__file__).parent
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    # The exporter, whether a module or a package of them.
    for f in sorted([*pkg.glob("export*.py"), *pkg.glob("families*.py"), *pkg.glob("famil*/**/*.py")]):
        h.update(f.read_bytes())
    for obj in sources:
        h.update(inspect.getsource(obj).encode())
    return root / f"{name}-{h.hexdigest()[:16]}"


def cached_export(name: str, key: Any, sources: Iterable[Any], worker: Callable[[Path], list[str]]) -> Path:
    """artifact_folder(name, key, sources), made by running the command ``worker(folder)`` (a child process, which
    keeps transformers' and AOTInductor's output and threads out of this one) unless it is already there."""
    folder = artifact_folder(name, key, sources)
    if not (folder / "manifest.json").exists():
        print(f"  exporting {name} into {folder.relative_to(ROOT)} ...", flush=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        out = subprocess.run(worker(folder), capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"exporting {name} failed:\n{out.stdout[-2000:]}{out.stderr[-4000:]}")
        print(f"  exported in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def run_for(fn: Callable[[], Any], seconds: float, finish: Callable[[], Any] = lambda: None) -> tuple[int, float]:
    """Calls fn() back to back for at least ``seconds`` and at least 3 times; returns (calls, elapsed seconds), the
    clock stopped after ``finish()`` (a device synchronize, say)."""
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    finish()
    return n, time.perf_counter() - t0


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
