// Internals shared by the cache's translation units: reading an entry's meta without its payloads,
// and what the RocksDB tiers (rocksdb_tier.cpp, shared_rocksdb_tier.cpp) have in common.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cache/cache.h"

#ifdef JIT_HAVE_ROCKSDB
#include <rocksdb/rocksdb_namespace.h>
namespace ROCKSDB_NAMESPACE {
class DB;
class Logger;
} // namespace ROCKSDB_NAMESPACE
#endif

namespace jit::cache::internal {

// The meta every stored entry carries (see Entry::make).
struct EntryMeta {
  std::string key_hex;
  std::string encoder;
  std::string version;
  int64_t created_ms = 0;
};

// Parses an entry's meta msgpack; nullopt when a field is missing or of the wrong type.
std::optional<EntryMeta> parse_meta(const std::string &meta_msgpack);

// Reads the meta of a stored frame from its envelope only (header checksum verified, payloads not
// touched): what prune scans need. nullopt for a malformed frame.
std::optional<EntryMeta> peek_meta(const uint8_t *buf, size_t len);

// True when `meta` is selected by the version/encoder/age conditions of `spec` (not max_bytes).
bool prune_selects(const PruneSpec &spec, const EntryMeta &meta);

// The 16 bytes `key` is stored under in RocksDB: both halves big-endian, high first, so the byte
// order of stored keys is the order of their hex().
inline std::string key_bytes(const CacheKey &key) {
  std::string out(16, '\0');
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<char>(key.high() >> (56 - 8 * i));
    out[8 + i] = static_cast<char>(key.low() >> (56 - 8 * i));
  }
  return out;
}

// The key stored under `bytes` (see key_bytes); nullopt unless it is 16 bytes long.
inline std::optional<CacheKey> key_from_bytes(std::string_view bytes) {
  if (bytes.size() != 16) return std::nullopt;
  uint64_t hi = 0, lo = 0;
  for (int i = 0; i < 8; ++i) {
    hi = (hi << 8) | static_cast<uint8_t>(bytes[i]);
    lo = (lo << 8) | static_cast<uint8_t>(bytes[8 + i]);
  }
  return CacheKey(hi, lo);
}

#ifdef JIT_HAVE_ROCKSDB
// Prunes the RocksDB databases `dbs` (open read-write) as one store, in one scan of each: deletes
// what `spec` selects, and every value that is not a readable entry under its key (counted in
// metrics.corrupt, not in the result); then, with spec.max_bytes, the oldest entries of all of them
// together until what is left is at most max_bytes (key + value bytes). Counts the removed entries
// in metrics.evictions. Returns what was removed; `bytes_left`, when given, receives the exact bytes
// left in each database, in the order of `dbs`. Never throws; a failed delete is retried by a later
// prune.
PruneResult prune_rocksdb(const std::vector<ROCKSDB_NAMESPACE::DB *> &dbs, const PruneSpec &spec, TierMetrics &metrics,
                          std::vector<uint64_t> *bytes_left);

// RocksDB's own log for Options::info_log: WARN and above, one stderr line each, after `prefix`.
// Never a LOG file in the cache folder: when that disk fills, librocksdb 7.8 as Debian builds it
// (assertions on) aborts the whole process on the first log line after a failed LOG write
// (WritableFileWriter::AssertFalseAndGetStatusForPrevError), and a full disk must only cost writes.
std::shared_ptr<ROCKSDB_NAMESPACE::Logger> stderr_logger(std::string prefix);

// Counts a failed write in metrics.write_errors and says so on stderr once per run of failures
// (`failing` remembers the run; a later success ends it, with one more line). `what` names the store.
void note_write(bool ok, const std::string &status, const std::string &what, TierMetrics &metrics,
                std::atomic<bool> &failing);
#endif

} // namespace jit::cache::internal
