// Adapters from _C.ops_* to the CPU references (csrc/ops) and, in builds with JIT_HAVE_KERNELS, the CUDA kernels
// (kernels/). Each function converts addresses and enum values, releases the GIL, calls one side, and turns a
// rejected-arguments Status into std::invalid_argument and any other (a failed launch) into std::runtime_error. No
// shapes are checked here: jit_embedding/ops.py does that, and the kernels' own argument checks (shared with the
// references) are the last line.
#include "python/py_ops.h"

#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "jit_kernels.h"
#include "ops/ops_ref.h"

namespace jit::python::ops {
namespace {

namespace py = pybind11;
namespace ref = ::jit::ops::ref;
using kernels::FloatDtype;
using kernels::ResizeMode;
using kernels::Status;

// In a build without the kernels, a device call never gets this far (require_kernels throws first), but the call
// expressions must still compile without their definitions being linked: they become an unreachable status (and
// `stream` goes unused, hence [[maybe_unused]] below).
#ifdef JIT_HAVE_KERNELS
#define JIT_KERNEL(call) (call)
#else
#define JIT_KERNEL(call) kernels::kInvalidValue
#endif

template <typename T> T *as_ptr(uintptr_t address) {
  return reinterpret_cast<T *>(address);
}

[[maybe_unused]] void *as_stream(uintptr_t stream) {
  return reinterpret_cast<void *>(stream);
}

FloatDtype as_dtype(int dtype) {
  return static_cast<FloatDtype>(dtype); // out-of-range values are rejected by the shared argument checks
}

// kernels::status_string lives in the CUDA library; a CPU-only build words the one status its references return.
std::string describe(Status status) {
#ifdef JIT_HAVE_KERNELS
  return kernels::status_string(status);
#else
  return status == kernels::kInvalidValue ? "invalid argument" : "error " + std::to_string(status);
#endif
}

void check(Status status, const char *name) {
  if (status == kernels::kOk) return;
  // A launch failure (no kernel image for this GPU, a driver too old for the CUDA runtime, ...) is not the caller's
  // arguments' fault: RuntimeError, not ValueError.
  if (status != kernels::kInvalidValue) {
    throw std::runtime_error(std::string(name) + ": " + describe(status) + " (CUDA status " + std::to_string(status) +
                             ")");
  }
  throw std::invalid_argument(std::string(name) + ": " + describe(status) + " (status " + std::to_string(status) + ")");
}

// Throws before anything runs when a device call reaches a build without the kernels.
void require_kernels(bool cuda, const char *name) {
  if (cuda && !has_cuda_kernels()) {
    throw std::runtime_error(std::string(name) +
                             ": this jit_embedding._C was built without the CUDA kernels (it needs a torch with CUDA "
                             "and nvcc at build time); use CPU tensors or the pure-torch fallback");
  }
}

// Runs the kernel (a device call) or the reference without the GIL; a non-zero Status throws.
template <typename Kernel, typename Reference>
void dispatch(const char *name, bool cuda, Kernel kernel, Reference reference) {
  require_kernels(cuda, name);
  Status status;
  {
    py::gil_scoped_release nogil;
    status = cuda ? kernel() : reference();
  }
  check(status, name);
}

} // namespace

bool has_cuda_kernels() {
#ifdef JIT_HAVE_KERNELS
  return true;
#else
  return false;
#endif
}

void quantize_fp8_rowwise(uintptr_t src, int src_dtype, int64_t rows, int64_t cols, uintptr_t dst, uintptr_t scales,
                          bool cuda, [[maybe_unused]] uintptr_t stream) {
  const auto *s = as_ptr<const void>(src);
  auto *d = as_ptr<uint8_t>(dst);
  auto *sc = as_ptr<float>(scales);
  dispatch(
      __func__, cuda,
      [&] {
        return JIT_KERNEL(kernels::quantize_fp8_rowwise(s, as_dtype(src_dtype), rows, cols, d, sc, as_stream(stream)));
      },
      [&] { return ref::quantize_fp8_rowwise(s, as_dtype(src_dtype), rows, cols, d, sc); });
}

void dequantize_fp8_rowwise(uintptr_t src, uintptr_t scales, int64_t rows, int64_t cols, uintptr_t dst, int dst_dtype,
                            bool cuda, [[maybe_unused]] uintptr_t stream) {
  const auto *s = as_ptr<const uint8_t>(src);
  const auto *sc = as_ptr<const float>(scales);
  auto *d = as_ptr<void>(dst);
  dispatch(
      __func__, cuda,
      [&] {
        return JIT_KERNEL(
            kernels::dequantize_fp8_rowwise(s, sc, rows, cols, d, as_dtype(dst_dtype), as_stream(stream)));
      },
      [&] { return ref::dequantize_fp8_rowwise(s, sc, rows, cols, d, as_dtype(dst_dtype)); });
}

void quantize_fp8_per_tensor(uintptr_t src, int src_dtype, int64_t numel, uintptr_t dst, uintptr_t scale, bool cuda,
                             [[maybe_unused]] uintptr_t stream) {
  const auto *s = as_ptr<const void>(src);
  auto *d = as_ptr<uint8_t>(dst);
  auto *sc = as_ptr<float>(scale);
  dispatch(
      __func__, cuda,
      [&] {
        return JIT_KERNEL(kernels::quantize_fp8_per_tensor(s, as_dtype(src_dtype), numel, d, sc, as_stream(stream)));
      },
      [&] { return ref::quantize_fp8_per_tensor(s, as_dtype(src_dtype), numel, d, sc); });
}

void dequantize_fp8_per_tensor(uintptr_t src, uintptr_t scale, int64_t numel, uintptr_t dst, int dst_dtype, bool cuda,
                               [[maybe_unused]] uintptr_t stream) {
  const auto *s = as_ptr<const uint8_t>(src);
  const auto *sc = as_ptr<const float>(scale);
  auto *d = as_ptr<void>(dst);
  dispatch(
      __func__, cuda,
      [&] {
        return JIT_KERNEL(kernels::dequantize_fp8_per_tensor(s, sc, numel, d, as_dtype(dst_dtype), as_stream(stream)));
      },
      [&] { return ref::dequantize_fp8_per_tensor(s, sc, numel, d, as_dtype(dst_dtype)); });
}

void quantize_int8_rowwise(uintptr_t src, int src_dtype, int64_t rows, int64_t cols, uintptr_t dst, uintptr_t scales,
                           bool cuda, [[maybe_unused]] uintptr_t stream) {
  const auto *s = as_ptr<const void>(src);
  auto *d = as_ptr<int8_t>(dst);
  auto *sc = as_ptr<float>(scales);
  dispatch(
      __func__, cuda,
      [&] {
        return JIT_KERNEL(kernels::quantize_int8_rowwise(s, as_dtype(src_dtype), rows, cols, d, sc, as_stream(stream)));
      },
      [&] { return ref::quantize_int8_rowwise(s, as_dtype(src_dtype), rows, cols, d, sc); });
}

void dequantize_int8_rowwise(uintptr_t src, uintptr_t scales, int64_t rows, int64_t cols, uintptr_t dst, int dst_dtype,
                             bool cuda, [[maybe_unused]] uintptr_t stream) {
  const auto *s = as_ptr<const int8_t>(src);
  const auto *sc = as_ptr<const float>(scales);
  auto *d = as_ptr<void>(dst);
  dispatch(
      __func__, cuda,
      [&] {
        return JIT_KERNEL(
            kernels::dequantize_int8_rowwise(s, sc, rows, cols, d, as_dtype(dst_dtype), as_stream(stream)));
      },
      [&] { return ref::dequantize_int8_rowwise(s, sc, rows, cols, d, as_dtype(dst_dtype)); });
}

void cast_float(uintptr_t src, int src_dtype, uintptr_t dst, int dst_dtype, int64_t numel, bool cuda,
                [[maybe_unused]] uintptr_t stream) {
  const auto *s = as_ptr<const void>(src);
  auto *d = as_ptr<void>(dst);
  dispatch(
      __func__, cuda,
      [&] {
        return JIT_KERNEL(
            kernels::cast_float(s, as_dtype(src_dtype), d, as_dtype(dst_dtype), numel, as_stream(stream)));
      },
      [&] { return ref::cast_float(s, as_dtype(src_dtype), d, as_dtype(dst_dtype), numel); });
}

void preprocess_nhwc_u8(uintptr_t src, int64_t n, int64_t h, int64_t w, int64_t c, int64_t out_h, int64_t out_w,
                        const std::vector<float> &mean, const std::vector<float> &std, int mode, int out_dtype,
                        uintptr_t dst, bool cuda, [[maybe_unused]] uintptr_t stream) {
  // mean and std are read as [c] arrays: a shorter vector would be read past its end.
  if (static_cast<int64_t>(mean.size()) != c || static_cast<int64_t>(std.size()) != c) {
    throw std::invalid_argument(std::string(__func__) + ": mean and std need c = " + std::to_string(c) +
                                " entries each, got " + std::to_string(mean.size()) + " and " +
                                std::to_string(std.size()));
  }
  const auto *s = as_ptr<const uint8_t>(src);
  auto *d = as_ptr<void>(dst);
  const auto resize = static_cast<ResizeMode>(mode); // out-of-range values are rejected by check_preprocess
  dispatch(
      __func__, cuda,
      [&] {
        return JIT_KERNEL(kernels::preprocess_nhwc_u8(s, n, h, w, c, out_h, out_w, mean.data(), std.data(), resize,
                                                      as_dtype(out_dtype), d, as_stream(stream)));
      },
      [&] {
        return ref::preprocess_nhwc_u8(s, n, h, w, c, out_h, out_w, mean.data(), std.data(), resize,
                                       as_dtype(out_dtype), d);
      });
}

} // namespace jit::python::ops
