// App end to end inside one process: a config with two encoders, a real HttpServer on 127.0.0.1,
// the engine, and a test factory that builds AffineExecutors from artifact folders holding a
// `scale` file. Covers GET /v1/encoders, the load endpoint (in-place swap, new names, path
// escapes, failing loads, bad JSON, serialised loads), the content-reader body path (64 MiB round
// trips, chunked bodies, 413s) and that the server stays live after every error.
#include <gtest/gtest.h>

#include <httplib.h>
#include <msgpack.hpp>
#include <yaml-cpp/yaml.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <thread>

#include "../engine/affine_executor.h"
#include "server/app.h"

namespace jit::server {
namespace {

namespace fs = std::filesystem;
using namespace engine::testing_util;
using namespace std::chrono_literals;

// An artifact root with folders a (scale 2), b (3), a-v2 (5), c (7), broken (no scale file), a
// folder outside it (11) and a link from inside to outside.
struct Artifacts {
  fs::path dir;
  fs::path root;
  Artifacts() {
    std::string tmpl = (fs::temp_directory_path() / "jit-app-XXXXXX").string();
    dir = fs::path(mkdtemp(tmpl.data()));
    root = dir / "models";
    for (const auto &[name, scale] : std::map<std::string, int>{{"a", 2}, {"b", 3}, {"a-v2", 5}, {"c", 7}}) {
      fs::create_directories(root / name);
      std::ofstream(root / name / "scale") << scale;
    }
    fs::create_directories(root / "broken");
    fs::create_directories(dir / "outside");
    std::ofstream(dir / "outside" / "scale") << 11;
    fs::create_directory_symlink(dir / "outside", root / "escape");
  }
  ~Artifacts() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

// The test's executor factory: an AffineExecutor with the scale in <artifact>/scale.
std::shared_ptr<executor::Executor> affine_factory(const EncoderEntry &entry) {
  std::ifstream in(fs::path(entry.artifact) / "scale");
  float scale = 0;
  if (!(in >> scale)) throw executor::ExecutorError("no scale file in " + entry.artifact);
  return std::make_shared<AffineExecutor>(scale);
}

ServerConfig two_encoders(const Artifacts &art) {
  const std::string yaml = "server: {threads: 16, max_body_bytes: 134217728, retain_body_bytes: 1048576}\n"
                           "encoders:\n"
                           "  - {name: a, artifact: models/a, max_batch_size: 64, max_queue_delay_us: 1000}\n"
                           "  - {name: b, artifact: models/b, max_batch_size: 8, length_buckets: [4, 8]}\n";
  ServerConfig c = parse_config(yaml, art.dir.string());
  c.artifact_root = art.root.string();
  return c;
}

httplib::Client client(int port) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(5s);
  c.set_read_timeout(30s);
  c.set_write_timeout(30s);
  return c;
}

std::string frame_of(const Tensor &x) {
  return codec::encode({x.view()}, "", {});
}

// Decodes a response frame into an engine::Result (for expect_result) and its meta.
struct Response {
  codec::DecodedFrame frame;
  engine::Result result;
  std::map<std::string, msgpack::object> meta;
  msgpack::object_handle handle;
};

Response decode_response(const std::string &body) {
  Response r;
  r.frame = codec::decode(reinterpret_cast<const uint8_t *>(body.data()), body.size());
  for (const auto &t : r.frame.tensors)
    r.result.outputs.push_back(Tensor{t.name, t.dtype, t.shape, nullptr, t.data, t.nbytes});
  r.handle = msgpack::unpack(r.frame.meta_msgpack.data(), r.frame.meta_msgpack.size());
  r.meta = r.handle.get().as<std::map<std::string, msgpack::object>>();
  return r;
}

// POSTs x to encoder `name`, checks the outputs against `scale`, and returns the version.
std::string encode_and_check(int port, const std::string &name, const Tensor &x, float scale) {
  auto res = client(port).Post(("/v1/encode/" + name).c_str(), frame_of(x), "application/octet-stream");
  if (!res) {
    ADD_FAILURE() << "no response";
    return "";
  }
  EXPECT_EQ(res->status, 200) << res->body;
  if (res->status != 200) return "";
  Response r = decode_response(res->body);
  expect_result(r.result, x, scale);
  return r.meta.at("version").as<std::string>();
}

void expect_live(int port) {
  auto res = client(port).Get("/health/live");
  ASSERT_TRUE(res) << "the server stopped answering";
  EXPECT_EQ(res->status, 200);
}

// Status and parsed JSON body of POST /v1/encoders/{name}/load.
std::pair<int, YAML::Node> load(int port, const std::string &name, const std::string &body) {
  auto res = client(port).Post(("/v1/encoders/" + name + "/load").c_str(), body, "application/json");
  if (!res) return {-1, YAML::Node()};
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
  return {res->status, YAML::Load(res->body)};
}

TEST(App, StartsConfiguredEncodersAndListsThemAsJson) {
  Artifacts art;
  App app(two_encoders(art), affine_factory);
  const int port = app.start();
  EXPECT_EQ(client(port).Get("/health/ready")->status, 200);
  EXPECT_EQ(encode_and_check(port, "a", input(3, 4, 1.0f), 2.0f), "scale=2.000000");
  EXPECT_EQ(encode_and_check(port, "b", input(2, 4, 1.0f), 3.0f), "scale=3.000000");

  auto res = client(port).Get("/v1/encoders");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  const YAML::Node list = YAML::Load(res->body)["encoders"];
  ASSERT_EQ(list.size(), 2u) << res->body;
  const YAML::Node a = list[0], b = list[1];
  EXPECT_EQ(a["name"].as<std::string>(), "a");
  EXPECT_EQ(a["version"].as<std::string>(), "scale=2.000000");
  ASSERT_EQ(a["inputs"].size(), 1u);
  EXPECT_EQ(a["inputs"][0]["name"].as<std::string>(), "x");
  EXPECT_EQ(a["inputs"][0]["dtype"].as<std::string>(), "float32");
  EXPECT_EQ(a["inputs"][0]["shape"].as<std::vector<int64_t>>(), (std::vector<int64_t>{-1, -1}));
  EXPECT_TRUE(a["inputs"][0]["seq_dim"].IsNull());
  ASSERT_EQ(a["outputs"].size(), 2u);
  EXPECT_EQ(a["outputs"][0]["name"].as<std::string>(), "y");
  EXPECT_EQ(a["outputs"][1]["name"].as<std::string>(), "norm");
  EXPECT_EQ(a["outputs"][1]["shape"].as<std::vector<int64_t>>(), (std::vector<int64_t>{-1}));
  EXPECT_EQ(a["batching"]["max_batch_size"].as<int>(), 64);
  EXPECT_EQ(a["batching"]["max_queue_delay_us"].as<int>(), 1000);
  EXPECT_EQ(a["batching"]["max_queue_size"].as<int>(), 1024);
  EXPECT_EQ(a["batching"]["instances"].as<int>(), 1);
  EXPECT_EQ(a["batching"]["length_buckets"].size(), 0u);
  EXPECT_EQ(a["queued_samples"].as<int>(), 0);
  EXPECT_EQ(b["name"].as<std::string>(), "b");
  EXPECT_EQ(b["batching"]["max_batch_size"].as<int>(), 8);
  EXPECT_EQ(b["batching"]["length_buckets"].as<std::vector<int64_t>>(), (std::vector<int64_t>{4, 8}));
}

TEST(App, StartFailsNamingTheEncoderAndTheCause) {
  Artifacts art;
  ServerConfig c = two_encoders(art);
  c.encoders[1].artifact = (art.root / "broken").string();
  App app(std::move(c), affine_factory);
  try {
    app.start();
    FAIL() << "started with a broken encoder";
  } catch (const ServerError &e) {
    EXPECT_EQ(http_status(e), 422);
    EXPECT_NE(std::string(e.what()).find("cannot load encoder 'b': no scale file in"), std::string::npos) << e.what();
  }
}

TEST(App, LoadSwapsInPlaceAndAddsNewNames) {
  Artifacts art;
  App app(two_encoders(art), affine_factory);
  const int port = app.start();
  EXPECT_EQ(encode_and_check(port, "a", input(2, 3, 0.5f), 2.0f), "scale=2.000000");

  auto [status, body] = load(port, "a", R"({"artifact": "a-v2", "max_batch_size": 16})");
  ASSERT_EQ(status, 200);
  EXPECT_EQ(body["encoder"].as<std::string>(), "a");
  EXPECT_EQ(body["version"].as<std::string>(), "scale=5.000000");
  EXPECT_EQ(body["previous_version"].as<std::string>(), "scale=2.000000");
  EXPECT_EQ(encode_and_check(port, "a", input(2, 3, 0.5f), 5.0f), "scale=5.000000");
  // The override applied, and keys not given kept the serving entry's values.
  YAML::Node list = YAML::Load(client(port).Get("/v1/encoders")->body)["encoders"];
  EXPECT_EQ(list[0]["version"].as<std::string>(), "scale=5.000000");
  EXPECT_EQ(list[0]["batching"]["max_batch_size"].as<int>(), 16);
  EXPECT_EQ(list[0]["batching"]["max_queue_delay_us"].as<int>(), 1000);

  // A name not served yet is added with default settings; previous_version is null.
  std::tie(status, body) = load(port, "c", R"({"artifact": "c"})");
  ASSERT_EQ(status, 200);
  EXPECT_EQ(body["version"].as<std::string>(), "scale=7.000000");
  EXPECT_TRUE(body["previous_version"].IsNull());
  EXPECT_EQ(encode_and_check(port, "c", input(1, 3, 2.0f), 7.0f), "scale=7.000000");
  list = YAML::Load(client(port).Get("/v1/encoders")->body)["encoders"];
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[2]["batching"]["max_batch_size"].as<size_t>(), engine::BatchingConfig{}.max_batch_size);

