#include "common/metrics.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace jit::metrics {
namespace {

// atomic<double> has no fetch_add before C++20; a CAS loop is what it compiles to anyway.
void atomic_add(std::atomic<double> &a, double v) {
  double cur = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
  }
}

bool valid_name(const std::string &s, bool allow_colon) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':') ||
              (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

std::string escape(const std::string &s, bool quote) {
  std::string out;
  for (char c : s) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else if (quote && c == '"')
      out += "\\\"";
    else
      out += c;
  }
  return out;
}

std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

// {a="1",b="2"} with an optional extra label (le for histogram buckets); empty for no labels.
std::string label_text(const Labels &labels, const char *extra_name = nullptr, const std::string &extra = "") {
  if (labels.empty() && extra_name == nullptr) return "";
  std::string out = "{";
  bool first = true;
  for (const auto &[k, v] : labels) {
    if (!first) out += ",";
    first = false;
    out += k + "=\"" + escape(v, true) + "\"";
  }
  if (extra_name != nullptr) {
    if (!first) out += ",";
    out += std::string(extra_name) + "=\"" + extra + "\"";
  }
  return out + "}";
}

} // namespace

void Counter::inc(double v) {
  if (v < 0) throw std::invalid_argument("counters only go up");
  atomic_add(value_, v);
}

void Gauge::add(double v) {
  atomic_add(value_, v);
}

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)) {
  if (!std::is_sorted(bounds_.begin(), bounds_.end()) ||
      std::adjacent_find(bounds_.begin(), bounds_.end()) != bounds_.end()) {
    throw std::invalid_argument("histogram bounds must increase strictly");
  }
  counts_ = std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1);
  for (size_t i = 0; i <= bounds_.size(); ++i)
    counts_[i].store(0);
}

void Histogram::observe(double v) {
  size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin(); // first bound >= v
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  atomic_add(sum_, v);
}

std::vector<uint64_t> Histogram::cumulative_counts() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  uint64_t acc = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    acc += counts_[i].load(std::memory_order_relaxed);
    out[i] = acc;
  }
  return out;
}

uint64_t Histogram::count() const {
  return cumulative_counts().back();
}

std::vector<double> exponential_buckets(double start, double factor, int count) {
  std::vector<double> out;
  for (int i = 0; i < count; ++i, start *= factor)
    out.push_back(start);
  return out;
}

Registry::Family &Registry::family(const std::string &name, const std::string &help, Type type, const Labels &labels) {
  if (!valid_name(name, true)) throw std::invalid_argument("invalid metric name '" + name + "'");
  for (const auto &[k, v] : labels) {
    if (!valid_name(k, false) || k.rfind("__", 0) == 0) throw std::invalid_argument("invalid label name '" + k + "'");
  }
  auto [it, inserted] = families_.try_emplace(name, Family{type, help, {}, {}, {}});
  if (!inserted && it->second.type != type) {
    throw std::invalid_argument("metric '" + name + "' is already registered with another type");
  }
  return it->second;
}

Counter &Registry::counter(const std::string &name, const std::string &help, const Labels &labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto &slot = family(name, help, Type::kCounter, labels).counters[labels];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

Gauge &Registry::gauge(const std::string &name, const std::string &help, const Labels &labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto &slot = family(name, help, Type::kGauge, labels).gauges[labels];
  if (!slot) slot = std::make_unique<Gauge>();
  return *slot;
}

Histogram &Registry::histogram(const std::string &name, const std::string &help, const std::vector<double> &bounds,
                               const Labels &labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto &slot = family(name, help, Type::kHistogram, labels).histograms[labels];
  if (!slot) slot = std::make_unique<Histogram>(bounds);
  return *slot;
}

void Registry::hide(const std::string &label, const std::string &value) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> &values = hidden_[label];
  if (std::find(values.begin(), values.end(), value) == values.end()) values.push_back(value);
}

void Registry::show(const std::string &label, const std::string &value) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = hidden_.find(label);
  if (it == hidden_.end()) return;
  it->second.erase(std::remove(it->second.begin(), it->second.end(), value), it->second.end());
}

bool Registry::hidden(const Labels &labels) const {
  for (const auto &[label, values] : hidden_) {
    auto it = labels.find(label);
    if (it != labels.end() && std::find(values.begin(), values.end(), it->second) != values.end()) return true;
  }
  return false;
}

std::string Registry::render() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto &[name, f] : families_) {
    static const char *kTypeNames[] = {"counter", "gauge", "histogram"};
    out += "# HELP " + name + " " + escape(f.help, false) + "\n";
    out += "# TYPE " + name + " " + kTypeNames[static_cast<int>(f.type)] + "\n";
    for (const auto &[labels, c] : f.counters)
      if (!hidden(labels)) out += name + label_text(labels) + " " + format_value(c->value()) + "\n";
    for (const auto &[labels, g] : f.gauges)
      if (!hidden(labels)) out += name + label_text(labels) + " " + format_value(g->value()) + "\n";
    for (const auto &[labels, h] : f.histograms) {
      if (hidden(labels)) continue;
      auto counts = h->cumulative_counts();
      for (size_t i = 0; i < h->bounds().size(); ++i) {
        out += name + "_bucket" + label_text(labels, "le", format_value(h->bounds()[i])) + " " +
               std::to_string(counts[i]) + "\n";
      }
      out += name + "_bucket" + label_text(labels, "le", "+Inf") + " " + std::to_string(counts.back()) + "\n";
      out += name + "_sum" + label_text(labels) + " " + format_value(h->sum()) + "\n";
      out += name + "_count" + label_text(labels) + " " + std::to_string(counts.back()) + "\n";
    }
  }
  return out;
}

} // namespace jit::metrics
