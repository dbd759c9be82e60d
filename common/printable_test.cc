#include "common/printable.h"

#include <string>

#include "gtest/gtest.h"

namespace grove {
namespace {

TEST(PrintableTest, KeepsPrintableAsciiTabsAndUtf8) {
  EXPECT_EQ(Printable("web1: ok\t[100%] ~/x\\y"), "web1: ok\t[100%] ~/x\\y");
  EXPECT_EQ(Printable("héllo → 世界 🌳"), "héllo → 世界 🌳");
  EXPECT_EQ(Printable("\u00a0nbsp"), "\u00a0nbsp");  // U+00A0: the first code point after C1.
  EXPECT_EQ(Printable(""), "");
}

TEST(PrintableTest, EscapesWhatATerminalWouldActOn) {
  // Clear the screen, set the title, write the clipboard (OSC 52), ring the bell.
  EXPECT_EQ(Printable("\x1b[2J\x1b]0;pwned\x07"), "\\x1b[2J\\x1b]0;pwned\\x07");
  EXPECT_EQ(Printable("\x1b]52;c;ZXZpbA==\x1b\\"), "\\x1b]52;c;ZXZpbA==\\x1b\\");
  // A forged second line, and a carriage return that overwrites the tag.
  EXPECT_EQ(Printable("a\n[master] b\rc"), "a\\n[master] b\\rc");
  EXPECT_EQ(Printable(std::string("nul\0del\x7f", 8)), "nul\\x00del\\x7f");
}

TEST(PrintableTest, EscapesC1ControlsAndBytesThatAreNotUtf8) {
  EXPECT_EQ(Printable("\xc2\x9b" "31m"), "\\xc2\\x9b31m");  // U+009B, CSI.
  EXPECT_EQ(Printable("\x9b" "31m"), "\\x9b31m");           // A bare C1 byte.
  EXPECT_EQ(Printable("\xff\xfe"), "\\xff\\xfe");
  EXPECT_EQ(Printable("\xc3"), "\\xc3");                     // Cut short.
  EXPECT_EQ(Printable("\xc0\xaf"), "\\xc0\\xaf");            // Overlong '/'.
  EXPECT_EQ(Printable("\xed\xa0\x80"), "\\xed\\xa0\\x80");   // A surrogate.
  EXPECT_EQ(Printable("\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80");  // Above U+10FFFF.
  EXPECT_EQ(Printable("ok\xe4\xb8"), "ok\\xe4\\xb8");
}

TEST(PrintableTest, PlainTextIsWhatPrintableKeepsOnOneLine) {
  EXPECT_TRUE(IsPlainText("web1"));
  EXPECT_TRUE(IsPlainText("db primary (\xc3\xa9t\xc3\xa9)"));  // Spaces and UTF-8.
  EXPECT_TRUE(IsPlainText(""));
  for (const char* text : {"a\tb", "a\nb", "a\rb", "a\x1b[2Jb", "a\x7f", "\xc2\x9b", "\xff",
                           "\xc3"}) {
    EXPECT_FALSE(IsPlainText(text)) << Printable(text);
  }
  EXPECT_FALSE(IsPlainText(std::string("a\0b", 3)));
}

}  // namespace
}  // namespace grove

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
