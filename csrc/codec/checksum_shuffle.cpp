// Checksums, the byte-shuffle filter and the fused copy used by the encoder and decoder.
#include <string>
#include <sys/mman.h>

#include "codec/codec_internal.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace jit::codec::internal {

uint64_t checksum(const void *data, size_t n) {
  return XXH3_64bits(data, n);
}

uint64_t header_checksum(const uint8_t *header, const uint8_t *envelope, size_t envelope_bytes) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, header, kChecksummedHeaderBytes);
  XXH3_64bits_update(&state, envelope, envelope_bytes);
  return XXH3_64bits_digest(&state);
}

uint64_t copy_and_checksum(const uint8_t *src, uint8_t *dst, size_t n) {
  // Small enough that the block just copied is still in L2 when it is hashed.
  constexpr size_t kBlock = 128 * 1024;
  if (n <= kBlock) {
    if (n > 0) std::memcpy(dst, src, n); // an empty tensor's data may be null: memcpy(_, null, 0) is UB
    return XXH3_64bits(dst, n);
  }
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  for (size_t off = 0; off < n; off += kBlock) {
    size_t len = std::min(kBlock, n - off);
    std::memcpy(dst + off, src + off, len);
    XXH3_64bits_update(&state, dst + off, len);
  }
  return XXH3_64bits_digest(&state);
}

namespace {

// Written per itemsize so that the compiler sees constant strides and vectorises the loops.
template <size_t K> void shuffle_k(const uint8_t *src, uint8_t *dst, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    for (size_t j = 0; j < K; ++j)
      dst[j * count + i] = src[i * K + j];
  }
}

template <size_t K> void unshuffle_k(const uint8_t *src, uint8_t *dst, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    for (size_t j = 0; j < K; ++j)
      dst[i * K + j] = src[j * count + i];
  }
}

} // namespace

void shuffle(const uint8_t *src, uint8_t *dst, size_t n, size_t itemsize) {
  size_t count = n / itemsize;
  switch (itemsize) {
  case 2: shuffle_k<2>(src, dst, count); return;
  case 4: shuffle_k<4>(src, dst, count); return;
  case 8: shuffle_k<8>(src, dst, count); return;
  default: std::memcpy(dst, src, n); return;
  }
}

void unshuffle(const uint8_t *src, uint8_t *dst, size_t n, size_t itemsize) {
  size_t count = n / itemsize;
  switch (itemsize) {
  case 2: unshuffle_k<2>(src, dst, count); return;
  case 4: unshuffle_k<4>(src, dst, count); return;
  case 8: unshuffle_k<8>(src, dst, count); return;
  default: std::memcpy(dst, src, n); return;
  }
}

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<uint8_t>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    uint32_t cp = len == 1 ? c : c & (0x7f >> len);
    for (size_t j = 1; j < len; ++j) {
      auto cc = static_cast<uint8_t>(s[i + j]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8.
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return false;
    i += len;
  }
  return true;
}

void advise_huge_pages(void *p, size_t n) {
  constexpr uintptr_t kHuge = 2u << 20;
  if (n < 2 * kHuge) return;
  uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void *>(begin), end - begin, MADV_HUGEPAGE);
}

void fail(const char *what, const std::string &details) {
  throw CodecError(std::string(what) + ": " + details);
}

} // namespace jit::codec::internal
