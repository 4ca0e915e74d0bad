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

struct TorchExecutorOptions {
  std::string device;             // "" = the manifest's device; "cpu", "cuda", "cuda:1"
  size_t num_runners = 1;         // how many threads may call run() at once (the encoder's instances)
  int intra_op_threads = 0;       // CPU: threads inside one forward, per runner; 0 = torch's default
  size_t memory_budget_bytes = 0; // CUDA: fail the load if the model needs more; 0 = no check
};

// Loads the artifact that `manifest` describes. AOTInductor loaders are constructed under one
// process-wide mutex (their constructors are not thread-safe), with num_runners runners.
// Throws ExecutorError when the file cannot be loaded, the device does not match what an
// AOTInductor package was compiled for, no CUDA device is present, or the budget is exceeded.
std::shared_ptr<Executor> load_torch_executor(const Manifest &manifest, const TorchExecutorOptions &options);

} // namespace jit::executor
