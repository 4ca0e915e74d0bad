#include "engine/engine.h"

#include "common/rows.h"
#include "common/trace.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <thread>

namespace jit::engine {

namespace {

using executor::ExecutorError;

double micros(Clock::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

struct Job {
  std::vector<Tensor> inputs;
  size_t samples = 0;
  int64_t seq_len = -1; // the length of the token inputs' sequence dimension; -1 without one
  Clock::time_point enqueued;
  std::promise<Result> promise;
};

std::string shape_text(const Shape &s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i)
    out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Puts inputs in spec order (callers may send them in any order), checks them against the spec,
// and returns the batching signature: dtypes and non-batch dims, so that only requests whose
// inputs stack into one tensor share a batch.
// Token inputs (seq_dim >= 1) group by length bucket instead of exact length, and must agree on
// their length, which is returned in `seq_len`.
std::string check_inputs(const std::string &encoder, const EncoderSpec &spec, const std::vector<int64_t> &buckets,
                         std::vector<Tensor> &inputs, size_t &samples, int64_t &seq_len) {
  auto invalid = [&](const std::string &msg) {
    return EngineError(EngineError::Code::kInvalidInput, "encoder '" + encoder + "': " + msg);
  };
  if (inputs.size() != spec.inputs.size()) {
    throw invalid("expects " + std::to_string(spec.inputs.size()) + " inputs, got " + std::to_string(inputs.size()));
  }
  for (size_t i = 0; i < spec.inputs.size(); ++i) {
    auto it =
        std::find_if(inputs.begin() + i, inputs.end(), [&](const Tensor &t) { return t.name == spec.inputs[i].name; });
    if (it == inputs.end()) throw invalid("missing input '" + spec.inputs[i].name + "'");
    std::iter_swap(inputs.begin() + i, it);
  }
  std::string signature;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor &t = inputs[i];
    const TensorSpec &s = spec.inputs[i];
    if (t.name != s.name)
      throw invalid("input " + std::to_string(i) + " must be '" + s.name + "', got '" + t.name + "'");
    if (t.dtype != s.dtype) {
      throw invalid("input '" + s.name + "' must be " + std::string(dtype_name(s.dtype)) + ", got " +
                    std::string(dtype_name(t.dtype)));
    }
    if (t.shape.size() != s.shape.size()) {
      throw invalid("input '" + s.name + "' must have shape " + shape_text(s.shape) + ", got " + shape_text(t.shape));
    }
    for (size_t d = 1; d < s.shape.size(); ++d) {
      if (s.shape[d] >= 0 && t.shape[d] != s.shape[d]) {
        throw invalid("input '" + s.name + "' must have shape " + shape_text(s.shape) + ", got " + shape_text(t.shape));
      }
    }
    if (s.shape.empty() || t.shape[0] < 1)
      throw invalid("input '" + s.name + "' needs a batch dimension of at least 1");
    if (i == 0) samples = static_cast<size_t>(t.shape[0]);
    if (static_cast<size_t>(t.shape[0]) != samples) {
      throw invalid("inputs disagree on the batch size (" + std::to_string(samples) + " vs " +
                    std::to_string(t.shape[0]) + ")");
    }
    Shape key(t.shape.begin() + 1, t.shape.end());
    if (s.seq_dim >= 1 && static_cast<size_t>(s.seq_dim) < t.shape.size()) {
      const int64_t len = t.shape[s.seq_dim];
      if (len < 1) throw invalid("input '" + s.name + "' needs a sequence length of at least 1");
      if (seq_len >= 0 && len != seq_len) {
        throw invalid("token inputs disagree on the sequence length (" + std::to_string(seq_len) + " vs " +
                      std::to_string(len) + " in '" + s.name + "')");
      }
      seq_len = len;
      auto b = std::lower_bound(buckets.begin(), buckets.end(), len);
      // Beyond the last bucket a length is its own group: padding it further would only waste compute.
      key[s.seq_dim - 1] = b == buckets.end() ? len : *b;
    }
    signature += std::string(dtype_name(t.dtype)) + shape_text(key) + ";";
  }
  return signature;
}

} // namespace

// One version of one encoder: its executor, queue and threads.
class Engine::Deployment {
public:
  Deployment(std::string name, std::shared_ptr<executor::Executor> exec, EncoderConfig config,
             metrics::Registry *metrics)
      : name_(std::move(name)), exec_(std::move(exec)), config_(config), batcher_(config.batching) {
    if (metrics != nullptr) {
      metrics::Labels l{{"encoder", name_}};
      ok_ = &metrics->counter("jit_requests_total", "Requests by encoder and outcome.",
                              {{"encoder", name_}, {"outcome", "ok"}});
      failed_ = &metrics->counter("jit_requests_total", "Requests by encoder and outcome.",
                                  {{"encoder", name_}, {"outcome", "error"}});
      expired_ = &metrics->counter("jit_requests_total", "Requests by encoder and outcome.",
                                   {{"encoder", name_}, {"outcome", "deadline"}});
      batch_size_ = &metrics->histogram("jit_batch_size", "Samples per executed batch.",
                                        metrics::exponential_buckets(1, 2, 11), l);
      queue_depth_ = &metrics->gauge("jit_queue_depth", "Samples waiting in the encoder's queue.", l);
      queue_s_ = &metrics->histogram("jit_queue_seconds", "Time from admission to batch start.",
                                     metrics::exponential_buckets(1e-5, 2, 18), l);
      compute_s_ = &metrics->histogram("jit_compute_seconds", "Stack, execute and split time per batch.",
                                       metrics::exponential_buckets(1e-5, 2, 18), l);
    }
    for (size_t i = 0; i < std::max<size_t>(1, config_.instances); ++i)
      threads_.emplace_back([this, i] {
        trace::name_thread("encoder " + name_ + " instance " + std::to_string(i));
        loop();
      });
  }