  // An empty body reloads the same artifact.
  std::tie(status, body) = load(port, "c", "");
  ASSERT_EQ(status, 200);
  EXPECT_EQ(body["previous_version"].as<std::string>(), "scale=7.000000");
}

TEST(App, RefusedAndFailedLoadsLeaveTheOldVersionServing) {
  Artifacts art;
  App app(two_encoders(art), affine_factory);
  const int port = app.start();
  const struct {
    std::string body;
    int status;
    std::string code;
    std::string says;
  } cases[] = {
      {R"({"artifact": "../outside"})", 403, "forbidden", "resolves outside artifact_root"},
      {R"({"artifact": "escape"})", 403, "forbidden", "resolves outside artifact_root"},
      {R"({"artifact": ")" + (art.dir / "outside").string() + "\"}", 403, "forbidden", "outside artifact_root"},
      {R"({"artifact": "broken"})", 422, "unprocessable", "cannot load encoder 'a': no scale file in"},
      {R"({"artifact": "missing"})", 422, "unprocessable", "No such file or directory"},
      {R"({"artifact": "a-v2", "max_batch_size": -3})", 400, "bad_request",
       "body.max_batch_size: must be a positive integer, got -3"},
      {"{\"artifact\": ", 400, "bad_request", "not valid YAML/JSON"},
      {"[1]", 400, "bad_request", "must be a JSON object"},
  };
  for (const auto &c : cases) {
    auto [status, body] = load(port, "a", c.body);
    EXPECT_EQ(status, c.status) << c.body;
    EXPECT_EQ(body["code"].as<std::string>(""), c.code) << c.body;
    EXPECT_NE(body["error"].as<std::string>("").find(c.says), std::string::npos)
        << c.body << " answered " << body["error"].as<std::string>("");
    expect_live(port);
    EXPECT_EQ(encode_and_check(port, "a", input(1, 2, 1.0f), 2.0f), "scale=2.000000") << c.body;
  }
  // A bad name in the URL, and a failed load of a new name, leave nothing behind.
  EXPECT_EQ(load(port, "no%20spaces", R"({"artifact": "c"})").first, 400);
  EXPECT_EQ(load(port, "d", R"({"artifact": "broken"})").first, 422);
  EXPECT_EQ(YAML::Load(client(port).Get("/v1/encoders")->body)["encoders"].size(), 2u);
  expect_live(port);
  const std::string metrics = client(port).Get("/metrics")->body;
  EXPECT_NE(metrics.find("jit_http_failures_total{reason=\"forbidden\"} 3"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("jit_http_requests_total{code=\"422\",path=\"/v1/encoders/{name}/load\"} 3"),
            std::string::npos)
      << metrics;
}

TEST(App, LoadsOfOneNameAreSerialised) {
  Artifacts art;
  std::atomic<int> running{0}, most{0};
  auto slow_factory = [&](const EncoderEntry &e) {
    const int now = ++running;
    most = std::max(most.load(), now);
    std::this_thread::sleep_for(50ms);
    --running;
    return affine_factory(e);
  };
  App app(two_encoders(art), slow_factory);
  const int port = app.start();
  std::vector<std::future<int>> loads;
  for (int i = 0; i < 4; ++i) {
    loads.push_back(std::async(std::launch::async, [&, i] {
      return load(port, "a", i % 2 ? R"({"artifact": "a-v2"})" : R"({"artifact": "a"})").first;
    }));
  }
  for (auto &f : loads)
    EXPECT_EQ(f.get(), 200);
  EXPECT_EQ(most.load(), 1) << "two loads of 'a' ran the factory at once";
}

TEST(App, LargeBodiesRoundTripThroughTheContentReader) {
  Artifacts art;
  ServerConfig config = two_encoders(art);
  config.cache.enabled = false; // the same body twice must reach the engine twice
  App app(std::move(config), affine_factory);
  const int port = app.start();
  // 64 MiB of float32 in one request, twice (the second reuses nothing: it is over
  // retain_body_bytes, so the buffer was freed), then a small one on the same thread pool.
  const Tensor big = input(16, int64_t{1} << 20, 0.125f);
  for (int i = 0; i < 2; ++i)
    EXPECT_EQ(encode_and_check(port, "a", big, 2.0f), "scale=2.000000");
  EXPECT_EQ(encode_and_check(port, "a", input(1, 8, 3.0f), 2.0f), "scale=2.000000");

  // A chunked body (no Content-Length) grows the buffer as it arrives.
  const std::string frame = frame_of(input(4, 100000, 1.5f));
  auto res = client(port).Post(
      "/v1/encode/a",
      [&](size_t offset, httplib::DataSink &sink) {
        const size_t n = std::min<size_t>(100000, frame.size() - offset);
        sink.write(frame.data() + offset, n);
        if (offset + n == frame.size()) sink.done();
        return true;
      },
      "application/octet-stream");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  Response r = decode_response(res->body);
  expect_result(r.result, input(4, 100000, 1.5f), 2.0f);
  // The response meta reports serialize_us, and the histogram counts it.
  using Timings = std::map<std::string, msgpack::object>;
  const Timings timings = r.meta.at("timings").as<Timings>();
  EXPECT_GT(timings.at("serialize_us").as<double>(), 0.0);
  EXPECT_EQ(timings.count("queue_us"), 1u);
  const std::string metrics = client(port).Get("/metrics")->body;
  EXPECT_NE(metrics.find("jit_serialize_seconds_count{encoder=\"a\"} 4"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("jit_requests_total{encoder=\"a\",outcome=\"ok\"} 4"), std::string::npos);
  EXPECT_NE(metrics.find("jit_requests_total{encoder=\"b\",outcome=\"overloaded\"} 0"), std::string::npos);
}

TEST(App, BodiesOverMaxBodyBytesAre413AndTheServerStaysUsable) {
  Artifacts art;
  ServerConfig c = two_encoders(art);
  c.server.max_body_bytes = 1 << 20;
  App app(std::move(c), affine_factory);
  const int port = app.start();
  // With a Content-Length: refused, and the keep-alive connection stays usable because the body
  // was consumed.
  httplib::Client keep = client(port);
  keep.set_keep_alive(true);
  auto res = keep.Post("/v1/encode/a", std::string((1 << 20) + 1, 'x'), "application/octet-stream");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 413);
  EXPECT_NE(res->body.find("\"payload_too_large\""), std::string::npos) << res->body;
  auto again = keep.Get("/health/live");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200);

