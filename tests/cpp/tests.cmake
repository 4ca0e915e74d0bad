# GoogleTest tests (ctest) and fuzz targets. Included from the top-level CMakeLists.txt.
enable_testing()

# A fuzz target: with JIT_BUILD_FUZZERS and clang, a libFuzzer binary; always, a replay driver
# that feeds the committed corpus through the same entry point under ctest.
function(jit_fuzz_target name source corpus)
  add_executable(${name}_replay ${source} tests/cpp/fuzz_replay_main.cpp)
  target_link_libraries(${name}_replay PRIVATE ${ARGN})
  if(JIT_BUILD_TESTS)
    add_test(NAME ${name}_corpus COMMAND ${name}_replay ${CMAKE_CURRENT_SOURCE_DIR}/${corpus})
  endif()
  if(JIT_BUILD_FUZZERS)
    if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
      message(FATAL_ERROR "JIT_BUILD_FUZZERS needs clang (CXX=clang++-14)")
    endif()
    add_executable(${name} ${source})
    target_compile_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_libraries(${name} PRIVATE ${ARGN})
  endif()
endfunction()

jit_fuzz_target(fuzz_decode tests/cpp/codec/fuzz_decode.cpp tests/cpp/codec/fuzz_corpus jit_codec)
# The server's request handling: raw HTTP bytes through HttpServer::handle_raw() of one App (plain
# C++ encoders from server/counting_executors.h, the memory cache, bearer tokens); no socket.
# zlib and brotli (Debian's httplib depends on both) decode the answers httplib compresses.
jit_fuzz_target(fuzz_http tests/cpp/server/fuzz_http.cpp tests/cpp/server/fuzz_http_corpus jit_server yaml-cpp z
                brotlidec)

