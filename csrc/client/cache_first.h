// Cache-first requests of samples (rows): keys before inputs, so a cached sample costs 16 bytes
// of upload instead of its inputs (torch-free). Part of the client's public API; client.h holds
// the Client itself.
//
// Client::submit_rows(request), on a worker thread:
//   1. digests: each row's content digest (cache::CacheKey::content_of_inputs over the request's
//      params and the row's inputs at its own length), or the digest of the user's sample key;
//   2. the local cache (ClientOptions::local_cache_dir), when the encoder's version was confirmed
//      by a server within local_cache_version_ttl: the key binds that version;
//   3. POST /v1/cache/lookup with the remaining digests (cache mode "use"; kMaxLookupRows per
//      request): the server binds them to the version it serves now and answers the hits;
//   4. POST /v1/encode/{encoder} with only the rows that missed, max_batch_size rows per
//      request, token inputs right-padded to the longest of them with their pad value, and meta
//      {"lengths", "keys", "params", "cache"} so that the server hashes and stores each row at
//      its own length;
//   5. every row's outputs, cut back to its own length; server hits and computed rows go into the
//      local cache (unless they came through a lossy transport).
// Each request goes through the client's retries, balancing and deadline. When the encode answer
// names another version than the lookup did (an in-place update in between), the rows served by
// the lookup are encoded again, so one answer never mixes versions.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/types.h"

namespace jit::client {

// Digests per POST /v1/cache/lookup (the server's cache.max_lookup_keys defaults to 4096).
inline constexpr size_t kMaxLookupRows = 1024;

enum class CacheMode {
  kUse,     // read and write every cache
  kRefresh, // compute and overwrite: skips the lookups, the server recomputes and stores
  kBypass,  // neither read nor write any cache
};

// What the client must know of an encoder's tensors to pad and cut rows (GET /v1/encoders).
struct RowSpec {
  std::map<std::string, std::pair<int, int64_t>> token_inputs; // name -> (seq_dim, pad_value)
  std::map<std::string, int> seq_outputs;                      // name -> seq_dim
  size_t max_batch_size = 0; // rows per encode request (the encoder's max_batch_size); 0: no limit
};

struct RowsRequest {
  std::string encoder;
  // Each row's inputs, each [1, ...] at the row's own length; every row has the same names.
  std::vector<std::vector<Tensor>> rows;
  std::vector<std::string> keys; // the user's stable sample keys, one per row; empty: content digests
  std::string params;            // preprocessing params: hashed into every digest, sent as meta.params
  RowSpec spec;
  CacheMode cache = CacheMode::kUse;
  // Lossy transport of the computed rows (docs/transport.md): output name -> mode name, the key
  // "*" for every floating-point output; empty: exact. The client restores each output to its
  // dtype on the CPU. Rows that came lossy are not stored in the local cache, which holds exact
  // outputs only (server cache hits always travel exactly).
  std::map<std::string, std::string> transport;
  std::string affinity_key; // picks the endpoint under the affinity balancer ("" : the first digest)
  std::optional<std::chrono::system_clock::time_point> deadline; // default now + timeout
};

// Where a row's outputs came from.
enum class RowSource : uint8_t { kComputed = 0, kServerCache = 1, kLocalCache = 2 };

struct RowsResponse {
  // Per row, per output (names as the server sent them): [1, ...] at the row's own length. They
  // share the response bodies or cache entries they came from, which they keep alive.
  std::vector<std::vector<Tensor>> outputs;
  std::vector<RowSource> sources;
  std::string version;     // the encoder version every row's outputs are from
  std::string endpoint;    // the endpoint of the last exchange ("" when all were local)
  int exchanges = 0;       // HTTP requests this took (lookup, encode, a re-encode)
  uint64_t bytes_sent = 0; // request bodies, over every attempt
  std::chrono::microseconds latency{0};
};

} // namespace jit::client
