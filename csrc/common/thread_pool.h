// A small process-wide pool of worker threads for data-parallel loops (codec chunks, copies).
#pragma once

#include <cstddef>
#include <functional>

namespace jit {

// Runs fn(i) for every i in [0, n), spread over the pool's workers and the calling thread, and
// returns when all calls have returned. The first exception thrown by any fn is rethrown here,
// after every task has finished.
//
// max_threads caps the threads used, the caller included (0: the pool size). With n <= 1 or a
// pool of one thread, everything runs inline. Nested calls from inside fn also run inline.
//
// Fork safety: a child process after fork() has none of the parent's worker threads. The pool
// notices the new pid and starts fresh workers, so DataLoader workers that inherit a pool from
// their parent neither hang nor share its state.
void parallel_for(size_t n, const std::function<void(size_t)> &fn, size_t max_threads = 0);

// Threads the pool uses, the caller included: the JIT_NUM_THREADS environment variable if set,
// else std::thread::hardware_concurrency(), at least 1.
size_t parallel_threads();

} // namespace jit
