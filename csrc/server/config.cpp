// The YAML config and the load request body: strict parsing with errors that name the key path.
#include "server/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "server/auth.h"

namespace jit::server {

namespace {

namespace fs = std::filesystem;
using Code = ServerError::Code;

[[noreturn]] void fail(const std::string &path, const std::string &msg) {
  throw ServerError(Code::kBadRequest, path + ": " + msg);
}

// How a scalar reads back in a message: quoted when it is text, bare otherwise.
std::string shown(const YAML::Node &n) {
  if (!n || n.IsNull()) return "null";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a map";
  return n.Tag() == "!" ? "'" + n.Scalar() + "'" : n.Scalar();
}

// Calls fn(key, value) for each entry of the map `n`, refusing keys not in `known` and keys given
// twice (yaml-cpp keeps the last silently, which would hide a typo'd duplicate).
void for_each_key(const YAML::Node &n, const std::string &path, const std::vector<std::string> &known,
                  const std::function<void(const std::string &, const YAML::Node &)> &fn) {
  if (!n.IsMap()) fail(path.empty() ? "config" : path, "must be a map, got " + shown(n));
  std::set<std::string> seen;
  for (auto it = n.begin(); it != n.end(); ++it) {
    const std::string key = it->first.IsScalar() ? it->first.Scalar() : "?";
    const std::string at = path.empty() ? key : path + "." + key;
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      std::string list;
      for (const auto &k : known)
        list += (list.empty() ? "" : ", ") + k;
      fail(at, "unknown key (known: " + list + ")");
    }
    if (!seen.insert(key).second) fail(at, "given twice");
    fn(key, it->second);
  }
}

// A decimal integer scalar in [min, max]. `what` completes "must be ...".
int64_t integer(const YAML::Node &n, const std::string &path, int64_t min, int64_t max, const char *what) {
  const std::string s = n.IsScalar() && n.Tag() != "!" ? n.Scalar() : "";
  bool ok = !s.empty();
  for (size_t i = 0; i < s.size() && ok; ++i)
    ok = (s[i] >= '0' && s[i] <= '9') || (i == 0 && (s[i] == '-' || s[i] == '+') && s.size() > 1);
  errno = 0;
  const long long v = ok ? std::strtoll(s.c_str(), nullptr, 10) : 0;
  if (!ok || errno == ERANGE || v < min || v > max) fail(path, std::string("must be ") + what + ", got " + shown(n));
  return v;
}

constexpr int64_t kMaxI64 = INT64_MAX;

int64_t positive(const YAML::Node &n, const std::string &path) {
  return integer(n, path, 1, kMaxI64, "a positive integer");
}

int64_t non_negative(const YAML::Node &n, const std::string &path) {
  return integer(n, path, 0, kMaxI64, "a non-negative integer");
}

std::string text(const YAML::Node &n, const std::string &path) {
  if (!n.IsScalar()) fail(path, "must be a string, got " + shown(n));
  return n.Scalar();
}

bool boolean(const YAML::Node &n, const std::string &path) {
  bool v = false;
  if (!n.IsScalar() || n.Tag() == "!" || !YAML::convert<bool>::decode(n, v)) {
    fail(path, "must be true or false, got " + shown(n));
  }
  return v;
}

// A plain YAML scalar as a JSON value: null, a boolean, a number, or else a string.
std::string scalar_json(const YAML::Node &n) {
  if (n.IsNull()) return "null";
  const std::string &s = n.Scalar();
  if (n.Tag() != "!") {
    bool b;
    if (YAML::convert<bool>::decode(n, b)) return b ? "true" : "false";
    // Only what JSON itself accepts as a number passes through bare ("01", "0x10", ".5" and
    // "inf" are YAML numbers, but would make invalid JSON).
    static const std::regex kJsonNumber(R"(-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?)");
    if (std::regex_match(s, kJsonNumber)) return s;
  }
  return json_quote(s);
}

std::string to_json(const YAML::Node &n) {
  if (n.IsMap()) {
    std::string out = "{";
    for (auto it = n.begin(); it != n.end(); ++it) {
      out += (out.size() > 1 ? ", " : "") + json_quote(it->first.Scalar()) + ": " + to_json(it->second);
    }
    return out + "}";
  }
  if (n.IsSequence()) {
    std::string out = "[";
    for (size_t i = 0; i < n.size(); ++i)
      out += (i ? ", " : "") + to_json(n[i]);
    return out + "]";
  }
  return scalar_json(n);
}

std::string absolute_from(const std::string &p, const std::string &base_dir) {
  fs::path path(p);
  if (path.is_relative()) path = fs::path(base_dir) / path;
  fs::path normal = fs::absolute(path).lexically_normal();
  // "dir/." normalises to "dir/"; drop the trailing separator so equal folders compare equal.
  if (normal.has_relative_path() && !normal.has_filename()) normal = normal.parent_path();
  return normal.string();
}

const std::vector<std::string> kEncoderKeys = {
    "name",           "artifact",           "factory",        "options",   "device",           "dtype",
    "max_batch_size", "max_queue_delay_us", "max_queue_size", "instances", "intra_op_threads", "memory_budget_mb",
    "pinned_pool_mb", "cuda_streams",       "length_buckets", "cache"};

// Applies one encoder map's keys to `e`. `artifact` is taken verbatim; callers resolve it.
void apply_encoder_keys(const YAML::Node &n, const std::string &path, EncoderEntry &e, bool *saw_artifact,
                        bool *saw_factory) {
  for_each_key(n, path, kEncoderKeys, [&](const std::string &key, const YAML::Node &v) {
    const std::string at = path + "." + key;
    if (key == "name") {
      e.name = text(v, at);
      if (!valid_encoder_name(e.name)) fail(at, "must be 1 to 128 of [A-Za-z0-9._-], got " + shown(v));
    } else if (key == "artifact") {
      e.artifact = text(v, at);
      if (e.artifact.empty()) fail(at, "must not be empty");
      *saw_artifact = true;
    } else if (key == "factory") {
      e.factory = text(v, at);
      if (e.factory.find(':') == std::string::npos) fail(at, "must be 'module:callable', got " + shown(v));
      *saw_factory = true;
    } else if (key == "options") {
      if (!v.IsMap() && !v.IsNull()) fail(at, "must be a map, got " + shown(v));
      e.options_json = v.IsNull() ? "{}" : to_json(v);
    } else if (key == "device") {
      e.device = v.IsNull() ? "" : text(v, at);
      const bool cuda_n = e.device.rfind("cuda:", 0) == 0 && e.device.size() > 5 &&
                          e.device.find_first_not_of("0123456789", 5) == std::string::npos;
      if (!e.device.empty() && e.device != "cpu" && e.device != "cuda" && !cuda_n) {
        fail(at, "must be cpu, cuda or cuda:<index>, got " + shown(v));
      }
    } else if (key == "dtype") {
      e.dtype = v.IsNull() ? "" : text(v, at);
      const auto d = dtype_from_name(e.dtype);
      if (!e.dtype.empty() && (!d || !dtype_is_floating(*d))) {
        fail(at, "must be a floating-point dtype name (float32, bfloat16, float16), got " + shown(v));
      }
    } else if (key == "max_batch_size") {
      e.engine.batching.max_batch_size = static_cast<size_t>(positive(v, at));
    } else if (key == "max_queue_delay_us") {
      e.engine.batching.max_queue_delay = std::chrono::microseconds(non_negative(v, at));
    } else if (key == "max_queue_size") {
      e.engine.batching.max_queue_size = static_cast<size_t>(positive(v, at));
    } else if (key == "instances") {
      e.engine.instances = static_cast<size_t>(integer(v, at, 1, 1024, "an integer in [1, 1024]"));
    } else if (key == "intra_op_threads") {
      e.intra_op_threads = static_cast<int>(integer(v, at, 0, 4096, "an integer in [0, 4096]"));
    } else if (key == "memory_budget_mb") {
      e.memory_budget_bytes = static_cast<size_t>(integer(v, at, 0, int64_t{1} << 40, "a non-negative integer")) << 20;
    } else if (key == "pinned_pool_mb") {
      e.pinned_pool_bytes = static_cast<size_t>(integer(v, at, 0, int64_t{1} << 40, "a non-negative integer")) << 20;
    } else if (key == "cuda_streams") {
      e.cuda_streams = boolean(v, at);
    } else if (key == "length_buckets") {
      if (!v.IsSequence()) fail(at, "must be a list of positive integers, got " + shown(v));
      std::vector<int64_t> buckets;
      for (size_t i = 0; i < v.size(); ++i) {
        buckets.push_back(positive(v[i], at + "[" + std::to_string(i) + "]"));
        if (i > 0 && buckets[i] <= buckets[i - 1]) {
          fail(at, "must be strictly ascending, got " + std::to_string(buckets[i]) + " after " +
                       std::to_string(buckets[i - 1]));
        }
      }
      e.engine.length_buckets = std::move(buckets);
    } else if (key == "cache") {
      e.cache = boolean(v, at);
    }
  });
}

const std::vector<std::string> kLimitKeys = {"max_frame_bytes", "max_envelope_bytes", "max_entries",
                                             "max_rank",        "max_tensor_bytes",   "max_decompressed_bytes",
                                             "max_depth",       "max_array_length",   "max_chunks"};

void apply_limits(const YAML::Node &n, const std::string &path, codec::CodecLimits &l) {
  const std::map<std::string, uint64_t *> fields = {{"max_frame_bytes", &l.max_frame_bytes},
                                                    {"max_envelope_bytes", &l.max_envelope_bytes},
                                                    {"max_entries", &l.max_entries},
                                                    {"max_rank", &l.max_rank},
                                                    {"max_tensor_bytes", &l.max_tensor_bytes},
                                                    {"max_decompressed_bytes", &l.max_decompressed_bytes},
                                                    {"max_depth", &l.max_depth},
                                                    {"max_array_length", &l.max_array_length},
                                                    {"max_chunks", &l.max_chunks}};
  for_each_key(n, path, kLimitKeys, [&](const std::string &key, const YAML::Node &v) {
    *fields.at(key) = static_cast<uint64_t>(positive(v, path + "." + key));
  });
}

const std::vector<std::string> kServerKeys = {"host",
                                              "port",
                                              "threads",
                                              "listen_backlog",
                                              "max_body_bytes",
                                              "retain_body_bytes",
                                              "keep_alive_max_count",
                                              "keep_alive_timeout_s",
                                              "read_timeout_s",
                                              "write_timeout_s",
                                              "tcp_nodelay",
                                              "drain_grace_ms",
                                              "artifact_root",
                                              "limits",
                                              "allow_public",
                                              "auth",
                                              "tls",
                                              "max_header_bytes",
                                              "max_deadline_s"};

// server.auth: each token from a file (relative to the config's folder) or a named environment
// variable; with neither named, the default variable (server/auth.h) when it is set.
void apply_auth(const YAML::Node &n, const std::string &base_dir, AuthSettings &auth) {
  std::string token_file, token_env, admin_file, admin_env;
  if (!n.IsNull()) {
    for_each_key(n, "server.auth", {"token_file", "token_env", "admin_token_file", "admin_token_env"},
                 [&](const std::string &key, const YAML::Node &v) {
                   const std::string at = "server.auth." + key;
                   std::string value = text(v, at);
                   if (value.empty()) fail(at, "must not be empty");
                   if (key == "token_file") token_file = absolute_from(value, base_dir);
                   if (key == "token_env") token_env = value;
                   if (key == "admin_token_file") admin_file = absolute_from(value, base_dir);
                   if (key == "admin_token_env") admin_env = value;
                 });
  }
  if (!token_file.empty() && !token_env.empty()) fail("server.auth", "give token_file or token_env, not both");
  if (!admin_file.empty() && !admin_env.empty())
    fail("server.auth", "give admin_token_file or admin_token_env, not both");
  auth.token = !token_file.empty() ? read_token_file(token_file, "server.auth.token_file")
                                   : token_from_env(token_env.empty() ? kAuthTokenEnv : token_env, "server.auth.token");
  auth.admin_token = !admin_file.empty()
                         ? read_token_file(admin_file, "server.auth.admin_token_file")
                         : token_from_env(admin_env.empty() ? kAdminTokenEnv : admin_env, "server.auth.admin_token");
  if (!auth.token.empty() && auth.token == auth.admin_token) {
    fail("server.auth", "the admin token must differ from the token (else every client could administer)");
  }
}

void apply_server(const YAML::Node &n, const std::string &base_dir, ServerConfig &c) {
  ServerSettings &s = c.server;
  bool saw_auth = false;
  for_each_key(n, "server", kServerKeys, [&](const std::string &key, const YAML::Node &v) {
    const std::string at = "server." + key;
    if (key == "host") {
      s.host = text(v, at);
      if (s.host.empty()) fail(at, "must not be empty");
    } else if (key == "port") {
      s.port = static_cast<int>(integer(v, at, 0, 65535, "an integer in [0, 65535]"));
    } else if (key == "threads") {
      s.threads = static_cast<size_t>(integer(v, at, 1, 65536, "an integer in [1, 65536]"));
    } else if (key == "listen_backlog") {
      s.listen_backlog = static_cast<int>(integer(v, at, 1, 65535, "an integer in [1, 65535]"));
    } else if (key == "max_body_bytes") {
      s.max_body_bytes = static_cast<size_t>(positive(v, at));
    } else if (key == "retain_body_bytes") {
      s.retain_body_bytes = static_cast<size_t>(non_negative(v, at));
    } else if (key == "keep_alive_max_count") {
      s.keep_alive_max_count = static_cast<size_t>(positive(v, at));
    } else if (key == "keep_alive_timeout_s") {
      s.keep_alive_timeout = std::chrono::seconds(positive(v, at));
    } else if (key == "read_timeout_s") {
      s.read_timeout = std::chrono::seconds(positive(v, at));
    } else if (key == "write_timeout_s") {
      s.write_timeout = std::chrono::seconds(positive(v, at));
    } else if (key == "tcp_nodelay") {
      s.tcp_nodelay = boolean(v, at);
    } else if (key == "drain_grace_ms") {
      s.drain_grace = std::chrono::milliseconds(non_negative(v, at));
    } else if (key == "artifact_root") {
      const std::string root = text(v, at);
      if (root.empty()) fail(at, "must not be empty");
      c.artifact_root = absolute_from(root, base_dir);
    } else if (key == "limits") {
      apply_limits(v, at, s.codec_limits);
    } else if (key == "allow_public") {
      s.allow_public = boolean(v, at);
    } else if (key == "auth") {
      apply_auth(v, base_dir, s.auth);
      saw_auth = true;
    } else if (key == "tls") {
      if (v.IsNull()) return;
      for_each_key(v, at, {"cert_file", "key_file"}, [&](const std::string &k, const YAML::Node &x) {
        const std::string file = text(x, at + "." + k);
        if (file.empty()) fail(at + "." + k, "must not be empty");
        (k == "cert_file" ? s.tls_cert_file : s.tls_key_file) = absolute_from(file, base_dir);
      });
      if (s.tls_cert_file.empty() != s.tls_key_file.empty()) fail(at, "needs both cert_file and key_file");
    } else if (key == "max_header_bytes") {
      s.max_header_bytes = static_cast<size_t>(integer(v, at, 256, int64_t{1} << 20, "an integer in [256, 1048576]"));
    } else if (key == "max_deadline_s") {
      s.max_deadline = std::chrono::seconds(integer(v, at, 1, int64_t{1} << 31, "a positive integer"));
    }
  });
  if (!saw_auth) apply_auth(YAML::Node(), base_dir, s.auth);
}

uint64_t megabytes(const YAML::Node &n, const std::string &path) {
  return static_cast<uint64_t>(integer(n, path, 0, int64_t{1} << 40, "a non-negative integer")) << 20;
}

void apply_cache(const YAML::Node &n, const std::string &base_dir, CacheConfig &c) {
  cache::CacheSettings &s = c.settings;
  const std::vector<std::string> keys = {"enabled",    "memory_mb",           "memory_shards",  "rocksdb",
                                         "redis",      "write_queue_entries", "write_queue_mb", "max_entry_mb",
                                         "pending_mb", "max_lookup_keys"};
  for_each_key(n, "cache", keys, [&](const std::string &key, const YAML::Node &v) {
    const std::string at = "cache." + key;
    if (key == "enabled") {
      c.enabled = boolean(v, at);
    } else if (key == "memory_mb") {
      s.memory_max_bytes = megabytes(v, at);
    } else if (key == "memory_shards") {
      s.memory_shards = static_cast<size_t>(integer(v, at, 1, 4096, "an integer in [1, 4096]"));
    } else if (key == "write_queue_entries") {
      s.write_queue_max_entries = static_cast<size_t>(positive(v, at));
    } else if (key == "write_queue_mb") {
      s.write_queue_max_bytes = megabytes(v, at);
    } else if (key == "max_entry_mb") {
      s.max_entry_bytes = megabytes(v, at);
    } else if (key == "pending_mb") {
      c.pending_bytes = megabytes(v, at);
    } else if (key == "max_lookup_keys") {
      c.max_lookup_keys = static_cast<size_t>(integer(v, at, 1, 65536, "an integer in [1, 65536]"));
    } else if (key == "rocksdb") {
      if (v.IsNull()) return;
      for_each_key(v, at, {"path", "max_mb", "block_cache_mb"}, [&](const std::string &k, const YAML::Node &x) {
        const std::string in = at + "." + k;
        if (k == "path") {
          const std::string p = x.IsNull() ? "" : text(x, in);
          s.rocksdb_path = p.empty() ? "" : absolute_from(p, base_dir);
        } else if (k == "max_mb") {
          s.rocksdb_max_bytes = static_cast<uint64_t>(positive(x, in)) << 20;
        } else {
          s.rocksdb_block_cache_bytes = megabytes(x, in);
        }
      });
    } else if (key == "redis") {
      if (v.IsNull()) return;
      const std::vector<std::string> redis_keys = {
          "url", "pool_size", "connect_timeout_ms", "io_timeout_ms", "retry_after_ms", "ttl_s", "key_prefix"};
      for_each_key(v, at, redis_keys, [&](const std::string &k, const YAML::Node &x) {
        const std::string in = at + "." + k;
        if (k == "url") {
          s.redis_url = x.IsNull() ? "" : text(x, in);
          if (!s.redis_url.empty() && s.redis_url.rfind("redis://", 0) != 0)
            fail(in, "must start with redis://, got " + shown(x));
        } else if (k == "pool_size") {
          s.redis_pool_size = static_cast<size_t>(integer(x, in, 1, 1024, "an integer in [1, 1024]"));
        } else if (k == "connect_timeout_ms") {
          s.redis_connect_timeout_ms = static_cast<int>(integer(x, in, 1, 600000, "an integer in [1, 600000]"));
        } else if (k == "io_timeout_ms") {
          s.redis_io_timeout_ms = static_cast<int>(integer(x, in, 1, 600000, "an integer in [1, 600000]"));
        } else if (k == "retry_after_ms") {
          s.redis_retry_after_ms = static_cast<int>(integer(x, in, 0, 3600000, "an integer in [0, 3600000]"));
        } else if (k == "ttl_s") {
          s.redis_ttl_s = static_cast<uint64_t>(non_negative(x, in));
        } else {
          s.redis_key_prefix = text(x, in);
        }
      });
    }
  });
}

YAML::Node parse_yaml(const std::string &text, const char *what) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception &e) {
    // e.mark holds the position; what() already reads "yaml-cpp: error at line L, column C: ...".
    throw ServerError(Code::kBadRequest, std::string(what) + " is not valid YAML/JSON: " + e.what());
  }
}

} // namespace

