// The YAML config and the load request body: every key read back, every kind of error named by
// its key path, artifact paths confined to artifact_root, and entries checked against manifests.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "server/config.h"

namespace jit::server {
namespace {

namespace fs = std::filesystem;
using Code = ServerError::Code;

// A fresh folder under the system temp dir, removed with the object.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "jit-config-XXXXXX").string();
    path = fs::path(mkdtemp(tmpl.data()));
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void write_file(const fs::path &p, const std::string &text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

// The error `fn` throws; fails the test if it throws none.
template <typename Fn> ServerError error_of(Fn &&fn) {
  try {
    fn();
  } catch (const ServerError &e) {
    return e;
  }
  ADD_FAILURE() << "no ServerError thrown";
  return ServerError(Code::kInternal, "");
}

TEST(Config, EveryKeyIsReadBack) {
  const std::string yaml = R"(
server:
  host: 0.0.0.0
  port: 8000
  threads: 64
  max_body_bytes: 1048576
  retain_body_bytes: 0
  keep_alive_max_count: 50
  keep_alive_timeout_s: 7
  read_timeout_s: 11
  write_timeout_s: 12
  tcp_nodelay: false
  drain_grace_ms: 1500
  artifact_root: models
  limits: {max_frame_bytes: 1000000, max_entries: 16, max_rank: 4, max_tensor_bytes: 500000,
           max_envelope_bytes: 4096, max_decompressed_bytes: 900000, max_depth: 8,
           max_array_length: 100, max_chunks: 10}
encoders:
  - name: clip
    artifact: exports/clip
    device: cuda:1
    dtype: bfloat16
    max_batch_size: 64
    max_queue_delay_us: 0
    max_queue_size: 4096
    instances: 2
    intra_op_threads: 4
    memory_budget_mb: 512
    pinned_pool_mb: 64
    cuda_streams: false
    length_buckets: [16, 32, 77]
  - name: py.module_1
    factory: mypkg.mod:make
    options: {layers: [1, 2], scale: 0.5, tag: "x\"y", on: true, none: null, zero: 01}
)";
  const ServerConfig c = parse_config(yaml, "/srv/conf");
  EXPECT_EQ(c.server.host, "0.0.0.0");
  EXPECT_EQ(c.server.port, 8000);
  EXPECT_EQ(c.server.threads, 64u);
  EXPECT_EQ(c.server.max_body_bytes, 1048576u);
  EXPECT_EQ(c.server.retain_body_bytes, 0u);
  EXPECT_EQ(c.server.keep_alive_max_count, 50u);
  EXPECT_EQ(c.server.keep_alive_timeout, std::chrono::seconds(7));
  EXPECT_EQ(c.server.read_timeout, std::chrono::seconds(11));
  EXPECT_EQ(c.server.write_timeout, std::chrono::seconds(12));
  EXPECT_FALSE(c.server.tcp_nodelay);
  EXPECT_EQ(c.server.drain_grace, std::chrono::milliseconds(1500));
  EXPECT_EQ(c.artifact_root, "/srv/conf/models");
  const codec::CodecLimits &l = c.server.codec_limits;
  EXPECT_EQ(l.max_frame_bytes, 1000000u);
  EXPECT_EQ(l.max_entries, 16u);
  EXPECT_EQ(l.max_rank, 4u);
  EXPECT_EQ(l.max_tensor_bytes, 500000u);
  EXPECT_EQ(l.max_envelope_bytes, 4096u);
  EXPECT_EQ(l.max_decompressed_bytes, 900000u);
  EXPECT_EQ(l.max_depth, 8u);
  EXPECT_EQ(l.max_array_length, 100u);
  EXPECT_EQ(l.max_chunks, 10u);

  ASSERT_EQ(c.encoders.size(), 2u);
  const EncoderEntry &clip = c.encoders[0];
  EXPECT_EQ(clip.name, "clip");
  EXPECT_EQ(clip.artifact, "/srv/conf/exports/clip");
  EXPECT_EQ(clip.factory, "");
  EXPECT_EQ(clip.options_json, "{}");
  EXPECT_EQ(clip.device, "cuda:1");
  EXPECT_EQ(clip.dtype, "bfloat16");
  EXPECT_EQ(clip.engine.batching.max_batch_size, 64u);
  EXPECT_EQ(clip.engine.batching.max_queue_delay, std::chrono::microseconds(0));
  EXPECT_EQ(clip.engine.batching.max_queue_size, 4096u);
  EXPECT_EQ(clip.engine.instances, 2u);
  EXPECT_EQ(clip.intra_op_threads, 4);
  EXPECT_EQ(clip.memory_budget_bytes, size_t{512} << 20);
  EXPECT_EQ(clip.pinned_pool_bytes, size_t{64} << 20);
  EXPECT_FALSE(clip.cuda_streams);
  EXPECT_EQ(clip.engine.length_buckets, (std::vector<int64_t>{16, 32, 77}));

  const EncoderEntry &py = c.encoders[1];
  EXPECT_EQ(py.name, "py.module_1");
  EXPECT_EQ(py.artifact, "");
  EXPECT_EQ(py.factory, "mypkg.mod:make");
  // Numbers and booleans stay JSON numbers and booleans; "01" is no JSON number, so it is text.
  EXPECT_EQ(py.options_json,
            R"({"layers": [1, 2], "scale": 0.5, "tag": "x\"y", "on": true, "none": null, "zero": "01"})");
  // Unset keys keep the defaults.
  const EncoderEntry defaults;
  EXPECT_EQ(py.engine.batching.max_batch_size, defaults.engine.batching.max_batch_size);
  EXPECT_EQ(py.engine.batching.max_queue_delay, defaults.engine.batching.max_queue_delay);
  EXPECT_EQ(py.engine.instances, 1u);
  EXPECT_TRUE(py.engine.length_buckets.empty());
  EXPECT_EQ(py.pinned_pool_bytes, size_t{256} << 20) << "256 MiB of pinned staging per encoder by default";
  EXPECT_TRUE(py.cuda_streams) << "CUDA streams are on by default";
}

TEST(Config, EmptyDocumentAndEmptySectionsAreDefaults) {
  for (const char *yaml : {"", "# nothing\n", "server:\nencoders:\n", "server: {}\nencoders: []\n"}) {
    const ServerConfig c = parse_config(yaml, "/etc/jit");
    const ServerSettings d;
    EXPECT_EQ(c.server.host, d.host) << yaml;
    EXPECT_EQ(c.server.port, d.port);
    EXPECT_EQ(c.server.threads, d.threads);
    EXPECT_EQ(c.server.max_body_bytes, d.max_body_bytes);
    EXPECT_EQ(c.artifact_root, "/etc/jit") << "artifact_root defaults to the config's folder";
    EXPECT_TRUE(c.encoders.empty());
  }
}

TEST(Config, ErrorsNameTheKeyPath) {
  const std::string ok_entry = "  - {name: a, artifact: x}\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"bogus: 1", "bogus: unknown key (known: server, encoders, cache)"},
      {"cache: {memory_mb: -1}", "cache.memory_mb: must be a non-negative integer, got -1"},
      {"cache: {rocksdb: {size: 1}}", "cache.rocksdb.size: unknown key (known: path, max_mb, block_cache_mb)"},
      {"cache: {redis: {url: 'http://x'}}", "cache.redis.url: must start with redis://, got 'http://x'"},
      {"cache: {max_lookup_keys: 0}", "cache.max_lookup_keys: must be an integer in [1, 65536], got 0"},
      {"cache: {enabled: maybe}", "cache.enabled: must be true or false, got maybe"},
      {"encoders:\n  - {name: a, artifact: x, cache: 2}", "encoders[0].cache: must be true or false, got 2"},
      {"- 1", "config: must be a map, got a list"},
      {"server: {hots: x}", "server.hots: unknown key (known: host, port,"},
      {"server: {limits: {max_frame: 1}}", "server.limits.max_frame: unknown key (known: max_frame_bytes,"},
      {"server: {limits: {max_rank: 0}}", "server.limits.max_rank: must be a positive integer, got 0"},
      {"server: {port: abc}", "server.port: must be an integer in [0, 65535], got abc"},
      {"server: {port: 70000}", "server.port: must be an integer in [0, 65535], got 70000"},
      {"server: {port: 80.5}", "server.port: must be an integer in [0, 65535], got 80.5"},
      {"server: {threads: 0}", "server.threads: must be an integer in [1, 65536], got 0"},
      {"server: {max_body_bytes: '1024'}", "server.max_body_bytes: must be a positive integer, got '1024'"},
      {"server: {keep_alive_timeout_s: [1]}", "server.keep_alive_timeout_s: must be a positive integer, got a list"},
      {"server: {tcp_nodelay: 3}", "server.tcp_nodelay: must be true or false, got 3"},
      {"server: {host: {a: 1}}", "server.host: must be a string, got a map"},
      {"server: {drain_grace_ms: -1}", "server.drain_grace_ms: must be a non-negative integer, got -1"},
      {"server: 5", "server: must be a map, got 5"},
      {"encoders: {name: a}", "encoders: must be a list of encoder maps, got a map"},
      {"encoders:\n" + ok_entry + "  - {name: b, artifact: y, max_batch_size: -3}\n",
       "encoders[1].max_batch_size: must be a positive integer, got -3"},
      {"encoders:\n  - {name: a, artifact: x, max_queue_size: 0}", "encoders[0].max_queue_size: must be a positive"},
      {"encoders:\n  - {name: a, artifact: x, instances: 0}", "encoders[0].instances: must be an integer in [1, 1024]"},
      {"encoders:\n  - {name: a, artifact: x, max_queue_delay_us: -5}",
       "encoders[0].max_queue_delay_us: must be a non-negative integer, got -5"},
      {"encoders:\n  - {name: a, artifact: x, memory_budget_mb: lots}",
       "encoders[0].memory_budget_mb: must be a non-negative integer, got lots"},
      {"encoders:\n  - {name: a, artifact: x, pinned_pool_mb: -1}",
       "encoders[0].pinned_pool_mb: must be a non-negative integer, got -1"},
      {"encoders:\n  - {name: a, artifact: x, pinned_pool_mb: 1.5}",
       "encoders[0].pinned_pool_mb: must be a non-negative integer, got 1.5"},
      {"encoders:\n  - {name: a, artifact: x, cuda_streams: 2}",
       "encoders[0].cuda_streams: must be true or false, got 2"},
      {"encoders:\n  - {name: a, artifact: x, cuda_streams: 'yes'}",
       "encoders[0].cuda_streams: must be true or false, got 'yes'"},
      {"encoders:\n  - {artifact: x}", "encoders[0].name: missing"},
      {"encoders:\n  - {name: 'a b', artifact: x}", "encoders[0].name: must be 1 to 128 of [A-Za-z0-9._-], got 'a b'"},
      {"encoders:\n" + ok_entry + ok_entry, "encoders[1].name: duplicate encoder name 'a' (also encoders[0])"},
      {"encoders:\n  - {name: a, artifact: x, factory: 'm:f'}",
       "encoders[0]: exactly one of artifact or factory is required, got both"},
      {"encoders:\n  - {name: a}", "encoders[0]: exactly one of artifact or factory is required, got neither"},
      {"encoders:\n  - {name: a, factory: nocolon}", "encoders[0].factory: must be 'module:callable', got nocolon"},
      {"encoders:\n  - {name: a, artifact: x, artefact: y}", "encoders[0].artefact: unknown key (known: name,"},
      {"encoders:\n  - {name: a, artifact: x, length_buckets: [16, 8]}",
       "encoders[0].length_buckets: must be strictly ascending, got 8 after 16"},
      {"encoders:\n  - {name: a, artifact: x, length_buckets: [16, 0]}",
       "encoders[0].length_buckets[1]: must be a positive integer, got 0"},
      {"encoders:\n  - {name: a, artifact: x, length_buckets: 16}",
       "encoders[0].length_buckets: must be a list of positive integers, got 16"},
      {"encoders:\n  - {name: a, factory: 'm:f', options: [1]}", "encoders[0].options: must be a map, got a list"},
      {"encoders:\n  - {name: a, artifact: x, device: tpu}", "encoders[0].device: must be cpu, cuda or cuda:<index>"},
      {"encoders:\n  - {name: a, artifact: x, dtype: int8}",
       "encoders[0].dtype: must be a floating-point dtype name (float32, bfloat16, float16), got int8"},
      {"encoders:\n  - {name: a, artifact: ''}", "encoders[0].artifact: must not be empty"},
      {"server:\n  port: 1\n  port: 2\n", "server.port: given twice"},
  };
  for (const auto &[yaml, want] : cases) {
    // C++17 lambdas cannot capture a structured binding (clang refuses): an init-capture can.
    const ServerError e = error_of([&, &text = yaml] { parse_config(text, "/base"); });
    EXPECT_EQ(e.code(), Code::kBadRequest) << yaml;
    EXPECT_EQ(std::string(e.what()).rfind(want, 0), 0u) << "config:\n"
                                                        << yaml << "\nwant: " << want << "\ngot:  " << e.what();
  }
}

