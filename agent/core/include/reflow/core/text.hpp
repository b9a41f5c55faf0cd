// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <string>
#include <string_view>

namespace agent {

/// `text` made safe to print on a terminal or into a log line: every control character — C0
/// (U+0000–U+001F, newline and tab included), DEL (U+007F) and C1 (U+0080–U+009F, where CSI
/// U+009B starts an escape sequence on some terminals) — and every byte that is not part of
/// valid UTF-8 (RFC 3629 §4) is written as `\xNN`, and a backslash as `\\`, so nothing a device
/// sent can move the cursor, change colours, retitle the window or start a forged line.
/// Everything else, non-ASCII text included, is kept as it is.
std::string printable_text(std::string_view text);

/// One RFC 4180 CSV field that a spreadsheet opens as text: printable_text's escapes except for
/// TAB, LF and CR, which a quoted field may hold; a leading `=`, `+`, `-`, `@`, TAB or CR (what
/// spreadsheets read as a formula: OWASP "CSV Injection") neutralised by a leading `'`; quoted
/// (RFC 4180 §2) when it holds `,`, `"`, CR or LF.
std::string csv_field(std::string_view value);

}  // namespace agent
