// Python-facing adapters for the client (csrc/client/client.h): options from Python numbers, and
// futures whose waits release the GIL. jit_embedding/client.py wraps these in typed, documented
// classes; bindings.cpp exposes them as-is.
#pragma once

#include <pybind11/pybind11.h>

#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "client/client.h"

namespace jit::python {

namespace py = pybind11;

// A submitted request. result() blocks without the GIL.
class PyClientFuture {
public:
  explicit PyClientFuture(std::future<client::Response> f) : future_(f.share()) {}
  // Whether the answer (or error) is in.
  bool done() const;
  // Waits up to `timeout_s` (None: forever) with the GIL released; raises TimeoutError if it is
  // not in by then, ClientError if the request failed. Returns (entries, meta msgpack bytes,
  // endpoint, attempts, latency seconds); entries as _C.decode gives them, aliasing the response
  // body without a copy.
  py::tuple result(std::optional<double> timeout_s) const;

private:
  std::shared_future<client::Response> future_;
};

class PyClient {
public:
  // Seconds in, milliseconds for client::ClientOptions. Raises ClientError for bad options.
  PyClient(std::vector<std::string> endpoints, double timeout_s, int retries, std::optional<std::string> auth_token,
           std::string balancer, double health_interval_s, double backoff_base_s, double backoff_max_s,
           size_t max_connections_per_endpoint, size_t workers, double connect_timeout_s);
  // Copies `frame` (any buffer) and submits it; `deadline` is absolute, seconds since the Unix epoch.
  PyClientFuture submit(const std::string &encoder, const py::buffer &frame, const std::string &key,
                        std::optional<double> deadline);
  // GET /v1/encoders, GIL released.
  std::string encoders_json(std::optional<double> deadline);
  // {endpoint: {requests, responses, failures, retries, bytes_sent, bytes_received,
  //  connections_opened, ejections, outstanding, healthy, latency_sum_s, latency_buckets}}
  py::dict stats() const;

private:
  std::unique_ptr<client::Client> client_;
};

} // namespace jit::python
