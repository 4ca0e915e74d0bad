// A process-wide tracer of the server's pipeline stages, rendered as a Chrome trace (JSON that
// chrome://tracing and https://ui.perfetto.dev open), so that the overlap of decoding, queueing,
// batching, the forward pass and serialising, or the lack of it, can be seen.
//
// Off by default: while off, every instrumentation point costs one relaxed atomic load
// (trace::enabled()). start() begins a capture into a bounded buffer; events beyond its
// max_events are counted as dropped, never stored; stop() ends the capture and returns what it
// holds. One capture runs at a time.
//
// Events are Chrome "complete" events (ph "X"): a name, a category, a start in microseconds on
// the steady clock since the capture began, a duration, the small id of the thread that ran the
// span (tids are stable for a thread's life, 1, 2, ...), and a few string or integer args.
// An event with an async_id is rendered as a nestable async pair (ph "b"/"e") instead: such
// events may overlap one another, and viewers draw them on a track named after the event rather
// than on a thread (the engine's per-encoder "queue <encoder>" tracks).
//
// Threads are named with name_thread() (executor threads, the cache writer) or
// name_thread_once() (pool threads that serve many things, e.g. "http-12"); the names become
// thread_name metadata events, so viewers show named tracks.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace jit::trace {

using Clock = std::chrono::steady_clock;

struct Arg {
  std::string key;
  std::string text;   // when !is_number
  int64_t number = 0; // when is_number
  bool is_number = false;
};

struct Event {
  std::string name;
  std::string cat;
  int64_t ts_us = 0;     // since the capture began
  int64_t dur_us = 0;    // >= 0
  uint32_t tid = 0;      // thread_id() of the thread the span belongs to
  uint64_t async_id = 0; // nonzero: an overlapping async span (see the file comment)
  std::vector<Arg> args;
};

// What one capture collected.
struct Capture {
  std::vector<Event> events;                    // in the order they were recorded (ends of spans)
  uint64_t dropped = 0;                         // events not stored: the buffer was full
  size_t max_events = 0;                        // the buffer's bound
  int64_t duration_us = 0;                      // start() to stop()
  std::map<uint32_t, std::string> thread_names; // every thread named so far, by tid
};

namespace detail {
extern std::atomic<bool> g_enabled;
} // namespace detail

// Whether a capture is running: one relaxed atomic load, for the instrumentation points.
inline bool enabled() noexcept {
  return detail::g_enabled.load(std::memory_order_relaxed);
}

// Begins a capture of at most `max_events` events (at least 1). Returns false, changing nothing,
// when a capture is already running. Thread-safe.
bool start(size_t max_events);

// Ends the running capture and returns its events; an empty Capture when none runs. Spans that
// end after stop() are not recorded. Thread-safe.
Capture stop();

// Records one span of the calling thread (or of `tid`, when nonzero) from `begin` to `end`;
// nothing when no capture runs. A span that began before the capture is clipped to its start.
void record(std::string name, std::string cat, Clock::time_point begin, Clock::time_point end,
            std::vector<Arg> args = {}, uint64_t async_id = 0, uint32_t tid = 0);

// A fresh id for an async span (never 0).
uint64_t next_async_id();

// The calling thread's small stable id (assigned on first use: 1, 2, ...).
uint32_t thread_id();

// Names the calling thread's track (replacing an earlier name). Cheap, and kept whether or not a
// capture runs, so call it once when a thread starts.
void name_thread(const std::string &name);

// Names the calling thread "<prefix>-<thread_id()>" unless it already has a name: for pool
// threads first seen inside a traced span. After the first call, one thread_local test.
void name_thread_once(const char *prefix);

// Records a span over its own lifetime when a capture was running at its construction.
// `name` and `cat` must outlive it (string literals).
class Scope {
public:
  Scope(const char *name, const char *cat) : active_(enabled()), name_(name), cat_(cat) {
    if (active_) begin_ = Clock::now();
  }
  ~Scope();
  Scope(const Scope &) = delete;
  Scope &operator=(const Scope &) = delete;

  bool active() const { return active_; }
  // Adds an arg to the span; nothing when inactive.
  void arg(const char *key, const std::string &value);
  void arg(const char *key, int64_t value);

private:
  bool active_;
  const char *name_;
  const char *cat_;
  Clock::time_point begin_;
  std::vector<Arg> args_;
};

// Renders a capture as Chrome trace JSON:
//   {"traceEvents": [thread_name and process_name metadata events, then the events],
//    "displayTimeUnit": "ms",
//    "otherData": {"producer": "jit-embedding", "events": n, "dropped_events": n, "max_events": n,
//                  "duration_ms": x}}
// Every tid that an event uses gets a thread_name ("thread-<tid>" when it was never named).
std::string to_chrome_json(const Capture &capture);

} // namespace jit::trace
