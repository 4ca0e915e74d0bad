// ServerError's one mapping to HTTP (status, JSON body) and the codec -> server conversion.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "codec/codec.h"
#include "server/errors.h"

namespace {

using jit::server::ServerError;
using Code = ServerError::Code;

TEST(ServerErrors, EveryCodeHasItsStatusAndName) {
  const std::vector<std::pair<Code, std::pair<int, std::string>>> expected = {
      {Code::kBadRequest, {400, "bad_request"}},
      {Code::kUnprocessable, {422, "unprocessable"}},
      {Code::kPayloadTooLarge, {413, "payload_too_large"}},
      {Code::kNotFound, {404, "not_found"}},
      {Code::kUnauthorized, {401, "unauthorized"}},
      {Code::kForbidden, {403, "forbidden"}},
      {Code::kConflict, {409, "conflict"}},
      {Code::kHeaderTooLarge, {431, "header_too_large"}},
      {Code::kOverloaded, {429, "overloaded"}},
      {Code::kNotReady, {503, "not_ready"}},
      {Code::kDeadlineExceeded, {504, "deadline_exceeded"}},
      {Code::kInternal, {500, "internal"}},
  };
  for (const auto &[code, want] : expected) {
    const ServerError e(code, "m");
    EXPECT_EQ(jit::server::http_status(e), want.first) << want.second;
    EXPECT_EQ(jit::server::code_name(code), want.second);
    EXPECT_EQ(jit::server::error_json(e), "{\"error\": \"m\", \"code\": \"" + want.second + "\"}");
  }
  EXPECT_EQ(expected.size(), jit::server::kServerErrorCodes) << "a code without a row here";
}

TEST(ServerErrors, JsonEscapesQuotesBackslashesAndControls) {
  const ServerError e(Code::kNotFound, "unknown encoder 'a\"b\\c'\n\t\r\b\f\x01\x1f\x7f");
  EXPECT_EQ(jit::server::error_json(e),
            "{\"error\": \"unknown encoder 'a\\\"b\\\\c'\\n\\t\\r\\b\\f\\u0001\\u001f\\u007f\", "
            "\"code\": \"not_found\"}");
}

TEST(ServerErrors, JsonKeepsValidUtf8AndReplacesInvalidBytes) {
  // Valid: 2-, 3- and 4-byte sequences pass through unchanged.
  EXPECT_EQ(jit::server::json_quote("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"),
            "\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\"");
  const std::string fffd = "\xEF\xBF\xBD";
  // A lone continuation byte, a truncated sequence at the end, an overlong '/', a surrogate, and
  // a code point past U+10FFFF each become U+FFFD per bad byte.
  EXPECT_EQ(jit::server::json_quote("a\x80z"), "\"a" + fffd + "z\"");
  EXPECT_EQ(jit::server::json_quote("a\xE2\x82"), "\"a" + fffd + fffd + "\"");
  EXPECT_EQ(jit::server::json_quote("\xC0\xAF"), "\"" + fffd + fffd + "\"");
  EXPECT_EQ(jit::server::json_quote("\xED\xA0\x80"), "\"" + fffd + fffd + fffd + "\"");
  EXPECT_EQ(jit::server::json_quote("\xF4\x90\x80\x80"), "\"" + fffd + fffd + fffd + fffd + "\"");
  EXPECT_EQ(jit::server::json_quote(""), "\"\"");
  EXPECT_EQ(jit::server::json_quote(std::string("a\0b", 3)), "\"a\\u0000b\"");
}

TEST(ServerErrors, CodecOverLimitIs413AndOtherCodecErrorsAre400) {
  const ServerError over = jit::server::from_codec_error(jit::codec::CodecError("over limit: frame has 9 bytes"));
  EXPECT_EQ(over.code(), Code::kPayloadTooLarge);
  EXPECT_EQ(jit::server::http_status(over), 413);
  EXPECT_STREQ(over.what(), "over limit: frame has 9 bytes");

  for (const char *m :
       {"bad magic: JEMX", "truncated: 3 bytes", "bad checksum: header", "a message naming over limit"}) {
    const ServerError e = jit::server::from_codec_error(jit::codec::CodecError(m));
    EXPECT_EQ(e.code(), Code::kBadRequest) << m;
    EXPECT_STREQ(e.what(), m);
  }
}

TEST(ServerErrors, RealDecodeFailuresMapThroughTheEdge) {
  const std::string garbage = "JEMX" + std::string(60, '\0');
  jit::codec::DecodeOptions options;
  try {
    (void)jit::codec::decode(reinterpret_cast<const uint8_t *>(garbage.data()), garbage.size(), options);
    FAIL() << "decode accepted garbage";
  } catch (const jit::codec::CodecError &e) {
    EXPECT_EQ(jit::server::http_status(jit::server::from_codec_error(e)), 400);
  }
  // A well-formed frame over max_frame_bytes (the magic is checked before the limit).
  const float values[4] = {1, 2, 3, 4};
  const std::string frame =
      jit::codec::encode({jit::TensorView{"x", jit::DType::kFloat32, {4}, values, sizeof values}}, "", {});
  options.limits.max_frame_bytes = frame.size() - 1;
  try {
    (void)jit::codec::decode(reinterpret_cast<const uint8_t *>(frame.data()), frame.size(), options);
    FAIL() << "decode ignored max_frame_bytes";
  } catch (const jit::codec::CodecError &e) {
    EXPECT_EQ(jit::server::http_status(jit::server::from_codec_error(e)), 413) << e.what();
  }
}

} // namespace
