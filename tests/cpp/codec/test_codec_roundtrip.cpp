// Round trips through the C++ codec API.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "codec/codec.h"

namespace jit::codec {
namespace {

TEST(CodecRoundTrip, Float32BothCompressions) {
  std::vector<float> data(1000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i) * 0.5f;
  std::vector<TensorView> in = {{"x", DType::kFloat32, {10, 100}, data.data(), data.size() * sizeof(float)}};
  for (auto c : {Compression::kNone, Compression::kZstd}) {
    EncodeOptions opt;
    opt.compression = c;
    std::string frame = encode(in, "", opt);
    DecodedFrame out = decode(reinterpret_cast<const uint8_t *>(frame.data()), frame.size());
    ASSERT_EQ(out.tensors.size(), 1u);
    EXPECT_EQ(out.tensors[0].shape, (Shape{10, 100}));
    EXPECT_EQ(std::memcmp(out.tensors[0].data, data.data(), out.tensors[0].nbytes), 0);
    EXPECT_EQ(out.tensors[0].aliases_frame, c == Compression::kNone);
  }
}

} // namespace
} // namespace jit::codec
