// The LibTorch executor's CUDA path (copy and compute streams per runner, pinned staging) against
// its synchronous path and against the CPU, on a TorchScript encoder written by the test: two
// inputs (float32 features, int64 ids) and three outputs, one of them a strided view, so inputs
// and outputs share staging blocks at offsets and a non-contiguous output comes back contiguous.
//
// The GPU tests skip without a CUDA device (GTEST_SKIP). The CPU tests run everywhere: they check
// the fixture against torch computed directly, and that the CUDA options change nothing on CPU.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "executor/torch_executor.h"

namespace jit::executor {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kIn = 256;
constexpr int64_t kOut = 512;

// The encoder: y = x @ w + 0.5, y_even = y[:, ::2] (a strided view), ids2 = ids * 2 + 1.
struct Fixture {
  fs::path dir;
  Manifest manifest;
  at::Tensor w;

  Fixture() {
    dir = fs::temp_directory_path() / ("jit_torch_executor_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    torch::jit::Module m("Encoder");
    at::manual_seed(0);
    w = at::randn({kIn, kOut}) * 0.1;
    m.register_parameter("w", w, /*is_buffer=*/false);
    m.define(R"JIT(
def forward(self, x, ids):
    y = torch.matmul(x, self.w) + 0.5
    return y, y[:, ::2], ids * 2 + 1
)JIT");
    m.save((dir / "model.pt").string());

    manifest.name = "affine";
    manifest.format = "torchscript";
    manifest.artifact = (dir / "model.pt").string();
    manifest.version = "sha256:test";
    manifest.device = "cpu";
    manifest.dtype = "float32";
    manifest.spec.inputs = {{"x", DType::kFloat32, {-1, kIn}}, {"ids", DType::kInt64, {-1, -1}}};
    manifest.spec.outputs = {{"y", DType::kFloat32, {-1, kOut}},
                             {"y_even", DType::kFloat32, {-1, kOut / 2}},
                             {"ids2", DType::kInt64, {-1, -1}}};
  }
  ~Fixture() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

const Fixture &fixture() {
  static Fixture f;
  return f;
}

std::shared_ptr<Executor> load(const std::string &device, bool streams = true, size_t pinned_pool_bytes = 256 << 20,
                               size_t runners = 1) {
  TorchExecutorOptions o;
  o.device = device;
  o.streams = streams;
  o.pinned_pool_bytes = pinned_pool_bytes;
  o.num_runners = runners;
  return load_torch_executor(fixture().manifest, o);
}

// A batch of n samples with ids of length seq; its values follow from `seed`.
Batch make_batch(int64_t n, int64_t seq, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  Batch b;
  b.size = static_cast<size_t>(n);
  Tensor x = make_tensor("x", DType::kFloat32, {n, kIn});
  auto *xf = static_cast<float *>(const_cast<void *>(x.data));
  for (int64_t i = 0; i < n * kIn; ++i)
    xf[i] = uniform(rng);
  Tensor ids = make_tensor("ids", DType::kInt64, {n, seq});
  auto *ip = static_cast<int64_t *>(const_cast<void *>(ids.data));
  for (int64_t i = 0; i < n * seq; ++i)
    ip[i] = static_cast<int64_t>(rng() % 50000);
  b.inputs = {std::move(x), std::move(ids)};
  return b;
}

at::Tensor as_torch(const Tensor &t) {
  const at::ScalarType type = t.dtype == DType::kInt64 ? at::kLong : at::kFloat;
  EXPECT_TRUE(t.dtype == DType::kInt64 || t.dtype == DType::kFloat32);
  EXPECT_EQ(t.nbytes, static_cast<size_t>(at::elementSize(type)) * *shape_numel(t.shape));
  return at::from_blob(const_cast<void *>(t.data), t.shape, at::TensorOptions(type));
}

// Every output of `got` equals `want`'s: integers exactly, floats within a matmul's rounding.
void expect_same(const EncoderOutput &got, const EncoderOutput &want, const std::string &what) {
  ASSERT_EQ(got.outputs.size(), want.outputs.size()) << what;
  for (size_t i = 0; i < got.outputs.size(); ++i) {
    const Tensor &g = got.outputs[i], &w = want.outputs[i];
    EXPECT_EQ(g.name, w.name) << what;
    EXPECT_EQ(g.dtype, w.dtype) << what;
    ASSERT_EQ(g.shape, w.shape) << what << ": " << g.name;
    const at::Tensor gt = as_torch(g), wt = as_torch(w);
    if (g.dtype == DType::kInt64) {
      EXPECT_TRUE(at::equal(gt, wt)) << what << ": " << g.name;
    } else {
      EXPECT_TRUE(at::allclose(gt, wt, /*rtol=*/1e-5, /*atol=*/1e-5))
          << what << ": " << g.name << " differs by up to " << (gt - wt).abs().max().item<float>();
    }
  }
}

bool has_cuda() {
  return torch::cuda::is_available();
}

#define SKIP_WITHOUT_CUDA()                                                                                            \
  if (!has_cuda()) GTEST_SKIP() << "no CUDA device"

// ---- CPU (runs everywhere)

TEST(TorchExecutorCpu, OutputsMatchTorchAndTheCudaOptionsChangeNothing) {
  const Batch b = make_batch(5, 7, 1);
  const EncoderOutput ref = load("cpu")->run(b);
  ASSERT_EQ(ref.outputs.size(), 3u);
  const at::Tensor x = as_torch(b.inputs[0]), ids = as_torch(b.inputs[1]);
  const at::Tensor y = at::matmul(x, fixture().w) + 0.5;
  EXPECT_TRUE(at::allclose(as_torch(ref.outputs[0]), y, 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(as_torch(ref.outputs[1]), y.slice(1, 0, kOut, 2), 1e-5, 1e-5));
  EXPECT_TRUE(at::equal(as_torch(ref.outputs[2]), ids * 2 + 1));
  EXPECT_EQ(ref.outputs[1].shape, (Shape{5, kOut / 2}));

  for (bool streams : {true, false}) {
    for (size_t pool : {size_t{0}, size_t{1} << 20}) {
      std::shared_ptr<Executor> e = load("cpu", streams, pool, 2);
      EXPECT_FALSE(e->device_stats().has_value()) << "no staging on CPU";
      expect_same(e->run(b), ref, "cpu");
    }
  }
}

// ---- CUDA (skips without a device)

TEST(TorchExecutorGpu, StreamsOnEqualsStreamsOffEqualsCpu) {
  SKIP_WITHOUT_CUDA();
  std::shared_ptr<Executor> cpu = load("cpu"), on = load("cuda", true), off = load("cuda", false);
  ASSERT_TRUE(on->device_stats().has_value());
  EXPECT_FALSE(off->device_stats().has_value()) << "streams off: the synchronous path, no staging";
  uint32_t seed = 10;
  for (int64_t n : {1, 7, 64, 300}) {
    for (int64_t seq : {1, 33}) {
      const Batch b = make_batch(n, seq, ++seed);
      const EncoderOutput want = cpu->run(b);
      const EncoderOutput got_on = on->run(b);
      const EncoderOutput got_off = off->run(b);
      const std::string what = "n=" + std::to_string(n) + " seq=" + std::to_string(seq);
      expect_same(got_on, want, "streams on vs cpu, " + what);
      expect_same(got_off, want, "streams off vs cpu, " + what);
      expect_same(got_on, got_off, "streams on vs off, " + what);
      EXPECT_GT(on->device_stats()->pinned_leased_bytes, 0u) << "the outputs lease their pinned block";
    }
  }
  const DeviceStats s = on->device_stats().value();
  EXPECT_EQ(s.pinned_leased_bytes, 0u) << "every output released: every block is idle";
  EXPECT_GT(s.pinned_bytes, 0u);
  EXPECT_EQ(s.pinned_fallbacks, 0u);
}

TEST(TorchExecutorGpu, ConcurrentRunsOnTwoRunnersKeepTheirOutputsIntact) {
  SKIP_WITHOUT_CUDA();
  std::shared_ptr<Executor> cpu = load("cpu");
  // A small pool, so blocks are reused (and evicted) constantly while callers hold leases.
  std::shared_ptr<Executor> gpu = load("cuda", true, size_t{4} << 20, 2);
  auto worker = [&](uint32_t base) {
    // Each thread holds its last 6 results while it runs more: a block reused while leased would
    // be overwritten by a later batch, and the held result would no longer match.
    std::deque<std::pair<EncoderOutput, EncoderOutput>> held;
    for (uint32_t i = 0; i < 150; ++i) {
      const Batch b = make_batch(1 + (base + i) % 48, 1 + i % 20, base * 1000 + i);
      held.emplace_back(gpu->run(b), cpu->run(b));
      if (held.size() > 6) {
        const auto &[got, want] = held.front();
        expect_same(got, want, "held result");
        held.pop_front();
      }
    }
    for (const auto &[got, want] : held)
      expect_same(got, want, "held result");
  };
  std::thread a(worker, 1), b(worker, 2);
  a.join();
  b.join();
  const DeviceStats s = gpu->device_stats().value();
  EXPECT_EQ(s.pinned_leased_bytes, 0u);
  EXPECT_LE(s.pinned_bytes, size_t{4} << 20);
}

TEST(TorchExecutorGpu, ThePinnedPoolBoundIsRespectedAndFallbacksAreCounted) {
  SKIP_WITHOUT_CUDA();
  std::shared_ptr<Executor> cpu = load("cpu");
  std::shared_ptr<Executor> gpu = load("cuda", true, size_t{1} << 20);
  // 16 samples: inputs 16 KiB + outputs 48 KiB, each within one 64 KiB block.
  const Batch small = make_batch(16, 4, 3);
  expect_same(gpu->run(small), cpu->run(small), "small");
  EXPECT_EQ(gpu->device_stats()->pinned_fallbacks, 0u);
  // 2048 samples: inputs 2 MiB, outputs 6 MiB, both over the 1 MiB bound.
  const Batch big = make_batch(2048, 4, 4);
  expect_same(gpu->run(big), cpu->run(big), "big");
  DeviceStats s = gpu->device_stats().value();
  EXPECT_EQ(s.pinned_fallbacks, 2u) << "inputs and outputs both staged in pageable memory";
  EXPECT_LE(s.pinned_bytes, size_t{1} << 20);
  expect_same(gpu->run(small), cpu->run(small), "small again");
  EXPECT_EQ(gpu->device_stats()->pinned_fallbacks, 2u) << "small batches use the pool again";

  // No pinned memory at all: every staging falls back, and the outputs are still right.
  std::shared_ptr<Executor> none = load("cuda", true, 0);
  expect_same(none->run(small), cpu->run(small), "pool 0");
  s = none->device_stats().value();
  EXPECT_EQ(s.pinned_fallbacks, 2u);
  EXPECT_EQ(s.pinned_bytes, 0u);
}

// A batch the model refuses fails with ExecutorError (after waiting for its input copy, so the
// pinned block it goes back to is not being read), and the next batch runs as before.
TEST(TorchExecutorGpu, AFailedForwardLeavesTheExecutorUsable) {
  SKIP_WITHOUT_CUDA();
  std::shared_ptr<Executor> cpu = load("cpu");
  std::shared_ptr<Executor> gpu = load("cuda", true, size_t{1} << 20);
  Batch bad = make_batch(4, 3, 5);
  bad.inputs[0] = make_tensor("x", DType::kFloat32, {4, kIn - 1}); // matmul cannot take it
  EXPECT_THROW(gpu->run(bad), ExecutorError);
  EXPECT_EQ(gpu->device_stats()->pinned_leased_bytes, 0u);
  const Batch good = make_batch(4, 3, 6);
  expect_same(gpu->run(good), cpu->run(good), "after a failure");
}

// The serving path: the engine with `instances: 2` runs two runners at once, stacks requests into
// batches and slices each request's rows out of the leased output block.
TEST(TorchExecutorGpu, TheEngineWithTwoInstancesServesCorrectRows) {
  SKIP_WITHOUT_CUDA();
  std::shared_ptr<Executor> cpu = load("cpu");
  engine::Engine eng;
  engine::EncoderConfig config;
  config.instances = 2;
  config.batching.max_batch_size = 32;
  config.batching.max_queue_delay = std::chrono::microseconds(500);
  config.batching.max_queue_size = 1 << 16;
  eng.load("affine", load("cuda", true, size_t{8} << 20, 2), config);
  std::vector<std::thread> clients;
  std::atomic<int> checked{0};
  for (uint32_t c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (uint32_t i = 0; i < 50; ++i) {
        const Batch b = make_batch(1 + (c + i) % 5, 8, 7000 + c * 100 + i);
        engine::Result r = eng.submit("affine", b.inputs).get();
        EncoderOutput got;
        got.outputs = std::move(r.outputs);
        expect_same(got, cpu->run(b), "engine");
        ++checked;
      }
    });
  }
  for (auto &t : clients)
    t.join();
  EXPECT_EQ(checked.load(), 200);
}

} // namespace
} // namespace jit::executor
