// An executor that runs a Python callable: how `jit-embedding serve` hosts a plain nn.Module.
//
// Only run() takes the GIL, for the call itself; HTTP, decoding, batching and encoding run in C++
// threads without it. The callable is jit_embedding.serve.ModuleRunner (or anything with its
// contract):
//   fn(inputs: list[(name, dtype name, shape, memoryview)]) -> list[(dtype name, shape, buffer)]
// The memoryviews alias the batch's bytes and are valid only during the call; outputs come back
// in spec order, each a C-contiguous buffer-protocol object (a uint8 NumPy view of a CPU tensor)
// that C++ keeps referenced for as long as any response still uses it.
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "executor/executor.h"

namespace jit::python {

namespace py = pybind11;

class PyExecutor : public executor::Executor {
public:
  // fn: the callable above; spec: its inputs and outputs; version: a digest of its weights and code.
  PyExecutor(py::object fn, EncoderSpec spec, std::string version);
  // Drops the callable with the GIL held (the last owner may be any C++ thread).
  ~PyExecutor() override;

  const EncoderSpec &spec() const override { return spec_; }
  const std::string &version() const override { return version_; }

  // Throws ExecutorError carrying the Python exception's type and message when the callable fails
  // or returns something that does not match the spec.
  EncoderOutput run(const Batch &batch) override;

private:
  py::object *fn_; // deleted under the GIL, so never a plain member
  EncoderSpec spec_;
  std::string version_;
};

// Parses a spec given as {"inputs": [...], "outputs": [...]} lists of dicts with the manifest's
// keys (name, dtype, shape, seq_dim, pad_value; docs/export.md). Throws ExecutorError.
EncoderSpec spec_from_python(const py::dict &spec);

} // namespace jit::python
