// Row operations on batched tensors ([rows, ...]): padding token inputs to a common length when
// rows are stacked, and cutting each row's outputs back to its own length. The engine stacks the
// requests of a batch with them; the cache splits a request into rows and puts rows back together
// on the server and in the client (torch-free).
//
// "Padding" is always on the right of one sequence dimension `dim` (>= 1, never the batch
// dimension): a row of length `len` keeps its elements first and holds the pad value after them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/types.h"

namespace jit {

// Writes `count` elements of `value` converted to `dtype` at `dst` (the pad value of a token input).
// Throws std::invalid_argument for a non-zero value in a dtype without an exact integer
// conversion here (float16, bfloat16, float8, str, bytes).
void fill_value(DType dtype, void *dst, size_t count, int64_t value);

// Copies `src` ([rows, ..., len at dim, ...]) into `dst` ([rows, ..., target at dim, ...],
// target >= len), which already holds the pad value: each row's elements first, padding after.
void copy_padded(const TensorView &src, int dim, int64_t target, uint8_t *dst);

// Rows [row0, row0 + rows) of `t`, cut to `len` along `dim` (dim < 1 or len < 0: uncut). Shares
// t's bytes (and owner) when the result is contiguous in `t` (always, uncut; a single row cut
// along its first dimension), and copies otherwise. The caller checks the ranges.
Tensor slice_rows(const Tensor &t, size_t row0, size_t rows, int dim, int64_t len);

// Concatenates `parts` (each [k_i, ...], same dtype and rank) along dimension 0 into a new tensor
// named `name`, right-padding dimension `dim` of each to the longest with `pad_value` (dim < 1:
// no padding; every other dimension must agree). Throws std::invalid_argument when the parts do
// not fit together, or as fill_value().
Tensor concat_rows(std::string name, const std::vector<TensorView> &parts, int dim, int64_t pad_value);

} // namespace jit
