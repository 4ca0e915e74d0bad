// Frame encoder: plans the layout (compressing where asked), then writes header, envelope and
// payloads into a buffer the caller allocated.
#include <algorithm>
#include <string>
#include <unordered_set>
#include <vector>

#include <msgpack.hpp>
#include <zstd.h>

#include "codec/codec.h"
#include "codec/codec_internal.h"
#include "codec/msgpack_limits.h"
#include "common/thread_pool.h"

namespace jit::codec {

using namespace internal;

namespace {

struct ZstdCCtx {
  ZSTD_CCtx *ctx = ZSTD_createCCtx();
  ~ZstdCCtx() { ZSTD_freeCCtx(ctx); }
};

// One context and one shuffle buffer per thread, reused across calls: zstd contexts are costly
// to create, and a per-call allocation would dominate small frames.
thread_local ZstdCCtx tls_cctx;
thread_local std::vector<uint8_t> tls_shuffle_buf;

// A compressed chunk. Its buffer is left uninitialised (a std::vector would zero-fill a whole
// compress bound per chunk, a measurable share of level-1 compression time).
struct Chunk {
  std::unique_ptr<uint8_t[]> bytes;
  size_t n = 0;
  const uint8_t *data() const { return bytes.get(); }
  size_t size() const { return n; }
};

// Sets the zstd parameters for one chunk. Shuffled floating-point streams are long runs of
// similar exponent bytes followed by near-random mantissa bytes; at the fast levels a longer
// minimum match and a smaller hash table find the runs about twice as fast, at the same ratio.
// The output is a standard zstd frame either way.
void set_zstd_params(ZSTD_CCtx *ctx, int level, bool shuffled) {
  ZSTD_CCtx_reset(ctx, ZSTD_reset_session_and_parameters);
  ZSTD_CCtx_setParameter(ctx, ZSTD_c_compressionLevel, level);
  if (shuffled && level >= 1 && level <= 3) {
    ZSTD_CCtx_setParameter(ctx, ZSTD_c_minMatch, 7);
    ZSTD_CCtx_setParameter(ctx, ZSTD_c_hashLog, 12);
  }
}

struct PlannedEntry {
  const TensorView *tensor = nullptr;
  uint64_t offset = 0; // relative to payload_base
  uint64_t nbytes = 0; // stored bytes
  bool compressed = false;
  bool shuffled = false;
  size_t checksum_pos = 0; // where the 8 checksum bytes sit inside the envelope
  size_t chunk_size = 0;
  std::vector<Chunk> chunks; // compressed chunks, when compressed
};

// Packs a uint64 as msgpack's fixed-width uint64 (0xcf + 8 big-endian bytes), so that the value
// can be patched in place after the payload has been copied and hashed.
size_t pack_fixed_u64(msgpack::sbuffer &sb, uint64_t v) {
  uint8_t b[9];
  b[0] = 0xcf;
  for (int i = 0; i < 8; ++i)
    b[1 + i] = static_cast<uint8_t>(v >> (56 - 8 * i));
  size_t pos = sb.size() + 1;
  sb.write(reinterpret_cast<const char *>(b), sizeof(b));
  return pos;
}

void patch_fixed_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; ++i)
    p[i] = static_cast<uint8_t>(v >> (56 - 8 * i));
}

void validate_tensor(const TensorView &t) {
  auto numel = shape_numel(t.shape);
  uint64_t expected = 0;
  if (!numel || __builtin_mul_overflow(*numel, dtype_itemsize(t.dtype), &expected)) {
    fail("size mismatch", "tensor '" + t.name + "' has an invalid shape");
  }
  if (expected != t.nbytes) {
    fail("size mismatch", "tensor '" + t.name + "' has " + std::to_string(t.nbytes) +
                              " bytes, but its shape and dtype need " + std::to_string(expected));
  }
  if (t.nbytes > 0 && t.data == nullptr) fail("size mismatch", "tensor '" + t.name + "' has no data");
}

