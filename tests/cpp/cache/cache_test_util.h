// Helpers of the cache tests: entries, temporary directories and a real redis-server on a free port.
#pragma once

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cache/cache.h"

namespace jit::cache::testing {

// A float32 output of `n` floats, all `value`, and the key of a sample key `name`.
struct Sample {
  CacheKey key;
  std::vector<float> data;
  Entry entry;
};

inline Sample make_sample(const std::string &name, size_t n = 64, float value = 1.0f, const std::string &version = "v1",
                          int64_t created_ms = 0) {
  Sample s;
  s.key = CacheKey::for_sample_key("enc", version, name);
  s.data.assign(n, value);
  TensorView v{"emb", DType::kFloat32, {static_cast<int64_t>(n)}, s.data.data(), n * sizeof(float)};
  s.entry = Entry::make(s.key, "enc", version, {v}, created_ms);
  return s;
}

inline float first_float(const Entry &e) {
  return static_cast<const float *>(e.tensors().at(0).data)[0];
}

// A fresh directory under the system temp dir, removed with the object.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "jit-cache-test-XXXXXX").string();
    path = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

inline std::string find_redis_server() {
  const char *env_path = std::getenv("PATH");
  std::string paths = env_path ? env_path : "/usr/bin:/usr/local/bin";
  paths += ":/usr/bin:/usr/sbin";
  size_t start = 0;
  while (start <= paths.size()) {
    size_t end = paths.find(':', start);
    if (end == std::string::npos) end = paths.size();
    std::string candidate = paths.substr(start, end - start) + "/redis-server";
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return "";
}

inline int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

inline bool port_open(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// A real redis-server without persistence on 127.0.0.1:port, started and stopped by the test.
class RedisServer {
public:
  RedisServer(std::string binary, int port) : binary_(std::move(binary)), port_(port) {}
  ~RedisServer() { kill_now(); }

  bool start() {
    pid_ = fork();
    if (pid_ == 0) {
      int devnull = open("/dev/null", O_WRONLY);
      dup2(devnull, 1);
      dup2(devnull, 2);
      std::string port = std::to_string(port_);
      execl(binary_.c_str(), binary_.c_str(), "--port", port.c_str(), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--loglevel", "warning", static_cast<char *>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 200; ++i) {
      if (port_open(port_)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    return false;
  }

  void kill_now() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }

  int port() const { return port_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_) + "/0"; }

private:
  std::string binary_;
  int port_;
  pid_t pid_ = -1;
};

} // namespace jit::cache::testing
