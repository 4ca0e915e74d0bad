// Token inputs and length buckets: requests whose lengths round up to the same bucket share a
// batch, are padded with each input's pad value to the longest in the batch, and get back only
// their own positions, equal to what they would get alone.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "engine/engine.h"
#include "executor/executor.h"

namespace jit::engine {
namespace {

using std::chrono::milliseconds;

constexpr int64_t kPadId = 7;

// hidden[b, s] = {ids * mask, s * mask} and pooled[b] = sum(ids * mask): each row depends on its
// own unpadded tokens only. It checks that every padded position holds the pad values.
class TokenExecutor : public executor::Executor {
public:
  TokenExecutor() {
    spec_.inputs = {{"input_ids", DType::kInt64, {-1, -1}, 1, kPadId},
                    {"attention_mask", DType::kInt64, {-1, -1}, 1, 0}};
    spec_.outputs = {{"hidden", DType::kFloat32, {-1, -1, 2}, 1, 0}, {"pooled", DType::kFloat32, {-1}}};
  }
  const EncoderSpec &spec() const override { return spec_; }
  const std::string &version() const override { return version_; }
  EncoderOutput run(const Batch &b) override {
    {
      std::unique_lock<std::mutex> lock(gate_mu);
      gate_cv.wait(lock, [&] { return open; });
    }
    const int64_t rows = b.inputs[0].shape[0], len = b.inputs[0].shape[1];
    {
      std::lock_guard<std::mutex> lock(log_mu);
      batch_lengths.push_back(len);
      batch_sizes.push_back(b.size);
    }
    const auto *ids = static_cast<const int64_t *>(b.inputs[0].data);
    const auto *mask = static_cast<const int64_t *>(b.inputs[1].data);
    Tensor hidden = make_tensor("hidden", DType::kFloat32, {rows, len, 2});
    Tensor pooled = make_tensor("pooled", DType::kFloat32, {rows});
    auto *h = static_cast<float *>(const_cast<void *>(hidden.data));
    auto *p = static_cast<float *>(const_cast<void *>(pooled.data));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t s = 0; s < len; ++s) {
        const int64_t i = r * len + s;
        if (mask[i] == 0 && ids[i] != kPadId) bad_padding = true;
        h[i * 2] = static_cast<float>(ids[i] * mask[i]);
        h[i * 2 + 1] = static_cast<float>(s * mask[i]);
        p[r] += static_cast<float>(ids[i] * mask[i]);
      }
    }
    return {{hidden, pooled}};
  }
  void set_open(bool o) {
    {
      std::lock_guard<std::mutex> l(gate_mu);
      open = o;
    }
    gate_cv.notify_all();
  }

  std::mutex log_mu;
  std::vector<int64_t> batch_lengths;
  std::vector<size_t> batch_sizes;
  std::atomic<bool> bad_padding{false};

private:
  std::mutex gate_mu;
  std::condition_variable gate_cv;
  bool open = true;
  EncoderSpec spec_;
  std::string version_ = "tokens-v1";
};

// One request of `rows` samples of `len` tokens: ids 100 + row * 10 + position, mask all ones.
std::vector<Tensor> tokens(int64_t rows, int64_t len) {
  Tensor ids = make_tensor("input_ids", DType::kInt64, {rows, len});
  Tensor mask = make_tensor("attention_mask", DType::kInt64, {rows, len});
  auto *i = static_cast<int64_t *>(const_cast<void *>(ids.data));
  auto *m = static_cast<int64_t *>(const_cast<void *>(mask.data));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t s = 0; s < len; ++s) {
      i[r * len + s] = 100 + r * 10 + s;
      m[r * len + s] = 1;
    }
  }
  return {ids, mask};
}

void expect_tokens_result(const Result &r, int64_t rows, int64_t len) {
  ASSERT_EQ(r.outputs.size(), 2u);
  ASSERT_EQ(r.outputs[0].shape, (Shape{rows, len, 2}));
  ASSERT_EQ(r.outputs[1].shape, (Shape{rows}));
  const auto *h = static_cast<const float *>(r.outputs[0].data);
  const auto *p = static_cast<const float *>(r.outputs[1].data);
  for (int64_t row = 0; row < rows; ++row) {
    float sum = 0;
    for (int64_t s = 0; s < len; ++s) {
      const float id = static_cast<float>(100 + row * 10 + s);
      EXPECT_EQ(h[(row * len + s) * 2], id);
      EXPECT_EQ(h[(row * len + s) * 2 + 1], static_cast<float>(s));
      sum += id;
    }
    EXPECT_EQ(p[row], sum);
  }
}

