#include "python/py_codec.h"

#include <pybind11/stl.h>

#include <stdexcept>
#include <vector>

namespace jit::python {

namespace {

codec::Compression parse_compression(const std::string &name) {
  if (name == "none") return codec::Compression::kNone;
  if (name == "zstd") return codec::Compression::kZstd;
  throw codec::CodecError("unknown codec: compression must be 'none' or 'zstd', not '" + name + "'");
}

} // namespace

py::buffer_info FrameBuffer::buffer() {
  return py::buffer_info(data, 1, py::format_descriptor<uint8_t>::format(), 1, {static_cast<py::ssize_t>(nbytes)}, {1});
}

py::bytes encode(const py::list &items, const py::bytes &meta, const std::string &compression, int level, bool shuffle,
                 size_t chunk_bytes, size_t threads) {
  codec::EncodeOptions opt;
  opt.compression = parse_compression(compression);
  opt.level = level;
  opt.shuffle = shuffle;
  opt.chunk_bytes = chunk_bytes;
  opt.max_threads = threads;

  std::vector<std::unique_ptr<BufferLease>> leases;
  std::vector<TensorView> views;
  leases.reserve(items.size());
  views.reserve(items.size());
  for (const auto &item : items) {
    auto t = item.cast<py::tuple>();
    if (t.size() != 4) throw codec::CodecError("bad envelope: each item is (name, dtype, shape, buffer)");
    TensorView v;
    v.name = t[0].cast<std::string>();
    auto dtype_name = t[1].cast<std::string>();
    auto dtype = dtype_from_name(dtype_name);
    if (!dtype) throw codec::CodecError("unknown dtype: '" + dtype_name + "' for tensor '" + v.name + "'");
    v.dtype = *dtype;
    v.shape = t[2].cast<Shape>();
    leases.push_back(std::make_unique<BufferLease>(t[3].ptr(), PyBUF_C_CONTIGUOUS));
    v.data = leases.back()->data();
    v.nbytes = leases.back()->size();
    views.push_back(std::move(v));
  }
  std::string meta_str = meta;

  codec::EncodePlan plan;
  {
    py::gil_scoped_release nogil;
    plan = codec::plan_encode(views, meta_str, opt);
  }
  // The output is allocated once, as the final bytes object, and written without the GIL: nobody
  // else can reach it until we return it.
  PyObject *out = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(plan.frame_bytes()));
  if (out == nullptr) throw py::error_already_set();
  auto result = py::reinterpret_steal<py::bytes>(out);
  {
    py::gil_scoped_release nogil;
    plan.write(reinterpret_cast<uint8_t *>(PyBytes_AS_STRING(out)));
  }
  return result;
}

py::tuple decode(const py::object &frame, bool verify, const codec::CodecLimits &limits, size_t threads) {
  auto lease_ptr = std::make_shared<BufferLease>(frame.ptr(), PyBUF_SIMPLE);
  const BufferLease &lease = *lease_ptr;
  codec::DecodeOptions opt;
  opt.limits = limits;
  opt.verify_checksums = verify;
  opt.max_threads = threads;
  codec::DecodedFrame decoded;
  {
    py::gil_scoped_release nogil;
    decoded = codec::decode(lease.data(), lease.size(), opt);
  }
  py::list entries;
  size_t next_owned = 0;
  py::object frame_buf; // one shared view of the frame for every aliasing entry
  for (const auto &t : decoded.tensors) {
    py::object buf;
    size_t offset = 0;
    if (t.aliases_frame) {
      if (!frame_buf) {
        frame_buf = py::cast(FrameBuffer{nullptr, lease_ptr, const_cast<uint8_t *>(lease.data()), lease.size()});
      }
      buf = frame_buf;
      offset = t.nbytes == 0 ? 0 : static_cast<size_t>(t.data - lease.data());
    } else {
      auto &owned = decoded.owned[next_owned++];
      buf = py::cast(FrameBuffer{owned, nullptr, owned.get(), t.nbytes});
    }
    entries.append(py::make_tuple(t.name, std::string(dtype_name(t.dtype)), py::cast(t.shape), buf, offset, t.nbytes));
  }
  return py::make_tuple(entries, py::bytes(decoded.meta_msgpack));
}

py::tuple describe(const py::buffer &frame, const codec::CodecLimits &limits) {
  BufferLease lease(frame.ptr(), PyBUF_SIMPLE);
  codec::FrameInfo info = codec::describe(lease.data(), lease.size(), limits);
  return py::make_tuple(info.frame_bytes, info.envelope_bytes, info.payload_bytes, py::bytes(info.envelope_msgpack));
}

} // namespace jit::python
