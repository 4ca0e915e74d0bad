// The engine over a real CPU executor: batched results equal unbatched ones, incompatible shapes
// never share a batch, bad input is refused with the right code, overload and deadlines are
// reported, executor failures reach only their batch, an in-place update under load fails no
// request and mixes no versions, and drain finishes queued work.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <thread>

#include "affine_executor.h"
#include "engine/engine.h"

namespace jit::engine {
namespace {

using namespace testing_util;
using std::chrono::hours;
using std::chrono::milliseconds;

EngineError::Code code_of(const std::function<void()> &f) {
  try {
    f();
  } catch (const EngineError &e) {
    return e.code();
  }
  ADD_FAILURE() << "no EngineError";
  return EngineError::Code::kExecutor;
}

TEST(Engine, ConcurrentRequestsFormBatchesWithUnbatchedResults) {
  metrics::Registry reg;
  Engine engine(&reg);
  auto exec = std::make_shared<AffineExecutor>(2.0f);
  engine.load("affine", exec, {{32, milliseconds(20), 1024}, 1});
  std::vector<std::thread> clients;
  for (int c = 0; c < 16; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < 10; ++i) {
        Tensor x = input(1 + (c + i) % 3, 8, static_cast<float>(c * 100 + i));
        Result r = engine.submit("affine", {x}).get();
        EXPECT_EQ(r.version, "scale=2.000000");
        expect_result(r, x, 2.0f);
      }
    });
  }
  for (auto &t : clients)
    t.join();
  EXPECT_GT(exec->max_batch.load(), 1u);
  std::string text = reg.render();
  EXPECT_NE(text.find("jit_requests_total{encoder=\"affine\",outcome=\"ok\"} 160"), std::string::npos) << text;
  EXPECT_NE(text.find("jit_batch_size_count{encoder=\"affine\"}"), std::string::npos);
}

TEST(Engine, DifferentFeatureSizesNeverShareABatch) {
  Engine engine;
  auto exec = std::make_shared<AffineExecutor>(1.0f);
  engine.load("affine", exec, {{64, milliseconds(5), 1024}, 1});
  std::vector<std::future<Result>> futures;
  std::vector<Tensor> inputs;
  for (int i = 0; i < 20; ++i) {
    inputs.push_back(input(1, i % 2 ? 4 : 6, static_cast<float>(i)));
    futures.push_back(engine.submit("affine", {inputs.back()}));
  }
  for (int i = 0; i < 20; ++i)
    expect_result(futures[i].get(), inputs[i], 1.0f);
}

TEST(Engine, RefusesBadInputWithTheRightCode) {
  Engine engine;
  engine.load("affine", std::make_shared<AffineExecutor>(1.0f), {{4, milliseconds(1), 16}, 1});
  using C = EngineError::Code;
  EXPECT_EQ(code_of([&] { engine.submit("nope", {input(1, 4, 0)}); }), C::kUnknownEncoder);
  EXPECT_EQ(code_of([&] { engine.submit("affine", {}); }), C::kInvalidInput);
  Tensor wrong_name = input(1, 4, 0);
  wrong_name.name = "z";
  EXPECT_EQ(code_of([&] { engine.submit("affine", {wrong_name}); }), C::kInvalidInput);
  EXPECT_EQ(code_of([&] { engine.submit("affine", {make_tensor("x", DType::kInt32, {1, 4})}); }), C::kInvalidInput);
  EXPECT_EQ(code_of([&] { engine.submit("affine", {make_tensor("x", DType::kFloat32, {4})}); }), C::kInvalidInput);
  EXPECT_EQ(code_of([&] { engine.submit("affine", {make_tensor("x", DType::kFloat32, {0, 4})}); }), C::kInvalidInput);
  EXPECT_EQ(code_of([&] { engine.submit("affine", {input(5, 4, 0)}); }), C::kTooLarge);
}

