// Python-facing adapters for the codec: convert Python buffers to TensorViews and decoded frames
// to Python objects, releasing the GIL around all real work. bindings.cpp exposes these as-is.
#pragma once

#include <pybind11/pybind11.h>

#include "codec/codec.h"

namespace jit::python {

namespace py = pybind11;

// Encodes items, a list of (name, dtype name, shape, buffer) tuples, into a new bytes object.
// Each buffer is a C-contiguous object exposing the buffer protocol (the Python wrapper passes
// a uint8 view of each tensor). meta is one msgpack value (b"" for none).
// compression: "none" or "zstd". Raises CodecError for inconsistent input.
py::bytes encode(const py::list &items, const py::bytes &meta, const std::string &compression, int level, bool shuffle,
                 size_t chunk_bytes, size_t threads);

// Decodes a frame held by any buffer-protocol object. Returns (entries, meta) where entries is a
// list of (name, dtype name, shape, buffer, offset, nbytes): `buffer` is the frame object itself
// for payloads that alias it, or a FrameBuffer owning the decompressed bytes (offset 0).
// meta is the msgpack bytes of the envelope's meta (b"" when absent).
py::tuple decode(const py::object &frame, bool verify, const codec::CodecLimits &limits, size_t threads);

// Returns (frame_bytes, envelope_bytes, payload_bytes, envelope msgpack bytes) without touching payloads.
py::tuple describe(const py::buffer &frame, const codec::CodecLimits &limits);

// Holds a Py_buffer export for as long as C++ code or a FrameBuffer uses it. While it is held, a
// bytearray cannot be resized under the tensors that alias it. Destroy it with the GIL held.
class BufferLease {
public:
  BufferLease(PyObject *obj, int flags) {
    if (PyObject_GetBuffer(obj, &view_, flags) != 0) throw py::error_already_set();
  }
  ~BufferLease() { PyBuffer_Release(&view_); }
  BufferLease(const BufferLease &) = delete;
  BufferLease &operator=(const BufferLease &) = delete;
  const uint8_t *data() const { return static_cast<const uint8_t *>(view_.buf); }
  size_t size() const { return static_cast<size_t>(view_.len); }

private:
  Py_buffer view_{};
};

// Bytes exposed through the buffer protocol so that torch.frombuffer can wrap them without a copy
// and keep them alive: either a decompressed payload owned by C++, or the caller's frame object
// (kept referenced). It is always writable; decode()'s docs state the aliasing contract, and
// torch would otherwise warn on every read-only frame.
struct FrameBuffer {
  std::shared_ptr<uint8_t[]> owned;
  std::shared_ptr<BufferLease> frame; // the aliased frame's export, when owned is empty
  uint8_t *data = nullptr;
  size_t nbytes = 0;
  py::buffer_info buffer();
};

} // namespace jit::python
