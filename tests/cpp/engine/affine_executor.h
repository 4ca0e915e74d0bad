// A small, real CPU executor for engine and server tests, with the expected results computed
// directly, so tests can check batched outputs against unbatched arithmetic.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>

#include "engine/engine.h"
#include "executor/executor.h"

namespace jit::engine::testing_util {

// y = x * scale + offset elementwise, and norm = sum(x^2) per row: each sample's result depends on
// that sample alone, so batching must not change it. Its version names its scale.
class AffineExecutor : public executor::Executor {
public:
  explicit AffineExecutor(float scale, bool fail = false) : scale_(scale), fail_(fail) {
    spec_.inputs = {{"x", DType::kFloat32, {-1, -1}}};
    spec_.outputs = {{"y", DType::kFloat32, {-1, -1}}, {"norm", DType::kFloat32, {-1}}};
    version_ = "scale=" + std::to_string(scale);
  }
  const EncoderSpec &spec() const override { return spec_; }
  const std::string &version() const override { return version_; }
  EncoderOutput run(const Batch &b) override {
    {
      std::unique_lock<std::mutex> lock(gate_mu);
      gate_cv.wait(lock, [&] { return open; });
    }
    max_batch = std::max<size_t>(max_batch, b.size);
    batches++;
    if (fail_) throw executor::ExecutorError("synthetic failure");
    const Tensor &x = b.inputs[0];
    int64_t rows = x.shape[0], cols = x.shape[1];
    Tensor y = make_tensor("y", DType::kFloat32, x.shape);
    Tensor norm = make_tensor("norm", DType::kFloat32, {rows});
    const auto *in = static_cast<const float *>(x.data);
    auto *out = static_cast<float *>(const_cast<void *>(y.data));
    auto *nrm = static_cast<float *>(const_cast<void *>(norm.data));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        float v = in[r * cols + c];
        out[r * cols + c] = v * scale_ + 1.0f;
        nrm[r] += v * v;
      }
    }
    return {{y, norm}};
  }

  std::atomic<size_t> max_batch{0};
  std::atomic<size_t> batches{0};
  std::mutex gate_mu;
  std::condition_variable gate_cv;
  bool open = true;
  void set_open(bool o) {
    {
      std::lock_guard<std::mutex> l(gate_mu);
      open = o;
    }
    gate_cv.notify_all();
  }

private:
  float scale_;
  bool fail_;
  EncoderSpec spec_;
  std::string version_;
};

inline Tensor input(int64_t rows, int64_t cols, float seed) {
  Tensor t = make_tensor("x", DType::kFloat32, {rows, cols});
  auto *p = static_cast<float *>(const_cast<void *>(t.data));
  for (int64_t i = 0; i < rows * cols; ++i)
    p[i] = seed + 0.25f * static_cast<float>(i % 13);
  return t;
}

// The expected outputs for `x` under `scale`, computed directly.
inline void expect_result(const Result &r, const Tensor &x, float scale) {
  ASSERT_EQ(r.outputs.size(), 2u);
  const auto *in = static_cast<const float *>(x.data);
  const auto *y = static_cast<const float *>(r.outputs[0].data);
  const auto *n = static_cast<const float *>(r.outputs[1].data);
  EXPECT_EQ(r.outputs[0].shape, x.shape);
  EXPECT_EQ(r.outputs[1].shape, (Shape{x.shape[0]}));
  for (int64_t row = 0; row < x.shape[0]; ++row) {
    float want_norm = 0;
    for (int64_t c = 0; c < x.shape[1]; ++c) {
      float v = in[row * x.shape[1] + c];
      EXPECT_EQ(y[row * x.shape[1] + c], v * scale + 1.0f);
      want_norm += v * v;
    }
    EXPECT_EQ(n[row], want_norm);
  }
}

} // namespace jit::engine::testing_util
