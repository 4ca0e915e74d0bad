// Request bodies: the per-thread buffer, httplib's content reader, and the direct socket path for
// large bodies (see body_reader.h).
#include "server/body_reader.h"

#include <httplib.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

#include "server/errors.h"

namespace jit::server {

namespace {

using Code = ServerError::Code;

// "a.b.c.d" or an IPv6 address and a port, as httplib reports them, for a socket address.
bool same_endpoint(const sockaddr_storage &sa, const std::string &addr, int port) {
  char text[INET6_ADDRSTRLEN] = {0};
  int p = -1;
  if (sa.ss_family == AF_INET) {
    const auto *in = reinterpret_cast<const sockaddr_in *>(&sa);
    inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
    p = ntohs(in->sin_port);
  } else if (sa.ss_family == AF_INET6) {
    const auto *in = reinterpret_cast<const sockaddr_in6 *>(&sa);
    inet_ntop(AF_INET6, &in->sin6_addr, text, sizeof text);
    p = ntohs(in->sin6_port);
  } else {
    return false;
  }
  return p == port && addr == text;
}

bool is_connection(int fd, const httplib::Request &req) {
  sockaddr_storage peer{}, local{};
  socklen_t n = sizeof peer, m = sizeof local;
  return getpeername(fd, reinterpret_cast<sockaddr *>(&peer), &n) == 0 &&
         getsockname(fd, reinterpret_cast<sockaddr *>(&local), &m) == 0 &&
         same_endpoint(peer, req.remote_addr, req.remote_port) && same_endpoint(local, req.local_addr, req.local_port);
}

// The socket of the connection `req` came on: the one whose peer and local addresses are the
// request's. Remembered per thread, since a keep-alive connection stays on its thread; found
// again (one scan of the open descriptors) when the thread serves a new connection. -1 when none.
int connection_socket(const httplib::Request &req) {
  thread_local int last = -1;
  if (last >= 0 && is_connection(last, req)) return last;
  last = -1;
  DIR *dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  while (dirent *e = readdir(dir)) {
    char *end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == dirfd(dir)) continue;
    if (is_connection(static_cast<int>(fd), req)) {
      last = static_cast<int>(fd);
      break;
    }
  }
  closedir(dir);
  return last;
}

// The direct path of read_body(): httplib's first piece, then the rest from `fd`.
void read_direct(const httplib::Request &req, httplib::Response &res, const httplib::ContentReader &reader, int fd,
                 size_t declared, BodyBuffer &buf, std::chrono::milliseconds read_timeout) {
  const int status = res.status;
  // The first piece holds whatever httplib read past the headers (less than its 4 KiB buffer),
  // so after it the socket holds exactly the rest of this body. Stopping the reader makes httplib
  // mark a failure, which the restored status undoes: the body is read all the same, below.
  bool got = false;
  reader([&](const char *data, size_t n) {
    const size_t take = std::min(n, declared);
    std::memcpy(buf.tail(), data, take);
    buf.commit(take);
    got = true;
    return false;
  });
  res.status = status;
  auto fail = [&](const std::string &why) {
    res.set_header("Connection", "close");
    throw ServerError(Code::kBadRequest, "bad request: the request body could not be read (" + why + ")");
  };
  if (!got) fail("the connection closed before the body");
  while (buf.size() < declared) {
    pollfd p{fd, POLLIN, 0};
    const int ready = poll(&p, 1, static_cast<int>(read_timeout.count()));
    if (ready == 0) fail("no bytes for read_timeout_s");
    if (ready < 0) {
      if (errno == EINTR) continue;
      fail(std::string("poll: ") + std::strerror(errno));
    }
    const ssize_t n = recv(fd, buf.tail(), declared - buf.size(), 0);
    if (n == 0) fail("the client closed the connection mid-body");
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      fail(std::string("recv: ") + std::strerror(errno));
    }
    buf.commit(static_cast<size_t>(n));
  }
}

} // namespace

std::string httplib_error_message(int status, const httplib::Request &req, size_t max_body_bytes) {
  switch (status) {
  case 413: return "payload too large: the body exceeds max_body_bytes (" + std::to_string(max_body_bytes) + ")";
  case 404: return "not found: no route for " + req.method + " " + req.path;
  case 414: return "bad request: the request URI is too long";
  default: return "bad request: malformed HTTP request (status " + std::to_string(status) + " from the HTTP layer)";
  }
}

BodyBuffer &thread_body_buffer() {
  // httplib's pool threads live as long as the server, so the buffer is reused across requests.
  thread_local BodyBuffer buffer;
  return buffer;
}

void read_body(const httplib::Request &req, httplib::Response &res, const httplib::ContentReader &reader,
               size_t max_body_bytes, BodyBuffer *buf, std::chrono::milliseconds read_timeout, bool direct_socket) {
  // httplib would feed a multipart body to a multipart receiver we do not have (a 500); the
  // frame is the body itself, so refuse it as the client's mistake.
  if (req.get_header_value("Content-Type").rfind("multipart/form-data", 0) == 0) {
    res.set_header("Connection", "close"); // its body is left unread
    throw ServerError(Code::kBadRequest, "bad request: multipart/form-data bodies are not accepted; send the "
                                         "frame (or JSON) as the raw request body");
  }
  size_t received = 0;
  bool over = false;
  bool read_ok = false;
  try {
    if (buf != nullptr) {
      buf->clear();
      const std::string length = req.get_header_value("Content-Length");
      char *end = nullptr;
      const unsigned long long declared = std::strtoull(length.c_str(), &end, 10);
      // Over the limit, httplib refuses the body itself (below): reserving it would be wasted.
      if (!length.empty() && *end == '\0' && declared <= max_body_bytes) {
        buf->reserve(declared);
        if (direct_socket && declared >= kDirectReadMinBytes && req.get_header_value("Content-Encoding").empty() &&
            !req.has_header("Transfer-Encoding")) {
          const int fd = connection_socket(req);
          if (fd >= 0) {
            read_direct(req, res, reader, fd, static_cast<size_t>(declared), *buf, read_timeout);
            return;
          }
        }
      }
    }
    read_ok = reader([&](const char *data, size_t n) {
      // httplib checks a declared Content-Length; this bounds chunked and decompressed bodies too.
      if (n > max_body_bytes - received) {
        over = true;
        return false;
      }
      received += n;
      if (buf != nullptr) buf->append(data, n);
      return true;
    });
  } catch (...) {
    // Out of memory, most likely: the rest of the body is still on the connection.
    res.set_header("Connection", "close");
    throw;
  }
  if (read_ok) return;
  // httplib skips (reads) a body whose Content-Length is over the limit and marks it 413; every
  // other failure leaves bytes unread.
  if (!over && res.status == 413) {
    throw ServerError(Code::kPayloadTooLarge, httplib_error_message(413, req, max_body_bytes));
  }
  res.set_header("Connection", "close");
  if (over) throw ServerError(Code::kPayloadTooLarge, httplib_error_message(413, req, max_body_bytes));
  throw ServerError(Code::kBadRequest, "bad request: the request body could not be read (a timeout, a "
                                       "disconnect, or malformed chunked encoding)");
}

} // namespace jit::server
