#include "python/py_client.h"

#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <tuple>

#include "python/py_codec.h"

namespace jit::python {

namespace {

std::chrono::milliseconds ms(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0 + 0.5));
}

std::optional<std::chrono::system_clock::time_point> to_deadline(std::optional<double> epoch_s) {
  if (!epoch_s) return std::nullopt;
  return std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::duration<double>(*epoch_s)));
}

// Waits for `future` with the GIL released, up to `timeout_s` (none: until it is ready); raises
// TimeoutError when it is not ready by then.
template <class T> void wait_released(const std::shared_future<T> &future, std::optional<double> timeout_s) {
  py::gil_scoped_release nogil;
  if (!timeout_s) {
    future.wait();
    return;
  }
  if (future.wait_for(std::chrono::duration<double>(std::max(0.0, *timeout_s))) != std::future_status::ready) {
    py::gil_scoped_acquire gil;
    PyErr_SetString(PyExc_TimeoutError, "the request is still in flight");
    throw py::error_already_set();
  }
}

} // namespace

bool PyClientFuture::done() const {
  return future_.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
}

py::tuple PyClientFuture::result(std::optional<double> timeout_s) const {
  wait_released(future_, timeout_s);
  const client::Response &r = future_.get(); // rethrows ClientError
  const std::string &body = *r.body;
  const auto *base = reinterpret_cast<const uint8_t *>(body.data());
  py::list entries;
  size_t next_owned = 0;
  py::object body_buf; // one view of the body for every aliasing entry; it keeps the body alive
  for (const auto &t : r.frame.tensors) {
    py::object buf;
    size_t offset = 0;
    if (t.aliases_frame) {
      if (!body_buf) {
        std::shared_ptr<uint8_t[]> alias(r.body, const_cast<uint8_t *>(base));
        body_buf = py::cast(FrameBuffer{alias, nullptr, const_cast<uint8_t *>(base), body.size()});
      }
      buf = body_buf;
      offset = t.nbytes == 0 ? 0 : static_cast<size_t>(t.data - base);
    } else {
      const auto &owned = r.frame.owned[next_owned++];
      buf = py::cast(FrameBuffer{owned, nullptr, owned.get(), t.nbytes});
    }
    entries.append(py::make_tuple(t.name, std::string(dtype_name(t.dtype)), py::cast(t.shape), buf, offset, t.nbytes));
  }
  return py::make_tuple(entries, py::bytes(r.frame.meta_msgpack), r.endpoint, r.attempts,
                        std::chrono::duration<double>(r.latency).count());
}

PyClient::PyClient(std::vector<std::string> endpoints, double timeout_s, int retries,
                   std::optional<std::string> auth_token, std::string balancer, double health_interval_s,
                   double backoff_base_s, double backoff_max_s, size_t max_connections_per_endpoint, size_t workers,
                   double connect_timeout_s, std::string local_cache_dir, uint64_t local_cache_max_bytes,
                   uint64_t local_cache_memory_bytes, double local_cache_version_ttl_s, std::string tls_ca_file,
                   bool tls_verify, double attempt_timeout_s) {
  client::ClientOptions o;
  o.endpoints = std::move(endpoints);
  o.timeout = ms(timeout_s);
  o.retries = retries;
  o.auth_token = std::move(auth_token);
  o.balancer = std::move(balancer);
  o.health_interval = ms(health_interval_s);
  o.backoff_base = ms(backoff_base_s);
  o.backoff_max = ms(backoff_max_s);
  o.max_connections_per_endpoint = max_connections_per_endpoint;
  o.workers = workers;
  o.connect_timeout = ms(connect_timeout_s);
  o.attempt_timeout = ms(attempt_timeout_s);
  o.local_cache_dir = std::move(local_cache_dir);
  o.local_cache_max_bytes = local_cache_max_bytes;
  o.local_cache_memory_bytes = local_cache_memory_bytes;
  o.local_cache_version_ttl = ms(local_cache_version_ttl_s);
  o.tls_ca_file = std::move(tls_ca_file);
  o.tls_verify = tls_verify;
  client_ = std::make_unique<client::Client>(std::move(o));
}

PyClientFuture PyClient::submit(const std::string &encoder, const py::buffer &frame, const std::string &key,
                                std::optional<double> deadline) {
  std::string bytes;
  {
    BufferLease lease(frame.ptr(), PyBUF_SIMPLE);
    bytes.assign(reinterpret_cast<const char *>(lease.data()), lease.size());
  }
  return PyClientFuture(client_->submit(encoder, std::move(bytes), key, to_deadline(deadline)));
}

bool PyRowsFuture::done() const {
  return future_.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
}

