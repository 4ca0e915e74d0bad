// The executor layer's public interface: something that runs one encoder on a batch.
//
// Concrete executors (LibTorch AOTInductor .pt2, TorchScript .pt, and a Python nn.Module hosted
// by `jit-embedding serve`) implement this interface in their own translation units, so that the
// engine above them stays free of torch. Errors are reported as ExecutorError, the layer's one
// error type.
#pragma once

#include <stdexcept>
#include <string>

#include "common/types.h"

namespace jit::executor {

class ExecutorError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
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
};

} // namespace jit::executor
