// Frame decoder: validates everything against CodecLimits before it allocates or reads, then
// verifies checksums and decompresses in parallel. Uncompressed payloads are never copied.
#include <algorithm>
#include <cstdlib>
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

struct ZstdDCtx {
  ZSTD_DCtx *ctx = ZSTD_createDCtx();
  ~ZstdDCtx() { ZSTD_freeDCtx(ctx); }
};
thread_local ZstdDCtx tls_dctx;
thread_local std::vector<uint8_t> tls_unshuffle_buf;

std::string num(uint64_t v) {
  return std::to_string(v);
}

struct Header {
  uint32_t envelope_nbytes = 0;
  uint64_t payload_nbytes = 0;
  uint64_t payload_base = 0;
};

// Checks the fixed header, the frame length and the header checksum.
Header read_header(const uint8_t *buf, size_t len, const CodecLimits &lim) {
  if (len < kHeaderBytes) fail("truncated", "frame has " + num(len) + " bytes, the header alone needs 32");
  if (std::memcmp(buf + kOffMagic, kMagic, 4) != 0) fail("bad magic", "the frame does not start with 'JEMB'");
  if (buf[kOffVersion] != kVersion) {
    fail("bad version", "frame version " + num(buf[kOffVersion]) + ", this decoder reads version 1");
  }
  if (buf[kOffFlags] != 0 || load_le<uint16_t>(buf + kOffReserved16) != 0 ||
      load_le<uint32_t>(buf + kOffReserved32) != 0) {
    fail("bad version", "reserved header flags or fields are not zero");
  }
  if (len > lim.max_frame_bytes) {
    fail("over limit", "frame has " + num(len) + " bytes, max_frame_bytes is " + num(lim.max_frame_bytes));
  }
  Header h;
  h.envelope_nbytes = load_le<uint32_t>(buf + kOffEnvelopeBytes);
  h.payload_nbytes = load_le<uint64_t>(buf + kOffPayloadBytes);
  if (h.envelope_nbytes > lim.max_envelope_bytes) {
    fail("over limit",
         "envelope has " + num(h.envelope_nbytes) + " bytes, max_envelope_bytes is " + num(lim.max_envelope_bytes));
  }
  if (kHeaderBytes + uint64_t{h.envelope_nbytes} > len) {
    fail("truncated",
         "envelope needs " + num(h.envelope_nbytes) + " bytes after the header, frame has " + num(len - kHeaderBytes));
  }
  h.payload_base = align_up(kHeaderBytes + uint64_t{h.envelope_nbytes});
  uint64_t total;
  if (__builtin_add_overflow(h.payload_base, h.payload_nbytes, &total) || total > len) {
    fail("truncated", "header says payloads need " + num(h.payload_nbytes) + " bytes from offset " +
                          num(h.payload_base) + ", frame has " + num(len));
  }
  if (total < len) fail("trailing data", "frame has " + num(len) + " bytes, its header accounts for " + num(total));
  uint64_t want = load_le<uint64_t>(buf + kOffHeaderChecksum);
  if (header_checksum(buf, buf + kHeaderBytes, h.envelope_nbytes) != want) {
    fail("bad checksum", "header checksum does not match the header and envelope");
  }
  return h;
}

msgpack::unpack_limit envelope_limit(const Header &h, const CodecLimits &lim) {
  return bounded_unpack_limit(h.envelope_nbytes, lim);
}

msgpack::object_handle unpack_envelope(const uint8_t *buf, const Header &h, const CodecLimits &lim) {
  size_t n = h.envelope_nbytes;
  msgpack::unpack_limit limit = envelope_limit(h, lim);
  size_t off = 0;
  msgpack::object_handle oh;
  try {
    oh = msgpack::unpack(reinterpret_cast<const char *>(buf + kHeaderBytes), n, off, nullptr, nullptr, limit);
  } catch (const msgpack::size_overflow &e) {
    fail("over limit", std::string("envelope: ") + e.what() + " (max_depth or max_array_length)");
  } catch (const std::exception &e) {
    fail("bad envelope", std::string("not valid msgpack: ") + e.what());
  }
  if (off != n) fail("bad envelope", "envelope has " + num(n - off) + " bytes after its msgpack value");
  if (oh.get().type != msgpack::type::MAP) fail("bad envelope", "envelope is not a msgpack map");
  return oh;
}

