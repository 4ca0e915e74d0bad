// The executor layer's public interface: something that runs one encoder on a batch.
//
// Concrete executors (LibTorch AOTInductor .pt2, TorchScript .pt, and a Python nn.Module hosted
// by `jit-embedding serve`) implement this interface in their own translation units, so that the
// engine above them stays free of torch. Errors are reported as ExecutorError, the layer's one
// error type.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include "common/types.h"

namespace jit::executor {

class ExecutorError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// What an executor on a GPU reports about its host staging (executor/device_staging.h).
struct DeviceStats {
  uint64_t pinned_bytes = 0;        // page-locked host memory held for staging now (leased or idle)
  uint64_t pinned_leased_bytes = 0; // of it, in use now: a batch in flight, or outputs a caller still holds
  uint64_t pinned_fallbacks = 0;    // stagings served from pageable memory: the pool was full (or pinning failed)
};

class Executor {
public:
  virtual ~Executor() = default;

  // The inputs and outputs this encoder takes and gives; dimension 0 is the batch.
  virtual const EncoderSpec &spec() const = 0;

  // A digest of the artifact (weights and code). It is reported in every response and is part
  // of every cache key, so two executors with equal versions must compute equal outputs.
  virtual const std::string &version() const = 0;

  // Runs one batch. batch.inputs follow spec().inputs in order, each [batch.size, ...].
  // Returns outputs in spec().outputs order, each [batch.size, ...]. May be called from several
  // engine threads at once (the engine runs `instances` threads per encoder).
  // Throws ExecutorError when the encoder cannot run the batch.
  virtual EncoderOutput run(const Batch &batch) = 0;

  // Staging statistics of an executor that copies through pinned host memory (LibTorch on CUDA
  // with streams on); nullopt for every other executor. Safe to call while run() is running.
  virtual std::optional<DeviceStats> device_stats() const { return std::nullopt; }
};

} // namespace jit::executor
