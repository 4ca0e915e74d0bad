// ServerError -> HTTP status and JSON body; lower layers' errors -> ServerError.
#include "server/errors.h"

#include <cstdint>
#include <cstdio>

#include "codec/codec.h"

namespace jit::server {

int http_status(const ServerError &e) {
  switch (e.code()) {
  case ServerError::Code::kBadRequest: return 400;
  case ServerError::Code::kUnprocessable: return 422;
  case ServerError::Code::kPayloadTooLarge: return 413;
  case ServerError::Code::kNotFound: return 404;
  case ServerError::Code::kUnauthorized: return 401;
  case ServerError::Code::kForbidden: return 403;
  case ServerError::Code::kConflict: return 409;
  case ServerError::Code::kHeaderTooLarge: return 431;
  case ServerError::Code::kOverloaded: return 429;
  case ServerError::Code::kNotReady: return 503;
  case ServerError::Code::kDeadlineExceeded: return 504;
  case ServerError::Code::kInternal: return 500;
  }
  return 500; // unreachable for valid enumerators; keeps a corrupted value from escaping as 200
}

const char *code_name(ServerError::Code code) {
  switch (code) {
  case ServerError::Code::kBadRequest: return "bad_request";
  case ServerError::Code::kUnprocessable: return "unprocessable";
  case ServerError::Code::kPayloadTooLarge: return "payload_too_large";
  case ServerError::Code::kNotFound: return "not_found";
  case ServerError::Code::kUnauthorized: return "unauthorized";
  case ServerError::Code::kForbidden: return "forbidden";
  case ServerError::Code::kConflict: return "conflict";
  case ServerError::Code::kHeaderTooLarge: return "header_too_large";
  case ServerError::Code::kOverloaded: return "overloaded";
  case ServerError::Code::kNotReady: return "not_ready";
  case ServerError::Code::kDeadlineExceeded: return "deadline_exceeded";
  case ServerError::Code::kInternal: return "internal";
  }
  return "internal";
}

namespace {

// Length of the well-formed UTF-8 sequence starting at s[i] (1..4), or 0 if it is malformed:
// overlong forms, surrogates and code points past U+10FFFF are rejected, as RFC 3629 requires.
size_t utf8_sequence_length(const std::string &s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t b0 = byte(i);
  if (b0 < 0x80) return 1;
  size_t n;
  uint32_t lo = 0x80, hi = 0xBF; // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0; // overlong
    if (b0 == 0xED) hi = 0x9F; // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90; // overlong
    if (b0 == 0xF4) hi = 0x8F; // past U+10FFFF
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
  }
  return n;
}

} // namespace

std::string json_quote(const std::string &s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    switch (c) {
    case '"':
      out += "\\\"";
      ++i;
      continue;
    case '\\':
      out += "\\\\";
      ++i;
      continue;
    case '\b':
      out += "\\b";
      ++i;
      continue;
    case '\f':
      out += "\\f";
      ++i;
      continue;
    case '\n':
      out += "\\n";
      ++i;
      continue;
    case '\r':
      out += "\\r";
      ++i;
      continue;
    case '\t':
      out += "\\t";
      ++i;
      continue;
    default: break;
    }
    if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
      ++i;
      continue;
    }
    const size_t n = utf8_sequence_length(s, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD"; // U+FFFD for one bad byte, then resynchronise on the next
      ++i;
      continue;
    }
    out.append(s, i, n);
    i += n;
  }
  out.push_back('"');
  return out;
}

std::string error_json(const ServerError &e) {
  return std::string("{\"error\": ") + json_quote(e.what()) + ", \"code\": \"" + code_name(e.code()) + "\"}";
}

ServerError from_codec_error(const codec::CodecError &e) {
  // The codec's messages start with the problem's name (docs/wire-format.md, "Errors"); only a
  // limit is the client's size problem, everything else is a malformed frame.
  const std::string message = e.what();
  const bool over_limit = message.rfind("over limit", 0) == 0;
  return ServerError(over_limit ? ServerError::Code::kPayloadTooLarge : ServerError::Code::kBadRequest, message);
}

} // namespace jit::server
