// Prometheus metrics: values, label escaping, histogram buckets, and the exact text format.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "common/metrics.h"

namespace jit::metrics {
namespace {

TEST(Metrics, RendersCountersGaugesAndHistogramsInTextFormat) {
  Registry r;
  r.counter("jit_requests_total", "Requests by outcome.", {{"encoder", "vae"}, {"outcome", "ok"}}).inc(3);
  r.gauge("jit_queue_depth", "Queued samples.", {{"encoder", "vae"}}).set(5);
  auto &h = r.histogram("jit_batch_size", "Samples per batch.", {1, 4, 16}, {{"encoder", "vae"}});
  h.observe(1);
  h.observe(3);
  h.observe(100);
  EXPECT_EQ(r.render(), "# HELP jit_batch_size Samples per batch.\n"
                        "# TYPE jit_batch_size histogram\n"
                        "jit_batch_size_bucket{encoder=\"vae\",le=\"1\"} 1\n"
                        "jit_batch_size_bucket{encoder=\"vae\",le=\"4\"} 2\n"
                        "jit_batch_size_bucket{encoder=\"vae\",le=\"16\"} 2\n"
                        "jit_batch_size_bucket{encoder=\"vae\",le=\"+Inf\"} 3\n"
                        "jit_batch_size_sum{encoder=\"vae\"} 104\n"
                        "jit_batch_size_count{encoder=\"vae\"} 3\n"
                        "# HELP jit_queue_depth Queued samples.\n"
                        "# TYPE jit_queue_depth gauge\n"
                        "jit_queue_depth{encoder=\"vae\"} 5\n"
                        "# HELP jit_requests_total Requests by outcome.\n"
                        "# TYPE jit_requests_total counter\n"
                        "jit_requests_total{encoder=\"vae\",outcome=\"ok\"} 3\n");
}

TEST(Metrics, HiddenSeriesLeaveTheOutputAndComeBackWithTheirValues) {
  Registry r;
  Counter &gone = r.counter("jit_x_total", "X.", {{"encoder", "old"}});
  r.counter("jit_x_total", "X.", {{"encoder", "kept"}}).inc(2);
  r.histogram("jit_y_seconds", "Y.", {1.0}, {{"encoder", "old"}}).observe(0.5);
  gone.inc(3);
  r.hide("encoder", "old");
  const std::string hidden = r.render();
  EXPECT_EQ(hidden.find("encoder=\"old\""), std::string::npos) << hidden;
  EXPECT_NE(hidden.find("jit_x_total{encoder=\"kept\"} 2"), std::string::npos) << hidden;
  gone.inc(); // a reference held across the hide stays valid
  r.show("encoder", "old");
  const std::string shown = r.render();
  EXPECT_NE(shown.find("jit_x_total{encoder=\"old\"} 4"), std::string::npos) << shown;
  EXPECT_NE(shown.find("jit_y_seconds_count{encoder=\"old\"} 1"), std::string::npos) << shown;
}

TEST(Metrics, SameLabelsSameSeries) {
  Registry r;
  Counter &a = r.counter("c", "h", {{"x", "1"}});
  Counter &b = r.counter("c", "h", {{"x", "1"}});
  Counter &c = r.counter("c", "h", {{"x", "2"}});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &c);
}

TEST(Metrics, EscapesLabelValues) {
  Registry r;
  r.counter("c", "h", {{"reason", "bad \"frame\"\nnext\\"}}).inc();
  EXPECT_NE(r.render().find("c{reason=\"bad \\\"frame\\\"\\nnext\\\\\"} 1"), std::string::npos) << r.render();
}

TEST(Metrics, RejectsInvalidNamesAndTypeClashes) {
  Registry r;
  EXPECT_THROW(r.counter("1bad", "h"), std::invalid_argument);
  EXPECT_THROW(r.counter("ok", "h", {{"bad-label", "v"}}), std::invalid_argument);
  r.counter("dup", "h");
  EXPECT_THROW(r.gauge("dup", "h"), std::invalid_argument);
  EXPECT_THROW(r.counter("neg", "h").inc(-1), std::invalid_argument);
  EXPECT_THROW(Histogram({2, 1}), std::invalid_argument);
}

TEST(Metrics, ConcurrentUpdatesAreNotLost) {
  Registry r;
  Counter &c = r.counter("c", "h");
  Histogram &h = r.histogram("h", "h", exponential_buckets(1, 2, 8));
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c.inc();
        h.observe(i % 300);
      }
    });
  }
  for (auto &t : ts)
    t.join();
  EXPECT_EQ(c.value(), 40000);
  EXPECT_EQ(h.count(), 40000u);
}

} // namespace
} // namespace jit::metrics
