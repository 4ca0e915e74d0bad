// Reading the msgpack meta of the cache's requests (internal to cache_service.cpp and
// cache_routes.cpp). Every malformed field is a ServerError(kBadRequest) that names it.
#pragma once

#include <msgpack.hpp>

#include <cstdint>
#include <string>
#include <string_view>

#include "server/errors.h"

namespace jit::server::cache_meta {

[[noreturn]] inline void bad(const std::string &msg) {
  throw ServerError(ServerError::Code::kBadRequest, msg);
}

inline std::string as_text(const msgpack::object &o, const std::string &what) {
  if (o.type == msgpack::type::STR) return std::string(o.via.str.ptr, o.via.str.size);
  if (o.type == msgpack::type::BIN) return std::string(o.via.bin.ptr, o.via.bin.size);
  bad(what + " must be a string");
}

// The meta map of a request frame, or an unpacked nil when it has none.
inline msgpack::object_handle unpack_meta(const std::string &meta_msgpack) {
  if (meta_msgpack.empty()) return msgpack::object_handle();
  try {
    return msgpack::unpack(meta_msgpack.data(), meta_msgpack.size());
  } catch (const std::exception &e) {
    bad(std::string("meta: ") + e.what()); // the codec checked it; defensive
  }
}

inline const msgpack::object *field(const msgpack::object &map, std::string_view name) {
  if (map.type != msgpack::type::MAP) return nullptr;
  for (uint32_t i = 0; i < map.via.map.size; ++i) {
    const msgpack::object_kv &kv = map.via.map.ptr[i];
    if (kv.key.type == msgpack::type::STR && std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == name)
      return &kv.val;
  }
  return nullptr;
}

inline const msgpack::object_array &array_of(const msgpack::object &o, const std::string &what, size_t expected) {
  if (o.type != msgpack::type::ARRAY) bad(what + " must be an array");
  if (expected != SIZE_MAX && o.via.array.size != expected)
    bad(what + " must have one element per row (" + std::to_string(expected) + "), got " +
        std::to_string(o.via.array.size));
  return o.via.array;
}

} // namespace jit::server::cache_meta
