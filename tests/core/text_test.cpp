// SPDX-License-Identifier: AGPL-3.0-or-later
#include <reflow/core/text.hpp>

#include <gtest/gtest.h>

namespace agent {
namespace {

TEST(TextTest, PrintableTextKeepsTextAndEscapesWhatDrivesATerminal) {
  EXPECT_EQ(printable_text("spool-3 Füllung 5 € ✓"), "spool-3 Füllung 5 € ✓");
  EXPECT_EQ(printable_text("a\nb\tc\rd"), "a\\x0ab\\x09c\\x0dd");
  EXPECT_EQ(printable_text("\x1b[2J\x07\x7f"), "\\x1b[2J\\x07\\x7f");
  EXPECT_EQ(printable_text("csi \xc2\x9b"
                           "31m"),
            "csi \\xc2\\x9b31m");                             // C1 CSI
  EXPECT_EQ(printable_text("nbsp\xc2\xa0"), "nbsp\xc2\xa0");  // not a control
  EXPECT_EQ(printable_text(std::string_view("nul\0", 4)), "nul\\x00");
  EXPECT_EQ(printable_text("back\\slash"), "back\\\\slash");  // "\x1b" typed as text stays apart
}

TEST(TextTest, PrintableTextEscapesEveryByteThatIsNotUtf8) {
  EXPECT_EQ(printable_text("\xff"), "\\xff");
  EXPECT_EQ(printable_text("\xc0\xaf"), "\\xc0\\xaf");                    // overlong '/'
  EXPECT_EQ(printable_text("\xed\xa0\x80"), "\\xed\\xa0\\x80");           // a surrogate
  EXPECT_EQ(printable_text("\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80");  // above U+10FFFF
  EXPECT_EQ(printable_text("cut \xe2\x82"), "cut \\xe2\\x82");            // truncated €
  EXPECT_EQ(printable_text("\xf0\x9f\x94\xa7"), "\xf0\x9f\x94\xa7");      // 🔧
}

TEST(TextTest, ShortenedTextCutsAtACharacterBoundary) {
  EXPECT_EQ(shortened_text("short", 60), "short");
  EXPECT_EQ(shortened_text("abcdef", 6), "abcdef");
  EXPECT_EQ(shortened_text("abcdefg", 6), "abcdef…");
  // "€" is E2 82 AC at bytes 3-5: a cut at 4 or 5 goes back to 3.
  EXPECT_EQ(shortened_text("abc€def", 4), "abc…");
  EXPECT_EQ(shortened_text("abc€def", 5), "abc…");
  EXPECT_EQ(shortened_text("abc€def", 6), "abc€…");
}

TEST(TextTest, CsvFieldNeutralisesFormulasAndKeepsQuotedLineBreaks) {
  EXPECT_EQ(csv_field("=1+1"), "'=1+1");
  EXPECT_EQ(csv_field("+1"), "'+1");
  EXPECT_EQ(csv_field("-1"), "'-1");
  EXPECT_EQ(csv_field("@SUM(A1)"), "'@SUM(A1)");
  EXPECT_EQ(csv_field("\tx"), "'\tx");
  EXPECT_EQ(csv_field("\r=x"), "\"'\r=x\"");
  EXPECT_EQ(csv_field("a=b"), "a=b");
  EXPECT_EQ(csv_field("two\nlines"), "\"two\nlines\"");
  EXPECT_EQ(csv_field("esc\x1b[31m"), "esc\\x1b[31m");
  EXPECT_EQ(csv_field("=\"x\",y"), "\"'=\"\"x\"\",y\"");
}

TEST(TextTest, FindControlCharacterFindsC0DelAndC1) {
  constexpr auto npos = std::string_view::npos;
  EXPECT_EQ(find_control_character("plain ünïcode – text", false), npos);
  EXPECT_EQ(find_control_character("a\tb\nc", true), npos);
  EXPECT_EQ(find_control_character("a\tb", false), 1U);
  EXPECT_EQ(find_control_character("ab\nc", false), 2U);
  EXPECT_EQ(find_control_character("abc\rd", true), 3U);
  EXPECT_EQ(find_control_character(std::string_view("a\0b", 3), true), 1U);
  EXPECT_EQ(find_control_character("x\x7f", true), 1U);
  EXPECT_EQ(find_control_character("CSI \xc2\x9b", true), 4U);     // U+009B
  EXPECT_EQ(find_control_character("nbsp \xc2\xa0", true), npos);  // U+00A0 is text
  EXPECT_EQ(find_control_character("cut \xc2", true), npos);
}

}  // namespace
}  // namespace agent
