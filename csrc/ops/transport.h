// Lossy transport of float outputs (docs/transport.md): how the server shrinks an output for the
// wire when the client asks for it, and how the client restores it. Torch-free; runs the CPU
// references of the kernels (ops_ref.h), which give the kernels' bits, spread over the process's
// thread pool.
//
// A mode applies per output. The output [batch, ...] travels as `values` in a narrower dtype,
// plus, for the scaled modes, `scales` (float32) that the client multiplies back in:
//
//   mode          values                       scales                    bytes/elem (fp32 source)
//   exact         unchanged                    none                      4
//   bf16          bfloat16, same shape         none                      2
//   fp16          float16, same shape          none                      2
//   fp8_rowwise   float8_e4m3fn, same shape    [batch, ...] (shape[:-1]) 1 + 4/last_dim
//   fp8_tensor    float8_e4m3fn, same shape    [batch]: one per sample   1 + 4/(numel/batch)
//   int8_rowwise  int8, same shape             [batch, ...] (shape[:-1]) 1 + 4/last_dim
//
// A row is the output's last dimension; a rank-1 output [batch] has one element per row (and so
// gains nothing from a rowwise mode). Every scale covers one sample at most, so a sample's bits
// never depend on the other samples of its request.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "common/types.h"

namespace jit::ops {

// The error type of this layer: an output or an answer that does not fit its transport mode.
class TransportError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

enum class Transport : uint8_t {
  kExact,
  kBFloat16,
  kFloat16,
  kFp8Rowwise,
  kFp8Tensor,
  kInt8Rowwise,
};

// The mode's wire name ("exact", "bf16", "fp16", "fp8_rowwise", "fp8_tensor", "int8_rowwise").
std::string_view transport_name(Transport mode);

// Parses a wire name; nullopt for anything else.
std::optional<Transport> transport_from_name(std::string_view name);

// The names, comma-separated, for error messages.
std::string transport_names();

// Whether `mode` changes an output of `dtype`: the lossy modes apply to float32, float16 and
// bfloat16 outputs; exact, and any mode on another dtype, sends the output as it is. bf16 on a
// bfloat16 output and fp16 on a float16 one change nothing either.
bool transport_applies(Transport mode, DType dtype);

// Whether the mode sends scales beside the values.
bool transport_has_scales(Transport mode);

// An output as it travels: values and, for the scaled modes, scales. Both own their bytes and
// carry the output's name (the caller renames the scales entry).
struct WireTensor {
  Tensor values;
  std::optional<Tensor> scales;
};

// Encodes an output for the wire (see the table above).
//   output [batch, ...] float32, float16 or bfloat16, rank >= 1, contiguous
// Returns values in the mode's dtype with the output's shape, and scales when the mode has them:
// [batch, ...] = shape[:-1] for the rowwise modes (shape [batch] for a rank-1 output), [batch] for
// fp8_tensor. max_threads caps the threads (0: the pool's size).
// Throws TransportError when transport_applies(mode, output.dtype) is false.
WireTensor encode_for_transport(const TensorView &output, Transport mode, size_t max_threads = 0);

// Restores an output from its wire form: the inverse of encode_for_transport, in `dtype` (float32,
// float16 or bfloat16; the output's own dtype, normally).
//   values [batch, ...] in the mode's dtype; scales as encode_for_transport made them, or null for
//   the modes without scales
// Returns [batch, ...] of `dtype`, named as `values`.
// Throws TransportError when the dtypes or shapes do not fit the mode (a malformed answer).
Tensor decode_from_transport(const TensorView &values, const TensorView *scales, Transport mode, DType dtype,
                             size_t max_threads = 0);

} // namespace jit::ops
