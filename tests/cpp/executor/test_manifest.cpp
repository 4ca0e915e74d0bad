// manifest.json parsing (docs/export.md): a valid manifest gives the spec in artifact order with
// sequence dims and pad values; every malformed field is refused with its name in the message.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "executor/manifest.h"

namespace jit::executor {
namespace {

namespace fs = std::filesystem;

class ManifestTest : public ::testing::Test {
protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("jit_manifest_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    std::ofstream(dir_ / "model.pt2") << "x";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string &json) {
    std::ofstream(dir_ / "manifest.json") << json;
    return dir_.string();
  }

  // The message of the ExecutorError that loading `json` raises.
  std::string error_of(const std::string &json) {
    try {
      load_manifest(write(json));
    } catch (const ExecutorError &e) {
      return e.what();
    }
    ADD_FAILURE() << "accepted: " << json;
    return "";
  }

  fs::path dir_;
};

const char *kValid = R"({
  "format_version": 1, "name": "clip-text", "family": "clip_text", "format": "aoti", "artifact": "model.pt2",
  "inputs": [
    {"name": "input_ids", "dtype": "int64", "shape": [-1, -1], "dims": ["batch", "seq"], "seq_dim": 1, "pad_value": 49407},
    {"name": "attention_mask", "dtype": "int64", "shape": [-1, -1], "dims": ["batch", "seq"], "seq_dim": 1, "pad_value": 0}],
  "outputs": [
    {"name": "last_hidden_state", "dtype": "float32", "shape": [-1, -1, 512], "seq_dim": 1},
    {"name": "pooled", "dtype": "float32", "shape": [-1, 512]}],
  "dynamic_dims": {"batch": [1, 256], "seq": [1, 77]},
  "version": "sha256:abc", "torch_version": "2.13.0+cpu", "device": "cpu", "dtype": "float32",
  "max_batch_size": 256, "created_by": "jit-embedding 0.1.0"})";

std::string replace(std::string s, const std::string &from, const std::string &to) {
  size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return s.replace(at, from.size(), to);
}

TEST_F(ManifestTest, ValidManifestGivesTheSpecInArtifactOrder) {
  Manifest m = load_manifest(write(kValid));
  EXPECT_EQ(m.name, "clip-text");
  EXPECT_EQ(m.format, "aoti");
  EXPECT_EQ(m.artifact, (dir_ / "model.pt2").lexically_normal().string());
  EXPECT_EQ(m.version, "sha256:abc");
  EXPECT_EQ(m.device, "cpu");
  EXPECT_EQ(m.max_batch_size, 256);
  ASSERT_EQ(m.spec.inputs.size(), 2u);
  EXPECT_EQ(m.spec.inputs[0].name, "input_ids");
  EXPECT_EQ(m.spec.inputs[0].dtype, DType::kInt64);
  EXPECT_EQ(m.spec.inputs[0].shape, (Shape{-1, -1}));
  EXPECT_EQ(m.spec.inputs[0].seq_dim, 1);
  EXPECT_EQ(m.spec.inputs[0].pad_value, 49407);
  EXPECT_EQ(m.spec.inputs[1].pad_value, 0);
  ASSERT_EQ(m.spec.outputs.size(), 2u);
  EXPECT_EQ(m.spec.outputs[0].shape, (Shape{-1, -1, 512}));
  EXPECT_EQ(m.spec.outputs[0].seq_dim, 1);
  EXPECT_EQ(m.spec.outputs[1].seq_dim, -1);
  // The manifest file itself may be named instead of its folder.
  EXPECT_EQ(load_manifest((dir_ / "manifest.json").string()).version, "sha256:abc");
}

TEST_F(ManifestTest, EveryBadFieldIsNamed) {
  EXPECT_NE(error_of("{not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of("[1, 2]").find("must hold a JSON object"), std::string::npos);
  EXPECT_NE(error_of(replace(kValid, "\"format_version\": 1", "\"format_version\": 2")).find("format_version"),
            std::string::npos);
  EXPECT_NE(error_of(replace(kValid, "\"aoti\"", "\"onnx\"")).find("format: must be"), std::string::npos);
  EXPECT_NE(error_of(replace(kValid, "\"model.pt2\"", "\"missing.pt2\"")).find("artifact: no file at"),
            std::string::npos);
  EXPECT_NE(error_of(replace(kValid, "\"int64\"", "\"int128\"")).find("inputs[0].dtype: unknown tensor dtype"),
            std::string::npos);
  EXPECT_NE(error_of(replace(kValid, "[-1, 512]}", "[-1, 0]}")).find("outputs[1].shape[1]"), std::string::npos);
  EXPECT_NE(error_of(replace(kValid, "\"seq_dim\": 1, \"pad_value\": 49407", "\"seq_dim\": 0"))
                .find("inputs[0].seq_dim: must name a dynamic dimension"),
            std::string::npos);
  EXPECT_NE(error_of(replace(kValid, "\"name\": \"pooled\"", "\"name\": \"last_hidden_state\""))
                .find("outputs[1].name: duplicate"),
            std::string::npos);
  EXPECT_NE(error_of(replace(kValid, "\"version\": \"sha256:abc\", ", "")).find("version: missing"), std::string::npos);
  EXPECT_NE(error_of(replace(kValid, "\"device\": \"cpu\"", "\"device\": \"tpu\"")).find("device: must be"),
            std::string::npos);
  EXPECT_NE(error_of(replace(kValid, "\"device\": \"cpu\", \"dtype\": \"float32\"", "\"dtype\": \"int8\""))
                .find("dtype: must be a floating"),
            std::string::npos);
  EXPECT_NE(error_of(replace(kValid, "\"max_batch_size\": 256", "\"max_batch_size\": \"many\""))
                .find("max_batch_size: must be an integer"),
            std::string::npos);
  fs::remove(dir_ / "manifest.json");
  try {
    load_manifest(dir_.string());
    FAIL();
  } catch (const ExecutorError &e) {
    EXPECT_NE(std::string(e.what()).find("no such manifest"), std::string::npos);
  }
}

} // namespace
} // namespace jit::executor