bool valid_encoder_name(const std::string &name) {
  if (name.empty() || name.size() > 128) return false;
  return std::all_of(name.begin(), name.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' ||
           ch == '-';
  });
}

ServerConfig parse_config(const std::string &yaml_text, const std::string &base_dir) {
  const YAML::Node root = parse_yaml(yaml_text, "config");
  ServerConfig c;
  c.artifact_root = absolute_from(".", base_dir);
  bool saw_server = false;
  if (root.IsNull()) {
    apply_auth(YAML::Node(), base_dir, c.server.auth);
    return c;
  }
  for_each_key(root, "", {"server", "encoders", "cache"}, [&](const std::string &key, const YAML::Node &v) {
    if (key == "server") {
      saw_server = !v.IsNull();
      if (saw_server) apply_server(v, base_dir, c);
      return;
    }
    if (key == "cache") {
      if (!v.IsNull()) apply_cache(v, base_dir, c.cache);
      return;
    }
    if (v.IsNull()) return;
    if (!v.IsSequence()) fail("encoders", "must be a list of encoder maps, got " + shown(v));
    std::map<std::string, size_t> index;
    for (size_t i = 0; i < v.size(); ++i) {
      const std::string at = "encoders[" + std::to_string(i) + "]";
      EncoderEntry e;
      bool saw_artifact = false, saw_factory = false;
      apply_encoder_keys(v[i], at, e, &saw_artifact, &saw_factory);
      if (e.name.empty()) fail(at + ".name", "missing");
      if (saw_artifact == saw_factory) {
        fail(at,
             "exactly one of artifact or factory is required, got " + std::string(saw_artifact ? "both" : "neither"));
      }
      if (saw_artifact) e.artifact = absolute_from(e.artifact, base_dir);
      const auto [it, fresh] = index.emplace(e.name, i);
      if (!fresh)
        fail(at + ".name",
             "duplicate encoder name '" + e.name + "' (also encoders[" + std::to_string(it->second) + "])");
      c.encoders.push_back(std::move(e));
    }
  });
  if (!saw_server) apply_auth(YAML::Node(), base_dir, c.server.auth);
  return c;
}

