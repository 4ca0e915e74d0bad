#include "common/types.h"

#include <array>

namespace jit {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t itemsize;
  bool floating;
};

// Names follow torch's dtype names so that Python wrappers map them without a table of their own.
constexpr std::array<DTypeInfo, 12> kDTypes = {{
    {DType::kFloat32, "float32", 4, true},
    {DType::kFloat16, "float16", 2, true},
    {DType::kBFloat16, "bfloat16", 2, true},
    {DType::kFloat8E4M3, "float8_e4m3fn", 1, true},
    {DType::kInt8, "int8", 1, false},
    {DType::kUInt8, "uint8", 1, false},
    {DType::kInt16, "int16", 2, false},
    {DType::kInt32, "int32", 4, false},
    {DType::kInt64, "int64", 8, false},
    {DType::kBool, "bool", 1, false},
    {DType::kStr, "str", 1, false},
    {DType::kBytes, "bytes", 1, false},
}};

const DTypeInfo &info(DType dtype) {
  return kDTypes[static_cast<size_t>(dtype)];
}

} // namespace

size_t dtype_itemsize(DType dtype) {
  return info(dtype).itemsize;
}
std::string_view dtype_name(DType dtype) {
  return info(dtype).name;
}
bool dtype_is_floating(DType dtype) {
  return info(dtype).floating;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto &d : kDTypes) {
    if (d.name == name) return d.dtype;
  }
  return std::nullopt;
}

std::optional<uint64_t> shape_numel(const Shape &shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  return n;
}

} // namespace jit