// The exact bytes of the envelope's "meta" value, or empty. They are sliced out of the envelope
// rather than re-packed from the parsed object, because msgpack-c re-packs an integral float
// (1.0) as an integer and so would change the caller's values. Runs on an envelope that
// unpack_envelope() has already validated, with the same limits.
std::string raw_meta(const uint8_t *env, size_t n, const msgpack::unpack_limit &limit) {
  const char *p = reinterpret_cast<const char *>(env);
  uint8_t tag = env[0];
  uint64_t pairs = 0;
  size_t off = 1;
  if ((tag & 0xf0) == 0x80) {
    pairs = tag & 0x0f;
  } else if (tag == 0xde) {
    pairs = (uint64_t{env[1]} << 8) | env[2];
    off = 3;
  } else { // 0xdf
    pairs = (uint64_t{env[1]} << 24) | (uint64_t{env[2]} << 16) | (uint64_t{env[3]} << 8) | env[4];
    off = 5;
  }
  for (uint64_t i = 0; i < pairs; ++i) {
    msgpack::object_handle key = msgpack::unpack(p, n, off, nullptr, nullptr, limit);
    size_t start = off;
    msgpack::object_handle val = msgpack::unpack(p, n, off, nullptr, nullptr, limit);
    const msgpack::object &k = key.get();
    if (k.type == msgpack::type::STR && std::string_view(k.via.str.ptr, k.via.str.size) == "meta") {
      if (val.get().type == msgpack::type::NIL) return {};
      return std::string(p + start, off - start);
    }
  }
  return {};
}

bool key_is(const msgpack::object &k, std::string_view s) {
  return k.type == msgpack::type::STR && std::string_view(k.via.str.ptr, k.via.str.size) == s;
}

const msgpack::object *find_key(const msgpack::object &map, std::string_view key) {
  for (uint32_t i = 0; i < map.via.map.size; ++i) {
    if (key_is(map.via.map.ptr[i].key, key)) return &map.via.map.ptr[i].val;
  }
  return nullptr;
}

const msgpack::object &require(const msgpack::object &map, std::string_view key, msgpack::type::object_type type,
                               const std::string &where) {
  const msgpack::object *v = find_key(map, key);
  if (v == nullptr) fail("bad envelope", where + " has no '" + std::string(key) + "'");
  if (v->type != type) fail("bad envelope", where + ": '" + std::string(key) + "' has the wrong type");
  return *v;
}

uint64_t require_uint(const msgpack::object &map, std::string_view key, const std::string &where) {
  return require(map, key, msgpack::type::POSITIVE_INTEGER, where).via.u64;
}

std::string_view require_str(const msgpack::object &map, std::string_view key, const std::string &where) {
  const auto &o = require(map, key, msgpack::type::STR, where);
  return {o.via.str.ptr, o.via.str.size};
}

// An entry after validation: everything needed to verify and materialise it.
struct Entry {
  DecodedTensor out;
  const uint8_t *stored = nullptr;
  uint64_t stored_nbytes = 0;
  uint64_t checksum = 0;
  bool zstd = false;
  bool shuffled = false;
  uint64_t chunk_size = 0;
  std::vector<uint64_t> chunk_offsets; // into the stored payload; size = chunks + 1
};

