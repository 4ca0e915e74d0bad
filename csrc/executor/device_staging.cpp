// The staging pool: idle blocks by size under one mutex, leases as shared_ptrs whose deleter
// returns the block. Torch-free (the executor supplies pinned memory through HostAllocate).
#include "executor/device_staging.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <new>

namespace jit::executor {

std::shared_ptr<void> allocate_pageable(size_t bytes) {
  const size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64; // aligned_alloc wants a multiple
  void *p = std::aligned_alloc(64, rounded);
  if (p == nullptr) throw std::bad_alloc();
  return std::shared_ptr<void>(p, [](void *q) { std::free(q); });
}

struct StagingPool::State {
  const size_t budget;
  const HostAllocate allocate;
  const HostAllocate fallback;
  const std::function<void()> after_free;

  mutable std::mutex mu;
  bool closed = false; // the pool is gone: released blocks are freed, not kept
  // Idle blocks by capacity. Each owns its memory through `memory` (the allocator's pointer).
  struct Block {
    std::shared_ptr<void> memory;
    size_t capacity = 0;
  };
  std::multimap<size_t, Block> idle;
  StagingStats stats;

  State(size_t b, HostAllocate a, HostAllocate f, std::function<void()> af)
      : budget(b), allocate(std::move(a)), fallback(std::move(f)), after_free(std::move(af)) {}

  // Frees `blocks` (idle blocks taken out under the lock) and then runs after_free; never under the lock.
  // A failing after_free only leaves memory cached, so it is not an error of the caller's.
  void free_blocks(std::multimap<size_t, Block> &blocks) const noexcept {
    if (blocks.empty()) return;
    blocks.clear();
    if (!after_free) return;
    try {
      after_free();
    } catch (...) {
    }
  }

  // Called by a lease's deleter, on whichever thread drops the last reference.
  void give_back(Block block) {
    std::lock_guard<std::mutex> lock(mu);
    stats.leased_bytes -= block.capacity;
    if (closed) {
      stats.pooled_bytes -= block.capacity;
      stats.blocks -= 1;
      return; // `block` (a parameter) is freed after the lock is released
    }
    idle.emplace(block.capacity, std::move(block));
  }

  // The lease handed to the caller: its deleter owns the block (and keeps the state alive) until
  // the last reference is dropped, then gives the block back.
  static StagingBuffer lease(const std::shared_ptr<State> &state, Block block, size_t bytes) {
    StagingBuffer out;
    out.data = block.memory.get();
    out.size = bytes;
    out.pooled = true;
    auto *held = new Block(std::move(block));
    out.owner = std::shared_ptr<void>(held->memory.get(), [state, held](void *) {
      std::unique_ptr<Block> b(held);
      state->give_back(std::move(*b));
    });
    return out;
  }
};

size_t StagingPool::block_size(size_t bytes) {
  constexpr size_t kMin = size_t{64} << 10;
  if (bytes <= kMin) return kMin;
  if (bytes > (SIZE_MAX >> 1)) return bytes; // no power of two above it fits in size_t
  size_t size = kMin;
  while (size < bytes)
    size <<= 1;
  return size;
}

StagingPool::StagingPool(size_t budget_bytes, HostAllocate allocate, HostAllocate fallback,
                         std::function<void()> after_free)
    : state_(std::make_shared<State>(budget_bytes, std::move(allocate), std::move(fallback), std::move(after_free))) {}

StagingPool::~StagingPool() {
  std::multimap<size_t, State::Block> idle; // freed outside the lock
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->closed = true;
    for (const auto &[capacity, block] : state_->idle) {
      state_->stats.pooled_bytes -= capacity;
      state_->stats.blocks -= 1;
    }
    idle.swap(state_->idle);
  }
  state_->free_blocks(idle);
}

StagingBuffer StagingPool::acquire(size_t bytes) {
  State &s = *state_;
  const size_t want = block_size(bytes);
  std::multimap<size_t, State::Block> evicted; // freed after the lock is released
  {
    std::unique_lock<std::mutex> lock(s.mu);
    auto it = s.idle.lower_bound(bytes);
    if (it != s.idle.end()) {
      State::Block block = std::move(it->second);
      s.idle.erase(it);
      s.stats.leased_bytes += block.capacity;
      lock.unlock();
      return State::lease(state_, std::move(block), bytes);
    }
    // No idle block fits, so every idle block is smaller than this request: free them (largest
    // first) while that is what stands between the pool and the budget, but only when that makes
    // room (leased blocks stay, so when they hold the budget the idle ones are kept for later).
    if (s.stats.leased_bytes + want <= s.budget) {
      while (s.stats.pooled_bytes + want > s.budget && !s.idle.empty()) {
        auto last = std::prev(s.idle.end());
        s.stats.pooled_bytes -= last->first;
        s.stats.blocks -= 1;
        s.stats.evictions += 1;
        evicted.insert(s.idle.extract(last));
      }
    }
    if (want <= s.budget && s.stats.pooled_bytes + want <= s.budget) {
      // Reserve the room before allocating outside the lock, so two threads cannot both take it.
      s.stats.pooled_bytes += want;
      s.stats.blocks += 1;
      s.stats.leased_bytes += want;
      lock.unlock();
      s.free_blocks(evicted);
      State::Block block;
      block.capacity = want;
      try {
        block.memory = s.allocate(want);
      } catch (...) {
        block.memory = nullptr;
      }
      if (block.memory) {
        std::lock_guard<std::mutex> relock(s.mu);
        s.stats.allocations += 1;
      } else {
        std::lock_guard<std::mutex> relock(s.mu);
        s.stats.pooled_bytes -= want;
        s.stats.blocks -= 1;
        s.stats.leased_bytes -= want;
      }
      if (block.memory) return State::lease(state_, std::move(block), bytes);
    }
  }
  s.free_blocks(evicted);
  StagingBuffer out;
  out.owner = s.fallback(bytes);
  out.data = out.owner.get();
  out.size = bytes;
  out.pooled = false;
  std::lock_guard<std::mutex> lock(s.mu);
  s.stats.fallbacks += 1;
  s.stats.fallback_bytes += bytes;
  return out;
}

StagingStats StagingPool::stats() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->stats;
}

} // namespace jit::executor
