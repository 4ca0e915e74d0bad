// Reading request bodies (internal to the HTTP front end): one reused, aligned buffer per handler
// thread, filled either through httplib's content reader or, for large bodies with a
// Content-Length, straight from the connection's socket.
//
// Why the direct path: Debian's libcpp-httplib reads a body in 4 KiB pieces, each after a poll(),
// with the piece size compiled into the shared library; a 64 MiB upload costs 32768 of each. For
// a body of at least kDirectReadMinBytes, read_body() takes the first piece from httplib (which
// hands over whatever it had buffered past the headers), then reads the rest with large recv()
// calls on the connection's socket, found by its addresses. Anything unusual (no Content-Length,
// a Content-Encoding, a socket it cannot identify) takes httplib's path. A TLS listener must
// never take the direct path: its socket carries ciphertext.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>

namespace httplib {
struct Request;
struct Response;
class ContentReader;
} // namespace httplib

namespace jit::server {

inline constexpr size_t kBodyAlign = 64; // the codec's payload alignment, so aliased tensors stay aligned
// Bodies at least this large are read straight from the socket (see the file comment).
inline constexpr size_t kDirectReadMinBytes = size_t{1} << 20;

// A growable, 64-byte-aligned byte buffer: one per handler thread, reused across requests, so a
// large body costs one copy from the socket and no reallocation once its Content-Length is known.
class BodyBuffer {
public:
  const uint8_t *data() const { return data_.get(); }
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  void clear() { size_ = 0; }

  // Makes room for `n` bytes in all, keeping the contents. Throws std::bad_alloc.
  void reserve(size_t n) {
    if (n <= capacity_) return;
    const size_t cap = (n + kBodyAlign - 1) / kBodyAlign * kBodyAlign;
    Bytes fresh(static_cast<uint8_t *>(std::aligned_alloc(kBodyAlign, cap)));
    if (!fresh) throw std::bad_alloc();
    if (size_ > 0) std::memcpy(fresh.get(), data_.get(), size_);
    data_ = std::move(fresh);
    capacity_ = cap;
  }

  // Appends n bytes, doubling the capacity when it runs out (bodies without a Content-Length).
  void append(const char *p, size_t n) {
    // httplib's gzip decoder reports pieces of 0 bytes, and an empty buffer's data() is null:
    // memcpy(null, _, 0) is undefined behaviour.
    if (n == 0) return;
    if (size_ + n > capacity_) reserve(std::max(size_ + n, std::max<size_t>(capacity_ * 2, 64 << 10)));
    std::memcpy(data_.get() + size_, p, n);
    size_ += n;
  }

  // Space for `n` more bytes after the contents (reserve() first), filled by the caller, then
  // counted in with commit().
  uint8_t *tail() { return data_.get() + size_; }
  void commit(size_t n) { size_ += n; }

  // Frees the memory if it is larger than `keep` bytes.
  void trim(size_t keep) {
    size_ = 0;
    if (capacity_ > keep) {
      data_.reset();
      capacity_ = 0;
    }
  }

private:
  struct Free {
    void operator()(uint8_t *p) const { std::free(p); }
  };
  using Bytes = std::unique_ptr<uint8_t[], Free>;
  Bytes data_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

// This handler thread's buffer. httplib's pool threads live as long as the server, so the buffer
// is reused across requests.
BodyBuffer &thread_body_buffer();

// Reads the whole request body: into `buf` when given, otherwise discarding it (a request refused
// before its body matters must still consume it, or the next request on the keep-alive
// connection would start inside it). `read_timeout` bounds each wait for bytes on the direct path
// (httplib applies its own on its path). Throws ServerError: 413 over max_body_bytes, 400 when the
// body cannot be read. When a failure leaves unread bytes on the connection, the response asks
// the client to close it. `direct_socket` false never takes the direct path (TLS listeners).
void read_body(const httplib::Request &req, httplib::Response &res, const httplib::ContentReader &reader,
               size_t max_body_bytes, BodyBuffer *buf, std::chrono::milliseconds read_timeout,
               bool direct_socket = true);

// The message of an error status httplib produced itself (413, 404, 414, other 4xx).
std::string httplib_error_message(int status, const httplib::Request &req, size_t max_body_bytes);

} // namespace jit::server