Entry read_entry(const msgpack::object &m, const uint8_t *payload, const Header &h, const CodecLimits &lim,
                 size_t index) {
  std::string where = "tensor entry " + num(index);
  if (m.type != msgpack::type::MAP) fail("bad envelope", where + " is not a map");
  Entry e;
  e.out.name = std::string(require_str(m, "name", where));
  if (!valid_utf8(e.out.name)) fail("bad envelope", where + " has a name that is not UTF-8");
  where = "tensor '" + e.out.name + "'";
  std::string_view dtype_s = require_str(m, "dtype", where);
  auto dtype = dtype_from_name(dtype_s);
  if (!dtype) fail("unknown dtype", where + " has dtype '" + std::string(dtype_s) + "'");
  e.out.dtype = *dtype;

  const auto &shape = require(m, "shape", msgpack::type::ARRAY, where);
  if (shape.via.array.size > lim.max_rank) {
    fail("over limit", where + " has rank " + num(shape.via.array.size) + ", max_rank is " + num(lim.max_rank));
  }
  uint64_t numel = 1;
  for (uint32_t i = 0; i < shape.via.array.size; ++i) {
    const auto &d = shape.via.array.ptr[i];
    if (d.type != msgpack::type::POSITIVE_INTEGER || d.via.u64 > uint64_t{INT64_MAX}) {
      fail("bad envelope", where + ": shape dimension " + num(i) + " is not a non-negative integer");
    }
    e.out.shape.push_back(static_cast<int64_t>(d.via.u64));
    if (__builtin_mul_overflow(numel, d.via.u64, &numel)) fail("over limit", where + ": shape overflows");
  }
  uint64_t raw;
  if (__builtin_mul_overflow(numel, dtype_itemsize(e.out.dtype), &raw)) fail("over limit", where + ": shape overflows");
  if (raw > lim.max_tensor_bytes) {
    fail("over limit", where + " has " + num(raw) + " bytes, max_tensor_bytes is " + num(lim.max_tensor_bytes));
  }
  uint64_t raw_nbytes = require_uint(m, "raw_nbytes", where);
  if (raw_nbytes != raw) {
    fail("size mismatch", where + ": raw_nbytes is " + num(raw_nbytes) + " but shape x itemsize is " + num(raw));
  }
  uint64_t offset = require_uint(m, "offset", where);
  e.stored_nbytes = require_uint(m, "nbytes", where);
  e.checksum = require_uint(m, "checksum", where);
  uint64_t end;
  if (offset % kAlign != 0) fail("out of range", where + ": offset " + num(offset) + " is not a multiple of 64");
  if (__builtin_add_overflow(offset, e.stored_nbytes, &end) || end > h.payload_nbytes) {
    fail("out of range", where + ": bytes [" + num(offset) + ", " + num(offset) + "+" + num(e.stored_nbytes) +
                             ") are past the payload region of " + num(h.payload_nbytes) + " bytes");
  }
  e.stored = payload + offset;
  e.out.nbytes = raw;

  std::string_view codec = require_str(m, "codec", where);
  std::string_view filter = "none";
  if (const auto *f = find_key(m, "filter")) {
    if (f->type != msgpack::type::STR) fail("bad envelope", where + ": 'filter' has the wrong type");
    filter = std::string_view(f->via.str.ptr, f->via.str.size);
  }
  if (filter != "none" && filter != "shuffle")
    fail("unknown codec", where + " has filter '" + std::string(filter) + "'");
  if (codec == "none") {
    if (filter != "none") fail("bad envelope", where + ": an uncompressed payload cannot be shuffled");
    if (e.stored_nbytes != raw) {
      fail("size mismatch", where + ": nbytes " + num(e.stored_nbytes) + " != raw_nbytes " + num(raw));
    }
    e.out.data = e.stored;
    e.out.aliases_frame = true;
    return e;
  }
  if (codec != "zstd") fail("unknown codec", where + " has codec '" + std::string(codec) + "'");
  e.zstd = true;
  e.shuffled = filter == "shuffle";
  e.out.aliases_frame = false;
  size_t itemsize = dtype_itemsize(e.out.dtype);
  e.chunk_size = require_uint(m, "chunk_size", where);
  if (e.chunk_size == 0 || e.chunk_size % itemsize != 0) {
    fail("size mismatch", where + ": chunk_size " + num(e.chunk_size) + " is not a positive multiple of the itemsize");
  }
  const auto &chunks = require(m, "chunks", msgpack::type::ARRAY, where);
  uint64_t want_chunks = raw / e.chunk_size + (raw % e.chunk_size != 0);
  if (chunks.via.array.size > lim.max_chunks) {
    fail("over limit", where + " has " + num(chunks.via.array.size) + " chunks, max_chunks is " + num(lim.max_chunks));
  }
  if (chunks.via.array.size != want_chunks) {
    fail("size mismatch", where + " has " + num(chunks.via.array.size) + " chunks, its sizes need " + num(want_chunks));
  }
  e.chunk_offsets.reserve(want_chunks + 1);
  uint64_t sum = 0;
  e.chunk_offsets.push_back(0);
  for (uint32_t i = 0; i < chunks.via.array.size; ++i) {
    const auto &c = chunks.via.array.ptr[i];
    if (c.type != msgpack::type::POSITIVE_INTEGER) fail("bad envelope", where + ": chunk sizes must be integers");
    if (__builtin_add_overflow(sum, c.via.u64, &sum) || sum > e.stored_nbytes) {
      fail("size mismatch", where + ": chunk sizes exceed nbytes " + num(e.stored_nbytes));
    }
    e.chunk_offsets.push_back(sum);
  }
  if (sum != e.stored_nbytes) {
    fail("size mismatch", where + ": chunk sizes add up to " + num(sum) + ", nbytes is " + num(e.stored_nbytes));
  }
  return e;
}

