#include "common/json.h"

#include "gtest/gtest.h"

namespace grove {
namespace {

TEST(JsonQuoteTest, EscapesWhatJsonNeedsAndKeepsUtf8) {
  EXPECT_EQ(JsonQuote("plain"), "\"plain\"");
  EXPECT_EQ(JsonQuote("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(JsonQuote("l1\nl2\r\t"), "\"l1\\nl2\\r\\t\"");
  EXPECT_EQ(JsonQuote(std::string("\x1b[2J\x01\x7f", 6)), "\"\\u001b[2J\\u0001\\u007f\"");
  EXPECT_EQ(JsonQuote("h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x8c\xb3"), "\"h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x8c\xb3\"");
  EXPECT_EQ(JsonQuote(std::string("\0", 1)), "\"\\u0000\"");
}

TEST(JsonQuoteTest, BytesThatAreNotUtf8BecomeTextAndStayValidJson) {
  EXPECT_EQ(JsonQuote("a\xff" "b"), "\"a\\\\xffb\"");
  EXPECT_EQ(JsonQuote("\xc3"), "\"\\\\xc3\"");              // Cut short.
  EXPECT_EQ(JsonQuote("\xc0\xaf"), "\"\\\\xc0\\\\xaf\"");   // Overlong '/'.
  EXPECT_EQ(JsonQuote("\xed\xa0\x80"), "\"\\\\xed\\\\xa0\\\\x80\"");  // A surrogate.
}

}  // namespace
}  // namespace grove
