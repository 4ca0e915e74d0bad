"""Helpers of the Ray Serve tests (test_ray_*.py): a tiny exported encoder in two versions, its
server configs, a local Ray cluster, and a load generator over a discovering client.

    artifact = export_affine(folder, seed)        # TorchScript artifact of Affine(seed)
    config = write_config(folder, artifact)       # a server YAML that serves it as "affine"
    expected(seed, x)                             # what version `seed` answers for x
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from pathlib import Path

import torch
import torch.utils.data
import yaml

WIDTH = 8
#: The test encoder's queue delay: each request waits this long for company in the batcher, so a
#: replica's in-flight count tracks the offered concurrency however small the model is.
QUEUE_DELAY_US = 40000


class Affine(torch.nn.Module):
    """y = x @ W + b, seeded: each seed is one encoder version."""

    def __init__(self, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(WIDTH, WIDTH, generator=gen))
        self.bias = torch.nn.Parameter(torch.randn(WIDTH, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


def _factory(seed: int):
    def make(checkpoint, dtype):
        spec = {
            "inputs": [{"name": "x", "dtype": "float32", "dims": ["batch", WIDTH]}],
            "outputs": [{"name": "y", "dtype": "float32", "dims": ["batch", WIDTH]}],
        }
        return Affine(seed).eval(), spec

    return make


def export_affine(folder: Path, seed: int) -> Path:
    """A TorchScript artifact of Affine(seed) in folder/affine-<seed> (a second call reuses it)."""
    from jit_embedding.export import export

    out = folder / f"affine-{seed}"
    if not (out / "manifest.json").exists():
        export("module", None, out, module=_factory(seed), format="torchscript", name="affine", max_batch_size=64)
    return out


def expected(seed: int, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return Affine(seed)(x)


def write_config(folder: Path, artifact: Path, name: str = "server.yaml") -> Path:
    """A server config serving `artifact` as encoder "affine" (relative path, as users write it)."""
    path = folder / name
    config = {
        # A short keep-alive: a draining server waits for idle keep-alive connections to close.
        "server": {"threads": 64, "drain_grace_ms": 10000, "keep_alive_timeout_s": 1},
        "encoders": [
            {
                "name": "affine",
                "artifact": str(artifact.relative_to(folder)),
                "max_batch_size": 64,
                "max_queue_delay_us": QUEUE_DELAY_US,
                "max_queue_size": 4096,
            }
        ],
        "cache": {"memory_mb": 16},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Samples(torch.utils.data.Dataset):
    """Sample i: {"idx": i, "x": a seeded [WIDTH] vector} (module level: DataLoader workers)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"idx": i, "x": torch.randn(WIDTH, generator=torch.Generator().manual_seed(i))}


def prep_x(sample: dict) -> dict:
    return {"x": sample["x"]}


def collate_list(batch: list) -> list:
    return batch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoadGenerator:
    """`concurrency` threads, each sending one-sample requests back to back through `client`
    until stop(). Counts answers by version, failures (with their messages) and wrong answers
    (an output that is not its version's, or that mixes versions)."""

    def __init__(self, client, seeds_by_version: dict[str, int] | None = None, concurrency: int = 8):
        self.client = client
        self.seeds_by_version = seeds_by_version
        self.concurrency = concurrency
        self.ok = 0
        self.failed: list[str] = []
        self.wrong: list[str] = []
        self.versions: Counter = Counter()
        self.endpoints: Counter = Counter()
        self.log: list[tuple[float, float, str]] = []  # (sent, answered, version), time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadGenerator:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> LoadGenerator:
        self._stop.set()
        for t in self._threads:
            t.join(120)
        return self

    def _run(self, worker: int) -> None:
        gen = torch.Generator().manual_seed(worker)
        while not self._stop.is_set():
            x = torch.randn(1, WIDTH, generator=gen)
            sent = time.monotonic()
            try:
                out, meta = self.client.encode("affine", {"x": x})
            except Exception as e:  # every failure counts; the test asserts there are none
                with self._lock:
                    self.failed.append(str(e))
                time.sleep(0.05)
                continue
            problem = None
            if self.seeds_by_version is not None:
                seed = self.seeds_by_version.get(meta["version"])
                if seed is None:
                    problem = f"unknown version {meta['version']}"
                elif not torch.allclose(out["y"], expected(seed, x), rtol=1e-5, atol=1e-5):
                    problem = f"output is not version {meta['version']}'s"
            with self._lock:
                self.ok += 1
                self.versions[meta["version"]] += 1
                self.endpoints[meta["client"]["endpoint"]] += 1
                self.log.append((sent, time.monotonic(), meta["version"]))
                if problem:
                    self.wrong.append(problem)
