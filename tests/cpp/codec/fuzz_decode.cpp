// libFuzzer target: decode arbitrary bytes. Any outcome but a decoded frame or a CodecError (a
// crash, another exception, a sanitizer report, a leak) is a bug. A frame that decodes must
// re-encode and decode to the same tensors.
//
// Each input is decoded twice: as it is, and with its header checksum recomputed. Without the
// second pass nearly every mutation would stop at the checksum, and the envelope and payload
// parsers behind it would never see hostile input.
#include <cstdint>
#include <cstring>

#include <string>

#include "codec/codec.h"
#include "codec/codec_internal.h"

namespace {

int decode_one(const uint8_t *data, size_t size) {
  using namespace jit::codec;
  DecodeOptions opt;
  // Small limits keep each input cheap; they are still checked on every path.
  opt.limits.max_tensor_bytes = 1u << 24;
  opt.limits.max_decompressed_bytes = 1u << 25;
  opt.max_threads = 1;
  DecodedFrame frame;
  try {
    frame = decode(data, size, opt);
  } catch (const CodecError &) {
    return 0;
  }
  std::vector<jit::TensorView> views;
  uint64_t sum = 0;
  for (const auto &t : frame.tensors) {
    for (size_t i = 0; i < t.nbytes; ++i)
      sum += t.data[i]; // every byte must be readable
    views.push_back({t.name, t.dtype, t.shape, t.data, t.nbytes});
  }
  for (int compression = 0; compression < 2; ++compression) {
    EncodeOptions eo;
    eo.compression = compression ? Compression::kZstd : Compression::kNone;
    eo.max_threads = 1;
    std::string again = encode(views, frame.meta_msgpack, eo);
    DecodedFrame back = decode(reinterpret_cast<const uint8_t *>(again.data()), again.size(), opt);
    if (back.tensors.size() != frame.tensors.size() || back.meta_msgpack != frame.meta_msgpack) __builtin_trap();
    for (size_t i = 0; i < back.tensors.size(); ++i) {
      const auto &a = frame.tensors[i];
      const auto &b = back.tensors[i];
      if (a.name != b.name || a.dtype != b.dtype || a.shape != b.shape || a.nbytes != b.nbytes ||
          (a.nbytes && std::memcmp(a.data, b.data, a.nbytes) != 0)) {
        __builtin_trap();
      }
    }
  }
  return sum == 0xFFFFFFFFFFFFFFFFull; // uses sum so the reads are not optimised away
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  using namespace jit::codec::internal;
  decode_one(data, size);
  if (size < kHeaderBytes) return 0;
  uint32_t envelope = load_le<uint32_t>(data + kOffEnvelopeBytes);
  if (envelope > size - kHeaderBytes) return 0;
  std::string fixed(reinterpret_cast<const char *>(data), size);
  auto *p = reinterpret_cast<uint8_t *>(fixed.data());
  store_le<uint64_t>(p + kOffHeaderChecksum, header_checksum(p, p + kHeaderBytes, envelope));
  decode_one(p, size);
  return 0;
}
