// Internals shared by the cache's translation units: reading an entry's meta without its payloads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "cache/cache.h"

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

} // namespace jit::cache::internal
