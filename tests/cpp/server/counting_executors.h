// Executors for server tests and the request-handling fuzz target (fuzz_http.cpp): plain C++,
// no torch and no gtest, counting the rows they compute so that "served from the cache" and
// "recomputed" are observable. CountingAffine has one float input; CountingTokens has token
// inputs with a sequence dimension, for length buckets and padding.
#pragma once

#include <yaml-cpp/yaml.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "executor/executor.h"
#include "server/app.h"

namespace jit::server::testing_util {

struct Counts {
  std::atomic<size_t> rows{0};  // samples run through a forward, over all batches
  std::atomic<size_t> calls{0}; // forwards
};

// y = x * scale + 1 and norm = sum(x^2) per row, like engine/affine_executor.h, counting rows.
class CountingAffine : public executor::Executor {
public:
  CountingAffine(float scale, Counts *counts) : scale_(scale), counts_(counts) {
    spec_.inputs = {{"x", DType::kFloat32, {-1, -1}}};
    spec_.outputs = {{"y", DType::kFloat32, {-1, -1}}, {"norm", DType::kFloat32, {-1}}};
    version_ = "affine scale=" + std::to_string(scale);
  }
  const EncoderSpec &spec() const override { return spec_; }
  const std::string &version() const override { return version_; }
  EncoderOutput run(const Batch &b) override {
    counts_->rows += b.size;
    counts_->calls += 1;
    const Tensor &x = b.inputs[0];
    const int64_t rows = x.shape[0], cols = x.shape[1];
    Tensor y = make_tensor("y", DType::kFloat32, x.shape);
    Tensor norm = make_tensor("norm", DType::kFloat32, {rows});
    const auto *in = static_cast<const float *>(x.data);
    auto *out = static_cast<float *>(const_cast<void *>(y.data));
    auto *nrm = static_cast<float *>(const_cast<void *>(norm.data));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const float v = in[r * cols + c];
        out[r * cols + c] = v * scale_ + 1.0f;
        nrm[r] += v * v;
      }
    }
    return {{y, norm}};
  }

private:
  float scale_;
  Counts *counts_;
  EncoderSpec spec_;
  std::string version_;
};

constexpr int64_t kPadId = 7;

// A token encoder: input_ids and attention_mask with sequence dimension 1; hidden[b, s] =
// {ids[s], s + 1} over EVERY position, padding included (so uncut padding would show), and
// pooled[b] = sum(ids * mask).
class CountingTokens : public executor::Executor {
public:
  explicit CountingTokens(Counts *counts) : counts_(counts) {
    spec_.inputs = {{"input_ids", DType::kInt64, {-1, -1}, 1, kPadId},
                    {"attention_mask", DType::kInt64, {-1, -1}, 1, 0}};
    spec_.outputs = {{"hidden", DType::kFloat32, {-1, -1, 2}, 1, 0}, {"pooled", DType::kFloat32, {-1}}};
  }
  const EncoderSpec &spec() const override { return spec_; }
  const std::string &version() const override { return version_; }
  EncoderOutput run(const Batch &b) override {
    counts_->rows += b.size;
    counts_->calls += 1;
    const int64_t rows = b.inputs[0].shape[0], len = b.inputs[0].shape[1];
    const auto *ids = static_cast<const int64_t *>(b.inputs[0].data);
    const auto *mask = static_cast<const int64_t *>(b.inputs[1].data);
    Tensor hidden = make_tensor("hidden", DType::kFloat32, {rows, len, 2});
    Tensor pooled = make_tensor("pooled", DType::kFloat32, {rows});
    auto *h = static_cast<float *>(const_cast<void *>(hidden.data));
    auto *p = static_cast<float *>(const_cast<void *>(pooled.data));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t s = 0; s < len; ++s) {
        const int64_t i = r * len + s;
        h[i * 2] = static_cast<float>(ids[i]);
        h[i * 2 + 1] = static_cast<float>(s + 1);
        p[r] += static_cast<float>(ids[i] * mask[i]);
      }
    }
    return {{hidden, pooled}};
  }

private:
  Counts *counts_;
  EncoderSpec spec_;
  std::string version_ = "tokens-v1";
};

// The factory: an entry's options {"kind": "tokens"} make a CountingTokens, {"scale": s} a
// CountingAffine; both count into `counts`, which must outlive every executor made. Throws
// YAML::Exception for options that are not JSON or lack a float scale (App answers a failed load).
ExecutorFactory counting_factory(Counts *counts) {
  return [counts](const EncoderEntry &e) -> std::shared_ptr<executor::Executor> {
    const YAML::Node options = YAML::Load(e.options_json);
    if (options["kind"] && options["kind"].as<std::string>() == "tokens")
      return std::make_shared<CountingTokens>(counts);
    return std::make_shared<CountingAffine>(options["scale"].as<float>(), counts);
  };
}

} // namespace jit::server::testing_util
