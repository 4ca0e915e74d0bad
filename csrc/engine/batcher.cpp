#include "engine/batcher.h"

#include <algorithm>

namespace jit::engine {

Batcher::Batcher(BatchingConfig config) : config_(config) {}

Admit Batcher::push(Pending p) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return Admit::kClosed;
    if (p.samples > config_.max_batch_size) return Admit::kTooLarge;
    if (samples_ + p.samples > config_.max_queue_size) return Admit::kQueueFull;
    Group &g = groups_[p.signature];
    g.samples += p.samples;
    samples_ += p.samples;
    ++requests_;
    g.queue.push_back(std::move(p));
  }
  // Every consumer re-evaluates: the new request may complete a batch or carry an earlier deadline.
  cv_.notify_all();
  return Admit::kOk;
}

void Batcher::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

size_t Batcher::queued_samples() const {
  std::lock_guard<std::mutex> lock(mu_);
  return samples_;
}

size_t Batcher::queued_requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

void Batcher::collect_expired(Clock::time_point now, std::vector<Pending> &expired) {
  for (auto it = groups_.begin(); it != groups_.end();) {
    Group &g = it->second;
    for (auto q = g.queue.begin(); q != g.queue.end();) {
      if (q->deadline <= now) {
        g.samples -= q->samples;
        samples_ -= q->samples;
        --requests_;
        expired.push_back(std::move(*q));
        q = g.queue.erase(q);
      } else {
        ++q;
      }
    }
    it = g.queue.empty() ? groups_.erase(it) : std::next(it);
  }
}

Batcher::Group *Batcher::ready_group(Clock::time_point now, Clock::time_point &wake) {
  Group *best = nullptr;
  wake = Clock::time_point::max();
  for (auto &[sig, g] : groups_) {
    const Pending &head = g.queue.front();
    Clock::time_point due = head.enqueued + config_.max_queue_delay;
    bool ready = closed_ || g.samples >= config_.max_batch_size || due <= now;
    if (ready) {
      if (best == nullptr || head.enqueued < best->queue.front().enqueued) best = &g;
    } else {
      wake = std::min(wake, due);
    }
    // A deadline inside the wait also ends it, so the request is answered 504 on time.
    for (const auto &p : g.queue)
      wake = std::min(wake, p.deadline);
  }
  return best;
}

bool Batcher::pop(std::vector<Pending> &batch, std::vector<Pending> &expired) {
  batch.clear();
  expired.clear();
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    Clock::time_point now = Clock::now();
    collect_expired(now, expired);
    Clock::time_point wake;
    Group *g = ready_group(now, wake);
    if (g != nullptr) {
      size_t taken = 0;
      while (!g->queue.empty() && taken + g->queue.front().samples <= config_.max_batch_size) {
        taken += g->queue.front().samples;
        batch.push_back(std::move(g->queue.front()));
        g->queue.pop_front();
        --requests_;
      }
      g->samples -= taken;
      samples_ -= taken;
      if (g->queue.empty()) {
        for (auto it = groups_.begin(); it != groups_.end(); ++it) {
          if (&it->second == g) {
            groups_.erase(it);
            break;
          }
        }
      }
      return true;
    }
    if (!expired.empty()) return true;
    if (closed_ && groups_.empty()) return false;
    if (wake == Clock::time_point::max()) {
      cv_.wait(lock);
    } else {
      cv_.wait_until(lock, wake);
    }
  }
}

} // namespace jit::engine
