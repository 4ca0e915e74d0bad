"""The command-line entry points work as documented: the `jit-embedding` CLI, the standalone
server binary's --help, and the README's Python example."""

import json
import re
import subprocess
import sys
from pathlib import Path

import torch

from jit_embedding import codec

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jit_embedding.cli", *args], capture_output=True, text=True)


def test_inspect_prints_envelope(tmp_path):
    path = tmp_path / "f.jemb"
    path.write_bytes(codec.encode({"x": torch.arange(6.0).reshape(2, 3)}, meta={"k": "v"}))
    out = run_cli("inspect", str(path), "--decode")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    entry = info["envelope"]["tensors"][0]
    assert entry["shape"] == [2, 3] and entry["dtype"] == "float32"
    assert entry["stats"]["max"] == 5.0
    assert info["envelope"]["meta"] == {"k": "v"}


def test_inspect_names_the_problem(tmp_path):
    path = tmp_path / "bad.jemb"
    path.write_bytes(b"JEMX" + bytes(60))
    out = run_cli("inspect", str(path))
    assert out.returncode == 1
    assert "bad magic" in out.stderr


def test_version():
    out = run_cli("version")
    assert out.returncode == 0 and out.stdout.startswith("jit-embedding ")


def test_server_binary_help():
    binary = ROOT / "jit_embedding" / "bin" / "jit-embedding-server"
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "--config" in out.stdout
    bad = subprocess.run([str(binary), "--no-such-flag"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


def test_readme_example_runs():
    code = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert code, "README has no python example"
    exec(compile(code[0], "README.md", "exec"), {})
