# jit-embedding developer commands. `make demo` and `make test` install what they need first.
#   make setup    install Debian and PyPI dependencies (idempotent, quiet when nothing is missing)
#   make build    editable install of jit_embedding plus the C++ tests (incremental)
#   make test     ctest + pytest + a bounded fuzz run
#   make demo     the main job on the embedded defaults
#   make bench    benchmarks/ (prints ratios against baselines measured in the same run)
#   make soak     4x capacity for 60 s, then 64 clients for SOAK_SECONDS (docs/reliability.md)
#   make lint     ruff + clang-format checks
#   make fuzz     libFuzzer for FUZZ_SECONDS each on the frame decoder and on the server's request
#                 handling (clang-14; our code built with coverage, ASan and UBSan)
#   make test-asan  the C++ tests built with ASan + UBSan, run with LeakSanitizer (docs/testing.md)
#   make gpu-kit  pack build/gpu-kit, what a bare GPU machine lacks to build and test (docs/testing.md "GPU checks")
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
BUILD_DIR ?= build/cmake
FUZZ_DIR ?= build/fuzz
FUZZ_SECONDS ?= 60
ASAN_DIR ?= build/asan
ASAN_JOBS ?= 2
JOBS ?= $(shell nproc)
CMAKE_ARGS := -DJIT_BUILD_TESTS=ON
INSTALL_STAMP := build/.installed

.PHONY: setup build test test-cpp test-python fuzz test-asan gpu-kit demo bench soak lint format clean

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
	@mkdir -p jit_embedding/bin && cp -p $(BUILD_DIR)/jit-embedding-server jit_embedding/bin/.jit-embedding-server.tmp \
	  && mv -f jit_embedding/bin/.jit-embedding-server.tmp jit_embedding/bin/jit-embedding-server  # a running copy keeps its inode

test: build test-cpp test-python fuzz

# ctest's own summary, plus each skipped test with the reason it gave (GTEST_SKIP messages).
test-cpp:
	@ctest --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS) > build/ctest.log 2>&1 || (cat build/ctest.log; exit 1)
	@grep -E "tests passed" build/ctest.log
	@grep -A1 -E ": Skipped$$" $(BUILD_DIR)/Testing/Temporary/LastTest.log | grep -vE ": Skipped$$|^--$$" \
	  | sort | uniq -c | sed 's/^ */ctest skipped: /' || true

test-python:
	@$(PYTHON) -m pytest -q tests/python

# Both fuzz targets for FUZZ_SECONDS each (scripts/run_fuzz.sh prints executions and corpus size).
# fuzz_http: -detect_leaks=0 turns off libFuzzer's leak check after each input (its App keeps
# caches and threads, so nearly every input would trigger a heap scan, 8x fewer executions);
# LeakSanitizer still checks the whole run at exit, after the App is destroyed.
fuzz: setup
	@if command -v clang++-14 >/dev/null; then \
	  CC=clang-14 CXX=clang++-14 cmake -S . -B $(FUZZ_DIR) -G Ninja -DJIT_BUILD_FUZZERS=ON -DJIT_BUILD_PYTHON=OFF \
	    -DJIT_WITH_CUDA=OFF -DJIT_WITH_ROCKSDB=OFF -DJIT_WITH_REDIS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    "-DJIT_SANITIZE=address;undefined;fuzzer-no-link" > $(FUZZ_DIR).log 2>&1 || (cat $(FUZZ_DIR).log; exit 1); \
	  cmake --build $(FUZZ_DIR) --target fuzz_decode fuzz_http -j $(JOBS) >> $(FUZZ_DIR).log 2>&1 || (cat $(FUZZ_DIR).log; exit 1); \
	  rc=0; \
	  scripts/run_fuzz.sh $(FUZZ_DIR)/fuzz_decode tests/cpp/codec/fuzz_corpus $(FUZZ_SECONDS) || rc=1; \
	  scripts/run_fuzz.sh $(FUZZ_DIR)/fuzz_http tests/cpp/server/fuzz_http_corpus $(FUZZ_SECONDS) \
	    -dict=tests/cpp/server/fuzz_http.dict -detect_leaks=0 || rc=1; \
	  exit $$rc; \
	else echo "fuzz: skipped, clang++-14 is not installed (make setup installs it)"; fi