  ~Deployment() { close_and_join(); }

  void close_and_join() {
    batcher_.close();
    for (auto &t : threads_) {
      if (t.joinable()) t.join();
    }
  }

  std::future<Result> submit(std::vector<Tensor> inputs, Clock::time_point deadline) {
    auto job = std::make_shared<Job>();
    Pending p;
    p.signature = check_inputs(name_, exec_->spec(), config_.length_buckets, inputs, job->samples, job->seq_len);
    p.samples = job->samples;
    p.deadline = deadline;
    job->inputs = std::move(inputs);
    job->enqueued = p.enqueued;
    std::future<Result> f = job->promise.get_future();
    p.payload = job;
    switch (batcher_.push(std::move(p))) {
    case Admit::kOk: break;
    case Admit::kQueueFull:
      throw EngineError(EngineError::Code::kQueueFull, "encoder '" + name_ + "' is overloaded: its queue holds " +
                                                           std::to_string(config_.batching.max_queue_size) +
                                                           " samples");
    case Admit::kTooLarge:
      throw EngineError(EngineError::Code::kTooLarge, "encoder '" + name_ + "': " + std::to_string(job->samples) +
                                                          " samples exceed max_batch_size " +
                                                          std::to_string(config_.batching.max_batch_size));
    case Admit::kClosed: throw EngineError(EngineError::Code::kDraining, "encoder '" + name_ + "' is draining");
    }
    if (queue_depth_) queue_depth_->set(static_cast<double>(batcher_.queued_samples()));
    return f;
  }

  EncoderInfo info() const { return {name_, exec_->version(), exec_->spec(), config_, batcher_.queued_samples()}; }
  std::optional<executor::DeviceStats> device_stats() const { return exec_->device_stats(); }

private:
  void loop() {
    std::vector<Pending> batch, expired;
    while (batcher_.pop(batch, expired)) {
      for (auto &p : expired) {
        if (expired_) expired_->inc();
        static_cast<Job *>(p.payload.get())
            ->promise.set_exception(std::make_exception_ptr(EngineError(
                EngineError::Code::kDeadline, "deadline passed while waiting for encoder '" + name_ + "'")));
      }
      if (queue_depth_) queue_depth_->set(static_cast<double>(batcher_.queued_samples()));
      if (!batch.empty()) run(batch);
    }
  }

  // Each request's wait, from admission to this batch's start, on the encoder's "queue <name>"
  // track: the waits overlap one another, so they are async spans rather than a thread's.
  void trace_queue_waits(const std::vector<Job *> &jobs, Clock::time_point start) const {
    for (const Job *j : jobs) {
      trace::record("queue " + name_, "queue", j->enqueued, start,
                    {{"encoder", name_, 0, false}, {"samples", {}, static_cast<int64_t>(j->samples), true}},
                    trace::next_async_id());
    }
  }

