// The server's YAML configuration: HTTP settings and the encoders to serve.
//
//   server:                       # every key optional; defaults are ServerSettings' defaults
//     host: 127.0.0.1
//     port: 8000
//     threads: 512
//     listen_backlog: 4096        # connections waiting to be accepted (capped by net.core.somaxconn)
//     max_body_bytes: 1073741824
//     retain_body_bytes: 67108864 # per-thread body buffers above this are freed after each request
//     keep_alive_max_count: 10000
//     keep_alive_timeout_s: 5
//     read_timeout_s: 30
//     write_timeout_s: 30
//     tcp_nodelay: true
//     drain_grace_ms: 30000
//     artifact_root: .            # POST /v1/encoders/{name}/load may only name artifacts inside it;
//                                 # default: the config file's folder
//     limits: {max_frame_bytes: 4294967296, ...}   # codec::CodecLimits fields by name
//     allow_public: false         # a host other than loopback must be allowed explicitly
//     auth:                       # bearer tokens (server/auth.h); each from a file OR a variable
//       token_file: secrets/token # relative to the config file's folder
//       token_env: MY_TOKEN       # default when neither is given: $JIT_EMBEDDING_AUTH_TOKEN if set
//       admin_token_file: secrets/admin   # or admin_token_env; default: $JIT_EMBEDDING_ADMIN_TOKEN
//     tls: {cert_file: server.crt, key_file: server.key}   # PEM files: HTTPS only
//     max_header_bytes: 8192      # request line + headers; more answers 431
//     max_deadline_s: 3600        # an X-Deadline-Ms further away answers 400
//   encoders:
//     - name: clip                # [A-Za-z0-9._-]+, unique: it is a URL segment and a metric label
//       artifact: exports/clip    # folder with manifest.json, relative to the config file; or
//       factory: mypkg.mod:make   # a Python factory (`jit-embedding serve` only)
//       options: {...}            # free-form map, handed to a Python factory as kwargs (JSON)
//       device: cpu               # "" = the manifest's
//       dtype: float32            # "" = the manifest's; when set, must equal it
//       max_batch_size: 32
//       max_queue_delay_us: 2000
//       max_queue_size: 1024
//       instances: 1
//       intra_op_threads: 0
//       memory_budget_mb: 0
//       pinned_pool_mb: 256       # CUDA: pinned host staging per encoder; larger batches use pageable memory
//       cuda_streams: true        # CUDA: a copy and a compute stream per instance (overlap needs instances >= 2)
//       length_buckets: [16, 32, 64, 128, 256, 512]
//       cache: true               # false: this encoder's outputs are never cached (non-deterministic)
//   cache:                        # the embedding cache (server/cache_service.h); every key optional
//     enabled: true
//     memory_mb: 1024             # in-memory LRU over encoded entries; 0: none
//     memory_shards: 16
//     rocksdb:                    # local disk; no path: none
//       path: /var/cache/jit      # relative to the config file's folder
//       max_mb: 65536             # the oldest entries are pruned beyond this
//       block_cache_mb: 64
//     redis:                      # shared between hosts; no url: none
//       url: redis://host:6379/0
//       pool_size: 4
//       connect_timeout_ms: 200
//       io_timeout_ms: 500
//       retry_after_ms: 1000      # after a failure Redis is skipped (misses) this long
//       ttl_s: 604800             # 0: entries never expire
//       key_prefix: "jit:"
//     write_queue_entries: 1024   # writes waiting for RocksDB/Redis; more are dropped and counted
//     write_queue_mb: 256
//     max_entry_mb: 256           # larger entries are not cached
//     pending_mb: 256             # computed outputs waiting to be encoded as entries
//     max_lookup_keys: 4096       # keys per POST /v1/cache/lookup
//
// Every error is a ServerError whose message starts with the key's path, e.g.
// "encoders[1].max_batch_size: must be a positive integer, got -3". Syntax errors, unknown keys,
// wrong types and bad values are kBadRequest; an entry that disagrees with its artifact's manifest
// (check_manifest) is kUnprocessable; an artifact outside artifact_root is kForbidden.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "cache/cache.h"
#include "engine/engine.h"
#include "executor/manifest.h"
#include "executor/torch_executor.h"
#include "server/errors.h"
#include "server/http_server.h"