// Checks that meta is one msgpack value within the default decoder limits, so that we never
// write a frame that our own decoder refuses, and never let meta's headers drive allocation.
void validate_meta(const std::string &meta) {
  if (meta.empty()) return;
  msgpack::unpack_limit limit = bounded_unpack_limit(meta.size(), CodecLimits{});
  size_t off = 0;
  try {
    msgpack::object_handle oh = msgpack::unpack(meta.data(), meta.size(), off, nullptr, nullptr, limit);
  } catch (const std::exception &e) {
    fail("bad envelope", std::string("meta is not valid msgpack: ") + e.what());
  }
  if (off != meta.size()) fail("bad envelope", "meta holds more than one msgpack value");
}

// Compresses one entry in independent chunks, spread over the thread pool.
void compress_entry(PlannedEntry &e, const EncodeOptions &opt) {
  const TensorView &t = *e.tensor;
  size_t itemsize = dtype_itemsize(t.dtype);
  e.shuffled = opt.shuffle && itemsize > 1 && dtype_is_floating(t.dtype);
  // At most chunk_bytes, yet small enough for eight chunks: a worker that wakes late then delays
  // only a small chunk while the caller keeps compressing. It depends on the input alone, never
  // on the thread count, so every machine writes the same bytes for the same tensors. A multiple
  // of the itemsize, so that each chunk shuffles on its own.
  constexpr size_t kMinChunks = 8;
  size_t chunk = std::min(opt.chunk_bytes, std::max<size_t>(128u << 10, t.nbytes / kMinChunks));
  e.chunk_size = std::max<size_t>(itemsize, chunk / itemsize * itemsize);
  size_t n_chunks = (t.nbytes + e.chunk_size - 1) / e.chunk_size;
  e.chunks.clear();
  e.chunks.resize(n_chunks);
  const auto *src = static_cast<const uint8_t *>(t.data);
  parallel_for(
      n_chunks,
      [&](size_t i) {
        size_t off = i * e.chunk_size;
        size_t len = std::min(e.chunk_size, t.nbytes - off);
        const uint8_t *in = src + off;
        if (e.shuffled) {
          tls_shuffle_buf.resize(std::max(tls_shuffle_buf.size(), len));
          shuffle(in, tls_shuffle_buf.data(), len, itemsize);
          in = tls_shuffle_buf.data();
        }
        auto &out = e.chunks[i];
        size_t bound = ZSTD_compressBound(len);
        out.bytes.reset(new uint8_t[bound]);
        set_zstd_params(tls_cctx.ctx, opt.level, e.shuffled);
        size_t r = ZSTD_compress2(tls_cctx.ctx, out.bytes.get(), bound, in, len);
        if (ZSTD_isError(r)) fail("corrupt payload", std::string("zstd: ") + ZSTD_getErrorName(r));
        out.n = r;
      },
      opt.max_threads);
  uint64_t total = 0;
  for (const auto &c : e.chunks)
    total += c.size();
  if (total >= t.nbytes) {
    // Incompressible: storing it raw is smaller and saves the reader a decompression.
    e.chunks.clear();
    e.shuffled = false;
    return;
  }
  e.compressed = true;
  e.nbytes = total;
}

} // namespace

struct EncodePlan::Impl {
  std::vector<PlannedEntry> entries;
  std::string envelope;
  uint64_t payload_nbytes = 0;
  size_t max_threads = 0;

  uint64_t payload_base() const { return align_up(kHeaderBytes + envelope.size()); }
};

EncodePlan::EncodePlan() : impl_(std::make_unique<Impl>()) {}
EncodePlan::~EncodePlan() = default;
EncodePlan::EncodePlan(EncodePlan &&) noexcept = default;
EncodePlan &EncodePlan::operator=(EncodePlan &&) noexcept = default;

size_t EncodePlan::frame_bytes() const {
  return impl_->payload_base() + impl_->payload_nbytes;
}

