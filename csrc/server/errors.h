// The server layer's one error type, and the one place it becomes an HTTP answer.
//
// Handlers throw (or build) a ServerError with a Code; the HTTP front end turns it into a status
// with http_status() and a body with error_json(). Keeping the mapping in one function means a
// code can never answer two different statuses from two different handlers. Errors from lower
// layers (the codec today, the engine later) are converted into a ServerError once, at the edge,
// by functions declared here (the engine's in server/encode_handler.h).
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

namespace jit::codec {
class CodecError;
}

namespace jit::server {

class ServerError : public std::runtime_error {
public:
  enum class Code {
    kBadRequest,       // 400: malformed request or frame
    kUnprocessable,    // 422: a well-formed frame the encoder cannot take (wrong inputs, shapes)
    kPayloadTooLarge,  // 413: the body or a frame size is over a limit
    kNotFound,         // 404: unknown route or encoder
    kUnauthorized,     // 401: no valid bearer token (the server was configured with one)
    kForbidden,        // 403: the request names something it may not (an artifact outside artifact_root),
                       //      or an admin route without the admin token
    kConflict,         // 409: the request conflicts with one in progress (a second trace capture)
    kHeaderTooLarge,   // 431: the request's headers are over max_header_bytes
    kOverloaded,       // 429: a bounded queue is full; retry later
    kNotReady,         // 503: not ready yet, or draining
    kDeadlineExceeded, // 504: X-Deadline-Ms has passed
    kInternal,         // 500: a bug or an unexpected failure below us
  };

  ServerError(Code code, const std::string &message) : std::runtime_error(message), code_(code) {}

  Code code() const { return code_; }

private:
  Code code_;
};

// How many codes there are: the size of tables indexed by Code.
inline constexpr size_t kServerErrorCodes = 12;

// The HTTP status for e's code: 400, 401, 403, 404, 409, 413, 422, 429, 431, 503, 504 or 500.
int http_status(const ServerError &e);

// The stable snake_case name of a code ("bad_request", "payload_too_large", ...), as sent in the
// JSON body's "code" and used as the `reason` label of jit_http_failures_total.
const char *code_name(ServerError::Code code);

// The error body: {"error": "<message>", "code": "<name>"}. The message is escaped as a JSON
// string; bytes that are not valid UTF-8 (a message may quote a client's URL) become U+FFFD, so the
// result is always valid JSON.
std::string error_json(const ServerError &e);

// `s` as a JSON string literal, quotes included, with the same escaping as error_json().
std::string json_quote(const std::string &s);

// A codec failure as a ServerError: "over limit" errors are kPayloadTooLarge (413), every other
// malformed frame is kBadRequest (400). The message is the codec's, unchanged, so it still starts
// with the problem's name from docs/wire-format.md.
ServerError from_codec_error(const codec::CodecError &e);

} // namespace jit::server
