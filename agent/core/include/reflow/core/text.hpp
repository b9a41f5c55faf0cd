// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace agent {

/// `text` made safe to print on a terminal or into a log line: every control character — C0
/// (U+0000–U+001F, newline and tab included), DEL (U+007F) and C1 (U+0080–U+009F, where CSI
/// U+009B starts an escape sequence on some terminals) — and every byte that is not part of
/// valid UTF-8 (RFC 3629 §4) is written as `\xNN`, and a backslash as `\\`, so nothing a device
/// sent can move the cursor, change colours, retitle the window or start a forged line.
/// Everything else, non-ASCII text included, is kept as it is.
std::string printable_text(std::string_view text);

/// `text` cut to at most `max_bytes` bytes plus "…" when it is longer, the cut moved back to the
/// start of a UTF-8 sequence (RFC 3629 §3) so that valid UTF-8 stays valid: a message that quotes
/// a value must still serialize as JSON (nlohmann_json refuses invalid UTF-8). Text that is not
/// valid UTF-8 to begin with should go through printable_text first.
std::string shortened_text(std::string_view text, std::size_t max_bytes);

/// The byte offset of the first control character in `text`, or std::string_view::npos: C0
/// (U+0000–U+001F), DEL (U+007F) and C1 (U+0080–U+009F, UTF-8 C2 80–C2 9F), which is how a
/// device's string would drive a terminal or forge a log line. With `allow_tab_lf`, TAB and LF
/// are text: PROTOCOL §4 Limits lets an event's strings hold those two and no other, and its
/// member names none at all.
std::size_t find_control_character(std::string_view text, bool allow_tab_lf) noexcept;

/// One RFC 4180 CSV field that a spreadsheet opens as text: printable_text's escapes except for
/// TAB, LF and CR, which a quoted field may hold; a leading `=`, `+`, `-`, `@`, TAB or CR (what
/// spreadsheets read as a formula: OWASP "CSV Injection") neutralised by a leading `'`; quoted
/// (RFC 4180 §2) when it holds `,`, `"`, CR or LF.
std::string csv_field(std::string_view value);

/// `rows` (the first one the header) as columns aligned with spaces, two between columns, one
/// line per row; the last column is not padded (no trailing blanks). Widths count bytes: the
/// cells should be printable_text already. "" when `rows` is empty.
std::string aligned_table(const std::vector<std::vector<std::string>>& rows);

}  // namespace agent