EncodePlan plan_encode(const std::vector<TensorView> &tensors, const std::string &meta_msgpack,
                       const EncodeOptions &options) {
  EncodePlan plan;
  EncodePlan::Impl &p = *plan.impl_;
  p.max_threads = options.max_threads;
  validate_meta(meta_msgpack);

  std::unordered_set<std::string_view> names;
  p.entries.resize(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView &t = tensors[i];
    validate_tensor(t);
    if (!valid_utf8(t.name)) fail("bad envelope", "a tensor name is not UTF-8");
    if (!names.insert(t.name).second) fail("duplicate name", "tensor '" + t.name + "' appears twice");
    PlannedEntry &e = p.entries[i];
    e.tensor = &t;
    e.nbytes = t.nbytes;
    if (options.compression == Compression::kZstd && t.nbytes >= options.min_compress_bytes) {
      compress_entry(e, options);
    }
  }

  // Offsets depend only on payload sizes, so the envelope can be written before the payloads.
  uint64_t cursor = 0;
  for (auto &e : p.entries) {
    e.offset = align_up(cursor);
    cursor = e.offset + e.nbytes;
  }
  p.payload_nbytes = cursor;

  msgpack::sbuffer sb;
  msgpack::packer<msgpack::sbuffer> pk(sb);
  pk.pack_map(meta_msgpack.empty() ? 1 : 2);
  pk.pack(std::string_view("tensors"));
  pk.pack_array(static_cast<uint32_t>(p.entries.size()));
  for (auto &e : p.entries) {
    const TensorView &t = *e.tensor;
    pk.pack_map(e.compressed ? 11 : 9);
    pk.pack(std::string_view("name"));
    pk.pack(std::string_view(t.name));
    pk.pack(std::string_view("dtype"));
    pk.pack(dtype_name(t.dtype));
    pk.pack(std::string_view("shape"));
    pk.pack_array(static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.shape)
      pk.pack_uint64(static_cast<uint64_t>(d));
    pk.pack(std::string_view("offset"));
    pk.pack_uint64(e.offset);
    pk.pack(std::string_view("nbytes"));
    pk.pack_uint64(e.nbytes);
    pk.pack(std::string_view("codec"));
    pk.pack(std::string_view(e.compressed ? "zstd" : "none"));
    pk.pack(std::string_view("raw_nbytes"));
    pk.pack_uint64(t.nbytes);
    pk.pack(std::string_view("filter"));
    pk.pack(std::string_view(e.shuffled ? "shuffle" : "none"));
    pk.pack(std::string_view("checksum"));
    e.checksum_pos = pack_fixed_u64(sb, 0);
    if (e.compressed) {
      pk.pack(std::string_view("chunk_size"));
      pk.pack_uint64(e.chunk_size);
      pk.pack(std::string_view("chunks"));
      pk.pack_array(static_cast<uint32_t>(e.chunks.size()));
      for (const auto &c : e.chunks)
        pk.pack_uint64(c.size());
    }
  }
  if (!meta_msgpack.empty()) {
    pk.pack(std::string_view("meta"));
    sb.write(meta_msgpack.data(), meta_msgpack.size());
  }
  if (sb.size() > UINT32_MAX) fail("over limit", "envelope exceeds 4 GiB");
  p.envelope.assign(sb.data(), sb.size());
  return plan;
}