TEST(Config, CacheSectionIsReadBackWithPathsResolved) {
  const ServerConfig d = parse_config("", "/etc/jit");
  EXPECT_TRUE(d.cache.enabled);
  EXPECT_EQ(d.cache.settings.memory_max_bytes, cache::CacheSettings().memory_max_bytes);
  EXPECT_EQ(d.cache.settings.rocksdb_path, "") << "no RocksDB tier unless a path is given";
  EXPECT_EQ(d.cache.settings.redis_url, "");

  const ServerConfig c = parse_config(R"(
cache:
  enabled: false
  memory_mb: 3
  memory_shards: 4
  rocksdb: {path: db, max_mb: 5, block_cache_mb: 6}
  redis: {url: 'redis://h:1/2', pool_size: 7, connect_timeout_ms: 8, io_timeout_ms: 9, retry_after_ms: 10,
          ttl_s: 11, key_prefix: 'p:'}
  write_queue_entries: 12
  write_queue_mb: 13
  max_entry_mb: 14
  pending_mb: 15
  max_lookup_keys: 16
encoders:
  - {name: a, artifact: x, cache: false}
)",
                                      "/etc/jit");
  const cache::CacheSettings &s = c.cache.settings;
  EXPECT_FALSE(c.cache.enabled);
  EXPECT_EQ(s.memory_max_bytes, 3u << 20);
  EXPECT_EQ(s.memory_shards, 4u);
  EXPECT_EQ(s.rocksdb_path, "/etc/jit/db");
  EXPECT_EQ(s.rocksdb_max_bytes, 5u << 20);
  EXPECT_EQ(s.rocksdb_block_cache_bytes, 6u << 20);
  EXPECT_EQ(s.redis_url, "redis://h:1/2");
  EXPECT_EQ(s.redis_pool_size, 7u);
  EXPECT_EQ(s.redis_connect_timeout_ms, 8);
  EXPECT_EQ(s.redis_io_timeout_ms, 9);
  EXPECT_EQ(s.redis_retry_after_ms, 10);
  EXPECT_EQ(s.redis_ttl_s, 11u);
  EXPECT_EQ(s.redis_key_prefix, "p:");
  EXPECT_EQ(s.write_queue_max_entries, 12u);
  EXPECT_EQ(s.write_queue_max_bytes, 13u << 20);
  EXPECT_EQ(s.max_entry_bytes, 14u << 20);
  EXPECT_EQ(c.cache.pending_bytes, 15u << 20);
  EXPECT_EQ(c.cache.max_lookup_keys, 16u);
  EXPECT_FALSE(c.encoders.at(0).cache);
}

