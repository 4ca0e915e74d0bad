// The tracer (common/trace.h): off records nothing, one capture at a time, the bounded buffer
// counts drops, the Chrome JSON parses (yaml-cpp reads JSON) with the fields viewers need, and
// the engine records its batch stages and queue waits on named tracks.
#include <gtest/gtest.h>

#include <yaml-cpp/yaml.h>

#include <future>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../engine/affine_executor.h"
#include "common/trace.h"
#include "engine/engine.h"

namespace jit::trace {
namespace {

using namespace std::chrono_literals;

// Ends a capture a failed assertion left running, so the next test starts with the tracer off.
struct StopAfter {
  ~StopAfter() { stop(); }
};

TEST(Trace, OffRecordsNothingAndOneCaptureRunsAtATime) {
  StopAfter guard;
  ASSERT_FALSE(enabled());
  {
    Scope s("before", "test");
    EXPECT_FALSE(s.active());
  }
  record("before", "test", Clock::now(), Clock::now());
  EXPECT_TRUE(stop().events.empty()); // no capture ran

  ASSERT_TRUE(start(100));
  EXPECT_TRUE(enabled());
  EXPECT_FALSE(start(100)); // already running
  {
    Scope s("inside", "test");
    EXPECT_TRUE(s.active());
  }
  Capture c = stop();
  EXPECT_FALSE(enabled());
  ASSERT_EQ(c.events.size(), 1u);
  EXPECT_EQ(c.events[0].name, "inside");
  EXPECT_EQ(c.events[0].tid, thread_id());
  EXPECT_GE(c.events[0].ts_us, 0);
  EXPECT_GE(c.events[0].dur_us, 0);

  {
    Scope s("after", "test");
    EXPECT_FALSE(s.active());
  }
  ASSERT_TRUE(start(100)); // a new capture starts empty
  EXPECT_TRUE(stop().events.empty());
}

TEST(Trace, TheBufferIsBoundedAndCountsDrops) {
  StopAfter guard;
  ASSERT_TRUE(start(5));
  for (int i = 0; i < 12; ++i)
    record("e" + std::to_string(i), "test", Clock::now(), Clock::now());
  Capture c = stop();
  ASSERT_EQ(c.events.size(), 5u);
  EXPECT_EQ(c.dropped, 7u);
  EXPECT_EQ(c.max_events, 5u);
  EXPECT_EQ(c.events[4].name, "e4");
}

TEST(Trace, SpansThatBeganBeforeTheCaptureAreClipped) {
  StopAfter guard;
  const Clock::time_point long_ago = Clock::now() - 1h;
  ASSERT_TRUE(start(10));
  record("old", "test", long_ago, Clock::now());
  Capture c = stop();
  ASSERT_EQ(c.events.size(), 1u);
  EXPECT_EQ(c.events[0].ts_us, 0);
  EXPECT_LT(c.events[0].dur_us, 3600LL * 1000 * 1000);
}

TEST(Trace, ChromeJsonParsesWithNamedThreadsAndAsyncPairs) {
  StopAfter guard;
  ASSERT_TRUE(start(100));
  uint32_t worker_tid = 0;
  std::thread worker([&] {
    name_thread("encoder vae instance 0");
    worker_tid = thread_id();
    Scope s("batch", "engine");
    s.arg("encoder", std::string("v\"a\\e\n"));
    s.arg("samples", int64_t{32});
  });
  worker.join();
  std::thread pool([] {
    name_thread_once("http");
    name_thread_once("ignored"); // the first name stays
    Scope s("request", "http");
  });
  pool.join();
  const Clock::time_point t0 = Clock::now();
  record("queue vae", "queue", t0, t0 + 5ms, {{"encoder", "vae", 0, false}}, next_async_id());
  const std::string json = to_chrome_json(stop());

  const YAML::Node doc = YAML::Load(json);
  EXPECT_EQ(doc["displayTimeUnit"].as<std::string>(), "ms");
  EXPECT_EQ(doc["otherData"]["events"].as<int>(), 3);
  EXPECT_EQ(doc["otherData"]["dropped_events"].as<int>(), 0);
  EXPECT_EQ(doc["otherData"]["max_events"].as<int>(), 100);

  std::map<std::string, std::string> thread_names; // tid -> name
  std::map<std::string, YAML::Node> spans;         // name -> the X event
  std::vector<std::string> async_phases;
  for (const YAML::Node &e : doc["traceEvents"]) {
    const std::string ph = e["ph"].as<std::string>();
    EXPECT_EQ(e["pid"].as<int>(), 1);
    if (ph == "M" && e["name"].as<std::string>() == "thread_name") {
      thread_names[e["tid"].as<std::string>()] = e["args"]["name"].as<std::string>();
    } else if (ph == "X") {
      EXPECT_GE(e["dur"].as<int64_t>(), 0);
      EXPECT_GE(e["ts"].as<int64_t>(), 0);
      spans[e["name"].as<std::string>()] = e;
    } else if (ph == "b" || ph == "e") {
      EXPECT_EQ(e["name"].as<std::string>(), "queue vae");
      EXPECT_EQ(e["id"].as<int64_t>(), doc["traceEvents"][doc["traceEvents"].size() - 1]["id"].as<int64_t>());
      async_phases.push_back(ph);
    }
  }
  EXPECT_EQ(async_phases, (std::vector<std::string>{"b", "e"}));
  ASSERT_EQ(spans.count("batch"), 1u);
  ASSERT_EQ(spans.count("request"), 1u);
  const YAML::Node batch = spans["batch"];
  EXPECT_EQ(batch["cat"].as<std::string>(), "engine");
  EXPECT_EQ(batch["args"]["encoder"].as<std::string>(), "v\"a\\e\n");
  EXPECT_EQ(batch["args"]["samples"].as<int>(), 32);
  EXPECT_EQ(batch["tid"].as<uint32_t>(), worker_tid);
  EXPECT_EQ(thread_names[batch["tid"].as<std::string>()], "encoder vae instance 0");
  const std::string http_tid = spans["request"]["tid"].as<std::string>();
  EXPECT_EQ(thread_names[http_tid], "http-" + http_tid);
}

TEST(Trace, TheEngineRecordsBatchStagesAndQueueWaits) {
  StopAfter guard;
  engine::Engine eng;
  engine::EncoderConfig config;
  config.batching.max_batch_size = 64;
  config.batching.max_queue_delay = std::chrono::microseconds(2000);
  eng.load("enc", std::make_shared<engine::testing_util::AffineExecutor>(2.0f), config);

  ASSERT_TRUE(start(10000));
  std::vector<std::future<engine::Result>> results;
  for (int i = 0; i < 6; ++i)
    results.push_back(eng.submit("enc", {engine::testing_util::input(2, 4, static_cast<float>(i))}));
  for (auto &f : results)
    f.get();
  Capture c = stop();

  std::map<std::string, std::vector<Event>> by_name;
  for (const Event &e : c.events)
    by_name[e.name].push_back(e);
  ASSERT_FALSE(by_name["batch"].empty());
  EXPECT_EQ(by_name["queue enc"].size(), 6u); // one wait per request
  for (const Event &q : by_name["queue enc"])
    EXPECT_NE(q.async_id, 0u);
  int64_t samples = 0, requests = 0;
  for (const Event &b : by_name["batch"]) {
    std::map<std::string, Arg> args;
    for (const Arg &a : b.args)
      args[a.key] = a;
    EXPECT_EQ(args["encoder"].text, "enc");
    samples += args["samples"].number;
    requests += args["requests"].number;
    EXPECT_EQ(c.thread_names[b.tid], "encoder enc instance 0");
  }
  EXPECT_EQ(samples, 12);
  EXPECT_EQ(requests, 6);
  for (const char *stage : {"stack", "forward", "split"}) {
    ASSERT_EQ(by_name[stage].size(), by_name["batch"].size()) << stage;
    // Each stage nests in a batch of its own thread (1 us of slack: each end is truncated to us).
    for (const Event &s : by_name[stage]) {
      bool nested = false;
      for (const Event &b : by_name["batch"]) {
        nested |= b.tid == s.tid && b.ts_us <= s.ts_us && s.ts_us + s.dur_us <= b.ts_us + b.dur_us + 1;
      }
      EXPECT_TRUE(nested) << stage;
    }
  }
}

} // namespace
} // namespace jit::trace
