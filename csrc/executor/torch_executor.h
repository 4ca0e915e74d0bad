// LibTorch executors: an AOTInductor package (.pt2) or a TorchScript module (.pt), described by
// its manifest. This header is torch-free; only torch_executor.cpp includes LibTorch.
//
// TorchScript is deprecated upstream (PyTorch recommends torch.export / AOTInductor); it is
// supported for users who already have .pt files.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "executor/executor.h"
#include "executor/manifest.h"

namespace jit::executor {

// On CUDA, with `streams` on (the default), each engine thread that calls run() (a runner) gets a
// copy stream and a compute stream of its own from torch's stream pool. A batch's inputs are packed
// into a pinned host block (device_staging.h) and copied to the device on the copy stream; the
// forward waits for that copy (an event) and runs on the compute stream; the outputs' copy back
// into a pinned block waits for the forward (another event) and runs on the copy stream; run()
// waits for that last copy and returns host tensors that lease the pinned block.
//
// One runner runs its batches one after another, so copies overlap computation only across
// runners: with `instances: 2` (num_runners = 2) the engine runs two runners at once, and batch
// k+1's host-to-device copy on one runner's copy stream runs while batch k's forward runs on the
// other's compute stream (and k's outputs come back while k+1 computes). `instances >= 2` is the
// setting for overlap; with 1 the streams change nothing but add the pinned staging.
//
// With `streams` off, CUDA runs as before: synchronous copies from and to pageable memory on the
// thread's current stream. On CPU neither option has any effect.
struct TorchExecutorOptions {
  std::string device;             // "" = the manifest's device; "cpu", "cuda", "cuda:1"
  size_t num_runners = 1;         // how many threads may call run() at once (the encoder's instances)
  int intra_op_threads = 0;       // CPU: threads inside one forward, per runner; 0 = torch's default
  size_t memory_budget_bytes = 0; // CUDA: fail the load if the model needs more; 0 = no check
  // CUDA with streams: the most pinned host memory this executor keeps for staging (inputs and
  // outputs of the batches in flight, and outputs callers still hold). A batch that does not fit
  // is staged in pageable memory instead (slower, counted in device_stats().pinned_fallbacks).
  size_t pinned_pool_bytes = size_t{256} << 20;
  bool streams = true; // CUDA: per-runner copy and compute streams with pinned staging (see above)
};

// Loads the artifact that `manifest` describes. AOTInductor loaders are constructed under one
// process-wide mutex (their constructors are not thread-safe), with num_runners runners.
// Throws ExecutorError when the file cannot be loaded, the device does not match what an
// AOTInductor package was compiled for, no CUDA device is present, or the budget is exceeded.
// The executor's device_stats() reports the pinned staging on CUDA with streams on, else nullopt.
std::shared_ptr<Executor> load_torch_executor(const Manifest &manifest, const TorchExecutorOptions &options);

} // namespace jit::executor