  // Chunked, with no length to check up front: refused once it passes the limit.
  const std::string big((1 << 20) + 4096, 'y');
  res = client(port).Post(
      "/v1/encode/a",
      [&](size_t offset, httplib::DataSink &sink) {
        const size_t n = std::min<size_t>(65536, big.size() - offset);
        sink.write(big.data() + offset, n);
        if (offset + n == big.size()) sink.done();
        return true;
      },
      "application/octet-stream");
  if (res) { // the server may close before the client has sent everything
    EXPECT_EQ(res->status, 413);
    EXPECT_EQ(res->get_header_value("Connection"), "close");
  }
  expect_live(port);
  // A multipart body is refused as the client's mistake (httplib alone would answer 500).
  httplib::MultipartFormDataItems items = {{"frame", frame_of(input(1, 2, 1.0f)), "f.bin", "application/octet-stream"}};
  res = client(port).Post("/v1/encode/a", items);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_NE(res->body.find("multipart/form-data bodies are not accepted"), std::string::npos) << res->body;
  expect_live(port);
  // Garbage under the limit is still a 400 naming the problem, and a good request still works.
  res = client(port).Post("/v1/encode/a", std::string(100, 'z'), "application/octet-stream");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_EQ(encode_and_check(port, "a", input(2, 2, 1.0f), 2.0f), "scale=2.000000");
  const std::string metrics = client(port).Get("/metrics")->body;
  EXPECT_NE(metrics.find("jit_http_failures_total{reason=\"payload_too_large\"} "), std::string::npos);
}

