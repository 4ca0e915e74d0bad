# jit-embedding developer commands. `make demo` and `make test` install what they need first.
#   make setup    install Debian and PyPI dependencies (idempotent, quiet when nothing is missing)
#   make build    editable install of jit_embedding plus the C++ tests (incremental)
#   make test     ctest + pytest + a bounded fuzz run
#   make demo     the main job on the embedded defaults
#   make bench    benchmarks/ (prints ratios against baselines measured in the same run)
#   make lint     ruff + clang-format checks
#   make fuzz     libFuzzer on the decoder for FUZZ_SECONDS (clang-14; the codec itself built with
#                 coverage, ASan and UBSan)
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
BUILD_DIR ?= build/cmake
FUZZ_DIR ?= build/fuzz
FUZZ_SECONDS ?= 30
JOBS ?= $(shell nproc)
CMAKE_ARGS := -DJIT_BUILD_TESTS=ON
INSTALL_STAMP := build/.installed

.PHONY: setup build test test-cpp test-python fuzz demo bench lint format clean

setup:
	@PYTHON=$(PYTHON) scripts/setup.sh

# pip's editable install configures CMake and builds _C; afterwards ninja rebuilds incrementally.
$(INSTALL_STAMP): setup.py pyproject.toml CMakeLists.txt
	@mkdir -p build
	@echo "build: pip install --no-build-isolation -e ."
	@JIT_CMAKE_ARGS="$(CMAKE_ARGS)" JIT_BUILD_DIR=$(BUILD_DIR) JIT_JOBS=$(JOBS) \
	  $(PYTHON) -m pip install -q --no-build-isolation --no-deps --disable-pip-version-check -e . \
	  > build/pip-install.log 2>&1 || (cat build/pip-install.log; exit 1)
	@touch $@

build: setup $(INSTALL_STAMP)
	@cmake --build $(BUILD_DIR) -j $(JOBS) > build/build.log 2>&1 || (cat build/build.log; exit 1)
	@mkdir -p jit_embedding/bin && cp -p $(BUILD_DIR)/jit-embedding-server jit_embedding/bin/jit-embedding-server

test: build test-cpp test-python fuzz

# ctest's own summary, plus each skipped test with the reason it gave (GTEST_SKIP messages).
test-cpp:
	@ctest --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS) > build/ctest.log 2>&1 || (cat build/ctest.log; exit 1)
	@grep -E "tests passed" build/ctest.log
	@grep -A1 -E ": Skipped$$" $(BUILD_DIR)/Testing/Temporary/LastTest.log | grep -vE ": Skipped$$|^--$$" \
	  | sort | uniq -c | sed 's/^ */ctest skipped: /' || true

test-python:
	@$(PYTHON) -m pytest -q tests/python

fuzz: setup
	@if command -v clang++-14 >/dev/null; then \
	  CC=clang-14 CXX=clang++-14 cmake -S . -B $(FUZZ_DIR) -G Ninja -DJIT_BUILD_FUZZERS=ON -DJIT_BUILD_PYTHON=OFF \
	    -DJIT_WITH_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DJIT_SANITIZE=address;undefined;fuzzer-no-link" > $(FUZZ_DIR).log 2>&1 || (cat $(FUZZ_DIR).log; exit 1); \
	  cmake --build $(FUZZ_DIR) --target fuzz_decode -j $(JOBS) >> $(FUZZ_DIR).log 2>&1 || (cat $(FUZZ_DIR).log; exit 1); \
	  scripts/run_fuzz.sh $(FUZZ_DIR)/fuzz_decode tests/cpp/codec/fuzz_corpus $(FUZZ_SECONDS); \
	else echo "fuzz: skipped, clang++-14 is not installed (make setup installs it)"; fi

demo: build
	@$(PYTHON) examples/train_text_to_image.py

bench: build
	@$(PYTHON) -c "import ray.serve" 2>/dev/null || $(PYTHON) -m pip install --quiet "ray[serve]"  # vs_ray_serve.py only
	@$(PYTHON) benchmarks/codec.py
	@$(PYTHON) benchmarks/server.py
	@$(PYTHON) benchmarks/cache.py
	@$(PYTHON) benchmarks/vs_ray_serve.py
	@$(PYTHON) benchmarks/transport.py
	@$(PYTHON) benchmarks/vs_in_process.py

lint: setup
	@$(PYTHON) -m ruff check jit_embedding tests benchmarks examples setup.py
	@$(PYTHON) -m ruff format --check jit_embedding tests benchmarks examples setup.py
	@clang-format-14 --dry-run -Werror $$(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'tests/cpp/*.cpp' 'kernels/*.cu' 'kernels/*.cuh' 'kernels/*.h')

format: setup
	@$(PYTHON) -m ruff format jit_embedding tests benchmarks examples setup.py
	@clang-format-14 -i $$(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'tests/cpp/*.cpp' 'kernels/*.cu' 'kernels/*.cuh' 'kernels/*.h')

clean:
	rm -rf build jit_embedding/_C*.so jit_embedding/bin