py::tuple PyRowsFuture::result(std::optional<double> timeout_s) const {
  wait_released(future_, timeout_s);
  const client::RowsResponse &r = future_.get(); // rethrows ClientError
  py::list rows, sources;
  for (size_t i = 0; i < r.outputs.size(); ++i) {
    py::list entries;
    for (const Tensor &t : r.outputs[i]) {
      auto *data = static_cast<uint8_t *>(const_cast<void *>(t.data));
      // Shares the answer body (or cache entry) the tensor points into: no copy.
      std::shared_ptr<uint8_t[]> keep(t.owner, data);
      entries.append(py::make_tuple(t.name, std::string(dtype_name(t.dtype)), py::cast(t.shape),
                                    py::cast(FrameBuffer{keep, nullptr, data, t.nbytes}), 0, t.nbytes));
    }
    rows.append(entries);
    sources.append(static_cast<int>(r.sources[i]));
  }
  return py::make_tuple(rows, sources, r.version, r.endpoint, r.exchanges, r.bytes_sent,
                        std::chrono::duration<double>(r.latency).count());
}

PyRowsFuture PyClient::submit_rows(const std::string &encoder, const py::list &rows, std::vector<std::string> keys,
                                   const py::bytes &params, std::map<std::string, std::pair<int, int64_t>> token_inputs,
                                   std::map<std::string, int> seq_outputs, size_t max_batch_size,
                                   const std::string &cache, const std::string &affinity_key,
                                   std::optional<double> deadline, std::map<std::string, std::string> transport) {
  client::RowsRequest req;
  req.encoder = encoder;
  if (cache == "use")
    req.cache = client::CacheMode::kUse;
  else if (cache == "refresh")
    req.cache = client::CacheMode::kRefresh;
  else if (cache == "bypass")
    req.cache = client::CacheMode::kBypass;
  else
    throw py::value_error("cache must be 'use', 'refresh' or 'bypass', not '" + cache + "'");
  for (const py::handle &row : rows) {
    std::vector<Tensor> inputs;
    for (const py::handle &item : row.cast<py::list>()) {
      auto [name, dtype_text, shape, buf] = item.cast<std::tuple<std::string, std::string, Shape, py::object>>();
      const auto dtype = dtype_from_name(dtype_text);
      if (!dtype) throw py::value_error("unknown dtype '" + dtype_text + "' of input '" + name + "'");
      BufferLease lease(buf.ptr(), PyBUF_SIMPLE);
      // Owned copies: the rows outlive this call on a worker thread, which must not touch Python.
      Tensor t = make_tensor(name, *dtype, shape);
      if (t.nbytes != lease.size())
        throw py::value_error("input '" + name + "': " + std::to_string(lease.size()) +
                              " bytes do not match its shape and dtype");
      if (t.nbytes) std::memcpy(const_cast<void *>(t.data), lease.data(), t.nbytes);
      inputs.push_back(std::move(t));
    }
    req.rows.push_back(std::move(inputs));
  }
  req.keys = std::move(keys);
  req.params = params;
  req.spec.token_inputs = std::move(token_inputs);
  req.spec.seq_outputs = std::move(seq_outputs);
  req.spec.max_batch_size = max_batch_size;
  req.affinity_key = affinity_key;
  req.transport = std::move(transport);
  req.deadline = to_deadline(deadline);
  return PyRowsFuture(client_->submit_rows(std::move(req)));
}

py::dict PyClient::cache_stats() const {
  const client::ClientStats s = client_->stats();
  py::dict d;
  d["rows_local_cache"] = s.rows_local_cache;
  d["rows_server_cache"] = s.rows_server_cache;
  d["rows_computed"] = s.rows_computed;
  return d;
}

std::string PyClient::encoders_json(std::optional<double> deadline) {
  py::gil_scoped_release nogil;
  return client_->encoders_json(to_deadline(deadline));
}

std::vector<std::string> PyClient::set_endpoints(const std::vector<std::string> &endpoints) {
  py::gil_scoped_release nogil;
  client_->set_endpoints(endpoints);
  return client_->endpoints();
}

py::dict PyClient::stats() const {
  client::ClientStats s = client_->stats();
  py::dict out;
  if (s.endpoints_removed > 0) s.endpoints.push_back(s.removed); // the "(removed)" row
  for (const auto &e : s.endpoints) {
    py::dict d;
    d["requests"] = e.requests;
    d["responses"] = e.responses;
    d["failures"] = e.failures;
    d["retries"] = e.retries;
    d["bytes_sent"] = e.bytes_sent;
    d["bytes_received"] = e.bytes_received;
    d["connections_opened"] = e.connections_opened;
    d["ejections"] = e.ejections;
    d["outstanding"] = e.outstanding;
    d["healthy"] = e.healthy;
    d["latency_sum_s"] = e.latency_sum_ms / 1000.0;
    py::list buckets;
    for (size_t i = 0; i < e.latency_buckets.size(); ++i) {
      const double le = i < client::kLatencyBucketsMs.size() ? client::kLatencyBucketsMs[i] / 1000.0
                                                             : std::numeric_limits<double>::infinity();
      buckets.append(py::make_tuple(le, e.latency_buckets[i]));
    }
    d["latency_buckets"] = buckets;
    out[py::str(e.endpoint)] = d;
  }
  return out;
}

} // namespace jit::python
