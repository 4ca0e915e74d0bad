// Security of the HTTP front end: bearer tokens (server/auth.h) end to end through App on
// 127.0.0.1, the admin routes (load, unload, drain, cache prune), the header and deadline limits,
// loopback-only binding, TLS with a self-signed certificate made here, and handle_raw().
#include <gtest/gtest.h>

#include <httplib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "../engine/affine_executor.h"
#include "server/app.h"
#include "server/auth.h"

namespace jit::server {
namespace {

namespace fs = std::filesystem;
using namespace engine::testing_util;
using namespace std::chrono_literals;

const std::string kToken = "user-token-0123456789abcdef";
const std::string kAdmin = "admin-token-0123456789abcdef";

// A scratch folder: an artifact `m` (an AffineExecutor's scale) and whatever a test writes there.
struct Scratch {
  fs::path dir;
  Scratch() {
    std::string tmpl = (fs::temp_directory_path() / "jit-auth-XXXXXX").string();
    dir = fs::path(mkdtemp(tmpl.data()));
    fs::create_directories(dir / "m");
    std::ofstream(dir / "m" / "scale") << 2;
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string write(const std::string &name, const std::string &text) const {
    std::ofstream(dir / name) << text;
    return (dir / name).string();
  }
};

std::shared_ptr<executor::Executor> factory(const EncoderEntry &entry) {
  std::ifstream in(fs::path(entry.artifact) / "scale");
  float scale = 0;
  if (!(in >> scale)) throw executor::ExecutorError("no scale file in " + entry.artifact);
  return std::make_shared<AffineExecutor>(scale);
}

ServerConfig config_with(const Scratch &s, const std::string &server_yaml) {
  return parse_config("server: " + server_yaml + "\nencoders: [{name: m, artifact: m}]\n", s.dir.string());
}

ServerConfig authed(const Scratch &s) {
  s.write("token", kToken + "\n");
  s.write("admin", kAdmin);
  return config_with(s, "{threads: 8, auth: {token_file: token, admin_token_file: admin}}");
}

httplib::Headers bearer(const std::string &token) {
  return {{"Authorization", "Bearer " + token}};
}

std::string frame() {
  return codec::encode({input(2, 4, 1.0f).view()}, "", {});
}

TEST(Auth, ConstantTimeEqualComparesWholeStrings) {
  EXPECT_TRUE(constant_time_equal("secret-value", "secret-value"));
  EXPECT_FALSE(constant_time_equal("secret-valuE", "secret-value"));
  EXPECT_FALSE(constant_time_equal("secret", "secret-value"));         // a prefix
  EXPECT_FALSE(constant_time_equal("secret-value-2", "secret-value")); // longer
  EXPECT_FALSE(constant_time_equal("", "secret-value"));
  EXPECT_TRUE(constant_time_equal("", ""));
}

TEST(Auth, RouteLevels) {
  EXPECT_EQ(route_access("GET", "/health/live"), Access::kOpen);
  EXPECT_EQ(route_access("HEAD", "/health/live"), Access::kOpen); // probes that send HEAD (load balancers)
  EXPECT_EQ(route_access("HEAD", "/health/ready"), Access::kUser);
  EXPECT_EQ(route_access("GET", "/health/ready"), Access::kUser);
  EXPECT_EQ(route_access("GET", "/metrics"), Access::kUser);
  EXPECT_EQ(route_access("POST", "/v1/encode/m"), Access::kUser);
  EXPECT_EQ(route_access("POST", "/v1/cache/lookup"), Access::kUser);
  EXPECT_EQ(route_access("GET", "/no/such/route"), Access::kUser);
  EXPECT_EQ(route_access("POST", "/v1/encoders/m/load"), Access::kAdmin);
  EXPECT_EQ(route_access("POST", "/v1/encoders/m/unload"), Access::kAdmin);
  EXPECT_EQ(route_access("POST", "/v1/admin/drain"), Access::kAdmin);
  EXPECT_EQ(route_access("POST", "/v1/cache/prune"), Access::kAdmin);
}

TEST(Auth, AuthorizeMatrix) {
  const AuthSettings both{kToken, kAdmin};
  const auto code = [](const AuthSettings &a, Access access, const std::string &header) {
    try {
      authorize(a, access, header);
      return 200;
    } catch (const ServerError &e) {
      return http_status(e);
    }
  };
  EXPECT_EQ(code(both, Access::kOpen, ""), 200);
  EXPECT_EQ(code(both, Access::kUser, ""), 401);
  EXPECT_EQ(code(both, Access::kUser, "Basic " + kToken), 401);
  EXPECT_EQ(code(both, Access::kUser, "Bearer wrong-token-0123456789"), 401);
  EXPECT_EQ(code(both, Access::kUser, "Bearer " + kToken), 200);
  EXPECT_EQ(code(both, Access::kUser, "bearer " + kToken), 200); // the scheme is case-insensitive
  EXPECT_EQ(code(both, Access::kUser, "Bearer " + kAdmin), 200);
  EXPECT_EQ(code(both, Access::kAdmin, "Bearer " + kToken), 403);
  EXPECT_EQ(code(both, Access::kAdmin, "Bearer " + kAdmin), 200);
  EXPECT_EQ(code(both, Access::kAdmin, ""), 401);
  // A token but no admin token: administration is closed, not open.
  EXPECT_EQ(code(AuthSettings{kToken, ""}, Access::kAdmin, "Bearer " + kToken), 403);
  // An admin token alone protects only the admin routes.
  EXPECT_EQ(code(AuthSettings{"", kAdmin}, Access::kUser, ""), 200);
  EXPECT_EQ(code(AuthSettings{"", kAdmin}, Access::kAdmin, ""), 401);
  EXPECT_EQ(code(AuthSettings{}, Access::kAdmin, ""), 200);
}

TEST(Auth, TokensFromFilesAndEnvironmentAreChecked) {
  Scratch s;
  EXPECT_EQ(read_token_file(s.write("t", kToken + "\r\n"), "x"), kToken);
  EXPECT_THROW(read_token_file(s.write("short", "abc"), "x"), ServerError);
  EXPECT_THROW(read_token_file(s.write("space", "abc def 0123456789abcdef"), "x"), ServerError);
  EXPECT_THROW(read_token_file(s.write("empty", "\n"), "x"), ServerError);
  try {
    read_token_file((s.dir / "missing").string(), "server.auth.token_file");
    FAIL() << "no error for a missing file";
  } catch (const ServerError &e) {
    EXPECT_NE(std::string(e.what()).find("server.auth.token_file: cannot read"), std::string::npos) << e.what();
  }
  ::setenv("JIT_TEST_TOKEN_ENV", kToken.c_str(), 1);
  EXPECT_EQ(token_from_env("JIT_TEST_TOKEN_ENV", "x"), kToken);
  ::setenv("JIT_TEST_TOKEN_ENV", "short", 1);
  EXPECT_THROW(token_from_env("JIT_TEST_TOKEN_ENV", "x"), ServerError);
  ::unsetenv("JIT_TEST_TOKEN_ENV");
  EXPECT_EQ(token_from_env("JIT_TEST_TOKEN_ENV", "x"), "");
}

TEST(Auth, ConfigKeysParseAndRefuseMistakes) {
  Scratch s;
  ServerConfig c = authed(s);
  EXPECT_EQ(c.server.auth.token, kToken);
  EXPECT_EQ(c.server.auth.admin_token, kAdmin);
  ::setenv("JIT_TEST_ADMIN_ENV", kAdmin.c_str(), 1);
  c = config_with(s, "{auth: {admin_token_env: JIT_TEST_ADMIN_ENV}, allow_public: true, max_header_bytes: 4096, "
                     "max_deadline_s: 60, tls: {cert_file: c.pem, key_file: k.pem}}");
  ::unsetenv("JIT_TEST_ADMIN_ENV");
  EXPECT_EQ(c.server.auth.token, "");
  EXPECT_EQ(c.server.auth.admin_token, kAdmin);
  EXPECT_TRUE(c.server.allow_public);
  EXPECT_EQ(c.server.max_header_bytes, 4096u);
  EXPECT_EQ(c.server.max_deadline, std::chrono::seconds(60));
  EXPECT_EQ(c.server.tls_cert_file, (s.dir / "c.pem").string());
  const auto message = [&](const std::string &yaml) {
    try {
      config_with(s, yaml);
      return std::string("no error");
    } catch (const ServerError &e) {
      EXPECT_EQ(http_status(e), 400);
      return std::string(e.what());
    }
  };
  s.write("same", kToken);
  EXPECT_NE(message("{auth: {token_file: token, token_env: X}}").find("not both"), std::string::npos);
  EXPECT_NE(message("{auth: {token_file: token, admin_token_file: same}}").find("must differ"), std::string::npos);
  EXPECT_NE(message("{tls: {cert_file: c.pem}}").find("needs both"), std::string::npos);
  EXPECT_NE(message("{max_header_bytes: 10}").find("server.max_header_bytes"), std::string::npos);
  EXPECT_NE(message("{auth: {tokenfile: x}}").find("unknown key"), std::string::npos);
}

TEST(Auth, EveryRouteButLivenessNeedsTheTokenOverHttp) {
  Scratch s;
  App app(authed(s), factory);
  const int port = app.start();
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(30s);

  EXPECT_EQ(c.Get("/health/live")->status, 200);
  for (const char *path : {"/health/ready", "/metrics", "/v1/encoders", "/v1/cache/stats", "/nope"}) {
    auto res = c.Get(path);
    ASSERT_TRUE(res) << path;
    EXPECT_EQ(res->status, 401) << path;
    EXPECT_EQ(res->get_header_value("WWW-Authenticate"), "Bearer realm=\"jit-embedding\"") << path;
    EXPECT_NE(res->body.find("\"code\": \"unauthorized\""), std::string::npos) << res->body;
    EXPECT_EQ(c.Get(path, bearer("wrong-token-0123456789abcdef"))->status, 401) << path;
  }
  EXPECT_EQ(c.Get("/health/ready", bearer(kToken))->status, 200);
  EXPECT_EQ(c.Get("/metrics", bearer(kAdmin))->status, 200);

  // A refused upload is not read: the answer closes the connection instead.
  auto refused = c.Post("/v1/encode/m", frame(), "application/octet-stream");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 401);
  EXPECT_EQ(refused->get_header_value("Connection"), "close");
  auto ok = c.Post("/v1/encode/m", bearer(kToken), frame(), "application/octet-stream");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;

