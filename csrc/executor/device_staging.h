// Host staging buffers for the CUDA path of the LibTorch executors (torch_executor.cpp): a bounded,
// reusable pool of (page-locked) host blocks that batch inputs are packed into before their
// host-to-device copy, and that outputs are copied back into. Torch-free: the pool takes its
// memory from a HostAllocate policy, so the executor gives it pinned memory from torch's host
// allocator and the tests give it pageable memory.
//
// Why pinned: cudaMemcpyAsync from or to pageable memory is staged by the driver through its own
// pinned buffer and does not overlap with the host; from pinned memory it is a DMA that runs while
// the host (and other streams) go on. Why a pool: cudaHostAlloc is slow (it maps and locks pages)
// and torch's host allocator rounds each request up to a power of two, so the pool keeps its blocks
// and hands them out again, and nothing is allocated per batch in steady state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

namespace jit::executor {

// Where a pool's memory comes from: returns a block of at least `bytes` bytes (64-byte aligned)
// whose pointer's deleter frees it, or throws.
using HostAllocate = std::function<std::shared_ptr<void>(size_t bytes)>;

// Pageable host memory, 64-byte aligned: the pool's fallback, and the tests' stand-in for pinned.
// Throws std::bad_alloc.
std::shared_ptr<void> allocate_pageable(size_t bytes);

struct StagingStats {
  uint64_t pooled_bytes = 0;   // bytes in the pool's blocks now, leased or idle (<= the budget)
  uint64_t leased_bytes = 0;   // of those, bytes leased now
  uint64_t blocks = 0;         // the pool's blocks now
  uint64_t allocations = 0;    // blocks the pool has allocated since it was made
  uint64_t evictions = 0;      // idle blocks freed to make room for a larger one
  uint64_t fallbacks = 0;      // leases served from fallback (pageable) memory: over budget or allocation failed
  uint64_t fallback_bytes = 0; // bytes those leases asked for, in total
};

// One leased buffer. `owner` is the lease: the block goes back to the pool when the last copy of
// it (or of an aliasing shared_ptr made from it) is released, from any thread, and not before.
struct StagingBuffer {
  void *data = nullptr;
  size_t size = 0;     // bytes asked for; the block may be larger
  bool pooled = false; // false: fallback memory, freed when the lease ends
  std::shared_ptr<void> owner;
};

// Thread-safe. Leases may outlive the pool: a block released after the pool is gone is freed.
class StagingPool {
public:
  // `budget_bytes` bounds the bytes all blocks hold together (idle and leased); 0 sends every
  // lease to `fallback`. Blocks come from `allocate`. `after_free`, if set, runs (outside the
  // pool's lock) each time the pool has freed blocks: after evicting idle blocks, before it
  // allocates the larger one, and when the pool is destroyed. The executor empties torch's pinned
  // cache there; without that, freed blocks would stay page-locked in it, beyond the budget.
  StagingPool(size_t budget_bytes, HostAllocate allocate, HostAllocate fallback = allocate_pageable,
              std::function<void()> after_free = nullptr);
  ~StagingPool();
  StagingPool(const StagingPool &) = delete;
  StagingPool &operator=(const StagingPool &) = delete;

  // A buffer of at least `bytes` bytes, 64-byte aligned, that no one else holds until its lease
  // ends. Takes the smallest idle block that fits; else allocates a block of block_size(bytes),
  // first freeing idle blocks (too small to serve this request) when the budget requires it; else,
  // when leased blocks hold the budget or the allocation throws, serves fallback memory (counted in
  // fallbacks). Throws only what `fallback` throws.
  StagingBuffer acquire(size_t bytes);

  StagingStats stats() const;

  // The size of the block allocated for a request of `bytes`: the next power of two, at least
  // 64 KiB (torch's host allocator rounds to powers of two, so a smaller block would save nothing).
  static size_t block_size(size_t bytes);

private:
  struct State;
  std::shared_ptr<State> state_;
};

} // namespace jit::executor