namespace jit::server {

// One encoder to serve, as configured. Also the unit of an in-place load.
struct EncoderEntry {
  std::string name;
  std::string artifact;            // absolute path of the artifact folder (or manifest.json); "" with factory
  std::string factory;             // "module:callable" of a Python factory; "" with artifact
  std::string options_json = "{}"; // the `options` map as a JSON object
  std::string device;              // "" = the manifest's
  std::string dtype;               // "" = the manifest's
  engine::EncoderConfig engine;    // batching, instances, length buckets
  int intra_op_threads = 0;        // CPU threads inside one forward; 0 = torch's default
  // The LibTorch executor's settings (executor/torch_executor.h), with its defaults.
  size_t memory_budget_bytes = executor::TorchExecutorOptions{}.memory_budget_bytes; // CUDA: 0 = no check
  size_t pinned_pool_bytes = executor::TorchExecutorOptions{}.pinned_pool_bytes;     // CUDA with streams
  bool cuda_streams = executor::TorchExecutorOptions{}.streams;                      // CUDA
  bool cache = true; // outputs go through the server's cache (when it is enabled)
};

// The server's embedding cache, as configured (server/cache_service.h).
struct CacheConfig {
  bool enabled = true;
  cache::CacheSettings settings;                // tiers, write queue, entry size limit
  uint64_t pending_bytes = uint64_t{256} << 20; // computed outputs not yet encoded as entries
  size_t max_lookup_keys = 4096;                // keys per POST /v1/cache/lookup
};

struct ServerConfig {
  ServerSettings server;
  std::string artifact_root; // absolute; "" = loading by artifact path is disabled
  std::vector<EncoderEntry> encoders;
  CacheConfig cache;
};

// Parses config text. `base_dir` is the folder relative paths (artifacts, artifact_root) resolve
// against, and the default artifact_root. An empty document is a valid config with defaults.
// Throws ServerError (see the file comment).
ServerConfig parse_config(const std::string &yaml_text, const std::string &base_dir);

// Reads and parses the config file at `path`; relative paths resolve against its folder.
// Throws ServerError(kBadRequest) when the file cannot be read; errors name the file first.
ServerConfig load_config(const std::string &path);

// The body of POST /v1/encoders/{name}/load: a JSON object with the keys of a config entry (all
// optional; `name`, if given, must equal `name`), applied over `base` (the entry serving now, or
// a default entry for a new name). A given `artifact` replaces `factory` and vice versa; the
// artifact resolves against `artifact_root` through resolve_artifact_in_root(). An empty body
// is `{}`: reload the same artifact with the same settings.
// Throws ServerError: kBadRequest for malformed JSON, unknown keys or bad values; kForbidden or
// kUnprocessable from resolve_artifact_in_root(); kBadRequest when neither artifact nor factory
// is left.
EncoderEntry parse_load_request(const std::string &json_text, const std::string &name, const EncoderEntry &base,
                                const std::string &artifact_root);

// Resolves `artifact` (relative to `artifact_root`, or absolute) to its real path, refusing
// anything outside the root: a `..` that climbs out, an absolute path elsewhere, or a symlink
// that leads out. Returns the canonical absolute path.
// Throws ServerError(kForbidden) for an empty root or a path outside it, and
// ServerError(kUnprocessable) when the path does not exist.
std::string resolve_artifact_in_root(const std::string &artifact, const std::string &artifact_root);

// Checks a configured entry against its artifact's manifest: a set dtype must equal the
// manifest's, and max_batch_size must not exceed the manifest's exported bound (when it has one).
// Throws ServerError(kUnprocessable) naming the encoder, the key and both values.
void check_manifest(const EncoderEntry &entry, const executor::Manifest &manifest);

// True for a name an encoder may have: non-empty, at most 128 of [A-Za-z0-9._-].
bool valid_encoder_name(const std::string &name);

} // namespace jit::server
