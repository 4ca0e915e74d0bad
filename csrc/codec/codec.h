// jit-embedding wire codec: tensors and an application envelope in one frame.
//
// The frame format is specified byte by byte in docs/wire-format.md. In short: a 32-byte header,
// a msgpack envelope that describes every payload, then the payloads, each 64-byte aligned and
// optionally zstd-compressed (with a byte-shuffle filter for floating-point data), each with an
// XXH3-64 checksum.
//
// Decoding an uncompressed payload copies nothing: DecodedTensor::data points into the frame.
// Every length, offset and size in a frame is checked against CodecLimits before it is used.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/types.h"

namespace jit::codec {

// The one error type of the codec layer. what() starts with the problem's name from
// docs/wire-format.md ("truncated", "bad checksum", "over limit", ...), then the details.
class CodecError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

enum class Compression : uint8_t { kNone, kZstd };

// Limits applied by decode() to untrusted frames. Each default is documented in docs/wire-format.md.
struct CodecLimits {
  uint64_t max_frame_bytes = 4ull << 30;
  uint64_t max_envelope_bytes = 16ull << 20;
  uint64_t max_entries = 4096;
  uint64_t max_rank = 8;
  uint64_t max_tensor_bytes = 2ull << 30;       // per entry, after decompression: the bomb guard
  uint64_t max_decompressed_bytes = 4ull << 30; // all compressed entries together
  uint64_t max_depth = 32;                      // msgpack nesting in the envelope
  uint64_t max_array_length = 65536;            // elements of any one msgpack array or map
  uint64_t max_chunks = 1ull << 20;             // zstd chunks per entry
};

struct EncodeOptions {
  Compression compression = Compression::kNone;
  int level = 1;                   // zstd level (negative levels are zstd's fast modes)
  bool shuffle = true;             // byte-shuffle floating-point payloads before compressing
  size_t chunk_bytes = 1u << 20;   // raw bytes per independently compressed chunk
  size_t min_compress_bytes = 512; // smaller payloads are stored uncompressed
  size_t max_threads = 0;          // 0: the process pool's size (see common/thread_pool.h)
};

struct DecodeOptions {
  CodecLimits limits;
  bool verify_checksums = true; // payload checksums; the header checksum is always verified
  size_t max_threads = 0;
};

// A frame being encoded: compression has run, sizes are known, nothing has been written yet.
// Splitting planning from writing lets a caller allocate the output however it likes (a Python
// bytes object, a pooled HTTP buffer) and copy each payload only once.
class EncodePlan {
public:
  EncodePlan();
  ~EncodePlan();
  EncodePlan(EncodePlan &&) noexcept;
  EncodePlan &operator=(EncodePlan &&) noexcept;

  // Total frame length in bytes.
  size_t frame_bytes() const;

  // Writes the whole frame to dst, which must hold frame_bytes() bytes. The tensors given to
  // plan_encode() must still be alive. Safe to call without the Python GIL.
  void write(uint8_t *dst) const;

  struct Impl;

private:
  std::unique_ptr<Impl> impl_;
  friend EncodePlan plan_encode(const std::vector<TensorView> &, const std::string &, const EncodeOptions &);
};

// Plans a frame for `tensors` (names must be unique) and an envelope `meta_msgpack`, which is one
// complete msgpack value (empty: no meta). Runs compression when options ask for it.
// Throws CodecError on a duplicate name, a size that does not match shape x dtype, or invalid meta.
EncodePlan plan_encode(const std::vector<TensorView> &tensors, const std::string &meta_msgpack,
                       const EncodeOptions &options);

// plan_encode() followed by write() into a new string.
std::string encode(const std::vector<TensorView> &tensors, const std::string &meta_msgpack,
                   const EncodeOptions &options);

// For a value known only once the frame is written (the time it took to write it): overwrites the
// last `n` bytes of the frame's envelope with `bytes` if they equal `expected`, and re-seals the
// header checksum. The frame's layout is unchanged, so a same-size msgpack placeholder at the end
// of the meta can be filled in. Returns false, leaving the frame as it was, when the frame is
// shorter than its header says or the envelope does not end with `expected`.
bool patch_envelope_tail(std::string &frame, const uint8_t *expected, const uint8_t *bytes, size_t n);

// One decoded entry. `data` points into the frame for uncompressed payloads, or into a buffer
// owned by the DecodedFrame for decompressed ones; either way it lives as long as the frame does.
struct DecodedTensor {
  std::string name;
  DType dtype = DType::kUInt8;
  Shape shape;
  const uint8_t *data = nullptr;
  size_t nbytes = 0;
  bool aliases_frame = true; // false when the bytes were decompressed into an owned buffer
};

struct DecodedFrame {
  std::vector<DecodedTensor> tensors;
  std::string meta_msgpack;                      // the envelope's meta value re-packed as msgpack; empty when absent
  std::vector<std::shared_ptr<uint8_t[]>> owned; // decompressed payloads
};

// Decodes a frame of `len` bytes at `buf`. The caller keeps `buf` alive while it uses tensors
// that alias it. Throws CodecError (see docs/wire-format.md, "Errors") for any malformed frame.
DecodedFrame decode(const uint8_t *buf, size_t len, const DecodeOptions &options = {});

// A frame's sizes and its envelope, as read by describe().
struct FrameInfo {
  uint64_t frame_bytes = 0;
  uint64_t envelope_bytes = 0;
  uint64_t payload_bytes = 0;
  std::string envelope_msgpack; // the envelope's bytes exactly as stored
};

// Checks a frame's header, header checksum, limits and envelope syntax without touching the
// payloads, and returns its sizes and envelope, for inspection tools. Throws CodecError.
FrameInfo describe(const uint8_t *buf, size_t len, const CodecLimits &limits = {});

} // namespace jit::codec