if(JIT_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
  add_executable(test_codec
    tests/cpp/codec/test_codec_roundtrip.cpp
    tests/cpp/codec/test_codec_layout.cpp
    tests/cpp/codec/test_codec_meta_and_encode_errors.cpp
    tests/cpp/codec/test_codec_malformed_header.cpp
    tests/cpp/codec/test_codec_malformed_envelope.cpp
    tests/cpp/codec/test_codec_limits.cpp
    tests/cpp/common/test_thread_pool.cpp)
  target_link_libraries(test_codec PRIVATE jit_codec GTest::gtest_main)
  target_include_directories(test_codec PRIVATE ${XXHASH_INCLUDE_DIR} ${MSGPACK_INCLUDE_DIR})
  target_compile_definitions(test_codec PRIVATE MSGPACK_NO_BOOST)
  gtest_discover_tests(test_codec DISCOVERY_TIMEOUT 60)
endif()

if(JIT_BUILD_TESTS)
  add_executable(test_engine tests/cpp/engine/test_batcher.cpp tests/cpp/engine/test_engine.cpp
    tests/cpp/engine/test_length_buckets.cpp
    tests/cpp/common/test_metrics.cpp
    tests/cpp/common/test_rows.cpp)
  target_link_libraries(test_engine PRIVATE jit_engine GTest::gtest_main)
  gtest_discover_tests(test_engine DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 60)
endif()

# CPU references of the kernels (csrc/ops), and the CUDA kernels against them (GPU tests skip without a device).
# Both need the jit_ops library from the top-level CMakeLists.txt; the GPU test also needs jit_kernels (nvcc found).
if(JIT_BUILD_TESTS AND TARGET jit_ops)
  add_executable(test_ops tests/cpp/ops/test_ops_ref.cpp tests/cpp/ops/test_transport.cpp)
  target_link_libraries(test_ops PRIVATE jit_ops GTest::gtest_main)
  gtest_discover_tests(test_ops DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
  if(TARGET jit_kernels)
    add_executable(test_kernels_gpu tests/cpp/ops/test_kernels_gpu.cpp)
    target_link_libraries(test_kernels_gpu PRIVATE jit_kernels jit_ops GTest::gtest_main)
    gtest_discover_tests(test_kernels_gpu DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 300)
  endif()
elseif(JIT_BUILD_TESTS)
  message(STATUS "test_ops / test_kernels_gpu: not built, there is no jit_ops target (see CMakeLists.txt)")
endif()

# The server layer: the error mapping, the config, and HttpServer and App in-process over loopback
# (torch-free: a test executor factory), and the tracer (here for yaml-cpp, which parses its JSON); the binary itself is tested end to end by
# tests/python/test_server_http.py.
if(JIT_BUILD_TESTS)
  add_executable(test_server tests/cpp/server/test_errors.cpp tests/cpp/server/test_http_server.cpp
    tests/cpp/server/test_encode_handler.cpp tests/cpp/server/test_config.cpp tests/cpp/server/test_app.cpp
    tests/cpp/server/test_cache_service.cpp tests/cpp/server/test_auth.cpp tests/cpp/server/test_gpu_monitor.cpp
    tests/cpp/common/test_trace.cpp)
  target_include_directories(test_server PRIVATE ${MSGPACK_INCLUDE_DIR})
  target_compile_definitions(test_server PRIVATE MSGPACK_NO_BOOST)
  # httplib's client drives the server over loopback; its flags must match the library's (see
  # CMakeLists.txt). yaml-cpp parses the JSON answers.
  target_link_libraries(test_server PRIVATE jit_server PkgConfig::HTTPLIB yaml-cpp GTest::gtest_main)
  # test_cache_service.cpp opens the RocksDB cache directly and writes to Redis with hiredis, when
  # the build has them (as test_cache does).
  if(JIT_HAVE_ROCKSDB)
    target_include_directories(test_server PRIVATE ${ROCKSDB_INCLUDE_DIR})
    target_compile_definitions(test_server PRIVATE JIT_HAVE_ROCKSDB=1)
    target_link_libraries(test_server PRIVATE ${ROCKSDB_LIBRARY})
  endif()
  if(JIT_HAVE_REDIS)
    target_compile_definitions(test_server PRIVATE JIT_HAVE_REDIS=1)
    target_link_libraries(test_server PRIVATE PkgConfig::HIREDIS)
  endif()
  gtest_discover_tests(test_server DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 60)
endif()

# The executor layer: manifest.json parsing (torch-free). The LibTorch executors are tested end to
# end against PyTorch by tests/python/test_serve_encoders.py.
if(JIT_BUILD_TESTS)
  add_executable(test_executor tests/cpp/executor/test_manifest.cpp)
  target_link_libraries(test_executor PRIVATE jit_executor GTest::gtest_main)
  gtest_discover_tests(test_executor DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 60)
endif()

# The LibTorch executor's CUDA path: the pinned staging pool's bookkeeping on pageable memory
# (torch-free, runs everywhere), a TorchScript encoder on CPU, and on CUDA streams on vs off vs CPU,
# concurrent runners with held outputs, the pinned bound and the engine with two instances (these
# skip without a CUDA device). Built only with LibTorch.
if(JIT_BUILD_TESTS AND TARGET jit_executor_torch)
  add_executable(test_torch_executor tests/cpp/executor/test_device_staging.cpp
    tests/cpp/executor/test_torch_executor_gpu.cpp)
  target_link_libraries(test_torch_executor PRIVATE jit_executor_torch jit_engine jit::torch GTest::gtest_main)
  set_target_properties(test_torch_executor PROPERTIES BUILD_RPATH "${JIT_TORCH_RPATH}")
  gtest_discover_tests(test_torch_executor DISCOVERY_TIMEOUT 120 PROPERTIES TIMEOUT 300)
endif()

# The client (csrc/client): pooling, retries, deadlines, health, balancing and fork safety against
# real in-process servers (HttpServer with a scriptable echo hook, and App with the engine's
# AffineExecutor) on 127.0.0.1.
if(JIT_BUILD_TESTS)
  add_executable(test_client tests/cpp/client/test_client.cpp tests/cpp/client/test_client_endpoints.cpp)
  target_link_libraries(test_client PRIVATE jit_client jit_server GTest::gtest_main)
  gtest_discover_tests(test_client DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
endif()

# The cache (csrc/cache): keys, the memory LRU and TieredCache always; the RocksDB tier on a real
# database in a temporary directory (and its shared mode across real processes made with fork()) and
# the Redis tier against a real redis-server started on a free port, when the build has them
# (JIT_WITH_ROCKSDB / JIT_WITH_REDIS).
if(JIT_BUILD_TESTS)
  set(_cache_tests tests/cpp/cache/test_cache_key.cpp tests/cpp/cache/test_memory_tier.cpp
    tests/cpp/cache/test_tiered_cache.cpp)
  if(JIT_HAVE_ROCKSDB)
    list(APPEND _cache_tests tests/cpp/cache/test_rocksdb_tier.cpp tests/cpp/cache/test_shared_rocksdb_tier.cpp)
  endif()
  if(JIT_HAVE_REDIS)
    list(APPEND _cache_tests tests/cpp/cache/test_redis_tier.cpp)
  endif()
  add_executable(test_cache ${_cache_tests})
  target_link_libraries(test_cache PRIVATE jit_cache GTest::gtest_main)
  if(JIT_HAVE_ROCKSDB)
    target_include_directories(test_cache PRIVATE ${ROCKSDB_INCLUDE_DIR})
    target_link_libraries(test_cache PRIVATE ${ROCKSDB_LIBRARY})
  endif()
  if(JIT_HAVE_REDIS)
    target_link_libraries(test_cache PRIVATE PkgConfig::HIREDIS)
  endif()
  gtest_discover_tests(test_cache DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
endif()