  // Admin routes: the plain token is not enough.
  EXPECT_EQ(c.Post("/v1/encoders/m/load", bearer(kToken), "{}", "application/json")->status, 403);
  EXPECT_EQ(c.Post("/v1/cache/prune", bearer(kToken), "{\"stale\": true}", "application/json")->status, 403);
  EXPECT_EQ(c.Post("/v1/encoders/m/load", bearer(kAdmin), "{}", "application/json")->status, 200);
  EXPECT_EQ(c.Post("/v1/cache/prune", bearer(kAdmin), "{\"stale\": true}", "application/json")->status, 200);
  auto failures = c.Get("/metrics", bearer(kToken));
  EXPECT_NE(failures->body.find("jit_http_failures_total{reason=\"unauthorized\"}"), std::string::npos);
}

TEST(Auth, UnloadAndDrainAreAdminRoutes) {
  Scratch s;
  App app(authed(s), factory);
  const int port = app.start();
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(30s);
  EXPECT_EQ(c.Post("/v1/encoders/m/unload", bearer(kToken), "", "application/json")->status, 403);
  auto unloaded = c.Post("/v1/encoders/m/unload", bearer(kAdmin), "", "application/json");
  ASSERT_TRUE(unloaded);
  EXPECT_EQ(unloaded->status, 200) << unloaded->body;
  EXPECT_NE(unloaded->body.find("\"unloaded_version\": \"scale=2.000000\""), std::string::npos) << unloaded->body;
  EXPECT_EQ(c.Post("/v1/encode/m", bearer(kToken), frame(), "application/octet-stream")->status, 404);
  EXPECT_EQ(c.Post("/v1/encoders/m/unload", bearer(kAdmin), "", "application/json")->status, 404);
  // Its series leave /metrics (a dashboard would show a dead encoder otherwise)...
  EXPECT_EQ(c.Get("/metrics", bearer(kToken))->body.find("encoder=\"m\""), std::string::npos);
  // ...and loading it again brings it back, series included.
  EXPECT_EQ(c.Post("/v1/encoders/m/load", bearer(kAdmin), "{\"artifact\": \"m\"}", "application/json")->status, 200);
  EXPECT_EQ(c.Post("/v1/encode/m", bearer(kToken), frame(), "application/octet-stream")->status, 200);
  EXPECT_NE(c.Get("/metrics", bearer(kToken))->body.find("jit_requests_total{encoder=\"m\",outcome=\"ok\"}"),
            std::string::npos);

  EXPECT_EQ(c.Post("/v1/admin/drain", bearer(kToken), "", "application/json")->status, 403);
  auto drain = c.Post("/v1/admin/drain", bearer(kAdmin), "", "application/json");
  ASSERT_TRUE(drain);
  EXPECT_EQ(drain->status, 202);
  app.wait(); // the drain thread stops the listener once in-flight work is done
  EXPECT_FALSE(httplib::Client("127.0.0.1", port).Get("/health/live"));
}

TEST(Auth, HeaderAndDeadlineLimitsAnswer4xx) {
  Scratch s;
  App app(config_with(s, "{threads: 4, max_header_bytes: 1024, max_deadline_s: 60}"), factory);
  const int port = app.start();
  httplib::Client c("127.0.0.1", port);
  auto big = c.Get("/health/ready", {{"X-Padding", std::string(2000, 'a')}});
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 431);
  EXPECT_NE(big->body.find("max_header_bytes (1024)"), std::string::npos) << big->body;
  const auto now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  auto far = c.Post("/v1/encode/m", {{"X-Deadline-Ms", std::to_string(now_ms + 3600 * 1000)}}, frame(),
                    "application/octet-stream");
  ASSERT_TRUE(far);
  EXPECT_EQ(far->status, 400);
  EXPECT_NE(far->body.find("max_deadline_s (60)"), std::string::npos) << far->body;
  auto near = c.Post("/v1/encode/m", {{"X-Deadline-Ms", std::to_string(now_ms + 30 * 1000)}}, frame(),
                     "application/octet-stream");
  EXPECT_EQ(near->status, 200);
}

TEST(Auth, PublicAddressesMustBeAllowedExplicitly) {
  Scratch s;
  App refused(config_with(s, "{host: 0.0.0.0}"), factory);
  try {
    refused.start();
    FAIL() << "0.0.0.0 was bound without allow_public";
  } catch (const std::runtime_error &e) {
    EXPECT_NE(std::string(e.what()).find("allow_public"), std::string::npos) << e.what();
  }
  App allowed(config_with(s, "{host: 0.0.0.0, allow_public: true}"), factory);
  const int port = allowed.start();
  EXPECT_EQ(httplib::Client("127.0.0.1", port).Get("/health/live")->status, 200);
  App localhost(config_with(s, "{host: localhost}"), factory);
  EXPECT_GT(localhost.start(), 0);
}

TEST(Auth, TlsServesHttpsOnlyWithTheConfiguredCertificate) {
  Scratch s;
  const fs::path cert = s.dir / "cert.pem", key = s.dir / "key.pem";
  const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                          "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
                          key.string() + " -out " + cert.string() + " >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "the openssl command line tool is not installed";
  ServerConfig cfg = authed(s);
  cfg.server.tls_cert_file = cert.string();
  cfg.server.tls_key_file = key.string();
  App app(std::move(cfg), factory);
  const int port = app.start();

  httplib::SSLClient tls("localhost", port);
  tls.set_ca_cert_path(cert.string().c_str());
  tls.enable_server_certificate_verification(true);
  auto res = tls.Post("/v1/encode/m", bearer(kToken), frame(), "application/octet-stream");
  ASSERT_TRUE(res) << "TLS request failed: " << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  // Large bodies go through httplib under TLS (the direct socket path would read ciphertext).
  const std::string big = codec::encode({input(32, 8192, 1.0f).view()}, "", {});
  ASSERT_GE(big.size(), size_t{1} << 20);
  auto big_res = tls.Post("/v1/encode/m", bearer(kToken), big, "application/octet-stream");
  ASSERT_TRUE(big_res);
  EXPECT_EQ(big_res->status, 200) << big_res->body;

  // Plain HTTP to the TLS port gets no HTTP answer; a client that does not trust the
  // certificate refuses it.
  httplib::Client plain("127.0.0.1", port);
  plain.set_read_timeout(5s);
  auto p = plain.Get("/health/live");
  EXPECT_TRUE(!p || p->status >= 400);
  httplib::SSLClient untrusting("localhost", port);
  untrusting.set_ca_cert_path((s.dir / "missing.pem").string().c_str());
  untrusting.enable_server_certificate_verification(true);
  EXPECT_FALSE(untrusting.Get("/health/live"));

  ServerConfig bad = authed(s);
  bad.server.tls_cert_file = s.write("junk.pem", "not a certificate");
  bad.server.tls_key_file = key.string();
  EXPECT_THROW(App(std::move(bad), factory), std::runtime_error);
}

TEST(Auth, HandleRawRunsTheSameRoutesWithoutASocket) {
  Scratch s;
  App app(authed(s), factory);
  const std::string live = app.http().handle_raw("GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(live.rfind("HTTP/1.1 200", 0), 0u) << live;
  const std::string refused = app.http().handle_raw("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(refused.rfind("HTTP/1.1 401", 0), 0u) << refused;
  const std::string body = frame();
  const std::string encode =
      app.http().handle_raw("POST /v1/encode/m HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + kToken +
                            "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
  // Not started: the encoder is not loaded yet, so the route answers 404 after auth and decoding.
  EXPECT_EQ(encode.rfind("HTTP/1.1 404", 0), 0u) << encode.substr(0, 200);
  EXPECT_EQ(app.http().handle_raw("garbage\r\n\r\n").rfind("HTTP/1.1 400", 0), 0u);
}

} // namespace
} // namespace jit::server
