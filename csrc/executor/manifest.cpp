#include "executor/manifest.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace jit::executor {

namespace {

namespace fs = std::filesystem;

// Field access with errors that name the manifest and the field's path.
class Reader {
public:
  explicit Reader(std::string where) : where_(std::move(where)) {}

  [[noreturn]] void fail(const std::string &field, const std::string &msg) const {
    throw ExecutorError(where_ + ": " + field + ": " + msg);
  }

  YAML::Node need(const YAML::Node &map, const std::string &key, const std::string &path) const {
    YAML::Node n = map[key];
    if (!n || n.IsNull()) fail(path + key, "missing");
    return n;
  }

  std::string str(const YAML::Node &map, const std::string &key, const std::string &path) const {
    YAML::Node n = need(map, key, path);
    if (!n.IsScalar()) fail(path + key, "must be a string");
    return n.Scalar();
  }

  std::string str_or(const YAML::Node &map, const std::string &key, const std::string &path,
                     const std::string &fallback) const {
    YAML::Node n = map[key];
    if (!n || n.IsNull()) return fallback;
    if (!n.IsScalar()) fail(path + key, "must be a string");
    return n.Scalar();
  }

  int64_t integer(const YAML::Node &n, const std::string &path) const {
    if (!n.IsScalar()) fail(path, "must be an integer");
    try {
      size_t used = 0;
      const std::string &s = n.Scalar();
      int64_t v = std::stoll(s, &used);
      if (used != s.size()) fail(path, "must be an integer, got '" + s + "'");
      return v;
    } catch (const std::logic_error &) {
      fail(path, "must be an integer, got '" + n.Scalar() + "'");
    }
  }

  int64_t int_or(const YAML::Node &map, const std::string &key, const std::string &path, int64_t fallback) const {
    YAML::Node n = map[key];
    if (!n || n.IsNull()) return fallback;
    return integer(n, path + key);
  }

  DType dtype(const YAML::Node &map, const std::string &path) const {
    const std::string name = str(map, "dtype", path);
    std::optional<DType> d = dtype_from_name(name);
    if (!d || *d == DType::kStr || *d == DType::kBytes) fail(path + "dtype", "unknown tensor dtype '" + name + "'");
    return *d;
  }

  std::vector<TensorSpec> tensors(const YAML::Node &root, const std::string &key, bool inputs) const {
    YAML::Node list = need(root, key, "");
    if (!list.IsSequence() || list.size() == 0) fail(key, "must be a non-empty list");
    std::vector<TensorSpec> out;
    std::set<std::string> names;
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string path = key + "[" + std::to_string(i) + "].";
      const YAML::Node &t = list[i];
      if (!t.IsMap()) fail(key + "[" + std::to_string(i) + "]", "must be an object");
      TensorSpec spec;
      spec.name = str(t, "name", path);
      if (spec.name.empty()) fail(path + "name", "must not be empty");
      if (!names.insert(spec.name).second) fail(path + "name", "duplicate name '" + spec.name + "'");
      spec.dtype = dtype(t, path);
      YAML::Node shape = need(t, "shape", path);
      if (!shape.IsSequence() || shape.size() == 0)
        fail(path + "shape", "must be a non-empty list (dim 0 is the batch)");
      for (size_t d = 0; d < shape.size(); ++d) {
        int64_t v = integer(shape[d], path + "shape[" + std::to_string(d) + "]");
        if (v < -1 || v == 0) fail(path + "shape[" + std::to_string(d) + "]", "must be -1 (dynamic) or positive");
        spec.shape.push_back(d == 0 ? -1 : v);
      }
      spec.seq_dim = static_cast<int>(int_or(t, "seq_dim", path, -1));
      if (spec.seq_dim != -1 && (spec.seq_dim < 1 || static_cast<size_t>(spec.seq_dim) >= spec.shape.size() ||
                                 spec.shape[spec.seq_dim] != -1)) {
        fail(path + "seq_dim", "must name a dynamic dimension after the batch");
      }
      if (inputs) spec.pad_value = int_or(t, "pad_value", path, 0);
      out.push_back(std::move(spec));
    }
    return out;
  }

private:
  std::string where_;
};

} // namespace

Manifest parse_manifest(const std::string &json_text, const std::string &dir) {
  const std::string where = (fs::path(dir) / "manifest.json").string();
  Reader r(where);
  YAML::Node root;
  try {
    root = YAML::Load(json_text);
  } catch (const YAML::Exception &e) {
    throw ExecutorError(where + ": not valid JSON: " + e.what());
  }
  if (!root.IsMap()) throw ExecutorError(where + ": must hold a JSON object");

  Manifest m;
  m.format_version = static_cast<int>(r.integer(r.need(root, "format_version", ""), "format_version"));
  if (m.format_version != 1) {
    r.fail("format_version", "is " + std::to_string(m.format_version) + ", this server reads version 1");
  }
  m.name = r.str(root, "name", "");
  m.family = r.str_or(root, "family", "", "module");
  m.format = r.str(root, "format", "");
  if (m.format != "aoti" && m.format != "torchscript") {
    r.fail("format", "must be \"aoti\" or \"torchscript\", got \"" + m.format + "\"");
  }
  const std::string artifact = r.str(root, "artifact", "");
  fs::path p(artifact);
  if (p.is_relative()) p = fs::path(dir) / p;
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) r.fail("artifact", "no file at " + p.string());
  m.artifact = fs::absolute(p, ec).lexically_normal().string();
  m.spec.inputs = r.tensors(root, "inputs", true);
  m.spec.outputs = r.tensors(root, "outputs", false);
  m.version = r.str(root, "version", "");
  if (m.version.empty()) r.fail("version", "must not be empty");
  m.torch_version = r.str_or(root, "torch_version", "", "");
  m.device = r.str_or(root, "device", "", "cpu");
  if (m.device != "cpu" && m.device != "cuda")
    r.fail("device", "must be \"cpu\" or \"cuda\", got \"" + m.device + "\"");
  m.dtype = r.str_or(root, "dtype", "", "float32");
  if (!dtype_from_name(m.dtype) || !dtype_is_floating(*dtype_from_name(m.dtype))) {
    r.fail("dtype", "must be a floating-point dtype name, got \"" + m.dtype + "\"");
  }
  m.max_batch_size = r.int_or(root, "max_batch_size", "", 0);
  if (m.max_batch_size < 0) r.fail("max_batch_size", "must not be negative");
  return m;
}

Manifest load_manifest(const std::string &path) {
  std::error_code ec;
  fs::path file(path);
  if (fs::is_directory(file, ec)) file /= "manifest.json";
  std::ifstream in(file, std::ios::binary);
  if (!in)
    throw ExecutorError("cannot read " + file.string() + ": no such manifest (an export folder holds manifest.json)");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_manifest(text.str(), file.parent_path().string());
}

} // namespace jit::executor