  // Stacks the jobs' inputs, runs the executor, and hands each job its rows of every output.
  // Traced as "batch", with "stack", "forward" and "split" nested in it, on this executor thread.
  void run(std::vector<Pending> &pending) {
    Clock::time_point start = Clock::now();
    std::vector<Job *> jobs;
    size_t total = 0;
    int64_t seq_len = -1; // the batch pads its token inputs to the longest request's length
    for (auto &p : pending) {
      jobs.push_back(static_cast<Job *>(p.payload.get()));
      total += jobs.back()->samples;
      seq_len = std::max(seq_len, jobs.back()->seq_len);
    }
    trace::Scope batch_span("batch", "engine");
    if (batch_span.active()) {
      batch_span.arg("encoder", name_);
      batch_span.arg("samples", static_cast<int64_t>(total));
      batch_span.arg("requests", static_cast<int64_t>(jobs.size()));
      trace_queue_waits(jobs, start);
    }
    const EncoderSpec &spec = exec_->spec();
    try {
      Batch b;
      b.size = total;
      std::optional<trace::Scope> stack_span(std::in_place, "stack", "engine");
      for (size_t i = 0; i < spec.inputs.size(); ++i) {
        const Tensor &first = jobs[0]->inputs[i];
        if (jobs.size() == 1) {
          b.inputs.push_back(first); // a lone request needs no copy
          continue;
        }
        const int dim = spec.inputs[i].seq_dim;
        std::vector<TensorView> parts;
        parts.reserve(jobs.size());
        for (Job *j : jobs)
          parts.push_back(j->inputs[i].view());
        Tensor stacked = concat_rows(first.name, parts, seq_len >= 0 ? dim : -1, spec.inputs[i].pad_value);
        b.inputs.push_back(std::move(stacked));
      }
      stack_span.reset();
      std::optional<trace::Scope> forward_span(std::in_place, "forward", "engine");
      EncoderOutput out = exec_->run(b);
      forward_span.reset();
      if (out.outputs.size() != spec.outputs.size()) {
        throw ExecutorError("returned " + std::to_string(out.outputs.size()) + " outputs, its spec has " +
                            std::to_string(spec.outputs.size()));
      }
      for (size_t k = 0; k < out.outputs.size(); ++k) {
        const Tensor &o = out.outputs[k];
        if (o.shape.empty() || o.shape[0] != static_cast<int64_t>(total)) {
          throw ExecutorError("output '" + o.name + "' has shape " + shape_text(o.shape) + ", expected [" +
                              std::to_string(total) + ", ...]");
        }
        const int dim = spec.outputs[k].seq_dim;
        if (dim >= 1 && seq_len >= 0 && (static_cast<size_t>(dim) >= o.shape.size() || o.shape[dim] != seq_len)) {
          throw ExecutorError("output '" + o.name + "' has shape " + shape_text(o.shape) + ", expected length " +
                              std::to_string(seq_len) + " in dimension " + std::to_string(dim));
        }
      }
      trace::Scope split_span("split", "engine");
      double compute_us = micros(Clock::now() - start);
      std::vector<Result> results;
      results.reserve(jobs.size());
      size_t row = 0;
      for (Job *j : jobs) {
        Result r;
        r.version = exec_->version();
        r.batch_samples = total;
        r.queue_us = micros(start - j->enqueued);
        r.compute_us = compute_us;
        for (size_t k = 0; k < out.outputs.size(); ++k) {
          const Tensor &o = out.outputs[k];
          const int dim = spec.outputs[k].seq_dim;
          if (dim >= 1 && j->seq_len >= 0 && j->seq_len != seq_len) {
            // This request was padded: hand back only its own positions.
            r.outputs.push_back(slice_rows(o, row, j->samples, dim, j->seq_len));
            continue;
          }
          size_t row_bytes = o.nbytes / total;
          Tensor slice = o;
          slice.shape[0] = static_cast<int64_t>(j->samples);
          slice.data = static_cast<const uint8_t *>(o.data) + row * row_bytes;
          slice.nbytes = row_bytes * j->samples;
          r.outputs.push_back(std::move(slice));
        }
        row += j->samples;
        results.push_back(std::move(r));
      }
      // Metrics first, then the waiters: a client that scrapes /metrics right after its
      // response must see its own request counted.
      if (batch_size_) batch_size_->observe(static_cast<double>(total));
      if (compute_s_) compute_s_->observe(compute_us * 1e-6);
      for (size_t k = 0; k < jobs.size(); ++k) {
        if (queue_s_) queue_s_->observe(results[k].queue_us * 1e-6);
        if (ok_) ok_->inc();
        jobs[k]->promise.set_value(std::move(results[k]));
      }
    } catch (const std::exception &e) {
      auto err = std::make_exception_ptr(
          EngineError(EngineError::Code::kExecutor, "encoder '" + name_ + "' failed: " + e.what()));
      for (Job *j : jobs)
        j->promise.set_exception(err);
      if (failed_) failed_->inc(static_cast<double>(jobs.size()));
    }
  }

