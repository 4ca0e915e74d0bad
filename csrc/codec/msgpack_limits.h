// The msgpack-c parse limits used for every untrusted msgpack value (the envelope, and meta on
// encode). Internal to the codec.
#pragma once

#include <algorithm>
#include <cstddef>

#include <msgpack.hpp>

#include "codec/codec.h"

namespace jit::codec::internal {

// Limits for parsing n bytes of msgpack. msgpack-c allocates a fixed-size object per element up
// front, so element counts are bounded both by max_array_length and by the bytes that could
// possibly encode them (one per array element, two per map pair): a 5-byte array header can
// then never ask for gigabytes.
inline msgpack::unpack_limit bounded_unpack_limit(size_t n, const CodecLimits &lim) {
  return msgpack::unpack_limit(std::min<size_t>(n, lim.max_array_length), std::min<size_t>(n / 2, lim.max_array_length),
                               n, n, n, lim.max_depth);
}

} // namespace jit::codec::internal
