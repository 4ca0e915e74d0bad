// The tracer's buffer, thread ids and names, and the Chrome JSON rendering.
#include "common/trace.h"

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <utility>

namespace jit::trace {

namespace detail {
std::atomic<bool> g_enabled{false};
} // namespace detail

namespace {

// The running capture; guarded by its mutex. Spans are recorded when they end, so a lock per
// event is taken only while a capture runs.
struct State {
  std::mutex mu;
  bool running = false;
  Clock::time_point begin;
  size_t max_events = 0;
  uint64_t dropped = 0;
  std::vector<Event> events;
};

State &state() {
  static State s;
  return s;
}

// Thread names outlive captures: a thread is named once, when it starts.
struct Names {
  std::mutex mu;
  std::map<uint32_t, std::string> by_tid;
};

Names &names() {
  static Names n;
  return n;
}

std::atomic<uint32_t> g_next_tid{1};
std::atomic<uint64_t> g_next_async{1};

int64_t micros(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

void append_quoted(std::string &out, const std::string &s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
    case '"': out += "\\\""; break;
    case '\\': out += "\\\\"; break;
    case '\n': out += "\\n"; break;
    case '\r': out += "\\r"; break;
    case '\t': out += "\\t"; break;
    default:
      if (c < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        out += buf;
      } else {
        out += static_cast<char>(c);
      }
    }
  }
  out += '"';
}

void append_args(std::string &out, const std::vector<Arg> &args) {
  out += "{";
  for (size_t i = 0; i < args.size(); ++i) {
    if (i) out += ", ";
    append_quoted(out, args[i].key);
    out += ": ";
    if (args[i].is_number) {
      out += std::to_string(args[i].number);
    } else {
      append_quoted(out, args[i].text);
    }
  }
  out += "}";
}

// The fields every event shares, without the closing brace.
void append_head(std::string &out, const Event &e, const char *ph, int64_t ts) {
  out += "{\"name\": ";
  append_quoted(out, e.name);
  out += ", \"cat\": ";
  append_quoted(out, e.cat);
  out += ", \"ph\": \"";
  out += ph;
  out += "\", \"ts\": " + std::to_string(ts) + ", \"pid\": 1, \"tid\": " + std::to_string(e.tid);
}

} // namespace

bool start(size_t max_events) {
  State &s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.running) return false;
  s.running = true;
  s.begin = Clock::now();
  s.max_events = std::max<size_t>(1, max_events);
  s.dropped = 0;
  s.events.clear();
  detail::g_enabled.store(true, std::memory_order_relaxed);
  return true;
}

Capture stop() {
  Capture c;
  {
    State &s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    if (!s.running) return c;
    s.running = false;
    detail::g_enabled.store(false, std::memory_order_relaxed);
    c.events = std::move(s.events);
    s.events = {};
    c.dropped = s.dropped;
    c.max_events = s.max_events;
    c.duration_us = micros(Clock::now() - s.begin);
  }
  std::lock_guard<std::mutex> lock(names().mu);
  c.thread_names = names().by_tid;
  return c;
}

void record(std::string name, std::string cat, Clock::time_point begin, Clock::time_point end, std::vector<Arg> args,
            uint64_t async_id, uint32_t tid) {
  if (!enabled()) return;
  if (tid == 0) tid = thread_id();
  State &s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.running) return;
  if (s.events.size() >= s.max_events) {
    ++s.dropped;
    return;
  }
  if (begin < s.begin) begin = s.begin; // began before this capture: clipped to its start
  if (end < begin) end = begin;
  Event e;
  e.name = std::move(name);
  e.cat = std::move(cat);
  e.ts_us = micros(begin - s.begin);
  e.dur_us = micros(end - begin);
  e.tid = tid;
  e.async_id = async_id;
  e.args = std::move(args);
  s.events.push_back(std::move(e));
}

uint64_t next_async_id() {
  return g_next_async.fetch_add(1, std::memory_order_relaxed);
}

uint32_t thread_id() {
  thread_local const uint32_t id = g_next_tid.fetch_add(1, std::memory_order_relaxed);
  return id;
}

namespace {
thread_local bool t_named = false;
} // namespace

void name_thread(const std::string &name) {
  const uint32_t tid = thread_id();
  {
    std::lock_guard<std::mutex> lock(names().mu);
    names().by_tid[tid] = name;
  }
  t_named = true;
}

void name_thread_once(const char *prefix) {
  if (t_named) return;
  name_thread(std::string(prefix) + "-" + std::to_string(thread_id()));
}

Scope::~Scope() {
  if (active_) record(name_, cat_, begin_, Clock::now(), std::move(args_));
}

void Scope::arg(const char *key, const std::string &value) {
  if (active_) args_.push_back(Arg{key, value, 0, false});
}

void Scope::arg(const char *key, int64_t value) {
  if (active_) args_.push_back(Arg{key, {}, value, true});
}

std::string to_chrome_json(const Capture &capture) {
  std::string out;
  out.reserve(256 + capture.events.size() * 160);
  out += "{\"traceEvents\": [\n";
  out += "{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": 1, \"tid\": 0, "
         "\"args\": {\"name\": \"jit-embedding-server\"}}";
  std::map<uint32_t, bool> tids;
  for (const Event &e : capture.events) {
    if (e.async_id == 0) tids[e.tid] = true;
  }
  for (const auto &[tid, used] : tids) {
    auto it = capture.thread_names.find(tid);
    const std::string name = it != capture.thread_names.end() ? it->second : "thread-" + std::to_string(tid);
    out += ",\n{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 1, \"tid\": " + std::to_string(tid) +
           ", \"args\": {\"name\": ";
    append_quoted(out, name);
    out += "}}";
  }
  for (const Event &e : capture.events) {
    out += ",\n";
    if (e.async_id == 0) {
      append_head(out, e, "X", e.ts_us);
      out += ", \"dur\": " + std::to_string(e.dur_us) + ", \"args\": ";
      append_args(out, e.args);
      out += "}";
    } else {
      const std::string id = ", \"id\": " + std::to_string(e.async_id);
      append_head(out, e, "b", e.ts_us);
      out += id + ", \"args\": ";
      append_args(out, e.args);
      out += "},\n";
      append_head(out, e, "e", e.ts_us + e.dur_us);
      out += id + "}";
    }
  }
  char duration[32];
  std::snprintf(duration, sizeof duration, "%.3f", static_cast<double>(capture.duration_us) / 1000.0);
  out += "\n],\n\"displayTimeUnit\": \"ms\",\n\"otherData\": {\"producer\": \"jit-embedding\", \"events\": " +
         std::to_string(capture.events.size()) + ", \"dropped_events\": " + std::to_string(capture.dropped) +
         ", \"max_events\": " + std::to_string(capture.max_events) + ", \"duration_ms\": " + duration + "}}\n";
  return out;
}

} // namespace jit::trace
