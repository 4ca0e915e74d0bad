// The one binding file of jit_embedding._C: one line and a docstring per symbol, no logic.
// Typed, documented Python wrappers live in jit_embedding/.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "client/client.h"
#include "codec/codec.h"
#include "common/thread_pool.h"
#include "executor/executor.h"
#include "python/py_client.h"
#include "python/py_codec.h"
#include "python/py_ops.h"
#include "python/py_server.h"
#include "server/errors.h"

namespace py = pybind11;
using namespace jit;

PYBIND11_MODULE(_C, m) {
  m.doc() = "jit-embedding native core (see the jit_embedding package for the documented API)";

  // ---- errors
  py::register_exception<codec::CodecError>(m, "CodecError", PyExc_ValueError);
  py::register_exception<server::ServerError>(m, "ServerError", PyExc_ValueError);
  py::register_exception<executor::ExecutorError>(m, "ExecutorError", PyExc_RuntimeError);
  py::register_exception<client::ClientError>(m, "ClientError", PyExc_RuntimeError);

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

  // ---- server (jit-embedding serve)
  py::class_<python::PyApp>(m, "App", "The C++ server hosted in-process; see jit_embedding.serve.Server.")
      .def(py::init<const std::string &, py::object, std::optional<std::string>, std::optional<int>, bool,
                    std::optional<std::string>, std::optional<std::string>, std::optional<std::string>,
                    std::optional<std::string>>(),
           "Read a YAML config (flags override it); loader(entry) builds Python factory encoders.",
           py::arg("config_path"), py::arg("loader"), py::arg("host") = py::none(), py::arg("port") = py::none(),
           py::arg("allow_public") = false, py::arg("auth_token_file") = py::none(),
           py::arg("admin_token_file") = py::none(), py::arg("tls_cert_file") = py::none(),
           py::arg("tls_key_file") = py::none())
      .def("start", &python::PyApp::start, "Load every encoder, start serving, return the port.")
      .def("drain", &python::PyApp::drain, "Stop admitting, finish in-flight work; True if all finished in time.")
      .def("wait", &python::PyApp::wait, "Wait up to timeout_s for the server to stop; True once stopped.",
           py::arg("timeout_s"))
      .def("encoders_json", &python::PyApp::encoders_json, "The JSON list GET /v1/encoders answers.")
      .def_property_readonly("port", &python::PyApp::port, "The bound port.");

  // ---- client (jit_embedding.client.EmbeddingClient)
  py::class_<python::PyClientFuture>(m, "ClientFuture", "A submitted request; see jit_embedding.client.Future.")
      .def("done", &python::PyClientFuture::done, "Whether the answer or the error is in.")
      .def("result", &python::PyClientFuture::result,
           "Wait (GIL released) up to timeout_s; (entries, meta, endpoint, attempts, latency_s).",
           py::arg("timeout_s") = py::none());
  py::class_<python::PyRowsFuture>(m, "RowsFuture", "A submit_rows request; see jit_embedding.client.RowsFuture.")
      .def("done", &python::PyRowsFuture::done, "Whether the answer or the error is in.")
      .def("result", &python::PyRowsFuture::result,
           "Wait (GIL released); (rows, sources, version, endpoint, exchanges, bytes_sent, latency_s).",
           py::arg("timeout_s") = py::none());
  py::class_<python::PyClient>(m, "Client", "The native client; see jit_embedding.client.EmbeddingClient.")
      .def(py::init<std::vector<std::string>, double, int, std::optional<std::string>, std::string, double, double,
                    double, size_t, size_t, double, std::string, uint64_t, uint64_t, double, std::string, bool,
                    double>(),
           "Options as in csrc/client/client.h, durations in seconds.", py::arg("endpoints"), py::arg("timeout_s"),
           py::arg("retries"), py::arg("auth_token"), py::arg("balancer"), py::arg("health_interval_s"),
           py::arg("backoff_base_s"), py::arg("backoff_max_s"), py::arg("max_connections_per_endpoint"),
           py::arg("workers"), py::arg("connect_timeout_s"), py::arg("local_cache_dir") = "",
           py::arg("local_cache_max_bytes") = uint64_t{16} << 30,
           py::arg("local_cache_memory_bytes") = uint64_t{256} << 20, py::arg("local_cache_version_ttl_s") = 1.0,
           py::arg("tls_ca_file") = "", py::arg("tls_verify") = true, py::arg("attempt_timeout_s") = 0.0)
      .def("submit_rows", &python::PyClient::submit_rows, "Submit rows cache-first (csrc/client/cache_first.h).",
           py::arg("encoder"), py::arg("rows"), py::arg("keys"), py::arg("params"), py::arg("token_inputs"),
           py::arg("seq_outputs"), py::arg("max_batch_size"), py::arg("cache"), py::arg("affinity_key"),
           py::arg("deadline"), py::arg("transport") = std::map<std::string, std::string>{})
      .def("cache_stats", &python::PyClient::cache_stats, "submit_rows rows by source (local, server cache, computed).")
      .def("submit", &python::PyClient::submit, "Submit a request frame; deadline in epoch seconds.",
           py::arg("encoder"), py::arg("frame"), py::arg("key"), py::arg("deadline"))
      .def("encoders_json", &python::PyClient::encoders_json, "GET /v1/encoders from a healthy endpoint.",
           py::arg("deadline") = py::none())
      .def("stats", &python::PyClient::stats, "Per-endpoint counters and latency histogram.")
      .def("set_endpoints", &python::PyClient::set_endpoints, "Replace the endpoint set; returns it.",
           py::arg("endpoints"));

  // ---- runtime
  m.def("parallel_threads", &parallel_threads, "Threads the native pool uses (JIT_NUM_THREADS or the core count).");

  // ---- ops (jit_embedding.ops): addresses + sizes; cuda=False runs the CPU reference, True the kernel on `stream`
  m.def("ops_has_cuda_kernels", &python::ops::has_cuda_kernels, "Whether this build links the CUDA kernels.");
  m.def("ops_quantize_fp8_rowwise", &python::ops::quantize_fp8_rowwise,
        "src [rows, cols] of src_dtype -> dst [rows, cols] e4m3fn codes, scales [rows] fp32.", py::arg("src"),
        py::arg("src_dtype"), py::arg("rows"), py::arg("cols"), py::arg("dst"), py::arg("scales"), py::arg("cuda"),
        py::arg("stream"));
  m.def("ops_dequantize_fp8_rowwise", &python::ops::dequantize_fp8_rowwise,
        "src [rows, cols] e4m3fn codes, scales [rows] fp32 -> dst [rows, cols] of dst_dtype.", py::arg("src"),
        py::arg("scales"), py::arg("rows"), py::arg("cols"), py::arg("dst"), py::arg("dst_dtype"), py::arg("cuda"),
        py::arg("stream"));
  m.def("ops_quantize_fp8_per_tensor", &python::ops::quantize_fp8_per_tensor,
        "src [numel] of src_dtype -> dst [numel] e4m3fn codes, scale [1] fp32.", py::arg("src"), py::arg("src_dtype"),
        py::arg("numel"), py::arg("dst"), py::arg("scale"), py::arg("cuda"), py::arg("stream"));
  m.def("ops_dequantize_fp8_per_tensor", &python::ops::dequantize_fp8_per_tensor,
        "src [numel] e4m3fn codes, scale [1] fp32 -> dst [numel] of dst_dtype.", py::arg("src"), py::arg("scale"),
        py::arg("numel"), py::arg("dst"), py::arg("dst_dtype"), py::arg("cuda"), py::arg("stream"));
  m.def("ops_quantize_int8_rowwise", &python::ops::quantize_int8_rowwise,
        "src [rows, cols] of src_dtype -> dst [rows, cols] int8, scales [rows] fp32.", py::arg("src"),
        py::arg("src_dtype"), py::arg("rows"), py::arg("cols"), py::arg("dst"), py::arg("scales"), py::arg("cuda"),
        py::arg("stream"));
  m.def("ops_dequantize_int8_rowwise", &python::ops::dequantize_int8_rowwise,
        "src [rows, cols] int8, scales [rows] fp32 -> dst [rows, cols] of dst_dtype.", py::arg("src"),
        py::arg("scales"), py::arg("rows"), py::arg("cols"), py::arg("dst"), py::arg("dst_dtype"), py::arg("cuda"),
        py::arg("stream"));
  m.def("ops_cast_float", &python::ops::cast_float, "src [numel] of src_dtype -> dst [numel] of dst_dtype.",
        py::arg("src"), py::arg("src_dtype"), py::arg("dst"), py::arg("dst_dtype"), py::arg("numel"), py::arg("cuda"),
        py::arg("stream"));
  m.def("ops_preprocess_nhwc_u8", &python::ops::preprocess_nhwc_u8,
        "src [n, h, w, c] uint8 -> dst [n, c, out_h, out_w] of out_dtype, resized and normalized.", py::arg("src"),
        py::arg("n"), py::arg("h"), py::arg("w"), py::arg("c"), py::arg("out_h"), py::arg("out_w"), py::arg("mean"),
        py::arg("std"), py::arg("mode"), py::arg("out_dtype"), py::arg("dst"), py::arg("cuda"), py::arg("stream"));
}