  const std::string name_;
  const std::shared_ptr<executor::Executor> exec_;
  const EncoderConfig config_;
  Batcher batcher_;
  std::vector<std::thread> threads_;
  metrics::Counter *ok_ = nullptr, *failed_ = nullptr, *expired_ = nullptr;
  metrics::Histogram *batch_size_ = nullptr, *queue_s_ = nullptr, *compute_s_ = nullptr;
  metrics::Gauge *queue_depth_ = nullptr;
};

Engine::Engine(metrics::Registry *metrics) : metrics_(metrics) {}

Engine::~Engine() {
  drain();
}

void Engine::load(const std::string &name, std::shared_ptr<executor::Executor> executor, EncoderConfig config) {
  auto next = std::make_shared<Deployment>(name, std::move(executor), config, metrics_);
  std::shared_ptr<Deployment> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) throw EngineError(EngineError::Code::kDraining, "the engine is draining");
    auto &slot = deployments_[name];
    old = std::move(slot);
    slot = next;
  }
  // New requests already go to `next`; the old version finishes what it had queued, then goes.
  if (old) old->close_and_join();
}

void Engine::unload(const std::string &name) {
  std::shared_ptr<Deployment> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = deployments_.find(name);
    if (it == deployments_.end()) {
      throw EngineError(EngineError::Code::kUnknownEncoder, "no encoder named '" + name + "'");
    }
    gone = std::move(it->second);
    deployments_.erase(it);
  }
  gone->close_and_join();
}

std::shared_ptr<Engine::Deployment> Engine::find(const std::string &name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = deployments_.find(name);
  if (it == deployments_.end()) {
    throw EngineError(EngineError::Code::kUnknownEncoder, "no encoder named '" + name + "'");
  }
  return it->second;
}

std::future<Result> Engine::submit(const std::string &name, std::vector<Tensor> inputs, Clock::time_point deadline) {
  // A request that races an in-place update may reach the old deployment just as it closes; it
  // then goes to the new one, so a swap never fails a request.
  for (int attempt = 0;; ++attempt) {
    std::shared_ptr<Deployment> d = find(name);
    try {
      return d->submit(inputs, deadline);
    } catch (const EngineError &e) {
      bool swapped = e.code() == EngineError::Code::kDraining && find(name) != d;
      if (!swapped || attempt > 8) throw;
    }
  }
}

std::vector<EncoderInfo> Engine::encoders() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<EncoderInfo> out;
  for (const auto &[name, d] : deployments_)
    out.push_back(d->info());
  return out;
}

std::map<std::string, executor::DeviceStats> Engine::device_stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, executor::DeviceStats> out;
  for (const auto &[name, d] : deployments_) {
    if (std::optional<executor::DeviceStats> s = d->device_stats()) out.emplace(name, *s);
  }
  return out;
}

std::optional<EncoderInfo> Engine::info(const std::string &name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = deployments_.find(name);
  if (it == deployments_.end()) return std::nullopt;
  return it->second->info();
}

void Engine::drain() {
  std::map<std::string, std::shared_ptr<Deployment>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    all = deployments_;
  }
  for (auto &[name, d] : all)
    d->close_and_join();
}

} // namespace jit::engine