TEST(Config, SyntaxErrorsSayWhere) {
  const ServerError e = error_of([] { parse_config("server: {port: 1\nencoders: [", "/b"); });
  EXPECT_EQ(e.code(), Code::kBadRequest);
  EXPECT_NE(std::string(e.what()).find("config is not valid YAML/JSON"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("line"), std::string::npos) << e.what();
}

TEST(Config, LoadConfigResolvesAgainstTheFileAndNamesItInErrors) {
  TempDir dir;
  const fs::path file = dir.path / "conf" / "server.yaml";
  write_file(file, "encoders:\n  - {name: a, artifact: ../exports/a}\n");
  const ServerConfig c = load_config(file.string());
  ASSERT_EQ(c.encoders.size(), 1u);
  EXPECT_EQ(c.encoders[0].artifact, (dir.path / "exports" / "a").string());
  EXPECT_EQ(c.artifact_root, (dir.path / "conf").string());

  write_file(file, "server: {port: -1}\n");
  ServerError e = error_of([&] { load_config(file.string()); });
  EXPECT_EQ(std::string(e.what()), file.string() + ": server.port: must be an integer in [0, 65535], got -1");

  e = error_of([&] { load_config((dir.path / "missing.yaml").string()); });
  EXPECT_EQ(e.code(), Code::kBadRequest);
  EXPECT_NE(std::string(e.what()).find("missing.yaml: cannot read the config file"), std::string::npos);
}

TEST(Config, ManifestDtypeAndBatchBoundAreChecked) {
  executor::Manifest m;
  m.dtype = "float32";
  m.max_batch_size = 16;
  EncoderEntry e;
  e.name = "clip";
  e.engine.batching.max_batch_size = 16;
  EXPECT_NO_THROW(check_manifest(e, m)); // dtype unset: the manifest's
  e.dtype = "float32";
  EXPECT_NO_THROW(check_manifest(e, m));
  e.dtype = "bfloat16";
  ServerError err = error_of([&] { check_manifest(e, m); });
  EXPECT_EQ(err.code(), Code::kUnprocessable);
  EXPECT_EQ(http_status(err), 422);
  EXPECT_NE(std::string(err.what())
                .find("encoders[clip].dtype: the config asks for bfloat16 but the artifact was "
                      "exported as float32"),
            std::string::npos)
      << err.what();
  e.dtype = "";
  e.engine.batching.max_batch_size = 17;
  err = error_of([&] { check_manifest(e, m); });
  EXPECT_NE(std::string(err.what()).find("max_batch_size: 17 exceeds the artifact's exported max_batch_size 16"),
            std::string::npos)
      << err.what();
  m.max_batch_size = 0; // unbounded export
  EXPECT_NO_THROW(check_manifest(e, m));
}

// An artifact root with one artifact inside, one folder beside it, and links both ways.
struct Root {
  TempDir dir;
  fs::path root = dir.path / "models";
  Root() {
    fs::create_directories(root / "clip-v2");
    fs::create_directories(dir.path / "outside");
    fs::create_directories(dir.path / "models-evil");
    fs::create_directory_symlink(dir.path / "outside", root / "escape");
    fs::create_directory_symlink(root / "clip-v2", root / "alias");
  }
};

TEST(ArtifactRoot, InsideResolvesToTheRealPath) {
  Root r;
  const std::string real = fs::canonical(r.root / "clip-v2").string();
  EXPECT_EQ(resolve_artifact_in_root("clip-v2", r.root.string()), real);
  EXPECT_EQ(resolve_artifact_in_root("./x/../clip-v2/", r.root.string()), real);
  EXPECT_EQ(resolve_artifact_in_root((r.root / "clip-v2").string(), r.root.string()), real);
  EXPECT_EQ(resolve_artifact_in_root("alias", r.root.string()), real) << "links inside the root are fine";
}

TEST(ArtifactRoot, EscapesAreForbiddenAndMissingIsUnprocessable) {
  Root r;
  const std::string root = r.root.string();
  for (const std::string &bad : {std::string("../outside"), std::string("../nonexistent"), std::string("escape"),
                                 std::string("clip-v2/../../outside"), (r.dir.path / "outside").string(),
                                 std::string("../models-evil"), std::string("/etc")}) {
    const ServerError e = error_of([&] { resolve_artifact_in_root(bad, root); });
    EXPECT_EQ(e.code(), Code::kForbidden) << bad << ": " << e.what();
    EXPECT_EQ(http_status(e), 403);
    EXPECT_NE(std::string(e.what()).find("resolves outside artifact_root"), std::string::npos) << e.what();
  }
  const ServerError missing = error_of([&] { resolve_artifact_in_root("clip-v3", root); });
  EXPECT_EQ(missing.code(), Code::kUnprocessable) << missing.what();
  EXPECT_NE(std::string(missing.what()).find("clip-v3"), std::string::npos);
  const ServerError disabled = error_of([&] { resolve_artifact_in_root("clip-v2", ""); });
  EXPECT_EQ(disabled.code(), Code::kForbidden);
}

TEST(LoadRequest, OverridesApplyOverTheServingEntry) {
  Root r;
  EncoderEntry base;
  base.name = "clip";
  base.artifact = "/somewhere/clip-v1";
  base.engine.batching.max_batch_size = 8;
  base.engine.instances = 3;
  EncoderEntry e = parse_load_request(R"({"artifact": "clip-v2", "max_batch_size": 4, "length_buckets": [8]})", "clip",
                                      base, r.root.string());
  EXPECT_EQ(e.name, "clip");
  EXPECT_EQ(e.artifact, fs::canonical(r.root / "clip-v2").string());
  EXPECT_EQ(e.engine.batching.max_batch_size, 4u);
  EXPECT_EQ(e.engine.instances, 3u) << "keys not given keep the serving entry's values";
  EXPECT_EQ(e.engine.length_buckets, (std::vector<int64_t>{8}));

  // The CUDA staging keys apply over the serving entry like any other; 0 MiB is allowed (no pinned staging).
  e = parse_load_request(R"({"pinned_pool_mb": 0, "cuda_streams": false})", "clip", base, r.root.string());
  EXPECT_EQ(e.pinned_pool_bytes, 0u);
  EXPECT_FALSE(e.cuda_streams);
  EXPECT_EQ(e.artifact, base.artifact);

  // No body, or {}: reload the same artifact with the same settings.
  for (const char *body : {"", "{}"}) {
    e = parse_load_request(body, "clip", base, r.root.string());
    EXPECT_EQ(e.artifact, base.artifact) << body;
    EXPECT_EQ(e.engine.batching.max_batch_size, 8u);
  }
  // A factory replaces the artifact, and the name may be repeated if it agrees.
  e = parse_load_request(R"({"name": "clip", "factory": "pkg:make", "options": {"k": 1}})", "clip", base,
                         r.root.string());
  EXPECT_EQ(e.artifact, "");
  EXPECT_EQ(e.factory, "pkg:make");
  EXPECT_EQ(e.options_json, R"({"k": 1})");
}

TEST(LoadRequest, MalformedBodiesAre400) {
  Root r;
  const EncoderEntry fresh;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", "the load request body is not valid YAML/JSON"},
      {"[1, 2]", "body: must be a JSON object, got a list"},
      {"\"text\"", "body: must be a JSON object, got 'text'"},
      {R"({"max_batch_size": 0, "artifact": "clip-v2"})", "body.max_batch_size: must be a positive integer, got 0"},
      {R"({"artifact": "clip-v2", "bogus": 1})", "body.bogus: unknown key"},
      {R"({"name": "other", "artifact": "clip-v2"})", "body.name: must be the encoder named in the URL"},
      {R"({"artifact": "clip-v2", "factory": "a:b"})", "body: give at most one of artifact or factory, got both"},
      {"", "body: 'artifact' is required to load a new encoder"},
      {R"({"max_batch_size": 4})", "body: 'artifact' is required to load a new encoder"},
  };
  for (const auto &[body, want] : cases) {
    const ServerError e = error_of([&, &text = body] { parse_load_request(text, "new", fresh, r.root.string()); });
    EXPECT_EQ(e.code(), Code::kBadRequest) << body << ": " << e.what();
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << "body: " << body << "\ngot: " << e.what();
  }
  EXPECT_EQ(error_of([&] { parse_load_request("{}", "bad name", fresh, r.root.string()); }).code(), Code::kBadRequest);
  EXPECT_EQ(
      error_of([&] { parse_load_request(R"({"artifact": "../outside"})", "new", fresh, r.root.string()); }).code(),
      Code::kForbidden);
}

} // namespace
} // namespace jit::server
