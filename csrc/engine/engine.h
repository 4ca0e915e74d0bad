// The engine: hosts several encoders, each with its own bounded batching queue and executor
// threads; stacks compatible requests into batches, runs them, and splits the outputs back per
// request. It knows no transport (HTTP lives in server/) and no torch (executors live below it).
//
// In-place update: load() of a name that is already served builds the new deployment beside the
// old one, switches new requests to it atomically, then lets the old one drain its queue with the
// old executor and frees it. Every Result names the version that computed it, and one request is
// never split across versions.
#pragma once

#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/metrics.h"
#include "common/types.h"
#include "engine/batcher.h"
#include "executor/executor.h"

namespace jit::engine {

// The engine layer's one error type; the server maps `code` to an HTTP status in one place.
class EngineError : public std::runtime_error {
public:
  enum class Code {
    kUnknownEncoder, // 404
    kInvalidInput,   // 422: inputs do not match the encoder's spec
    kQueueFull,      // 429 with Retry-After
    kTooLarge,       // 413: more samples than max_batch_size in one request
    kDraining,       // 503
    kDeadline,       // 504: the deadline passed while the request waited
    kExecutor,       // 500: the encoder failed on the batch
  };
  EngineError(Code code, const std::string &message) : std::runtime_error(message), code_(code) {}
  Code code() const { return code_; }

private:
  Code code_;
};

struct EncoderConfig {
  BatchingConfig batching;
  size_t instances = 1; // executor threads, each running whole batches
  // token inputs: requests whose sequence lengths round up to the same bucket share a batch;
  // empty = exact length. Sorted ascending; a length above the last bucket groups by itself.
  std::vector<int64_t> length_buckets;
};

// One request's share of a batch.
struct Result {
  std::string version;         // the executor version that computed it
  std::vector<Tensor> outputs; // spec order, each [samples, ...]; slices of the batch's outputs
  size_t batch_samples = 0;    // samples in the batch this request ran in
  double queue_us = 0;         // admission to batch start
  double compute_us = 0;       // stacking + executor + splitting
};

struct EncoderInfo {
  std::string name;
  std::string version;
  EncoderSpec spec;
  EncoderConfig config;
  size_t queued_samples = 0;
};

class Engine {
public:
  // metrics may be null. Registered series: jit_requests_total{encoder,outcome},
  // jit_batch_size{encoder}, jit_queue_depth{encoder}, jit_queue_seconds{encoder},
  // jit_compute_seconds{encoder}.
  explicit Engine(metrics::Registry *metrics = nullptr);
  ~Engine(); // drain()

  // Serves `executor` under `name`, or replaces the one serving it (see the file comment).
  // Returns once the new version takes requests and any old version has drained and been freed.
  // Throws EngineError(kDraining) after drain().
  void load(const std::string &name, std::shared_ptr<executor::Executor> executor, EncoderConfig config);

  // Queues one request. `inputs`, in any order, match the encoder's spec (names, dtypes, ranks, fixed dims);
  // all share dimension 0, the request's sample count. Their owners keep the bytes alive until
  // the batch has been stacked. Throws EngineError at once for an unknown encoder, invalid
  // input, a full queue or a draining engine; the future throws EngineError for a passed
  // deadline or an executor failure.
  std::future<Result> submit(const std::string &name, std::vector<Tensor> inputs,
                             Clock::time_point deadline = Clock::time_point::max());

  // Stops serving `name`: new requests for it fail as for an unknown encoder, queued ones finish.
  // Returns once its executors are joined and freed. Throws EngineError(kUnknownEncoder) when no
  // encoder has that name.
  void unload(const std::string &name);

  std::vector<EncoderInfo> encoders() const;
  // The encoder serving `name` now (its version and spec), or nullopt when none does.
  std::optional<EncoderInfo> info(const std::string &name) const;
  // Encoder name -> its executor's pinned staging statistics, for the executors that stage
  // (LibTorch on CUDA); for /metrics, apart from info(), which the request path calls.
  std::map<std::string, executor::DeviceStats> device_stats() const;

  // Stops admissions, finishes every queued request, and joins all executor threads.
  void drain();

  class Deployment;

private:
  std::shared_ptr<Deployment> find(const std::string &name) const;

  metrics::Registry *metrics_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Deployment>> deployments_;
  bool draining_ = false;
};

} // namespace jit::engine
