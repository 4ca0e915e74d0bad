// Dynamic batching for one encoder: a bounded queue that groups compatible requests.
//
// Requests are grouped by a signature (the engine derives it from input dtypes and non-batch
// dims, or a length bucket for token inputs): only requests with equal signatures share a batch.
// A batch goes to an executor when it is full (max_batch_size samples) or when its oldest request
// has waited max_queue_delay. The queue is bounded in samples; a push past the bound is refused
// at once so the server can answer 429 instead of queueing without limit.
//
// The batcher knows nothing of tensors, HTTP or torch: the engine's request rides in `payload`.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace jit::engine {

using Clock = std::chrono::steady_clock;

struct BatchingConfig {
  size_t max_batch_size = 32;                      // samples per batch
  std::chrono::microseconds max_queue_delay{2000}; // how long the oldest request may wait for company
  size_t max_queue_size = 1024;                    // samples waiting, over all signatures
};

// One queued request: `samples` rows that share `signature`.
struct Pending {
  std::string signature;
  size_t samples = 1;
  Clock::time_point enqueued = Clock::now();
  Clock::time_point deadline = Clock::time_point::max(); // max(): no deadline
  std::shared_ptr<void> payload;                         // the engine's request, opaque here
};

enum class Admit {
  kOk,
  kQueueFull, // max_queue_size samples already wait: answer 429 with Retry-After
  kTooLarge,  // one request holds more than max_batch_size samples
  kClosed,    // draining: no new admissions
};

// Thread-safe: any number of producers (HTTP handlers) and consumers (executor threads).
class Batcher {
public:
  explicit Batcher(BatchingConfig config);

  // Queues p, or refuses it without blocking. Returns why not, if not.
  Admit push(Pending p);

  // Blocks until a batch is ready, some queued requests have passed their deadline, or the
  // batcher is closed and empty. On return, `batch` holds requests of one signature, in arrival
  // order, with at most max_batch_size samples in all; `expired` holds requests whose deadline
  // passed while they waited (answer them 504). Both vectors are cleared first.
  // Returns false only when closed and fully drained: the consumer should exit.
  bool pop(std::vector<Pending> &batch, std::vector<Pending> &expired);

  // Stops admissions. Queued requests are still handed out, without waiting for company, until
  // none remain; then pop() returns false.
  void close();

  size_t queued_samples() const;
  size_t queued_requests() const;
  const BatchingConfig &config() const { return config_; }

private:
  struct Group {
    std::deque<Pending> queue;
    size_t samples = 0;
  };
  // Moves every request whose deadline has passed into `expired`. Caller holds mu_.
  void collect_expired(Clock::time_point now, std::vector<Pending> &expired);
  // The ready group whose head waited longest, or nullptr; sets `wake` to when the next group
  // becomes ready by age. Caller holds mu_.
  Group *ready_group(Clock::time_point now, Clock::time_point &wake);

  const BatchingConfig config_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Group> groups_;
  size_t samples_ = 0;
  size_t requests_ = 0;
  bool closed_ = false;
};

} // namespace jit::engine
