// Malformed frames: each is rejected with a CodecError that names the problem.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "codec/codec.h"

namespace jit::codec {
namespace {

void expect_error(const std::string &frame, const std::string &prefix) {
  try {
    decode(reinterpret_cast<const uint8_t *>(frame.data()), frame.size());
    FAIL() << "expected CodecError '" << prefix << "'";
  } catch (const CodecError &e) {
    EXPECT_EQ(std::string(e.what()).rfind(prefix, 0), 0u) << e.what();
  }
}

TEST(CodecMalformed, TruncatedAndBadMagic) {
  uint8_t x = 7;
  std::string frame = encode({{"x", DType::kUInt8, {1}, &x, 1}}, "", {});
  expect_error(frame.substr(0, 10), "truncated");
  expect_error(frame.substr(0, frame.size() - 1), "truncated");
  std::string bad = frame;
  bad[0] = 'X';
  expect_error(bad, "bad magic");
}

} // namespace
} // namespace jit::codec
