// The one binding file of jit_embedding._C: one line and a docstring per symbol, no logic.
// Typed, documented Python wrappers live in jit_embedding/.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "codec/codec.h"
#include "common/thread_pool.h"
#include "python/py_codec.h"

namespace py = pybind11;
using namespace jit;

PYBIND11_MODULE(_C, m) {
  m.doc() = "jit-embedding native core (see the jit_embedding package for the documented API)";

  // ---- errors
  py::register_exception<codec::CodecError>(m, "CodecError", PyExc_ValueError);

  // ---- codec
  py::class_<codec::CodecLimits>(m, "CodecLimits", "Decoder limits; defaults in docs/wire-format.md.")
      .def(py::init<>())
      .def_readwrite("max_frame_bytes", &codec::CodecLimits::max_frame_bytes)
      .def_readwrite("max_envelope_bytes", &codec::CodecLimits::max_envelope_bytes)
      .def_readwrite("max_entries", &codec::CodecLimits::max_entries)
      .def_readwrite("max_rank", &codec::CodecLimits::max_rank)
      .def_readwrite("max_tensor_bytes", &codec::CodecLimits::max_tensor_bytes)
      .def_readwrite("max_decompressed_bytes", &codec::CodecLimits::max_decompressed_bytes)
      .def_readwrite("max_depth", &codec::CodecLimits::max_depth)
      .def_readwrite("max_array_length", &codec::CodecLimits::max_array_length)
      .def_readwrite("max_chunks", &codec::CodecLimits::max_chunks);
  py::class_<python::FrameBuffer>(m, "FrameBuffer", py::buffer_protocol(), "Decompressed payload bytes owned by C++.")
      .def_buffer(&python::FrameBuffer::buffer);
  m.def("encode", &python::encode, "Encode (name, dtype, shape, buffer) items and msgpack meta into a frame.",
        py::arg("items"), py::arg("meta"), py::arg("compression"), py::arg("level"), py::arg("shuffle"),
        py::arg("chunk_bytes"), py::arg("threads"));
  m.def("decode", &python::decode, "Decode a frame into (name, dtype, shape, buffer, offset, nbytes) entries and meta.",
        py::arg("frame"), py::arg("verify"), py::arg("limits"), py::arg("threads"));
  m.def("describe", &python::describe,
        "Return (frame_bytes, envelope_bytes, payload_bytes, envelope msgpack) of a frame.", py::arg("frame"),
        py::arg("limits"));

  // ---- runtime
  m.def("parallel_threads", &parallel_threads, "Threads the native pool uses (JIT_NUM_THREADS or the core count).");
}
