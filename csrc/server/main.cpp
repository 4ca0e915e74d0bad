// jit-embedding-server: the standalone C++ embedding server (LibTorch encoders, no Python).
//
// This entry point parses the command line. The HTTP front end, engine and executors that it
// will start are built by the "Embedding server" issue; until then it answers --help and
// --version and refuses to start, saying why.
#include <cstdio>
#include <cstring>
#include <string>

namespace {

constexpr const char *kVersion = "0.1.0";

void print_help(const char *argv0) {
  std::printf("usage: %s --config server.yaml [options]\n"
              "\n"
              "Serves frozen encoders (AOTInductor .pt2 and TorchScript .pt artifacts made by\n"
              "`jit-embedding export`) over HTTP with dynamic batching. Frames use the wire format in\n"
              "docs/wire-format.md.\n"
              "\n"
              "options:\n"
              "  --config PATH   server configuration (YAML)\n"
              "  --help          show this message and exit\n"
              "  --version       print the version and exit\n",
              argv0);
}

} // namespace

int main(int argc, char **argv) {
  std::string config;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      print_help(argv[0]);
      return 0;
    }
    if (std::strcmp(argv[i], "--version") == 0) {
      std::printf("jit-embedding-server %s\n", kVersion);
      return 0;
    }
    if (std::strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
      config = argv[++i];
      continue;
    }
    std::fprintf(stderr, "%s: unknown argument '%s' (see --help)\n", argv[0], argv[i]);
    return 2;
  }
  std::fprintf(stderr, "%s: serving is not built into this version yet; see --help\n", argv[0]);
  return 1;
}