void EncodePlan::write(uint8_t *dst) const {
  const Impl &p = *impl_;
  const uint64_t base = p.payload_base();
  advise_huge_pages(dst, base + p.payload_nbytes);
  std::memset(dst, 0, kHeaderBytes);
  std::memcpy(dst + kOffMagic, kMagic, 4);
  dst[kOffVersion] = kVersion;
  store_le<uint32_t>(dst + kOffEnvelopeBytes, static_cast<uint32_t>(p.envelope.size()));
  store_le<uint64_t>(dst + kOffPayloadBytes, p.payload_nbytes);
  uint8_t *env = dst + kHeaderBytes;
  std::memcpy(env, p.envelope.data(), p.envelope.size());
  std::memset(env + p.envelope.size(), 0, base - kHeaderBytes - p.envelope.size());

  uint8_t *payload = dst + base;
  // Tasks over all entries. A large uncompressed payload becomes one checksum task over its source
  // plus many copy blocks, so that one big tensor still uses every thread; the checksum task comes
  // first so that it overlaps the copies. Small payloads are copied and hashed in one fused pass.
  constexpr uint64_t kSplitBytes = 4u << 20;
  constexpr uint64_t kCopyBlock = 2u << 20;
  struct Task {
    uint32_t entry;
    enum Kind : uint8_t { kFused, kHash, kCopy } kind;
    uint64_t begin = 0, end = 0;
  };
  std::vector<Task> tasks;
  for (uint32_t i = 0; i < p.entries.size(); ++i) {
    const PlannedEntry &e = p.entries[i];
    uint64_t end = e.offset + e.nbytes;
    uint64_t next = i + 1 < p.entries.size() ? p.entries[i + 1].offset : end;
    std::memset(payload + end, 0, next - end); // alignment padding after this payload
    if (e.compressed || e.nbytes < kSplitBytes) {
      tasks.push_back({i, Task::kFused});
      continue;
    }
    tasks.insert(tasks.begin(), {i, Task::kHash});
    for (uint64_t off = 0; off < e.nbytes; off += kCopyBlock) {
      tasks.push_back({i, Task::kCopy, off, std::min(e.nbytes, off + kCopyBlock)});
    }
  }
  parallel_for(
      tasks.size(),
      [&](size_t t) {
        const Task &task = tasks[t];
        const PlannedEntry &e = p.entries[task.entry];
        const auto *src = static_cast<const uint8_t *>(e.tensor->data);
        uint8_t *out = payload + e.offset;
        switch (task.kind) {
        case Task::kCopy: std::memcpy(out + task.begin, src + task.begin, task.end - task.begin); return;
        case Task::kHash: patch_fixed_u64(env + e.checksum_pos, checksum(src, e.nbytes)); return;
        case Task::kFused:
          if (e.compressed) {
            for (const auto &c : e.chunks) {
              std::memcpy(out, c.data(), c.size());
              out += c.size();
            }
            patch_fixed_u64(env + e.checksum_pos, checksum(payload + e.offset, e.nbytes));
          } else {
            patch_fixed_u64(env + e.checksum_pos, copy_and_checksum(src, out, e.nbytes));
          }
          return;
        }
      },
      p.max_threads);
  store_le<uint64_t>(dst + kOffHeaderChecksum, header_checksum(dst, env, p.envelope.size()));
}

std::string encode(const std::vector<TensorView> &tensors, const std::string &meta_msgpack,
                   const EncodeOptions &options) {
  EncodePlan plan = plan_encode(tensors, meta_msgpack, options);
  std::string out(plan.frame_bytes(), '\0');
  plan.write(reinterpret_cast<uint8_t *>(out.data()));
  return out;
}

bool patch_envelope_tail(std::string &frame, const uint8_t *expected, const uint8_t *bytes, size_t n) {
  if (frame.size() < kHeaderBytes) return false;
  auto *p = reinterpret_cast<uint8_t *>(frame.data());
  const size_t envelope_bytes = load_le<uint32_t>(p + kOffEnvelopeBytes);
  const size_t end = kHeaderBytes + envelope_bytes;
  if (envelope_bytes < n || end > frame.size()) return false;
  uint8_t *tail = p + end - n;
  if (std::memcmp(tail, expected, n) != 0) return false;
  std::memcpy(tail, bytes, n);
  store_le<uint64_t>(p + kOffHeaderChecksum, header_checksum(p, p + kHeaderBytes, envelope_bytes));
  return true;
}

} // namespace jit::codec
