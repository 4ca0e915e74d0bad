#!/usr/bin/env bash
# The GPU bring-up kit (issue 7): what a bare GPU machine (no apt, no network) lacks to build and test
# jit-embedding, packed here, and one command there that builds everything and runs the GPU checks.
#
#   scripts/gpu_kit.sh pack          (here; `make gpu-kit`) Debian's -dev packages and their runtime libraries,
#                                    unpacked into build/gpu-kit/root, and the Python wheels the build and
#                                    benchmarks/gpu.py import, in build/gpu-kit/wheels. Idempotent; quiet when the
#                                    kit is already there.
#   scripts/gpu_kit.sh check [--steps build,ctest,pytest,bench] [--cpu-dry-run]
#                                    (on the GPU machine, with build/gpu-kit carried) CMake pointed into the kit,
#                                    Python 3.12 and the machine's CUDA torch; builds the kernels, _C, the server
#                                    and the C++ tests, then runs the GPU ctests, the CUDA pytest cases and
#                                    benchmarks/gpu.py. Logs, the benchmark's JSON and trace, and summary.txt (one
#                                    line per step) go to $OUT (default build/gpu-out).
#       --cpu-dry-run                the same on a machine without a GPU, in a fresh build folder, in an emptied
#                                    environment (env -i), with pkg-config and CMake pointed at the kit only; it
#                                    proves the kit builds and links and the binaries run, and skips what needs a
#                                    GPU, saying why. docs/testing.md ("GPU checks") says what each step verifies.
#
# The kit is Debian bookworm's build: its libraries need the glibc and libstdc++ named in build/gpu-kit/MANIFEST.txt
# (check prints the machine's versions next to them). Exit status: 0 when no step failed (PASS, WARN, SKIP), 1 when
# one failed, 2 for a usage error or a missing kit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KIT=${GPU_KIT_DIR:-$ROOT/build/gpu-kit}
PYTHON=${PYTHON:-python3}
ARCH_TRIPLET=x86_64-linux-gnu

# What `pack` takes. The -dev packages with their runtime libraries; libmsgpack-cxx-dev without the Boost it
# depends on (we build with MSGPACK_NO_BOOST); libcpp-httplib-dev's pkg-config file requires openssl, zlib and
# brotli, and the fuzz replay drivers link zlib and brotlidec; pkgconf because a bare machine may have no
# pkg-config (CMakeLists.txt requires one).
KIT_DEBS=(
  libmsgpack-cxx-dev
  libzstd-dev libzstd1
  libxxhash-dev libxxhash0
  libcpp-httplib-dev libcpp-httplib0.11
  libyaml-cpp-dev libyaml-cpp0.7
  libgtest-dev libgmock-dev
  zlib1g-dev zlib1g
  libbrotli-dev libbrotli1
  libssl-dev libssl3
  pkgconf-bin libpkgconf3
)
# pybind11 for _C (setup.py / CMakeLists.txt); diffusers (and importlib_metadata, its one requirement the GPU image
# lacks) for the VAE in benchmarks/gpu.py. Pinned to the versions installed here, where they are tested.
KIT_WHEELS=(pybind11 diffusers importlib_metadata)
KIT_FORMAT=3

die() {
  echo "gpu_kit: $*" >&2
  exit 2
}

# ============================================================================================== pack
wheel_specs() {
  "$PYTHON" - "${KIT_WHEELS[@]}" <<'PY'
import importlib.metadata as md
import sys
for name in sys.argv[1:]:
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        print(name)
PY
}