void decompress_chunk(const Entry &e, uint8_t *dst, size_t i) {
  uint64_t raw_off = i * e.chunk_size;
  size_t raw_len = std::min<uint64_t>(e.chunk_size, e.out.nbytes - raw_off);
  const uint8_t *src = e.stored + e.chunk_offsets[i];
  size_t src_len = e.chunk_offsets[i + 1] - e.chunk_offsets[i];
  size_t itemsize = dtype_itemsize(e.out.dtype);
  bool unshuffle_needed = e.shuffled && itemsize > 1;
  uint8_t *out = dst + raw_off;
  if (unshuffle_needed) {
    tls_unshuffle_buf.resize(std::max(tls_unshuffle_buf.size(), raw_len));
    out = tls_unshuffle_buf.data();
  }
  size_t r = ZSTD_decompressDCtx(tls_dctx.ctx, out, raw_len, src, src_len);
  if (ZSTD_isError(r)) {
    fail("corrupt payload", "tensor '" + e.out.name + "' chunk " + num(i) + ": zstd: " + ZSTD_getErrorName(r));
  }
  if (r != raw_len) {
    fail("corrupt payload", "tensor '" + e.out.name + "' chunk " + num(i) + " decompressed to " + num(r) +
                                " bytes, expected " + num(raw_len));
  }
  if (unshuffle_needed) unshuffle(out, dst + raw_off, raw_len, itemsize);
}

std::shared_ptr<uint8_t[]> alloc_aligned(size_t n) {
  void *p = std::aligned_alloc(kAlign, std::max<size_t>(kAlign, align_up(n)));
  if (p == nullptr) throw std::bad_alloc();
  advise_huge_pages(p, n);
  return std::shared_ptr<uint8_t[]>(static_cast<uint8_t *>(p), [](uint8_t *q) { std::free(q); });
}

} // namespace