EncoderConfig bucketed(std::vector<int64_t> buckets) {
  EncoderConfig c{{64, milliseconds(50), 1024}, 1};
  c.length_buckets = std::move(buckets);
  return c;
}

TEST(LengthBuckets, LengthsInOneBucketShareAPaddedBatchAndGetTheirOwnPositionsBack) {
  Engine engine;
  auto exec = std::make_shared<TokenExecutor>();
  engine.load("tok", exec, bucketed({8, 16, 32}));
  // Hold the executor on a first request so the next three queue up together.
  exec->set_open(false);
  auto first = engine.submit("tok", tokens(1, 4));
  std::this_thread::sleep_for(milliseconds(100));
  auto a = engine.submit("tok", tokens(2, 3));
  auto b = engine.submit("tok", tokens(1, 8));
  auto c = engine.submit("tok", tokens(3, 5));
  exec->set_open(true);
  expect_tokens_result(first.get(), 1, 4);
  expect_tokens_result(a.get(), 2, 3);
  expect_tokens_result(b.get(), 1, 8);
  expect_tokens_result(c.get(), 3, 5);
  EXPECT_FALSE(exec->bad_padding);
  std::lock_guard<std::mutex> lock(exec->log_mu);
  ASSERT_EQ(exec->batch_lengths.size(), 2u);
  EXPECT_EQ(exec->batch_lengths[1], 8); // padded to the longest in the batch, not beyond
  EXPECT_EQ(exec->batch_sizes[1], 6u);
}

TEST(LengthBuckets, DifferentBucketsNeverShareABatch) {
  Engine engine;
  auto exec = std::make_shared<TokenExecutor>();
  engine.load("tok", exec, bucketed({8, 16}));
  exec->set_open(false);
  auto first = engine.submit("tok", tokens(1, 2));
  std::this_thread::sleep_for(milliseconds(100));
  auto short1 = engine.submit("tok", tokens(1, 6));
  auto mid = engine.submit("tok", tokens(1, 12));
  auto over = engine.submit("tok", tokens(1, 40)); // beyond the last bucket: a group of its own
  auto over2 = engine.submit("tok", tokens(1, 41));
  exec->set_open(true);
  expect_tokens_result(first.get(), 1, 2);
  expect_tokens_result(short1.get(), 1, 6);
  expect_tokens_result(mid.get(), 1, 12);
  expect_tokens_result(over.get(), 1, 40);
  expect_tokens_result(over2.get(), 1, 41);
  std::lock_guard<std::mutex> lock(exec->log_mu);
  EXPECT_EQ(exec->batch_sizes.size(), 5u);
  for (size_t s : exec->batch_sizes)
    EXPECT_EQ(s, 1u);
}

TEST(LengthBuckets, WithoutBucketsOnlyEqualLengthsShareABatch) {
  Engine engine;
  auto exec = std::make_shared<TokenExecutor>();
  engine.load("tok", exec, bucketed({}));
  exec->set_open(false);
  auto first = engine.submit("tok", tokens(1, 2));
  std::this_thread::sleep_for(milliseconds(100));
  auto a = engine.submit("tok", tokens(1, 5));
  auto b = engine.submit("tok", tokens(2, 5));
  auto c = engine.submit("tok", tokens(1, 6));
  exec->set_open(true);
  expect_tokens_result(first.get(), 1, 2);
  expect_tokens_result(a.get(), 1, 5);
  expect_tokens_result(b.get(), 2, 5);
  expect_tokens_result(c.get(), 1, 6);
  std::lock_guard<std::mutex> lock(exec->log_mu);
  EXPECT_EQ(exec->batch_sizes, (std::vector<size_t>{1, 3, 1}));
}

TEST(LengthBuckets, TokenInputsThatDisagreeOnLengthAreInvalid) {
  Engine engine;
  engine.load("tok", std::make_shared<TokenExecutor>(), bucketed({8}));
  std::vector<Tensor> in = tokens(1, 5);
  in[1] = tokens(1, 6)[1];
  try {
    engine.submit("tok", in);
    FAIL() << "accepted ids and mask of different lengths";
  } catch (const EngineError &e) {
    EXPECT_EQ(e.code(), EngineError::Code::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("sequence length"), std::string::npos) << e.what();
  }
}

} // namespace
} // namespace jit::engine
