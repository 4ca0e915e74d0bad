#include "python/py_executor.h"

#include <pybind11/stl.h>

#include "python/py_codec.h"

namespace jit::python {

namespace {

using executor::ExecutorError;

TensorSpec tensor_spec(const py::handle &h, const std::string &where) {
  if (!py::isinstance<py::dict>(h)) throw ExecutorError(where + ": must be a dict");
  py::dict d = py::reinterpret_borrow<py::dict>(h);
  TensorSpec s;
  try {
    s.name = d["name"].cast<std::string>();
    std::string dtype = d["dtype"].cast<std::string>();
    auto dt = dtype_from_name(dtype);
    if (!dt) throw ExecutorError(where + ".dtype: unknown dtype '" + dtype + "'");
    s.dtype = *dt;
    s.shape = d["shape"].cast<Shape>();
    if (d.contains("seq_dim") && !d["seq_dim"].is_none()) s.seq_dim = d["seq_dim"].cast<int>();
    if (d.contains("pad_value") && !d["pad_value"].is_none()) s.pad_value = d["pad_value"].cast<int64_t>();
  } catch (const py::error_already_set &e) {
    throw ExecutorError(where + ": " + e.what());
  } catch (const py::cast_error &e) {
    throw ExecutorError(where + ": a field has the wrong type: " + e.what());
  }
  if (s.shape.empty()) throw ExecutorError(where + ".shape: needs a batch dimension");
  s.shape[0] = -1;
  return s;
}

} // namespace

EncoderSpec spec_from_python(const py::dict &spec) {
  EncoderSpec out;
  for (const char *key : {"inputs", "outputs"}) {
    if (!spec.contains(key) || !py::isinstance<py::list>(spec[key]))
      throw ExecutorError(std::string("spec.") + key + ": must be a list");
    auto &dst = std::string(key) == "inputs" ? out.inputs : out.outputs;
    py::list l = spec[key];
    for (size_t i = 0; i < l.size(); ++i)
      dst.push_back(tensor_spec(l[i], std::string("spec.") + key + "[" + std::to_string(i) + "]"));
  }
  return out;
}

PyExecutor::PyExecutor(py::object fn, EncoderSpec spec, std::string version)
    : fn_(new py::object(std::move(fn))), spec_(std::move(spec)), version_(std::move(version)) {}

PyExecutor::~PyExecutor() {
  py::gil_scoped_acquire gil;
  delete fn_;
}

EncoderOutput PyExecutor::run(const Batch &batch) {
  py::gil_scoped_acquire gil;
  try {
    py::list args;
    for (const Tensor &t : batch.inputs) {
      // Writable so that torch.frombuffer does not warn; the runner never writes to its inputs.
      py::object mv = py::reinterpret_steal<py::object>(PyMemoryView_FromMemory(
          static_cast<char *>(const_cast<void *>(t.data)), static_cast<Py_ssize_t>(t.nbytes), PyBUF_WRITE));
      if (!mv) throw py::error_already_set();
      args.append(py::make_tuple(t.name, std::string(dtype_name(t.dtype)), t.shape, mv));
    }
    py::object result = (*fn_)(args);
    py::list outs = result.cast<py::list>();
    if (outs.size() != spec_.outputs.size()) {
      throw ExecutorError("the module returned " + std::to_string(outs.size()) + " outputs, its spec lists " +
                          std::to_string(spec_.outputs.size()));
    }
    EncoderOutput out;
    for (size_t i = 0; i < outs.size(); ++i) {
      py::tuple item = outs[i].cast<py::tuple>();
      const TensorSpec &want = spec_.outputs[i];
      std::string dtype = item[0].cast<std::string>();
      if (dtype != dtype_name(want.dtype)) {
        throw ExecutorError("output '" + want.name + "' is " + dtype + ", its spec says " +
                            std::string(dtype_name(want.dtype)));
      }
      // The lease is released under the GIL by whichever thread drops the last slice of it.
      auto *lease = new BufferLease(py::object(item[2]).ptr(), PyBUF_C_CONTIGUOUS);
      std::shared_ptr<BufferLease> owner(lease, [](BufferLease *l) {
        py::gil_scoped_acquire g;
        delete l;
      });
      Tensor t;
      t.name = want.name;
      t.dtype = want.dtype;
      t.shape = item[1].cast<Shape>();
      t.data = lease->data();
      t.nbytes = lease->size();
      auto numel = shape_numel(t.shape);
      if (!numel || *numel * dtype_itemsize(t.dtype) != t.nbytes) {
        throw ExecutorError("output '" + want.name + "': its buffer holds " + std::to_string(t.nbytes) +
                            " bytes, which does not match its shape and dtype");
      }
      t.owner = std::shared_ptr<const void>(owner, t.data);
      out.outputs.push_back(std::move(t));
    }
    return out;
  } catch (py::error_already_set &e) {
    throw ExecutorError(e.what());
  } catch (const py::cast_error &e) {
    throw ExecutorError(std::string("the module's runner returned an unexpected value: ") + e.what());
  }
}

} // namespace jit::python