TEST(Engine, FullQueueIsRefusedAndDeadlinesExpire) {
  Engine engine;
  auto exec = std::make_shared<AffineExecutor>(1.0f);
  exec->set_open(false); // the executor blocks, so requests pile up
  engine.load("affine", exec, {{1, std::chrono::microseconds(0), 3}, 1});
  auto first = engine.submit("affine", {input(1, 4, 0)}); // taken by the executor thread, then blocked
  while (exec->batches.load() == 0 && engine.encoders()[0].queued_samples != 0)
    std::this_thread::yield();
  std::this_thread::sleep_for(milliseconds(20));
  auto late = engine.submit("affine", {input(1, 4, 1)}, Clock::now() + milliseconds(1));
  auto a = engine.submit("affine", {input(1, 4, 2)});
  auto b = engine.submit("affine", {input(1, 4, 3)});
  EXPECT_EQ(code_of([&] { engine.submit("affine", {input(1, 4, 4)}); }), EngineError::Code::kQueueFull);
  std::this_thread::sleep_for(milliseconds(5));
  exec->set_open(true);
  EXPECT_EQ(code_of([&] { late.get(); }), EngineError::Code::kDeadline);
  first.get();
  a.get();
  b.get();
}

TEST(Engine, ExecutorFailureReachesOnlyItsBatch) {
  Engine engine;
  engine.load("bad", std::make_shared<AffineExecutor>(1.0f, /*fail=*/true), {{4, milliseconds(1), 16}, 1});
  engine.load("good", std::make_shared<AffineExecutor>(3.0f), {{4, milliseconds(1), 16}, 1});
  EXPECT_EQ(code_of([&] { engine.submit("bad", {input(1, 4, 0)}).get(); }), EngineError::Code::kExecutor);
  Tensor x = input(2, 4, 1);
  expect_result(engine.submit("good", {x}).get(), x, 3.0f);
}

TEST(Engine, InPlaceUpdateUnderLoadFailsNothingAndMixesNoVersions) {
  Engine engine;
  engine.load("affine", std::make_shared<AffineExecutor>(1.0f), {{8, std::chrono::microseconds(500), 4096}, 2});
  std::atomic<bool> stop{false};
  std::atomic<int> done{0}, failures{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 6; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; !stop.load(); ++i) {
        Tensor x = input(1 + i % 2, 4, static_cast<float>(c + i));
        try {
          Result r = engine.submit("affine", {x}).get();
          // The version names the scale; the values must come from that same scale.
          float scale = r.version == "scale=1.000000" ? 1.0f : 5.0f;
          EXPECT_TRUE(r.version == "scale=1.000000" || r.version == "scale=5.000000") << r.version;
          expect_result(r, x, scale);
          done++;
        } catch (const std::exception &e) {
          failures++;
          ADD_FAILURE() << e.what();
        }
      }
    });
  }
  std::this_thread::sleep_for(milliseconds(50));
  engine.load("affine", std::make_shared<AffineExecutor>(5.0f), {{8, std::chrono::microseconds(500), 4096}, 2});
  EXPECT_EQ(engine.encoders()[0].version, "scale=5.000000");
  std::this_thread::sleep_for(milliseconds(50));
  stop = true;
  for (auto &t : clients)
    t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(done.load(), 0);
}

TEST(Engine, DrainFinishesQueuedWorkThenRefuses) {
  Engine engine;
  engine.load("affine", std::make_shared<AffineExecutor>(1.0f), {{64, hours(1), 1024}, 1});
  std::vector<std::future<Result>> pending;
  for (int i = 0; i < 5; ++i)
    pending.push_back(engine.submit("affine", {input(1, 4, static_cast<float>(i))}));
  engine.drain(); // the hour-long delay would hang here if drain did not flush the queue
  for (auto &f : pending)
    EXPECT_EQ(f.get().outputs.size(), 2u);
  EXPECT_EQ(code_of([&] { engine.submit("affine", {input(1, 4, 0)}); }), EngineError::Code::kDraining);
}

} // namespace
} // namespace jit::engine
