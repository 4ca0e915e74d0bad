// jit-embedding-server: the standalone C++ embedding server (no Python).
//
// Parses the command line and the --config file (server/config.h), builds the App (server/app.h)
// with a LibTorch executor factory, loads every configured encoder, and serves until SIGTERM or
// SIGINT, which start a graceful drain; the process then exits 0. Flags given on the command line
// override the config's `server:` keys. Without --config the server starts with no encoders, and
// POST /v1/encoders/{name}/load can add them only from inside --artifact-root.
//
// Exit codes: 0 after a drain, 2 for a bad command line, config or encoder load, 1 for anything
// else (the address cannot be bound, say).
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include <memory>
#include <optional>

#include "server/app.h"
#include "server/artifact_factory.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/errors.h"

namespace {

constexpr const char *kVersion = "0.1.0";

void print_help(const char *argv0) {
  const jit::server::ServerSettings d;
  std::printf("usage: %s [options]\n"
              "\n"
              "Serves frozen encoders over HTTP with dynamic batching. Frames use the wire format in\n"
              "docs/wire-format.md. SIGTERM or SIGINT drains in-flight requests, then exits 0.\n"
              "Flags override the --config file's server settings.\n"
              "\n"
              "options:\n"
              "  --config PATH          server configuration (YAML: server settings and encoders)\n"
              "  --host HOST            address to listen on (default %s)\n"
              "  --port PORT            port to listen on; 0 picks a free one (default %d)\n"
              "  --threads N            worker threads = keep-alive connections served at once (default %zu)\n"
              "  --max-body-bytes N     larger request bodies answer 413 (default %zu)\n"
              "  --artifact-root PATH   the folder POST /v1/encoders/{name}/load may load artifacts from\n"
              "                         (default: the config file's folder; without --config, loading is off)\n"
              "  --port-file PATH       write the bound port (decimal, newline) to PATH once listening\n"
              "  --public               allow a --host that is not a loopback address\n"
              "  --auth-token-file PATH bearer token every route but /health/live requires (a file, never a\n"
              "                         flag value; default: $JIT_EMBEDDING_AUTH_TOKEN when set)\n"
              "  --admin-token-file PATH  token the admin routes require (load, unload, drain, cache prune;\n"
              "                         default: $JIT_EMBEDDING_ADMIN_TOKEN when set)\n"
              "  --tls-cert-file PATH   serve HTTPS with this PEM certificate (needs --tls-key-file)\n"
              "  --tls-key-file PATH    the certificate's PEM private key\n"
              "  --help                 show this message and exit\n"
              "  --version              print the version and exit\n",
              argv0, d.host.c_str(), d.port, d.threads, d.max_body_bytes);
}

// Self-pipe: the signal handler only write()s one byte (async-signal-safe); main reads it and does
// the real work. A second signal while draining ends the process at once, for an operator who
// does not want to wait out the grace period.
int g_signal_pipe[2] = {-1, -1};
volatile std::sig_atomic_t g_signals = 0;

extern "C" void on_stop_signal(int) {
  const int saved_errno = errno;
  g_signals = g_signals + 1;
  if (g_signals > 1) _exit(1);
  const char byte = 1;
  ssize_t ignored = write(g_signal_pipe[1], &byte, 1);
  (void)ignored;
  errno = saved_errno;
}

bool install_signal_handlers() {
  if (pipe(g_signal_pipe) != 0) return false;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  if (sigaction(SIGTERM, &sa, nullptr) != 0 || sigaction(SIGINT, &sa, nullptr) != 0) return false;
  // A client vanishing mid-response must not kill the server.
  std::signal(SIGPIPE, SIG_IGN);
  return true;
}

// Parses a non-negative decimal integer flag value; exits 2 with a message when it is not one.
unsigned long long parse_count(const char *argv0, const char *flag, const char *text, unsigned long long max) {
  char *end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (text[0] == '\0' || text[0] == '-' || *end != '\0' || errno != 0 || v > max) {
    std::fprintf(stderr, "%s: %s needs an integer in [0, %llu], got '%s'\n", argv0, flag, max, text);
    std::exit(2);
  }
  return v;
}

// Writes the port to a temporary name and renames it, so a reader polling for the file never sees
// it half written.
bool write_port_file(const std::string &path, int port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << "\n";
    if (!out.good()) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

// Flags as given; each one set overrides the config's value.
struct Overrides {
  std::optional<std::string> host;
  std::optional<int> port;
  std::optional<size_t> threads;
  std::optional<size_t> max_body_bytes;
  std::optional<std::string> artifact_root;
  bool allow_public = false;
  std::optional<std::string> auth_token_file;
  std::optional<std::string> admin_token_file;
  std::optional<std::string> tls_cert_file;
  std::optional<std::string> tls_key_file;
};

} // namespace

int main(int argc, char **argv) {
  Overrides flags;
  std::string config_path;
  std::string port_file;
  for (int i = 1; i < argc; ++i) {
    const char *arg = argv[i];
    if (std::strcmp(arg, "--help") == 0 || std::strcmp(arg, "-h") == 0) {
      print_help(argv[0]);
      return 0;
    }
    if (std::strcmp(arg, "--version") == 0) {
      std::printf("jit-embedding-server %s\n", kVersion);
      return 0;
    }
    const bool has_value = i + 1 < argc;
    if (std::strcmp(arg, "--config") == 0 && has_value) {
      config_path = argv[++i];
    } else if (std::strcmp(arg, "--host") == 0 && has_value) {
      flags.host = argv[++i];
    } else if (std::strcmp(arg, "--port") == 0 && has_value) {
      flags.port = static_cast<int>(parse_count(argv[0], arg, argv[++i], 65535));
    } else if (std::strcmp(arg, "--threads") == 0 && has_value) {
      flags.threads = parse_count(argv[0], arg, argv[++i], 65536);
      if (*flags.threads == 0) {
        std::fprintf(stderr, "%s: --threads must be at least 1\n", argv[0]);
        return 2;
      }
    } else if (std::strcmp(arg, "--max-body-bytes") == 0 && has_value) {
      flags.max_body_bytes = parse_count(argv[0], arg, argv[++i], ~0ull);
    } else if (std::strcmp(arg, "--artifact-root") == 0 && has_value) {
      flags.artifact_root = argv[++i];
    } else if (std::strcmp(arg, "--port-file") == 0 && has_value) {
      port_file = argv[++i];
    } else if (std::strcmp(arg, "--public") == 0) {
      flags.allow_public = true;
    } else if (std::strcmp(arg, "--auth-token-file") == 0 && has_value) {
      flags.auth_token_file = argv[++i];
    } else if (std::strcmp(arg, "--admin-token-file") == 0 && has_value) {
      flags.admin_token_file = argv[++i];
    } else if (std::strcmp(arg, "--tls-cert-file") == 0 && has_value) {
      flags.tls_cert_file = argv[++i];
    } else if (std::strcmp(arg, "--tls-key-file") == 0 && has_value) {
      flags.tls_key_file = argv[++i];
    } else {
      std::fprintf(stderr, "%s: unknown argument or missing value '%s' (see --help)\n", argv[0], arg);
      return 2;
    }
  }

  jit::server::ServerConfig config;
  try {
    if (config_path.empty()) {
      std::fprintf(stderr, "%s: no --config given: serving with no encoders\n", argv[0]);
      config = jit::server::parse_config("", std::filesystem::current_path().string()); // defaults and $JIT_* tokens
    } else {
      config = jit::server::load_config(config_path);
    }
  } catch (const jit::server::ServerError &e) {
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 2;
  }
  if (flags.host) config.server.host = *flags.host;
  if (flags.port) config.server.port = *flags.port;
  if (flags.threads) config.server.threads = *flags.threads;
  if (flags.max_body_bytes) config.server.max_body_bytes = *flags.max_body_bytes;
  if (flags.allow_public) config.server.allow_public = true;
  if (flags.tls_cert_file) config.server.tls_cert_file = *flags.tls_cert_file;
  if (flags.tls_key_file) config.server.tls_key_file = *flags.tls_key_file;
  try {
    if (flags.auth_token_file)
      config.server.auth.token = jit::server::read_token_file(*flags.auth_token_file, "--auth-token-file");
    if (flags.admin_token_file)
      config.server.auth.admin_token = jit::server::read_token_file(*flags.admin_token_file, "--admin-token-file");
  } catch (const jit::server::ServerError &e) {
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 2;
  }
  if (flags.artifact_root) {
    config.artifact_root = std::filesystem::absolute(*flags.artifact_root).lexically_normal().string();
  } else if (config_path.empty()) {
    config.artifact_root.clear(); // no config and no flag: no root, so no loading by path
  }
  // Refused before anything is loaded, so that one entry's problem is not found after minutes of
  // loading the others.
  for (size_t i = 0; i < config.encoders.size(); ++i) {
    if (!config.encoders[i].factory.empty()) {
      std::fprintf(stderr,
                   "%s: %s: encoders[%zu] (%s): factory: Python factories need `jit-embedding serve`; "
                   "jit-embedding-server loads exported artifacts (artifact: <folder>) only\n",
                   argv[0], config_path.c_str(), i, config.encoders[i].name.c_str());
      return 2;
    }
#ifndef JIT_WITH_TORCH_EXECUTOR
    std::fprintf(stderr, "%s: %s: encoders[%zu] (%s): this jit-embedding-server was built without LibTorch\n", argv[0],
                 config_path.c_str(), i, config.encoders[i].name.c_str());
    return 2;
#endif
  }

  if (!install_signal_handlers()) {
    std::fprintf(stderr, "%s: cannot install signal handlers: %s\n", argv[0], std::strerror(errno));
    return 1;
  }

  const std::string host = config.server.host;
  const bool open_to_all = config.server.allow_public && !config.server.auth.enabled();
  int port = 0;
  std::unique_ptr<jit::server::App> app_holder;
  try {
    app_holder = std::make_unique<jit::server::App>(std::move(config), jit::server::load_artifact_executor);
  } catch (const std::exception &e) {
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 2;
  }
  jit::server::App &app = *app_holder;
  // POST /v1/admin/drain takes the signal path, so both end in the same drain below.
  app.on_drain_request([] {
    const char byte = 'd';
    ssize_t ignored = write(g_signal_pipe[1], &byte, 1);
    (void)ignored;
  });
  try {
    port = app.start();
  } catch (const jit::server::ServerError &e) {
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 2;
  } catch (const std::exception &e) {
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 1;
  }
  if (!port_file.empty() && !write_port_file(port_file, port)) {
    std::fprintf(stderr, "%s: cannot write --port-file %s\n", argv[0], port_file.c_str());
    return 1;
  }
  std::fprintf(stderr, "%s: listening on %s:%d\n", argv[0], host.c_str(), port);
  if (open_to_all) {
    std::fprintf(stderr,
                 "%s: warning: serving a public address with no auth token: anyone who can reach it may use "
                 "it (docs/security.md)\n",
                 argv[0]);
  }

  // Block until a stop signal arrives. EINTR cannot loop forever: SA_RESTART, and a signal always
  // leaves a byte behind.
  char byte;
  while (read(g_signal_pipe[0], &byte, 1) < 0 && errno == EINTR) {
  }
  std::fprintf(stderr, "%s: draining\n", argv[0]);
  const bool clean = app.begin_drain();
  app.wait();
  std::fprintf(stderr, "%s: stopped%s\n", argv[0], clean ? "" : " (grace period ran out with requests in flight)");
  return 0;
}
