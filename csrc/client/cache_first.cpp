// submit_rows(): digests, the local cache, POST /v1/cache/lookup, then POST /v1/encode of the
// misses only (see cache_first.h).
#include <msgpack.hpp>

#include <algorithm>
#include <set>

#include "client/client_internal.h"
#include "common/rows.h"
#include "ops/transport.h"

namespace jit::client {

namespace {

ClientError invalid(const std::string &encoder, const std::string &why) {
  return ClientError(ClientError::Kind::kInvalid, "", encoder, 0, "",
                     "jit-embedding client: encoder '" + encoder + "': " + why);
}

ClientError bad_answer(const std::string &encoder, const std::string &endpoint, const std::string &why) {
  return ClientError(ClientError::Kind::kDecode, endpoint, encoder, 200, "",
                     "jit-embedding client: encoder '" + encoder + "' at " + endpoint + ": " + why);
}

// A tensor of one row without its batch dimension: what digests and cache entries hold.
TensorView without_batch_dim(const Tensor &t) {
  TensorView v = t.view();
  v.shape.erase(v.shape.begin());
  return v;
}

Tensor with_batch_dim(Tensor t) {
  t.shape.insert(t.shape.begin(), 1);
  return t;
}

const char *mode_name(CacheMode m) {
  switch (m) {
  case CacheMode::kUse: return "use";
  case CacheMode::kRefresh: return "refresh";
  case CacheMode::kBypass: return "bypass";
  }
  return "use";
}

// A decoded answer: its tensors as owning Tensors (sharing the body or the decompressed buffers)
// and its meta.
struct Answer {
  std::vector<Tensor> tensors;
  std::string version;
  std::vector<int64_t> hits; // lookup answers only
  bool lossy = false;        // some output came through a lossy transport (restored already)
};

// How an answer's meta says an output travelled: {"mode", "dtype", "scales"}.
struct Carried {
  std::string output;
  ops::Transport mode = ops::Transport::kExact;
  DType dtype = DType::kFloat32;
  std::string scales; // the entry holding the scales ("" for modes without)
};

std::vector<Carried> read_transport(const msgpack::object &o) {
  std::vector<Carried> out;
  if (o.type != msgpack::type::MAP) throw std::runtime_error("transport is not a map");
  for (uint32_t i = 0; i < o.via.map.size; ++i) {
    const msgpack::object_kv &kv = o.via.map.ptr[i];
    Carried c;
    c.output = kv.key.as<std::string>();
    const auto fields = kv.val.as<std::map<std::string, std::string>>();
    auto get = [&](const char *k) {
      auto it = fields.find(k);
      return it == fields.end() ? std::string() : it->second;
    };
    const std::optional<ops::Transport> mode = ops::transport_from_name(get("mode"));
    const std::optional<DType> dtype = dtype_from_name(get("dtype"));
    if (!mode || !dtype) throw std::runtime_error("output '" + c.output + "' names an unknown mode or dtype");
    c.mode = *mode;
    c.dtype = *dtype;
    c.scales = get("scales");
    out.push_back(std::move(c));
  }
  return out;
}

// Replaces each output that travelled lossy with its restored form and drops the scale entries.
void restore(Answer &a, const std::vector<Carried> &carried) {
  auto find = [&](const std::string &name) -> const Tensor * {
    for (const Tensor &t : a.tensors)
      if (t.name == name) return &t;
    return nullptr;
  };
  std::vector<std::pair<std::string, Tensor>> restored;
  for (const Carried &c : carried) {
    const Tensor *values = find(c.output);
    const Tensor *scales = c.scales.empty() ? nullptr : find(c.scales);
    if (values == nullptr) throw ops::TransportError("the answer lacks output '" + c.output + "'");
    if (!c.scales.empty() && scales == nullptr) throw ops::TransportError("the answer lacks scales '" + c.scales + "'");
    const TensorView sv = scales ? scales->view() : TensorView{};
    restored.emplace_back(c.output,
                          ops::decode_from_transport(values->view(), scales ? &sv : nullptr, c.mode, c.dtype));
  }
  std::vector<Tensor> kept;
  for (Tensor &t : a.tensors) {
    bool is_scale = false;
    for (const Carried &c : carried)
      is_scale = is_scale || (!c.scales.empty() && t.name == c.scales);
    if (is_scale) continue;
    for (auto &[name, r] : restored)
      if (t.name == name) t = std::move(r);
    kept.push_back(std::move(t));
  }
  a.tensors = std::move(kept);
  a.lossy = !carried.empty();
}

Answer read_answer(std::string body_text, const ClientOptions &options, const std::string &encoder,
                   const std::string &endpoint) {
  auto body = std::make_shared<std::string>(std::move(body_text));
  codec::DecodedFrame frame;
  try {
    frame = codec::decode(reinterpret_cast<const uint8_t *>(body->data()), body->size(), options.decode);
  } catch (const codec::CodecError &e) {
    throw bad_answer(encoder, endpoint, std::string("the response is not a valid frame: ") + e.what());
  }
  Answer a;
  std::vector<Carried> carried;
  size_t next_owned = 0;
  for (const codec::DecodedTensor &t : frame.tensors) {
    std::shared_ptr<const void> owner =
        t.aliases_frame ? std::shared_ptr<const void>(body) : std::shared_ptr<const void>(frame.owned.at(next_owned++));
    a.tensors.push_back(Tensor{t.name, t.dtype, t.shape, std::move(owner), t.data, t.nbytes});
  }
  try {
    msgpack::object_handle h = msgpack::unpack(frame.meta_msgpack.data(), frame.meta_msgpack.size());
    const msgpack::object &meta = h.get();
    if (meta.type == msgpack::type::MAP) {
      for (uint32_t i = 0; i < meta.via.map.size; ++i) {
        const msgpack::object_kv &kv = meta.via.map.ptr[i];
        if (kv.key.type != msgpack::type::STR) continue;
        const std::string_view k(kv.key.via.str.ptr, kv.key.via.str.size);
        if (k == "version") a.version = kv.val.as<std::string>();
        if (k == "hits") a.hits = kv.val.as<std::vector<int64_t>>();
        if (k == "transport") carried = read_transport(kv.val);
      }
    }
  } catch (const std::exception &e) {
    throw bad_answer(encoder, endpoint, std::string("the response meta is malformed: ") + e.what());
  }
  try {
    restore(a, carried);
  } catch (const ops::TransportError &e) {
    throw bad_answer(encoder, endpoint, std::string("the lossy transport cannot be undone: ") + e.what());
  }
  if (a.version.empty()) throw bad_answer(encoder, endpoint, "the response names no encoder version");
  return a;
}

} // namespace

std::optional<std::string> Client::State::fresh_version(const std::string &encoder) {
  std::lock_guard<std::mutex> lock(versions_mu);
  auto it = versions.find(encoder);
  if (it == versions.end() || Clock::now() - it->second.second > options.local_cache_version_ttl) return std::nullopt;
  return it->second.first;
}

void Client::State::confirm_version(const std::string &encoder, const std::string &version) {
  std::lock_guard<std::mutex> lock(versions_mu);
  versions[encoder] = {version, Clock::now()};
}

RowsResponse Client::State::run_rows(const RowsRequest &req, Clock::time_point started,
                                     std::chrono::system_clock::time_point deadline_sys) {
  const Clock::time_point deadline = started + (deadline_sys - std::chrono::system_clock::now());
  const std::string &enc = req.encoder;
  const size_t n = req.rows.size();
  if (!req.keys.empty() && req.keys.size() != n)
    throw invalid(enc, std::to_string(req.keys.size()) + " keys for " + std::to_string(n) + " rows");

  // 1. Digests, and each row's own length along its token inputs.
  std::vector<cache::CacheKey> digests(n);
  std::vector<int64_t> lengths(n, -1);
  bool tokens = false;
  const std::vector<Tensor> &first = req.rows[0];
  for (size_t r = 0; r < n; ++r) {
    const std::vector<Tensor> &row = req.rows[r];
    if (row.size() != first.size()) throw invalid(enc, "rows have different inputs");
    std::vector<TensorView> views;
    for (size_t i = 0; i < row.size(); ++i) {
      if (row[i].name != first[i].name) throw invalid(enc, "rows have different inputs");
      if (row[i].shape.empty() || row[i].shape[0] != 1)
        throw invalid(enc, "input '" + row[i].name + "' of row " + std::to_string(r) + " is not [1, ...]");
      auto tok = req.spec.token_inputs.find(row[i].name);
      if (tok != req.spec.token_inputs.end() && static_cast<size_t>(tok->second.first) < row[i].shape.size()) {
        const int64_t len = row[i].shape[static_cast<size_t>(tok->second.first)];
        if (lengths[r] >= 0 && lengths[r] != len)
          throw invalid(enc, "token inputs of row " + std::to_string(r) + " have different lengths");
        lengths[r] = len;
        tokens = true;
      }
      views.push_back(without_batch_dim(row[i]));
    }
    try {
      digests[r] = req.keys.empty() ? cache::CacheKey::content_of_inputs(req.params, views)
                                    : cache::CacheKey::content_of_sample_key(req.keys[r]);
    } catch (const cache::CacheError &e) {
      throw invalid(enc, e.what());
    }
  }
  const std::string affinity = req.affinity_key.empty() ? digests[0].hex() : req.affinity_key;

  RowsResponse out;
  out.outputs.resize(n);
  out.sources.assign(n, RowSource::kComputed);
  std::vector<size_t> todo(n);
  for (size_t r = 0; r < n; ++r)
    todo[r] = r;
  std::string version;                     // the newest version a server named
  std::vector<std::string> row_version(n); // the version each row's outputs are of
  std::vector<bool> lossy(n, false);       // rows restored from a lossy transport: never cached locally
  auto keep_misses = [&](const std::vector<bool> &served) {
    std::vector<size_t> rest;
    for (size_t r : todo) {
      if (!served[r]) rest.push_back(r);
    }
    todo.swap(rest);
  };

  // 2. The local cache, under a version a server confirmed recently.
  if (local && req.cache == CacheMode::kUse) {
    if (auto v = fresh_version(enc)) {
      std::vector<bool> served(n, false);
      for (size_t r : todo) {
        std::optional<cache::Entry> e = local->get(cache::CacheKey::bind(enc, *v, digests[r]));
        if (!e) continue;
        for (const Tensor &t : e->tensors())
          out.outputs[r].push_back(with_batch_dim(t));
        out.sources[r] = RowSource::kLocalCache;
        row_version[r] = *v;
        served[r] = true;
      }
      keep_misses(served);
      version = *v;
    }
  }

  // 3. The server's cache, by digest.
  auto exchange = [&](const std::string &path, const std::string &body) {
    int attempts = 0;
    Exchange ex = call("POST", path, body, affinity, enc, deadline, deadline_sys, &out.endpoint, &attempts);
    out.exchanges += 1;
    out.bytes_sent += body.size() * static_cast<uint64_t>(attempts);
    return read_answer(std::move(ex.body), options, enc, out.endpoint);
  };
  bool looked_up = false; // whether a server's cache was asked: its misses need no second lookup
  for (size_t begin = 0; req.cache == CacheMode::kUse && begin < todo.size();) {
    const size_t end = std::min(todo.size(), begin + kMaxLookupRows);
    msgpack::sbuffer sb;
    msgpack::packer<msgpack::sbuffer> pk(sb);
    pk.pack_map(2);
    pk.pack(std::string_view("encoder"));
    pk.pack(std::string_view(enc));
    pk.pack(std::string_view("digests"));
    pk.pack_array(static_cast<uint32_t>(end - begin));
    for (size_t j = begin; j < end; ++j) {
      char b[16];
      for (int i = 0; i < 8; ++i) {
        b[i] = static_cast<char>(digests[todo[j]].high() >> (56 - 8 * i));
        b[8 + i] = static_cast<char>(digests[todo[j]].low() >> (56 - 8 * i));
      }
      pk.pack_bin(16);
      pk.pack_bin_body(b, 16);
    }
    Answer a;
    try {
      a = exchange("/v1/cache/lookup", codec::encode({}, std::string(sb.data(), sb.size()), {}));
    } catch (const ClientError &e) {
      // A server without a cache (cache.enabled: false) has no lookup route: send the inputs. An
      // unknown encoder answers 404 again, with its own message, from the encode request.
      if (e.kind() != ClientError::Kind::kHttp || e.status() != 404) throw;
      break;
    }
    looked_up = true;
    confirm_version(enc, a.version);
    if (!version.empty() && version != a.version) {
      // Hits so far were of the version before an update: serve none of them, start over.
      for (size_t r = 0; r < n; ++r) {
        if (out.sources[r] == RowSource::kComputed) continue;
        out.outputs[r].clear();
        out.sources[r] = RowSource::kComputed;
      }
      todo.resize(n);
      for (size_t r = 0; r < n; ++r)
        todo[r] = r;
      version = a.version;
      begin = 0;
      continue;
    }
    version = a.version;
    size_t next = 0;
    for (int64_t idx : a.hits) {
      if (idx < 0 || static_cast<size_t>(idx) >= end - begin)
        throw bad_answer(enc, out.endpoint, "lookup hit index " + std::to_string(idx) + " is out of range");
      const size_t r = todo[begin + static_cast<size_t>(idx)];
      const std::string prefix = std::to_string(idx) + "/";
      for (; next < a.tensors.size() && a.tensors[next].name.rfind(prefix, 0) == 0; ++next) {
        Tensor t = with_batch_dim(a.tensors[next]);
        t.name = t.name.substr(prefix.size());
        out.outputs[r].push_back(std::move(t));
      }
      if (out.outputs[r].empty()) throw bad_answer(enc, out.endpoint, "lookup hit " + prefix + " has no outputs");
      out.sources[r] = RowSource::kServerCache;
      row_version[r] = a.version;
    }
    begin = end;
  }
  {
    std::vector<bool> served(n, false);
    for (size_t r = 0; r < n; ++r)
      served[r] = out.sources[r] != RowSource::kComputed;
    keep_misses(served);
  }

  // 4. Only the misses go up, max_batch_size rows at a time, padded to the longest of them;
  // twice when an update raced us.
  for (int round = 0; !todo.empty(); ++round) {
    const std::vector<size_t> misses = std::move(todo);
    todo.clear();
    const size_t step = req.spec.max_batch_size ? req.spec.max_batch_size : misses.size();
    for (size_t begin = 0; begin < misses.size(); begin += step) {
      const std::vector<size_t> chunk(misses.begin() + static_cast<std::ptrdiff_t>(begin),
                                      misses.begin() +
                                          static_cast<std::ptrdiff_t>(std::min(misses.size(), begin + step)));
      std::vector<Tensor> stacked;
      std::vector<TensorView> views;
      for (size_t i = 0; i < first.size(); ++i) {
        std::vector<TensorView> parts;
        for (size_t r : chunk)
          parts.push_back(req.rows[r][i].view());
        auto tok = req.spec.token_inputs.find(first[i].name);
        const bool pad = tok != req.spec.token_inputs.end();
        try {
          stacked.push_back(
              concat_rows(first[i].name, parts, pad ? tok->second.first : -1, pad ? tok->second.second : 0));
        } catch (const std::invalid_argument &e) {
          throw invalid(enc, e.what());
        }
        views.push_back(stacked.back().view());
      }
      msgpack::sbuffer sb;
      msgpack::packer<msgpack::sbuffer> pk(sb);
      pk.pack_map(1 + (tokens ? 1 : 0) + (req.keys.empty() ? 0 : 1) + (req.params.empty() ? 0 : 1) +
                  (req.transport.empty() ? 0 : 1));
      if (!req.transport.empty()) {
        pk.pack(std::string_view("transport"));
        pk.pack(req.transport);
      }
      // Rows that a lookup just missed are computed and stored without a second lookup on the
      // server ("refresh"), which would also count each of them as a miss twice.
      pk.pack(std::string_view("cache"));
      pk.pack(std::string_view(req.cache == CacheMode::kUse && looked_up ? "refresh" : mode_name(req.cache)));
      if (tokens) {
        pk.pack(std::string_view("lengths"));
        pk.pack_array(static_cast<uint32_t>(chunk.size()));
        for (size_t r : chunk)
          pk.pack_int64(lengths[r]);
      }
      if (!req.keys.empty()) {
        pk.pack(std::string_view("keys"));
        pk.pack_array(static_cast<uint32_t>(chunk.size()));
        for (size_t r : chunk)
          pk.pack(req.keys[r]);
      }
      if (!req.params.empty()) {
        pk.pack(std::string_view("params"));
        pk.pack_bin(static_cast<uint32_t>(req.params.size()));
        pk.pack_bin_body(req.params.data(), static_cast<uint32_t>(req.params.size()));
      }
      std::string frame;
      try {
        frame = codec::encode(views, std::string(sb.data(), sb.size()), {});
      } catch (const codec::CodecError &e) {
        throw invalid(enc, e.what());
      }
      stacked.clear();
      Answer a = exchange("/v1/encode/" + enc, frame);
      confirm_version(enc, a.version);
      for (const Tensor &t : a.tensors) {
        if (t.shape.empty() || static_cast<size_t>(t.shape[0]) != chunk.size())
          throw bad_answer(enc, out.endpoint, "output '" + t.name + "' does not have one row per sample");
      }
      for (size_t j = 0; j < chunk.size(); ++j) {
        const size_t r = chunk[j];
        for (const Tensor &t : a.tensors) {
          auto seq = req.spec.seq_outputs.find(t.name);
          out.outputs[r].push_back(
              slice_rows(t, j, 1, seq != req.spec.seq_outputs.end() ? seq->second : -1, tokens ? lengths[r] : -1));
        }
        out.sources[r] = RowSource::kComputed;
        row_version[r] = a.version;
        lossy[r] = a.lossy;
      }
      version = a.version;
    }
    // An in-place update landed while this request ran: rows of the old version go again.
    for (size_t r = 0; r < n; ++r) {
      if (row_version[r] == version) continue;
      out.outputs[r].clear();
      out.sources[r] = RowSource::kComputed;
      todo.push_back(r);
    }
    if (!todo.empty() && round >= 2)
      throw ClientError(ClientError::Kind::kHttp, out.endpoint, enc, 200, "",
                        "jit-embedding client: encoder '" + enc +
                            "' changed version during the request three times; giving up");
  }
  out.version = version;

  // 5. What a server answered goes into the local cache, under the version that made it.
  for (size_t r = 0; r < n; ++r) {
    if (out.sources[r] == RowSource::kLocalCache) {
      rows_local.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    (out.sources[r] == RowSource::kServerCache ? rows_server_cache : rows_computed)
        .fetch_add(1, std::memory_order_relaxed);
    if (!local || req.cache == CacheMode::kBypass || lossy[r]) continue;
    std::vector<TensorView> views;
    for (const Tensor &t : out.outputs[r])
      views.push_back(without_batch_dim(t));
    try {
      const cache::CacheKey key = cache::CacheKey::bind(enc, version, digests[r]);
      local->put(key, cache::Entry::make(key, enc, version, views));
    } catch (const cache::CacheError &) {
      // Outputs the codec cannot frame are simply not cached locally.
    }
  }
  out.latency = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started);
  return out;
}

} // namespace jit::client
