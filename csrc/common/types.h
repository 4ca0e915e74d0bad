// Plain data types shared by every layer of jit-embedding (codec, engine, executor, server, client).
// Nothing here allocates behind the caller's back or depends on torch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace jit {

// Element types carried on the wire. The numeric values are internal; the wire uses the names
// (see dtype_name), so reordering this enum never breaks compatibility.
enum class DType : uint8_t {
  kFloat32,
  kFloat16,
  kBFloat16,
  kFloat8E4M3,
  kInt8,
  kUInt8,
  kInt16,
  kInt32,
  kInt64,
  kBool,
  kStr,   // UTF-8 text, shape [byte length]
  kBytes, // opaque bytes (an encoded JPEG, say), shape [byte length]
};

// Size of one element in bytes (1 for kStr and kBytes).
size_t dtype_itemsize(DType dtype);

// The wire name of a dtype, e.g. "bfloat16".
std::string_view dtype_name(DType dtype);

// Parses a wire name. Returns nullopt for a name not in docs/wire-format.md.
std::optional<DType> dtype_from_name(std::string_view name);

// True for the floating-point dtypes, whose payloads profit from the byte-shuffle filter.
bool dtype_is_floating(DType dtype);

using Shape = std::vector<int64_t>;

// Number of elements of a shape; 1 for rank 0. Returns nullopt on a negative dimension or overflow.
std::optional<uint64_t> shape_numel(const Shape &shape);

// A borrowed, contiguous (C order) tensor: the caller keeps `data` alive for as long as the view is used.
struct TensorView {
  std::string name;
  DType dtype = DType::kUInt8;
  Shape shape; // e.g. [batch, channels, h, w]
  const void *data = nullptr;
  size_t nbytes = 0; // == shape_numel(shape) * dtype_itemsize(dtype)
};

// An owning, contiguous (C order) tensor: `owner` keeps `data` alive (a decoded frame, a batch
// output buffer, ...), so slices of one buffer can be handed to several requests without copies.
struct Tensor {
  std::string name;
  DType dtype = DType::kUInt8;
  Shape shape;
  std::shared_ptr<const void> owner;
  const void *data = nullptr;
  size_t nbytes = 0;

  TensorView view() const { return {name, dtype, shape, data, nbytes}; }
};

// Allocates a zero-initialised tensor of `shape` and `dtype` that owns its bytes (64-byte aligned).
Tensor make_tensor(std::string name, DType dtype, Shape shape);

// One input or output as an encoder declares it. A dimension of -1 is dynamic; dimension 0 is
// the batch dimension and is always dynamic.
//
// Token inputs (ids, attention masks) name a sequence dimension: requests whose lengths fall in
// the same length bucket share a batch, and shorter ones are padded with `pad_value` up to the
// longest in the batch. Outputs with a sequence dimension (a last hidden state) are cut back to
// each request's own length, so padding never reaches the caller.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kFloat32;
  Shape shape;           // e.g. [-1, 3, 256, 256] or [-1, -1] for token ids
  int seq_dim = -1;      // the padded sequence dimension (>= 1), or -1 for none
  int64_t pad_value = 0; // inputs only: what padding positions hold (pad token id; 0 in a mask)
};

struct EncoderSpec {
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
};

// The stacked inputs of one batch, in the encoder's input order: each is [batch, ...].
struct Batch {
  std::vector<Tensor> inputs;
  size_t size = 0; // samples
};

// What an executor returns for a batch: every output is [batch, ...], in spec order.
struct EncoderOutput {
  std::vector<Tensor> outputs;
};

} // namespace jit
