// Prometheus metrics: counters, gauges and histograms with labels, rendered in the text
// exposition format (version 0.0.4) for GET /metrics.
//
// Look a metric up once (under the registry's lock) and keep the reference: updates are lock-free
// atomics, cheap enough for per-request hot paths. References stay valid for the registry's life.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace jit::metrics {

// Label name -> value, e.g. {{"encoder", "vae"}, {"outcome", "ok"}}. Ordered, so that the same set
// always names the same series.
using Labels = std::map<std::string, std::string>;

class Counter {
public:
  void inc(double v = 1.0);
  double value() const { return value_.load(std::memory_order_relaxed); }

private:
  std::atomic<double> value_{0.0};
};

class Gauge {
public:
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  void add(double v);
  double value() const { return value_.load(std::memory_order_relaxed); }

private:
  std::atomic<double> value_{0.0};
};

class Histogram {
public:
  // bounds: strictly increasing upper bounds; +Inf is implicit.
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  const std::vector<double> &bounds() const { return bounds_; }
  // Cumulative counts per bound, then the +Inf count; and the sum of observations.
  std::vector<uint64_t> cumulative_counts() const;
  double sum() const { return sum_.load(std::memory_order_relaxed); }
  uint64_t count() const;

private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_; // one per bound, plus +Inf
  std::atomic<double> sum_{0.0};
};

// Exponential bucket bounds: start, start*factor, ... (count of them).
std::vector<double> exponential_buckets(double start, double factor, int count);

class Registry {
public:
  // Returns the series of `name` with `labels`, creating the family and series on first use.
  // Throws std::invalid_argument if `name` was registered with another type, or if a name or a
  // label name is not a valid Prometheus identifier.
  Counter &counter(const std::string &name, const std::string &help, const Labels &labels = {});
  Gauge &gauge(const std::string &name, const std::string &help, const Labels &labels = {});
  Histogram &histogram(const std::string &name, const std::string &help, const std::vector<double> &bounds,
                       const Labels &labels = {});

  // The whole registry in the Prometheus text format, families in name order, without the hidden
  // series (below).
  std::string render() const;

  // Hides (or shows again) every series with label `label` = `value` from render(), e.g. an
  // unloaded encoder's. The series live on, so references held elsewhere stay valid, and a series
  // shown again continues from its value (counters never go down).
  void hide(const std::string &label, const std::string &value);
  void show(const std::string &label, const std::string &value);

private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Family {
    Type type;
    std::string help;
    std::map<Labels, std::unique_ptr<Counter>> counters;
    std::map<Labels, std::unique_ptr<Gauge>> gauges;
    std::map<Labels, std::unique_ptr<Histogram>> histograms;
  };
  Family &family(const std::string &name, const std::string &help, Type type, const Labels &labels);

  bool hidden(const Labels &labels) const;

  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
  std::map<std::string, std::vector<std::string>> hidden_; // label -> hidden values
};

} // namespace jit::metrics
