// `jit-embedding serve`: the C++ App (config -> engine -> HTTP) hosted by a Python process.
//
// Exported artifacts load exactly as in jit-embedding-server (server/artifact_factory.h). A
// `factory:` entry is built by a Python callable, `loader(entry: dict) -> (runner, spec, version)`
// (jit_embedding.serve.load_factory), and runs as a PyExecutor. Every blocking call here releases
// the GIL, so HTTP, decoding, batching and encoding never wait for Python; only a Python
// encoder's forward call takes it.
#pragma once

#include <pybind11/pybind11.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "server/app.h"

namespace jit::python {

namespace py = pybind11;

class PyApp {
public:
  // Reads the config at `config_path` (ServerError, raised as ValueError, for a bad one); `host`
  // and `port`, when given, override its server keys. `loader` builds Python factory entries.
  // host/port and the security flags override the config (`jit-embedding serve --public`, token
  // files, TLS files; server/auth.h). Throws ValueError (ServerError) for a bad config or token.
  PyApp(const std::string &config_path, py::object loader, std::optional<std::string> host, std::optional<int> port,
        bool allow_public, std::optional<std::string> auth_token_file, std::optional<std::string> admin_token_file,
        std::optional<std::string> tls_cert_file, std::optional<std::string> tls_key_file);
  // Drains (without waiting for the grace period to pass if nothing is in flight) and joins.
  ~PyApp();

  // Loads every encoder and starts serving; returns the bound port. Raises ValueError naming the
  // encoder when one fails to load.
  int start();
  // Stops admitting, finishes in-flight requests within the grace period, stops the engine.
  // Returns whether everything in flight finished in time.
  bool drain();
  // Waits up to `timeout_s` seconds for the server to stop; returns whether it has.
  bool wait(double timeout_s);
  // The JSON list of GET /v1/encoders.
  std::string encoders_json() const;
  int port() const { return app_->port(); }

private:
  std::shared_ptr<executor::Executor> make_executor(const server::EncoderEntry &entry);

  py::object *loader_; // released under the GIL
  std::unique_ptr<server::App> app_;
  std::thread waiter_; // runs App::wait(), so wait() can time out and return to Python
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopped_ = false;
  bool started_ = false;
};

} // namespace jit::python
