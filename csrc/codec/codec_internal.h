// Internals shared by the codec's encoder and decoder. Not part of the public API.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "codec/codec.h"

namespace jit::codec::internal {

// Fixed header layout: docs/wire-format.md, "Fixed header".
inline constexpr uint8_t kMagic[4] = {'J', 'E', 'M', 'B'};
inline constexpr uint8_t kVersion = 1;
inline constexpr size_t kHeaderBytes = 32;
inline constexpr size_t kChecksummedHeaderBytes = 24;
inline constexpr size_t kAlign = 64;

inline constexpr size_t kOffMagic = 0;
inline constexpr size_t kOffVersion = 4;
inline constexpr size_t kOffFlags = 5;
inline constexpr size_t kOffReserved16 = 6;
inline constexpr size_t kOffEnvelopeBytes = 8;
inline constexpr size_t kOffReserved32 = 12;
inline constexpr size_t kOffPayloadBytes = 16;
inline constexpr size_t kOffHeaderChecksum = 24;

inline constexpr uint64_t align_up(uint64_t n) {
  return (n + kAlign - 1) & ~uint64_t{kAlign - 1};
}

// Little-endian loads and stores. The frame is little-endian on every host; x86 and ARM compile
// these to plain moves.
template <typename T> inline T load_le(const uint8_t *p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T> inline void store_le(uint8_t *p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

// XXH3-64, seed 0, of one buffer.
uint64_t checksum(const void *data, size_t n);

// XXH3-64 of the header's first 24 bytes followed by the envelope: the header checksum.
uint64_t header_checksum(const uint8_t *header, const uint8_t *envelope, size_t envelope_bytes);

// Byte shuffle of n bytes of elements of `itemsize` bytes (n % itemsize == 0): byte j of element i
// goes to j * (n / itemsize) + i. src and dst must not overlap.
void shuffle(const uint8_t *src, uint8_t *dst, size_t n, size_t itemsize);

// The inverse of shuffle().
void unshuffle(const uint8_t *src, uint8_t *dst, size_t n, size_t itemsize);

// Copies n bytes from src to dst and returns the XXH3-64 of them, in one pass over cache-sized
// blocks, so the source is read from memory once.
uint64_t copy_and_checksum(const uint8_t *src, uint8_t *dst, size_t n);

// True if s is well-formed UTF-8 (no overlong forms, surrogates, or code points past U+10FFFF).
bool valid_utf8(std::string_view s);

// Asks the kernel to back the 2 MiB-aligned interior of a large, fresh buffer with transparent
// huge pages. Writing a fresh buffer otherwise takes one page fault per 4 KiB, which on small VMs
// costs more than the copy itself. Advisory: does nothing for small buffers or where unsupported.
void advise_huge_pages(void *p, size_t n);

// Builds the error message "<what>: <details>" and throws CodecError.
[[noreturn]] void fail(const char *what, const std::string &details);

} // namespace jit::codec::internal
