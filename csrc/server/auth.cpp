// Bearer tokens: route levels, the check, constant-time comparison, and reading secrets.
#include "server/auth.h"

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "server/errors.h"

namespace jit::server {

namespace {

using Code = ServerError::Code;

bool ends_with(const std::string &s, const char *suffix) {
  const std::string_view x(suffix);
  return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
}

// A token's bytes must survive an HTTP header unchanged: visible ASCII only.
void check_token(const std::string &token, const std::string &what) {
  if (token.empty()) throw ServerError(Code::kBadRequest, what + ": the token is empty");
  for (unsigned char c : token) {
    if (c <= 0x20 || c >= 0x7f) {
      throw ServerError(Code::kBadRequest,
                        what + ": the token may hold only visible ASCII characters (no spaces or control bytes)");
    }
  }
  if (token.size() < kMinTokenBytes) {
    throw ServerError(Code::kBadRequest, what + ": the token is " + std::to_string(token.size()) + " bytes; at least " +
                                             std::to_string(kMinTokenBytes) +
                                             " are required (e.g. `openssl rand -hex 32`)");
  }
}

std::string strip_trailing_space(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t'))
    s.pop_back();
  return s;
}

} // namespace

Access route_access(const std::string &method, const std::string &path) {
  // HEAD too: some load balancers probe liveness with it.
  if ((method == "GET" || method == "HEAD") && path == "/health/live") return Access::kOpen;
  if (method == "POST") {
    if (path == "/v1/admin/drain" || path == "/v1/cache/prune") return Access::kAdmin;
    if (path.rfind("/v1/encoders/", 0) == 0 && (ends_with(path, "/load") || ends_with(path, "/unload")))
      return Access::kAdmin;
  }
  return Access::kUser;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Every byte of b is visited whatever a holds; a's length enters only through the result.
  uint8_t diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) {
    const uint8_t x = a.empty() ? 0 : static_cast<uint8_t>(a[i % a.size()]);
    diff |= static_cast<uint8_t>(x ^ static_cast<uint8_t>(b[i]));
  }
  // The volatile read keeps the compiler from turning the loop into an early-exit comparison.
  volatile uint8_t result = diff;
  return result == 0;
}

void authorize(const AuthSettings &auth, Access access, const std::string &authorization) {
  if (access == Access::kOpen || !auth.enabled()) return;
  if (access == Access::kUser && auth.token.empty()) return; // only the admin routes are protected
  // RFC 6750: the scheme is case-insensitive, one space, then the token.
  std::string presented;
  if (authorization.size() > 7) {
    std::string scheme = authorization.substr(0, 7);
    for (char &c : scheme)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (scheme == "bearer ") presented = authorization.substr(7);
  }
  if (presented.empty()) {
    throw ServerError(Code::kUnauthorized, authorization.empty()
                                               ? "unauthorized: this server requires `Authorization: Bearer <token>`"
                                               : "unauthorized: the Authorization header must be `Bearer <token>`");
  }
  const bool is_admin = !auth.admin_token.empty() && constant_time_equal(presented, auth.admin_token);
  const bool is_user = !auth.token.empty() && constant_time_equal(presented, auth.token);
  if (access == Access::kUser) {
    if (is_user || is_admin) return;
    throw ServerError(Code::kUnauthorized, "unauthorized: wrong token");
  }
  if (is_admin) return;
  if (auth.admin_token.empty()) {
    throw ServerError(Code::kForbidden, "forbidden: admin routes are disabled: the server has no admin token "
                                        "(server.auth.admin_token_file or JIT_EMBEDDING_ADMIN_TOKEN)");
  }
  if (is_user) throw ServerError(Code::kForbidden, "forbidden: this route needs the admin token");
  throw ServerError(Code::kUnauthorized, "unauthorized: wrong token");
}

std::string read_token_file(const std::string &path, const std::string &what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ServerError(Code::kBadRequest, what + ": cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string token = strip_trailing_space(ss.str());
  check_token(token, what + " (" + path + ")");
  return token;
}

std::string token_from_env(const std::string &name, const std::string &what) {
  const char *v = std::getenv(name.c_str());
  if (v == nullptr) return "";
  const std::string token = strip_trailing_space(v);
  check_token(token, what + " ($" + name + ")");
  return token;
}

} // namespace jit::server