# The highest symbol version of `prefix` (GLIBC_, GLIBCXX_) that the kit's ELF files need, and the file needing it.
max_symbol_version() {
  local prefix=$1 dir=$2 f v best="" best_file=""
  while IFS= read -r -d '' f; do
    head -c 4 "$f" | grep -q $'\x7fELF' || continue
    v=$(objdump -T "$f" 2>/dev/null | grep -o "${prefix}[0-9.]*" | sed "s/^${prefix}//" | sort -V | tail -1 || true)
    if [ -z "$v" ] || [ "$v" = "$best" ]; then continue; fi
    if [ -z "$best" ] || [ "$(printf '%s\n%s\n' "$best" "$v" | sort -V | tail -1)" = "$v" ]; then
      best=$v
      best_file=${f#"$dir"/}
    fi
  done < <(find "$dir" -type f \( -name '*.so*' -o -path '*/bin/*' \) -print0)
  echo "${best:-none} ${best_file:-}"
}

pack() {
  [ $# -eq 0 ] || die "pack takes no arguments"
  local specs stamp
  specs=$(wheel_specs | tr '\n' ' ')
  stamp="format=$KIT_FORMAT debs=${KIT_DEBS[*]} wheels=$specs"
  if [ -f "$KIT/.stamp" ] && [ "$(cat "$KIT/.stamp")" = "$stamp" ]; then
    return 0
  fi
  if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    die "pack needs apt-get and dpkg (Debian)"
  fi
  local tmp="$KIT.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp/debs" "$tmp/root" "$tmp/wheels"
  if ! apt-cache policy "${KIT_DEBS[0]}" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get update -qq
  fi
  # Downloaded as root into a folder _apt cannot read: tell apt that is intended (no sandbox warning).
  (cd "$tmp/debs" && apt-get download -qq -o APT::Sandbox::User=root "${KIT_DEBS[@]}" >/dev/null)
  local deb
  for deb in "$tmp"/debs/*.deb; do
    dpkg -x "$deb" "$tmp/root"
  done
  for deb in "$tmp"/debs/*.deb; do
    dpkg-deb -f "$deb" Package Version | paste -sd' ' | sed 's/^Package: //; s/ Version: / /'
  done > "$tmp/debs.txt"
  rm -rf "$tmp/debs"

  local r="$tmp/root" lib="$tmp/root/usr/lib/$ARCH_TRIPLET"
  # zlib1g ships /lib/<triplet>/libz.so.1 (the pre-merged-/usr layout): one library folder for the kit.
  if [ -d "$r/lib" ]; then
    cp -a "$r/lib/." "$r/usr/lib/"
    rm -rf "${r:?}/lib"
  fi
  # Absolute symlinks (libz.so -> /lib/<triplet>/libz.so.1.2.13) point into the kit's own folder instead.
  local link target
  while IFS= read -r -d '' link; do
    target=$(readlink "$link")
    case $target in
      /*)
        [ -e "$(dirname "$link")/$(basename "$target")" ] || die "pack: $link -> $target has no copy in the kit"
        ln -sfn "$(basename "$target")" "$link"
        ;;
    esac
  done < <(find "$r" -type l -print0)
  # Only what a build reads: no documentation, manual pages or sources; static libraries only for GoogleTest,
  # which Debian ships only as static libraries.
  rm -rf "$r/usr/share/doc" "$r/usr/share/man" "$r/usr/share/lintian" "$r/usr/share/doc-base" "$r/usr/src"
  find "$r/usr/lib" -name '*.a' ! -name 'libgtest*.a' ! -name 'libgmock*.a' -delete
  find "$r" -depth -type d -empty -delete
  # pkg-config files: prefix relative to the file itself, so the kit works wherever it lands; libdir where the
  # libraries are (Debian's libzstd.pc says lib/, which only the system's default search path makes work).
  local pc
  for pc in "$lib"/pkgconfig/*.pc; do
    # shellcheck disable=SC2016 # ${pcfiledir} and ${prefix} are pkg-config's variables, written as they are
    sed -i -e 's|^prefix=/usr$|prefix=${pcfiledir}/../../..|' -e 's|^exec_prefix=/usr$|exec_prefix=${prefix}|' \
      -e 's|=/usr/|=${prefix}/|' -e "s|^libdir=\(\${[a-z_]*prefix}\)/lib\$|libdir=\1/lib/$ARCH_TRIPLET|" "$pc"
    if grep -q '/usr' "$pc"; then die "pack: $pc still names /usr: $(grep '/usr' "$pc" | head -1)"; fi
  done

  # Pure-Python wheels for the device's Python 3.12 (pip matches the tags; they install with --no-index there).
  local spec
  for spec in $specs; do
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$tmp/wheels" "$spec" \
      2>&1 | { grep -v -E '^WARNING: Location .* is ignored' || true; }
  done

  local glibc glibcxx size
  glibc=$(max_symbol_version GLIBC_ "$tmp/root")
  glibcxx=$(max_symbol_version GLIBCXX_ "$tmp/root")
  size=$(du -sm --apparent-size "$tmp" | cut -f1)
  {
    # shellcheck source=/dev/null
    echo "# jit-embedding GPU kit, made by scripts/gpu_kit.sh pack on $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "# root/: the Debian packages below, unpacked (docs, man pages, sources and non-GoogleTest .a removed,"
    echo "#        pkg-config files relative to \${pcfiledir}); wheels/: for Python 3.12"
    echo "glibc_max=${glibc%% *}  # needed by ${glibc#* }"
    echo "glibcxx_max=${glibcxx%% *}  # needed by ${glibcxx#* }"
    echo "size_mib=$size"
    echo "[debs]"
    cat "$tmp/debs.txt"
    echo "[wheels]"
    (cd "$tmp/wheels" && ls)
  } > "$tmp/MANIFEST.txt"
  rm -f "$tmp/debs.txt"
  echo "$stamp" > "$tmp/.stamp"
  rm -rf "$KIT"
  mv "$tmp" "$KIT"
  echo "gpu-kit: ${#KIT_DEBS[@]} Debian packages, $(find "$KIT/wheels" -name '*.whl' | wc -l) wheels," \
    "$(du -sm --apparent-size "$KIT" | cut -f1) MiB" \
    "in ${KIT#"$ROOT"/} (needs glibc >= ${glibc%% *}, GLIBCXX ${glibcxx%% *}); carry it to the GPU machine"
}

# ============================================================================================== check
STEPS_ALL=build,ctest,pytest,bench
SUMMARY=""
FAILED=0

# One line per step, on stdout and appended to $OUT/summary.txt (kept up to date, so a run cut off at its time
# limit still brings back what finished).
note() {
  echo "$*"
  echo "$*" >> "$SUMMARY"
}

step_result() { # name PASS|WARN|FAIL|SKIP seconds detail
  local line
  printf -v line 'check: %-7s %-4s %5ss  %s' "$1" "$2" "$3" "$4"
  note "$line"
  [ "$2" != FAIL ] || FAILED=1
}

# Kit sonames the machine's loader does not know, linked into $1; on a dry run every kit soname (a bare machine).
runtime_libs() {
  local dir=$1 all=$2 f name
  rm -rf "$dir"
  mkdir -p "$dir"
  for f in "$KIT_LIB"/lib*.so.*; do
    name=$(basename "$f")
    # sonames only: libfoo.so.1, libssl.so.3, libcpp-httplib.so.0.11 (the name a DT_NEEDED entry asks for)
    [ -L "$f" ] || [[ $name =~ ^lib[^/]*\.so\.[0-9]+$ ]] || continue
    if command -v objdump >/dev/null; then
      [ "$(objdump -p "$(readlink -f "$f")" 2>/dev/null | sed -n 's/^ *SONAME *//p')" = "$name" ] || continue
    fi
    if [ "$all" = 1 ] || ! system_has_lib "$name"; then
      ln -sfn "$f" "$dir/$name"
    fi
  done
}

# Whether the machine's loader finds soname $1 by itself (its cache, or the usual library folders).
system_has_lib() {
  local d
  # (grep without -q reads to the end: -q would stop early, and pipefail would take the SIGPIPE as a miss)
  if ldconfig -p 2>/dev/null | grep -E "^[[:space:]]+${1//./\\.} \(" > /dev/null; then return 0; fi
  for d in /lib/$ARCH_TRIPLET /usr/lib/$ARCH_TRIPLET /lib64 /usr/lib64 /lib /usr/lib; do
    [ -e "$d/$1" ] && return 0
  done
  return 1
}

# Seconds a step may take: its own limit, or what is left of the run's budget (the device tool stops a command after
# 600 s; ending a step a little before that keeps summary.txt and the logs complete).
step_limit() {
  local left=$((BUDGET - SECONDS - 10))
  if [ "$left" -lt "$1" ]; then echo $((left > 30 ? left : 30)); else echo "$1"; fi
}

cache_value() { sed -n "s|^$1:[A-Z]*=||p" "$BUILD/CMakeCache.txt" | head -1; }

# Which headers, CMake packages and libraries the configured build took, and whether each came from the kit.
verify_kit() {
  local bad=() var value k
  for var in XXHASH_INCLUDE_DIR MSGPACK_INCLUDE_DIR yaml-cpp_DIR GTest_DIR PKG_CONFIG_EXECUTABLE ZSTD_INCLUDE_DIRS \
    HTTPLIB_INCLUDE_DIRS ZSTD_LIBRARY_DIRS HTTPLIB_LIBRARY_DIRS pkgcfg_lib_ZSTD_zstd pkgcfg_lib_HTTPLIB_cpp-httplib; do
    value=$(cache_value "$var")
    # pkg_check_modules leaves *_INCLUDE_DIRS empty when the only -I is a system folder; ours never is.
    for k in ${value//;/ }; do
      case $k in "$KIT"/* | "$BUILD"/*) ;; *) bad+=("$var=$k") ;; esac
    done
    [ -n "$value" ] || bad+=("$var is empty")
  done
  # Every header of a kit package that any object file included (ninja's dependency log) is the kit's.
  local foreign
  foreign=$(ninja -C "$BUILD" -t deps 2>/dev/null | grep -E \
    '^ +/usr/(local/)?include/(httplib\.h|yaml-cpp/|msgpack|zstd|xxhash\.h|gtest/|gmock/|openssl/|brotli/|zlib\.h)' \
    | sort -u | head -5 || true)
  [ -z "$foreign" ] || bad+=("headers from outside the kit: $(echo "$foreign" | tr -s ' \n' ' ')")
  local kit_headers
  kit_headers=$(ninja -C "$BUILD" -t deps 2>/dev/null | grep -c "^ *$KIT/" || true)
  # The binaries' libraries: none missing, and every kit library resolved inside the kit on a dry run.
  local bin lib where missing="" from_kit="" from_system=""
  for bin in "$BUILD/jit-embedding-server" "$PYROOT"/jit_embedding/_C*.so "$BUILD/test_server"; do
    [ -e "$bin" ] || continue
    missing+=$(ldd "$bin" | grep 'not found' | awk '{print $1}' | tr '\n' ' ' || true)
    for lib in libcpp-httplib.so.0.11 libyaml-cpp.so.0.7 libzstd.so.1 libssl.so.3 libbrotlidec.so.1 libz.so.1; do
      where=$(ldd "$bin" | awk -v l="$lib" '$1 == l {print $3}')
      [ -n "$where" ] || continue
      case $(readlink -f "$where") in
        "$KIT"/*) [[ " $from_kit " == *" $lib "* ]] || from_kit+="$lib " ;;
        *) [[ " $from_system " == *" $lib "* ]] || from_system+="$lib($where) " ;;
      esac
    done
  done
  [ -z "$missing" ] || bad+=("libraries not found: $missing")
  if [ "$DRY" = 1 ] && [ -n "$from_system" ]; then bad+=("resolved outside the kit: $from_system"); fi
  KIT_DETAIL="kit: $kit_headers header uses, cache vars in kit; libs from kit: ${from_kit:-none}"
  [ -z "$from_system" ] || KIT_DETAIL+="; from the machine: $from_system"
  if [ ${#bad[@]} -gt 0 ]; then
    KIT_DETAIL+="; PROBLEMS: ${bad[*]}"
    return 1
  fi
}

# What the torch folder holds, for a build that did not find LibTorch there.
torch_probe() {
  echo "JIT_TORCH_DIR=$TORCH_DIR"
  ls -l "$TORCH_DIR/lib" "$TORCH_DIR/share/cmake/Torch" 2>&1 | head -40
}

step_build() {
  local log="$OUT/build.log" t0=$SECONDS rc=0
  {
    echo "== configure ($(date -u +%FT%TZ))"
    cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DPython_EXECUTABLE="$PY" -Dpybind11_DIR="$PYBIND11_DIR" \
      -DCMAKE_PREFIX_PATH="$KIT/root/usr" -DJIT_TORCH_DIR="$TORCH_DIR" -DPKG_CONFIG_EXECUTABLE="$PKG_CONFIG_BIN" \
      -Dyaml-cpp_DIR="$KIT_LIB/cmake/yaml-cpp" -DGTest_DIR="$KIT_LIB/cmake/GTest" \
      -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PYROOT/jit_embedding" \
      -DJIT_BUILD_TESTS=ON -DJIT_WITH_CUDA="$WITH_CUDA" -DJIT_CUDA_ARCHS=90 -DJIT_TORCH_CUDA="$TORCH_CUDA" \
      -DJIT_WITH_ROCKSDB=OFF -DJIT_WITH_REDIS=OFF &&
      echo "== build ($(date -u +%FT%TZ))" &&
      timeout -k 10 "$(step_limit 3600)" nice -n 5 cmake --build "$BUILD" -j "$JOBS"
  } > "$log" 2>&1 || rc=$?
  local detail
  detail="$(grep -o 'jit-embedding: CUDA kernels [A-Z]*, torch CUDA [A-Z]*' "$log" | tail -1 || true)"
  if ! grep -q 'jit-embedding: LibTorch .* at' "$log"; then
    detail+="; LibTorch NOT found (no artifact executors)"
    { echo "== the torch folder"; torch_probe; } >> "$log" 2>&1 || true
    rc=1
  fi
  if [ "$rc" -ne 0 ]; then
    step_result build FAIL $((SECONDS - t0)) \
      "$detail; see build.log: $(grep -m1 -E 'error:|CMake Error|FAILED:' "$log" || tail -1 "$log")"
    return 1
  fi
  if [ "$DRY" = 0 ]; then
    mkdir -p "$ROOT/jit_embedding/bin"
    cp -p "$BUILD/jit-embedding-server" "$ROOT/jit_embedding/bin/jit-embedding-server"
  fi
  if verify_kit; then
    step_result build PASS $((SECONDS - t0)) "$detail; $KIT_DETAIL"
  else
    step_result build FAIL $((SECONDS - t0)) "$detail; $KIT_DETAIL"
    return 1
  fi
}

step_ctest() {
  local log="$OUT/ctest.log" t0=$SECONDS rc=0 filter=() what
  if [ "$DRY" = 1 ]; then
    what="the whole suite, on the CPU"
  else
    filter=(-R 'Gpu|Cuda|KernelArgs')
    what="ctest -R 'Gpu|Cuda|KernelArgs'"
  fi
  timeout -k 10 "$(step_limit 300)" ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS" "${filter[@]}" \
    > "$log" 2>&1 || rc=$?
  if [ "$DRY" = 1 ] && [ -x "$BUILD/test_kernels_gpu" ]; then
    what+=" (nvcc is here: the GPU tests are built and skip)"
  fi
  local passed skipped
  passed=$(grep -E 'tests passed' "$log" | tail -1 || true)
  skipped=$(grep -E '\*\*\*Skipped' "$log" | sed -E 's/.*Test +#[0-9]+: ([^ ]+).*/\1/' | tr '\n' ' ' || true)
  if [ "$rc" -ne 0 ] || [ -z "$passed" ]; then
    step_result ctest FAIL $((SECONDS - t0)) "$what: ${passed:-no tests ran} (rc $rc; see ctest.log)"
  elif [ "$DRY" = 0 ] && [[ $skipped == *KernelsGpu* ]]; then
    step_result ctest FAIL $((SECONDS - t0)) "$what: $passed, but the kernels' tests skipped on a GPU machine: $skipped"
  elif [ "$DRY" = 0 ] && [ -n "$skipped" ]; then
    step_result ctest WARN $((SECONDS - t0)) "$what: $passed; skipped on a GPU machine: $skipped(see ctest.log)"
  else
    step_result ctest PASS $((SECONDS - t0)) "$what: $passed; skipped: $(echo "$skipped" | wc -w)"
  fi
}

step_pytest() {
  local log="$OUT/pytest.log" t0=$SECONDS rc=0 args what tests=$ROOT/tests/python
  if [ "$DRY" = 1 ]; then
    args=("$tests/test_ops.py")
    what="test_ops.py on the CPU against the kit-built _C (CUDA cases skip: no CUDA device)"
  else
    args=("$tests/test_ops.py" "$tests/test_transport.py" -k "cuda or gpu")
    what="test_ops.py + test_transport.py -k 'cuda or gpu'"
  fi
  # From $PYROOT, so that `import jit_embedding` finds the _C this build made (the repository's on the device).
  (cd "$PYROOT" && timeout -k 10 "$(step_limit 400)" "$PY" -m pytest -q -rs -p no:cacheprovider "${args[@]}") \
    > "$log" 2>&1 || rc=$?
  local last skipped
  last=$(grep -E '(passed|failed|error|no tests ran)' "$log" | tail -1 || true)
  skipped=$(grep -c '^SKIPPED' "$log" || true)
  if [ "$rc" -ne 0 ]; then
    step_result pytest FAIL $((SECONDS - t0)) "$what: ${last:-rc $rc} (see pytest.log)"
  elif [ "$DRY" = 0 ] && [ "$skipped" -gt 0 ]; then
    step_result pytest FAIL $((SECONDS - t0)) "$what: $last, but CUDA cases skipped on a GPU machine (see pytest.log)"
  else
    step_result pytest PASS $((SECONDS - t0)) "$what: $last"
  fi
}

step_bench() {
  local log="$OUT/bench.log" t0=$SECONDS rc=0 args extra=()
  read -ra extra <<< "${GPU_BENCH_ARGS:-}" # e.g. "--parts served": more arguments for benchmarks/gpu.py
  if [ "$DRY" = 1 ]; then
    args=(--device cpu --quick)
  else
    args=(--device cuda)
  fi
  (cd "$PYROOT" && PYTHONUNBUFFERED=1 JIT_SERVER_BINARY="$BUILD/jit-embedding-server" \
    JIT_LOADGEN_BINARY="$BUILD/jit-loadgen" timeout -k 10 "$(step_limit 3600)" \
    "$PY" "$ROOT/benchmarks/gpu.py" "${args[@]}" "${extra[@]}" --out-dir "$OUT" --json "$OUT/gpu.json") \
    > "$log" 2>&1 || rc=$?
  local goals
  goals=$(grep -cE '^\s+\[MET \]' "$log" || true)/$(grep -cE '^\s+\[(MET |MISS)\]' "$log" || true)
  if [ "$rc" -ne 0 ]; then
    step_result bench FAIL $((SECONDS - t0)) "benchmarks/gpu.py ${args[*]}: rc $rc (see bench.log)"
  else
    step_result bench PASS $((SECONDS - t0)) \
      "benchmarks/gpu.py ${args[*]}: goals met $goals (gpu.json, gpu-trace.json.gz)"
  fi
}

check() {
  local steps=$STEPS_ALL
  DRY=0
  while [ $# -gt 0 ]; do
    case $1 in
      --cpu-dry-run) DRY=1 ;;
      --steps) steps=${2:?--steps needs a list}; shift ;;
      --steps=*) steps=${1#--steps=} ;;
      *) die "check: unknown argument '$1' (--steps LIST, --cpu-dry-run)" ;;
    esac
    shift
  done
  local step
  for step in ${steps//,/ }; do
    case $step in build | ctest | pytest | bench) ;; *) die "check: unknown step '$step' (of $STEPS_ALL)" ;; esac
  done
  [ -f "$KIT/MANIFEST.txt" ] || die "no kit at $KIT: run \`make gpu-kit\` on a Debian machine and carry build/gpu-kit"

  # A dry run starts over in an emptied environment: nothing of this shell's (PKG_CONFIG_PATH, CPATH, a venv) leaks
  # in. PATH keeps only the interpreter's folder (its pip-installed cmake and ninja) and the system's.
  if [ "$DRY" = 1 ] && [ -z "${GPU_KIT_CLEAN_ENV:-}" ]; then
    local py
    py=$("$PYTHON" -c 'import sys; print(sys.executable)')
    exec env -i HOME="$HOME" LANG=C.UTF-8 GPU_KIT_CLEAN_ENV=1 OUT="${OUT:-}" GPU_KIT_DIR="$KIT" PYTHON="$py" \
      GPU_BENCH_ARGS="${GPU_BENCH_ARGS:-}" GPU_KIT_BUDGET_S="${GPU_KIT_BUDGET_S:-}" \
      PATH="$(dirname "$py"):/usr/local/bin:/usr/bin:/bin" "$0" check --cpu-dry-run --steps "$steps"
  fi

  # The device tool's limit for one command, counted from this script's start (GPU_KIT_BUDGET_S to change it).
  if [ "$DRY" = 1 ]; then BUDGET=${GPU_KIT_BUDGET_S:-7200}; else BUDGET=${GPU_KIT_BUDGET_S:-590}; fi
  OUT=${OUT:-$ROOT/build/gpu-out}
  mkdir -p "$OUT"
  SUMMARY="$OUT/summary.txt"
  : > "$SUMMARY"
  KIT=$(cd "$KIT" && pwd -P)
  KIT_LIB="$KIT/root/usr/lib/$ARCH_TRIPLET"
  JOBS=${JOBS:-$(nproc)}
  if [ "$DRY" = 1 ]; then
    BUILD=$ROOT/build/gpu-dryrun
    rm -rf "$BUILD" # a fresh folder: nothing cached from an earlier configure
    PYROOT=$BUILD/pyroot
    WITH_CUDA=AUTO
  else
    BUILD=${GPU_BUILD_DIR:-$ROOT/build/gpu-cmake}
    PYROOT=$ROOT
    WITH_CUDA=ON
    if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then PATH=/usr/local/cuda/bin:$PATH; fi
  fi
  mkdir -p "$BUILD"

  # The kit's shared libraries the machine lacks, for the loader; pkgconf with its library; the wheels the machine
  # lacks (a dry run installs them all, as on a bare machine) on PYTHONPATH.
  runtime_libs "$BUILD/kit-rtlib" "$DRY"
  export LD_LIBRARY_PATH="$BUILD/kit-rtlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  mkdir -p "$BUILD/kit-bin"
  PKG_CONFIG_BIN="$BUILD/kit-bin/pkg-config"
  cat > "$PKG_CONFIG_BIN" <<EOF
#!/bin/sh
export PKG_CONFIG_LIBDIR="$KIT_LIB/pkgconfig"
export LD_LIBRARY_PATH="$KIT_LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$KIT/root/usr/bin/pkgconf" "\$@"
EOF
  chmod +x "$PKG_CONFIG_BIN"
  if ! "$PKG_CONFIG_BIN" --version >/dev/null 2>&1; then
    # Bookworm's pkgconf does not run here (an older glibc?): the machine's pkg-config, still on the kit's files.
    local sys_pc
    sys_pc=$(command -v pkg-config || true)
    [ -n "$sys_pc" ] || die "the kit's pkgconf does not run here and there is no pkg-config"
    printf '#!/bin/sh\nPKG_CONFIG_LIBDIR="%s" exec "%s" "$@"\n' "$KIT_LIB/pkgconfig" "$sys_pc" > "$PKG_CONFIG_BIN"
  fi
  export PKG_CONFIG_LIBDIR="$KIT_LIB/pkgconfig"
  unset PKG_CONFIG_PATH
  local site="$BUILD/kit-site" whl mod installed="" wheels=()
  for whl in "$KIT"/wheels/*.whl; do
    mod=$(basename "$whl" | cut -d- -f1)
    if [ "$DRY" = 1 ] || ! "$PYTHON" -c "import $mod" 2>/dev/null; then
      wheels+=("$whl")
      installed+="$mod "
    fi
  done
  if [ ${#wheels[@]} -gt 0 ]; then
    rm -rf "$site"
    if ! PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps \
      --no-compile --target "$site" "${wheels[@]}" > "$BUILD/pip.log" 2>&1; then
      die "installing the kit's wheels failed: $(tail -3 "$BUILD/pip.log")"
    fi
  fi
  export PYTHONPATH="$site:$PYROOT${PYTHONPATH:+:$PYTHONPATH}"
  PY=$("$PYTHON" -c 'import sys; print(sys.executable)')
  PYBIND11_DIR=$("$PY" -m pybind11 --cmakedir)
  TORCH_DIR=$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
  TORCH_CUDA=$("$PY" -c 'import torch; print("ON" if torch.version.cuda else "OFF")')
  if [ "$DRY" = 1 ]; then
    # The kit-built _C and server in a package folder of their own; the Python files are the repository's.
    mkdir -p "$PYROOT/jit_embedding/bin"
    local f
    for f in "$ROOT"/jit_embedding/*; do
      case $(basename "$f") in _C*.so | bin) ;; *) ln -sfn "$f" "$PYROOT/jit_embedding/$(basename "$f")" ;; esac
    done
    ln -sfn "$BUILD/jit-embedding-server" "$PYROOT/jit_embedding/bin/jit-embedding-server"
  fi

  # The machine, and the kit's needs next to what it has.
  local glibc_have glibc_need glibcxx_need gpu python tools rtlibs which
  glibc_have=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
  glibc_need=$(sed -n 's/^glibc_max=\([0-9.]*\).*/\1/p' "$KIT/MANIFEST.txt")
  glibcxx_need=$(sed -n 's/^glibcxx_max=\([0-9.]*\).*/\1/p' "$KIT/MANIFEST.txt")
  gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
  python=$("$PY" -c 'import platform, torch; print(f"Python {platform.python_version()}, torch {torch.__version__}'\
' (CUDA {torch.version.cuda}, available {torch.cuda.is_available()})")')
  tools="$(cmake --version | head -1); $(c++ --version 2>/dev/null | head -1 || echo no c++);"
  tools+=" nvcc $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p' || echo none)"
  rtlibs=$(find "$BUILD/kit-rtlib" -mindepth 1 -printf '%f\n' | sort | tr '\n' ' ')
  rtlibs=${rtlibs% }
  which=$([ "$DRY" = 1 ] && echo "all of them, as on a bare machine" || echo "those the machine lacks")
  note "check: $([ "$DRY" = 1 ] && echo "CPU DRY RUN (GPU steps skipped: no GPU here)" || echo "GPU run"), steps $steps"
  note "check: machine: ${gpu:-no GPU}; $(uname -sr); glibc $glibc_have (the kit needs >= $glibc_need and" \
    "GLIBCXX_$glibcxx_need); $python; $tools"
  note "check: kit: $(sed -n 's/^size_mib=//p' "$KIT/MANIFEST.txt") MiB; runtime libraries from the kit ($which):" \
    "${rtlibs:-none}${installed:+; wheels installed: $installed}"
  if [ -n "$glibc_have" ] && [ "$(printf '%s\n%s\n' "$glibc_need" "$glibc_have" | sort -V | head -1)" != "$glibc_need" ]
  then
    note "check: WARNING: this glibc ($glibc_have) is older than the kit needs ($glibc_need):" \
      "its libraries may not load"
  fi

  local built=none
  for step in ${steps//,/ }; do
    # A step started with under 30 s left would outlive the device tool's limit and lose its report: it fails unrun.
    if [ $((BUDGET - SECONDS - 10)) -lt 30 ]; then
      [ "$step" = build ] && built=failed
      step_result "$step" FAIL 0 "not run: the ${BUDGET}s budget is spent ($((BUDGET - SECONDS))s left); run it in its own call"
      continue
    fi
    case $step in
      build) if step_build; then built=ok; else built=failed; fi ;;
      ctest | pytest | bench)
        if [ "$built" = failed ]; then
          step_result "$step" SKIP 0 "the build failed (an older build would not be what this tree builds)"
        elif [ "$built" = none ] && ! [ -x "$BUILD/jit-embedding-server" ]; then
          step_result "$step" FAIL 0 "no build in $BUILD (run the build step)"
        elif [ "$step" = pytest ] && [ "$DRY" = 0 ] && [ "$TORCH_CUDA" = OFF ]; then
          step_result pytest FAIL 0 "this torch has no CUDA"
        else
          "step_$step"
        fi
        ;;
      *) die "check: unknown step '$step' (of $STEPS_ALL)" ;;
    esac
  done
  note "check: $([ "$FAILED" = 0 ] && echo "all steps passed" || echo "FAILED") (logs in $OUT)"
  return "$FAILED"
}

case ${1:-} in
  pack) shift; pack "$@" ;;
  check) shift; check "$@" ;;
  *) die "usage: scripts/gpu_kit.sh pack | check [--steps $STEPS_ALL] [--cpu-dry-run]" ;;
esac