# The C++ tests under ASan + UBSan (clang-14) in their own build folder, with LeakSanitizer on.
# LibTorch is left out (CMAKE_DISABLE_FIND_PACKAGE_Torch): it is not instrumented, so the torch
# executors are tested by pytest only. RocksDB and Redis tests run for real. tests/cpp/lsan.supp
# lists the third-party leaks that are not ours, each with its reason (docs/testing.md).
# ASAN_EXCLUDE: tests whose child process allocates after fork() while the parent has other threads
# (the client's fork tests; the shared RocksDB tier, multi-process by design). clang-14's ASan
# allocator takes no lock around fork(), so such a child can deadlock on an allocator lock held by
# a thread that did not survive the fork (seen here: 1-3 hangs in 10 runs). glibc's malloc, which
# these tests exercise in make test-cpp, is fork-safe; compiler-rt made its allocator so later.
ASAN_EXCLUDE ?= ^(Client\.AForkedChild|ClientEndpoints\.AForkedChild|SharedRocksDbTier\.)
test-asan: setup
	@mkdir -p $(ASAN_DIR)
	@CC=clang-14 CXX=clang++-14 cmake -S . -B $(ASAN_DIR) -G Ninja -DJIT_BUILD_TESTS=ON -DJIT_BUILD_PYTHON=OFF \
	  -DJIT_WITH_CUDA=OFF -DCMAKE_DISABLE_FIND_PACKAGE_Torch=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  "-DJIT_SANITIZE=address;undefined" > $(ASAN_DIR).log 2>&1 || (cat $(ASAN_DIR).log; exit 1)
	@nice -n 10 cmake --build $(ASAN_DIR) -j $(ASAN_JOBS) >> $(ASAN_DIR).log 2>&1 || (cat $(ASAN_DIR).log; exit 1)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 LSAN_OPTIONS=suppressions=$(CURDIR)/tests/cpp/lsan.supp \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir $(ASAN_DIR) --output-on-failure -j $(ASAN_JOBS) -E '$(ASAN_EXCLUDE)' > $(ASAN_DIR)/ctest.log 2>&1 \
	  || (cat $(ASAN_DIR)/ctest.log; exit 1)
	@grep -E "tests passed" $(ASAN_DIR)/ctest.log

# Debian's -dev packages and the wheels the build imports, unpacked for a GPU machine without apt or network; there,
# `scripts/gpu_kit.sh check` builds and runs the GPU tests and benchmarks/gpu.py. Idempotent, quiet when done.
gpu-kit:
	@PYTHON=$(PYTHON) scripts/gpu_kit.sh pack

demo: build
	@$(PYTHON) examples/train_text_to_image.py

bench: build
	@$(PYTHON) -c "import ray.serve" 2>/dev/null || $(PYTHON) -m pip install --quiet "ray[serve]"  # vs_ray_serve.py only
	@$(PYTHON) benchmarks/codec.py
	@$(PYTHON) benchmarks/server.py
	@$(PYTHON) benchmarks/cache.py
	@$(PYTHON) benchmarks/vs_ray_serve.py
	@$(PYTHON) benchmarks/transport.py
	@$(PYTHON) benchmarks/lossy_transport.py
	@$(PYTHON) benchmarks/ops_accuracy.py
	@$(PYTHON) benchmarks/vs_in_process.py

# The long robustness runs (issue 8): overload, then the soak; `make test` runs the short versions.
SOAK_SECONDS ?= 600
soak: build
	@$(PYTHON) benchmarks/overload.py
	@$(PYTHON) benchmarks/soak.py --duration $(SOAK_SECONDS)

lint: setup
	@$(PYTHON) -m ruff check jit_embedding tests benchmarks examples setup.py
	@$(PYTHON) -m ruff format --check jit_embedding tests benchmarks examples setup.py
	@clang-format-14 --dry-run -Werror $$(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'tests/cpp/*.cpp' 'kernels/*.cu' 'kernels/*.cuh' 'kernels/*.h')

format: setup
	@$(PYTHON) -m ruff format jit_embedding tests benchmarks examples setup.py
	@clang-format-14 -i $$(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'tests/cpp/*.cpp' 'kernels/*.cu' 'kernels/*.cuh' 'kernels/*.h')

clean:
	rm -rf build jit_embedding/_C*.so jit_embedding/bin
