// Who may call what: bearer tokens for the HTTP front end, and where the tokens come from.
//
// Two tokens, both optional (docs/security.md):
//   token        when set, every route but GET /health/live needs `Authorization: Bearer <token>`
//                (the admin token is accepted there too). A missing or wrong token answers 401
//                with `WWW-Authenticate: Bearer`.
//   admin_token  the admin routes (load, unload, drain, cache prune) need it. A missing or wrong
//                one answers 401, the plain token on an admin route answers 403. With a token but
//                no admin token the admin routes are closed (403): configuring authentication
//                must not leave administration open.
// With neither set nothing is checked: the default, safe only because the server binds to
// loopback unless allow_public is set (server/config.h).
//
// Tokens are secrets: they come from a file or an environment variable, never from a command-line
// argument (which every local user can read in /proc/<pid>/cmdline). They are compared in
// constant time, so the time a wrong guess takes says nothing about how much of it was right.
#pragma once

#include <string>
#include <string_view>

namespace jit::server {

// The environment variables read when the config names no token file or variable.
inline constexpr const char *kAuthTokenEnv = "JIT_EMBEDDING_AUTH_TOKEN";
inline constexpr const char *kAdminTokenEnv = "JIT_EMBEDDING_ADMIN_TOKEN";
// Shorter tokens are refused: a token is a password that cannot be rate-limited per user.
inline constexpr size_t kMinTokenBytes = 16;

struct AuthSettings {
  std::string token;       // "": no authentication
  std::string admin_token; // "": admin routes need `token` to be unset (see the file comment)
  bool enabled() const { return !token.empty() || !admin_token.empty(); }
};

// What a route needs.
enum class Access {
  kOpen,  // GET /health/live: orchestrators probe it without credentials
  kUser,  // everything else that is not admin
  kAdmin, // changes what or whether the server serves, or deletes data
};

// The access level of a request, from its method and path. Unknown paths are kUser, so an
// unauthenticated caller learns nothing, not even which routes exist.
Access route_access(const std::string &method, const std::string &path);

// Checks `authorization` (the Authorization header's value, "" when absent) for a route needing
// `access`. Throws ServerError: kUnauthorized (401) for a missing, malformed or wrong token;
// kForbidden (403) for a valid plain token on an admin route, or any admin route while a token
// but no admin token is configured.
void authorize(const AuthSettings &auth, Access access, const std::string &authorization);

// True when a == b, in time that depends only on b's length (b is the secret).
bool constant_time_equal(std::string_view a, std::string_view b);

// A token from a file: its contents without the trailing newline/whitespace. `what` names the
// setting in errors ("server.auth.token_file"). Throws ServerError(kBadRequest) when the file
// cannot be read, is empty, holds whitespace or control bytes inside the token, or the token is
// shorter than kMinTokenBytes.
std::string read_token_file(const std::string &path, const std::string &what);

// A token from the environment variable `name`: "" when unset; otherwise checked as
// read_token_file() checks a file's contents.
std::string token_from_env(const std::string &name, const std::string &what);

} // namespace jit::server