ServerConfig load_config(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ServerError(Code::kBadRequest, path + ": cannot read the config file");
  std::stringstream ss;
  ss << in.rdbuf();
  fs::path dir = fs::absolute(fs::path(path)).parent_path();
  try {
    return parse_config(ss.str(), dir.string());
  } catch (const ServerError &e) {
    throw ServerError(e.code(), path + ": " + e.what());
  }
}

EncoderEntry parse_load_request(const std::string &json_text, const std::string &name, const EncoderEntry &base,
                                const std::string &artifact_root) {
  if (!valid_encoder_name(name)) {
    throw ServerError(Code::kBadRequest, "encoder name must be 1 to 128 of [A-Za-z0-9._-], got " + json_quote(name));
  }
  const YAML::Node root = parse_yaml(json_text, "the load request body");
  EncoderEntry e = base;
  e.name = name;
  if (root.IsNull()) {
    if (e.artifact.empty() && e.factory.empty()) fail("body", "'artifact' is required to load a new encoder");
    return e;
  }
  if (!root.IsMap()) fail("body", "must be a JSON object, got " + shown(root));
  bool saw_artifact = false, saw_factory = false;
  apply_encoder_keys(root, "body", e, &saw_artifact, &saw_factory);
  if (e.name != name) fail("body.name", "must be the encoder named in the URL ('" + name + "'), got '" + e.name + "'");
  if (saw_artifact && saw_factory) fail("body", "give at most one of artifact or factory, got both");
  if (saw_artifact) {
    e.artifact = resolve_artifact_in_root(e.artifact, artifact_root);
    e.factory.clear();
  } else if (saw_factory) {
    e.artifact.clear();
  }
  if (e.artifact.empty() && e.factory.empty()) fail("body", "'artifact' is required to load a new encoder");
  return e;
}

