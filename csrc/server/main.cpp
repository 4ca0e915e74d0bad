// jit-embedding-server: the standalone C++ embedding server (no Python).
//
// Parses the command line, starts the HTTP front end (server/http_server.h) and serves until
// SIGTERM or SIGINT, which start a graceful drain; the process then exits 0. Encoders come from
// --config, which is not supported yet: without it the server starts with no encoders, so every
// POST /v1/encode answers 404 after validating its frame.
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <string>
#include <unistd.h>

#include "common/metrics.h"
#include "server/http_server.h"

namespace {

constexpr const char *kVersion = "0.1.0";

void print_help(const char *argv0) {
  const jit::server::ServerSettings d;
  std::printf("usage: %s [options]\n"
              "\n"
              "Serves frozen encoders over HTTP with dynamic batching. Frames use the wire format in\n"
              "docs/wire-format.md. SIGTERM or SIGINT drains in-flight requests, then exits 0.\n"
              "\n"
              "options:\n"
              "  --config PATH          server configuration (YAML); not supported yet\n"
              "  --host HOST            address to listen on (default %s)\n"
              "  --port PORT            port to listen on; 0 picks a free one (default %d)\n"
              "  --threads N            worker threads = keep-alive connections served at once (default %zu)\n"
              "  --max-body-bytes N     larger request bodies answer 413 (default %zu)\n"
              "  --port-file PATH       write the bound port (decimal, newline) to PATH once listening\n"
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

} // namespace

int main(int argc, char **argv) {
  jit::server::ServerSettings settings;
  std::string config;
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
      config = argv[++i];
    } else if (std::strcmp(arg, "--host") == 0 && has_value) {
      settings.host = argv[++i];
    } else if (std::strcmp(arg, "--port") == 0 && has_value) {
      settings.port = static_cast<int>(parse_count(argv[0], arg, argv[++i], 65535));
    } else if (std::strcmp(arg, "--threads") == 0 && has_value) {
      settings.threads = parse_count(argv[0], arg, argv[++i], 65536);
      if (settings.threads == 0) {
        std::fprintf(stderr, "%s: --threads must be at least 1\n", argv[0]);
        return 2;
      }
    } else if (std::strcmp(arg, "--max-body-bytes") == 0 && has_value) {
      settings.max_body_bytes = parse_count(argv[0], arg, argv[++i], ~0ull);
    } else if (std::strcmp(arg, "--port-file") == 0 && has_value) {
      port_file = argv[++i];
    } else {
      std::fprintf(stderr, "%s: unknown argument or missing value '%s' (see --help)\n", argv[0], arg);
      return 2;
    }
  }
  if (!config.empty()) {
    std::fprintf(stderr,
                 "%s: --config is not supported yet (encoders cannot be loaded in this version); "
                 "run without it to serve with no encoders\n",
                 argv[0]);
    return 2;
  }
  std::fprintf(stderr, "%s: no --config given: serving with no encoders\n", argv[0]);

  if (!install_signal_handlers()) {
    std::fprintf(stderr, "%s: cannot install signal handlers: %s\n", argv[0], std::strerror(errno));
    return 1;
  }

  jit::metrics::Registry registry;
  jit::server::HttpServer server(settings, registry, jit::server::ServerHooks{});
  int port = 0;
  try {
    port = server.start();
  } catch (const std::exception &e) {
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 1;
  }
  if (!port_file.empty() && !write_port_file(port_file, port)) {
    std::fprintf(stderr, "%s: cannot write --port-file %s\n", argv[0], port_file.c_str());
    return 1;
  }
  server.set_ready(true);
  std::fprintf(stderr, "%s: listening on %s:%d\n", argv[0], settings.host.c_str(), port);

  // Block until a stop signal arrives. EINTR cannot loop forever: SA_RESTART, and a signal always
  // leaves a byte behind.
  char byte;
  while (read(g_signal_pipe[0], &byte, 1) < 0 && errno == EINTR) {
  }
  std::fprintf(stderr, "%s: draining\n", argv[0]);
  const bool clean = server.begin_drain();
  server.wait();
  std::fprintf(stderr, "%s: stopped%s\n", argv[0], clean ? "" : " (grace period ran out with requests in flight)");
  return 0;
}