TEST(App, DrainRefusesLoadsAndEncodes) {
  Artifacts art;
  App app(two_encoders(art), affine_factory);
  const int port = app.start();
  EXPECT_EQ(encode_and_check(port, "a", input(1, 2, 1.0f), 2.0f), "scale=2.000000");
  EXPECT_TRUE(app.begin_drain());
  app.wait();
  EXPECT_FALSE(client(port).Get("/health/live")) << "the listener is closed after the drain";
  EXPECT_THROW(app.load("a", app.config().encoders[0]), ServerError);
}

// An executor that stages through pinned memory (as LibTorch on CUDA does) reports it in /metrics.
class StagingAffine : public AffineExecutor {
public:
  StagingAffine() : AffineExecutor(2.0f) {}
  std::optional<executor::DeviceStats> device_stats() const override { return executor::DeviceStats{1 << 20, 4096, 3}; }
};

TEST(App, StagingExecutorsReportTheirPinnedMemory) {
  Artifacts art;
  App app(two_encoders(art), [](const EncoderEntry &entry) -> std::shared_ptr<executor::Executor> {
    if (entry.name == "a") return std::make_shared<StagingAffine>();
    return affine_factory(entry);
  });
  const int port = app.start();
  const std::string text = client(port).Get("/metrics")->body;
  EXPECT_NE(text.find("jit_pinned_staging_bytes{encoder=\"a\"} 1048576"), std::string::npos) << text;
  EXPECT_NE(text.find("jit_pinned_staging_leased_bytes{encoder=\"a\"} 4096"), std::string::npos) << text;
  EXPECT_NE(text.find("jit_pinned_staging_fallbacks{encoder=\"a\"} 3"), std::string::npos) << text;
  EXPECT_EQ(text.find("jit_pinned_staging_bytes{encoder=\"b\"}"), std::string::npos) << text; // b does not stage
}

} // namespace
} // namespace jit::server
