// A JSON object written field by field, for the benchmark binaries' one-line reports
// (jit-loadgen, jit-cache-bench). Keys and string values there need no escaping beyond quotes and
// backslashes (URLs, status and tier names, paths, error messages); control characters become spaces.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace jit::bench {

class Json {
public:
  // Integral values print without a fraction; non-finite ones as 0.
  Json &num(const std::string &key, double v) {
    char buf[64];
    if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15)
      std::snprintf(buf, sizeof buf, "%.0f", v);
    else
      std::snprintf(buf, sizeof buf, "%.6g", std::isfinite(v) ? v : 0.0);
    return raw(key, buf);
  }
  Json &str(const std::string &key, const std::string &v) { return raw(key, quote(v)); }
  Json &boolean(const std::string &key, bool v) { return raw(key, v ? "true" : "false"); }
  Json &ints(const std::string &key, const std::vector<int64_t> &v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i)
      s += (i ? ", " : "") + std::to_string(v[i]);
    return raw(key, s + "]");
  }
  Json &counts(const std::string &key, const std::map<std::string, uint64_t> &m) {
    std::string s = "{";
    for (const auto &[k, n] : m)
      s += (s.size() > 1 ? ", " : "") + quote(k) + ": " + std::to_string(n);
    return raw(key, s + "}");
  }
  std::string done() const { return "{" + out_ + "}"; }
  // Prints the object as one line on stdout, flushed, so a caller reading lines sees it at once.
  void print() const {
    std::printf("%s\n", done().c_str());
    std::fflush(stdout);
  }

private:
  static std::string quote(const std::string &s) {
    std::string q = "\"";
    for (char c : s) {
      if (c == '"' || c == '\\') q += '\\';
      q += (static_cast<unsigned char>(c) < 0x20) ? ' ' : c;
    }
    return q + "\"";
  }
  Json &raw(const std::string &key, const std::string &v) {
    out_ += (out_.empty() ? "" : ", ") + quote(key) + ": " + v;
    return *this;
  }
  std::string out_;
};

} // namespace jit::bench
