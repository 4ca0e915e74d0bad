// Python-facing adapters for the client (csrc/client/client.h): options from Python numbers, and
// futures whose waits release the GIL. jit_embedding/client.py wraps these in typed, documented
// classes; bindings.cpp exposes them as-is.
#pragma once

#include <pybind11/pybind11.h>

#include <future>
#include <map>
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

// A submit_rows() request. result() blocks without the GIL.
class PyRowsFuture {
public:
  explicit PyRowsFuture(std::future<client::RowsResponse> f) : future_(f.share()) {}
  bool done() const;
  // Waits as PyClientFuture::result does. Returns (rows, sources, version, endpoint, exchanges,
  // bytes_sent, latency seconds): rows[r] is a list of (name, dtype, shape, buffer, offset,
  // nbytes) entries of row r's outputs ([1, ...] each), aliasing the answers without a copy;
  // sources[r] is 0 computed, 1 the server's cache, 2 the local cache.
  py::tuple result(std::optional<double> timeout_s) const;

private:
  std::shared_future<client::RowsResponse> future_;
};

class PyClient {
public:
  // Seconds in, milliseconds for client::ClientOptions. Raises ClientError for bad options.
  PyClient(std::vector<std::string> endpoints, double timeout_s, int retries, std::optional<std::string> auth_token,
           std::string balancer, double health_interval_s, double backoff_base_s, double backoff_max_s,
           size_t max_connections_per_endpoint, size_t workers, double connect_timeout_s, std::string local_cache_dir,
           uint64_t local_cache_max_bytes, uint64_t local_cache_memory_bytes, double local_cache_version_ttl_s,
           std::string tls_ca_file, bool tls_verify, double attempt_timeout_s);
  // Copies every row's inputs ((name, dtype, shape, buffer) items, each [1, ...]) and submits
  // them cache-first (client/cache_first.h). `token_inputs`: name -> (seq_dim, pad_value);
  // `seq_outputs`: name -> seq_dim; `max_batch_size`: rows per encode request (0: any); `cache`: "use", "refresh" or
  // "bypass"; `transport`: output -> lossy transport mode ("*": every float output; empty: exact).
  // Raises ValueError for an unknown cache mode or dtype, ClientError for an invalid request.
  PyRowsFuture submit_rows(const std::string &encoder, const py::list &rows, std::vector<std::string> keys,
                           const py::bytes &params, std::map<std::string, std::pair<int, int64_t>> token_inputs,
                           std::map<std::string, int> seq_outputs, size_t max_batch_size, const std::string &cache,
                           const std::string &affinity_key, std::optional<double> deadline,
                           std::map<std::string, std::string> transport);
  // {"rows_local_cache", "rows_server_cache", "rows_computed"}: submit_rows() rows by source.
  py::dict cache_stats() const;
  // Copies `frame` (any buffer) and submits it; `deadline` is absolute, seconds since the Unix epoch.
  PyClientFuture submit(const std::string &encoder, const py::buffer &frame, const std::string &key,
                        std::optional<double> deadline);
  // GET /v1/encoders, GIL released.
  std::string encoders_json(std::optional<double> deadline);
  // Replaces the endpoint set (client::Client::set_endpoints), GIL released; raises ClientError
  // for an empty list or a malformed endpoint. Returns the set now ("host:port" each).
  std::vector<std::string> set_endpoints(const std::vector<std::string> &endpoints);
  // {endpoint: {requests, responses, failures, retries, bytes_sent, bytes_received,
  //  connections_opened, ejections, outstanding, healthy, latency_sum_s, latency_buckets}}, plus
  // a "(removed)" row summing the endpoints set_endpoints() dropped, once there are any.
  py::dict stats() const;

private:
  std::unique_ptr<client::Client> client_;
};

} // namespace jit::python