DecodedFrame decode(const uint8_t *buf, size_t len, const DecodeOptions &options) {
  const CodecLimits &lim = options.limits;
  Header h = read_header(buf, len, lim);
  msgpack::object_handle oh = unpack_envelope(buf, h, lim);
  const msgpack::object &env = oh.get();

  const auto &list = require(env, "tensors", msgpack::type::ARRAY, "envelope");
  if (list.via.array.size > lim.max_entries) {
    fail("over limit", "frame has " + num(list.via.array.size) + " entries, max_entries is " + num(lim.max_entries));
  }
  const uint8_t *payload = buf + h.payload_base;
  std::vector<Entry> entries;
  entries.reserve(list.via.array.size);
  std::unordered_set<std::string> names;
  uint64_t decompressed = 0;
  for (uint32_t i = 0; i < list.via.array.size; ++i) {
    entries.push_back(read_entry(list.via.array.ptr[i], payload, h, lim, i));
    const Entry &e = entries.back();
    if (!names.insert(e.out.name).second) fail("duplicate name", "tensor '" + e.out.name + "' appears twice");
    if (e.zstd && (__builtin_add_overflow(decompressed, e.out.nbytes, &decompressed) ||
                   decompressed > lim.max_decompressed_bytes)) {
      fail("over limit", "compressed entries expand past max_decompressed_bytes " + num(lim.max_decompressed_bytes));
    }
  }

  DecodedFrame frame;
  // One task list for everything proportional to the payloads: each entry's checksum (when
  // verifying), then each chunk of each compressed entry, so that one large tensor still uses every
  // thread and the checksums overlap decompression. zstd is safe on hostile input, so decompressing
  // before the checksum has been confirmed is harmless; errors are reported in a fixed priority
  // (checksum first, then entry order) so the same bad frame always gives the same message.
  struct Task {
    size_t entry;
    size_t chunk; // SIZE_MAX: the entry's checksum
  };
  std::vector<Task> tasks;
  if (options.verify_checksums) {
    for (size_t i = 0; i < entries.size(); ++i)
      tasks.push_back({i, SIZE_MAX});
  }
  for (size_t i = 0; i < entries.size(); ++i) {
    Entry &e = entries[i];
    if (!e.zstd) continue;
    auto owned = alloc_aligned(e.out.nbytes);
    e.out.data = owned.get();
    frame.owned.push_back(std::move(owned));
    for (size_t c = 0; c + 1 < e.chunk_offsets.size(); ++c)
      tasks.push_back({i, c});
  }
  std::vector<std::string> errors(tasks.size());
  parallel_for(
      tasks.size(),
      [&](size_t t) {
        const Entry &e = entries[tasks[t].entry];
        try {
          if (tasks[t].chunk == SIZE_MAX) {
            if (checksum(e.stored, e.stored_nbytes) != e.checksum) {
              fail("bad checksum", "payload of tensor '" + e.out.name + "' does not match its checksum");
            }
          } else {
            decompress_chunk(e, const_cast<uint8_t *>(e.out.data), tasks[t].chunk);
          }
        } catch (const CodecError &err) {
          errors[t] = err.what();
        }
      },
      options.max_threads);
  for (const auto &err : errors) {
    if (!err.empty()) throw CodecError(err);
  }

  frame.tensors.reserve(entries.size());
  for (auto &e : entries)
    frame.tensors.push_back(std::move(e.out));
  if (const auto *meta = find_key(env, "meta"); meta != nullptr && meta->type != msgpack::type::NIL) {
    frame.meta_msgpack = raw_meta(buf + kHeaderBytes, h.envelope_nbytes, envelope_limit(h, lim));
  }
  return frame;
}

FrameInfo describe(const uint8_t *buf, size_t len, const CodecLimits &limits) {
  Header h = read_header(buf, len, limits);
  unpack_envelope(buf, h, limits);
  FrameInfo info;
  info.frame_bytes = len;
  info.envelope_bytes = h.envelope_nbytes;
  info.payload_bytes = h.payload_nbytes;
  info.envelope_msgpack.assign(reinterpret_cast<const char *>(buf + kHeaderBytes), h.envelope_nbytes);
  return info;
}

} // namespace jit::codec
