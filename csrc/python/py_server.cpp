#include "python/py_server.h"

#include <pybind11/stl.h>

#include <chrono>

#include "python/py_executor.h"
#include "server/artifact_factory.h"
#include "server/auth.h"

namespace jit::python {

PyApp::PyApp(const std::string &config_path, py::object loader, std::optional<std::string> host,
             std::optional<int> port, bool allow_public, std::optional<std::string> auth_token_file,
             std::optional<std::string> admin_token_file, std::optional<std::string> tls_cert_file,
             std::optional<std::string> tls_key_file)
    : loader_(new py::object(std::move(loader))) {
  server::ServerConfig config = server::load_config(config_path);
  if (host) config.server.host = *host;
  if (port) config.server.port = *port;
  if (allow_public) config.server.allow_public = true;
  if (auth_token_file) config.server.auth.token = server::read_token_file(*auth_token_file, "--auth-token-file");
  if (admin_token_file)
    config.server.auth.admin_token = server::read_token_file(*admin_token_file, "--admin-token-file");
  if (tls_cert_file) config.server.tls_cert_file = *tls_cert_file;
  if (tls_key_file) config.server.tls_key_file = *tls_key_file;
  app_ = std::make_unique<server::App>(std::move(config),
                                       [this](const server::EncoderEntry &e) { return make_executor(e); });
}

PyApp::~PyApp() {
  {
    py::gil_scoped_release nogil;
    // The waiter thread is the one caller of App::wait(): a second concurrent join of the
    // listener would be undefined.
    if (app_ && started_) app_->begin_drain();
    if (waiter_.joinable()) waiter_.join();
    app_.reset(); // executors (PyExecutors among them) go while the GIL is free for their destructors
  }
  delete loader_;
}

std::shared_ptr<executor::Executor> PyApp::make_executor(const server::EncoderEntry &entry) {
  if (entry.factory.empty()) return server::load_artifact_executor(entry);
  py::gil_scoped_acquire gil;
  py::dict d;
  d["name"] = entry.name;
  d["factory"] = entry.factory;
  d["options_json"] = entry.options_json;
  d["device"] = entry.device;
  d["dtype"] = entry.dtype;
  d["intra_op_threads"] = entry.intra_op_threads;
  try {
    py::tuple made = (*loader_)(d).cast<py::tuple>();
    EncoderSpec spec = spec_from_python(made[1].cast<py::dict>());
    return std::make_shared<PyExecutor>(made[0], std::move(spec), made[2].cast<std::string>());
  } catch (py::error_already_set &e) {
    throw executor::ExecutorError(e.what());
  }
}

int PyApp::start() {
  int port;
  {
    py::gil_scoped_release nogil;
    port = app_->start();
  }
  started_ = true;
  waiter_ = std::thread([this] {
    app_->wait();
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    cv_.notify_all();
  });
  return port;
}

bool PyApp::drain() {
  if (!started_) return true;
  py::gil_scoped_release nogil;
  return app_->begin_drain();
}

bool PyApp::wait(double timeout_s) {
  py::gil_scoped_release nogil;
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return stopped_; });
}

std::string PyApp::encoders_json() const {
  return app_->encoders_json();
}

} // namespace jit::python