std::string resolve_artifact_in_root(const std::string &artifact, const std::string &artifact_root) {
  if (artifact_root.empty()) {
    throw ServerError(Code::kForbidden, "forbidden: loading artifacts by path is disabled (no artifact_root)");
  }
  const auto inside = [](const fs::path &p, const fs::path &root) {
    // Component-wise, so that /srv/models-evil is not "inside" /srv/models.
    auto r = root.begin(), q = p.begin();
    for (; r != root.end(); ++r, ++q) {
      if (r->empty()) continue; // a trailing separator leaves an empty last component
      if (q == p.end() || *q != *r) return false;
    }
    return true;
  };
  const fs::path root = fs::path(artifact_root).lexically_normal();
  fs::path wanted = fs::path(artifact);
  if (wanted.is_relative()) wanted = root / wanted;
  wanted = wanted.lexically_normal();
  const std::string refusal = "forbidden: artifact " + json_quote(artifact) + " resolves outside artifact_root";
  // Lexically first, so a `..` escape is refused whether or not its target exists.
  if (!inside(wanted, root)) throw ServerError(Code::kForbidden, refusal);
  std::error_code ec;
  const fs::path real = fs::canonical(wanted, ec);
  if (ec) {
    throw ServerError(Code::kUnprocessable,
                      "cannot load artifact " + json_quote(artifact) + ": " + wanted.string() + ": " + ec.message());
  }
  const fs::path real_root = fs::canonical(root, ec);
  // Then with symlinks resolved, so a link inside the root cannot lead out of it.
  if (ec || !inside(real, real_root)) throw ServerError(Code::kForbidden, refusal);
  return real.string();
}

void check_manifest(const EncoderEntry &entry, const executor::Manifest &manifest) {
  const std::string at = "encoders[" + entry.name + "]";
  if (!entry.dtype.empty() && entry.dtype != manifest.dtype) {
    throw ServerError(Code::kUnprocessable, at + ".dtype: the config asks for " + entry.dtype +
                                                " but the artifact was exported as " + manifest.dtype +
                                                "; re-export it, or leave dtype unset to use the artifact's");
  }
  if (manifest.max_batch_size > 0 &&
      entry.engine.batching.max_batch_size > static_cast<size_t>(manifest.max_batch_size)) {
    throw ServerError(Code::kUnprocessable,
                      at + ".max_batch_size: " + std::to_string(entry.engine.batching.max_batch_size) +
                          " exceeds the artifact's exported max_batch_size " + std::to_string(manifest.max_batch_size) +
                          "; set max_batch_size to at most that");
  }
}

} // namespace jit::server
