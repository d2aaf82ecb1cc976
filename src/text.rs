//! Showing text that came from the other side of a connection.
//!
//! File names and error messages from a server (or, in the server's logs,
//! paths and commands from a client) are chosen by the peer. Printed as
//! they are, a name holding `ESC ] 0 ; … BEL` retitles the terminal, a
//! carriage return overwrites what a line said, a newline forges a line
//! of a listing or a log, and a bidirectional override shows a name in an
//! order other than its bytes (scp's CVE-2019-6109 was this, in its
//! progress display). [`printable`] escapes those characters, and nothing
//! else, so ordinary names, including non-ASCII ones, print as they are.

use std::borrow::Cow;
use std::fmt::Write;

/// `s` with every character that can move the cursor, change the
/// terminal, start a new line, or reorder the text shown, escaped: `\n`,
/// `\r`, `\t`, `\\`, `\xNN` for the other C0 controls and DEL, and
/// `\u{NNNN}` for the C1 controls and the bidirectional formatting
/// characters. A backslash is doubled so that an escaped name cannot pass
/// for a different one. Borrows when there is nothing to escape.
///
/// ```
/// use framewire::text::printable;
///
/// assert_eq!(printable("report-é.txt"), "report-é.txt");
/// assert_eq!(printable("a\nb\x1b]0;owned\x07"), "a\\nb\\x1b]0;owned\\x07");
/// assert_eq!(printable("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
/// // A name's byte that is not UTF-8, as the protocol carries it.
/// assert_eq!(printable("bad\u{0}ff.txt"), "bad\\xff.txt");
/// ```
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        // A NUL and two hex digits: a name's byte that is not UTF-8
        // (PROTOCOL.md §4.7.1), shown as the byte.
        if c == '\0' {
            let rest = chars.clone().take(2).collect::<String>();
            if rest.len() == 2 && rest.bytes().all(|b| b.is_ascii_hexdigit()) {
                let _ = write!(out, "\\x{rest}");
                chars.nth(1);
                continue;
            }
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x80 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control() || is_bidi_control(c)
}

/// The characters that change the display order of the text around them
/// (Unicode's Bidi_Control property).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A local path as messages carry it: losslessly, a name's byte that is
/// not UTF-8 escaped as the protocol escapes it (PROTOCOL.md §4.7.1),
/// which [`printable`] then shows as `\xHH`.
pub fn shown_path(path: &std::path::Path) -> String {
    crate::services::names::encode(path.as_os_str().as_encoded_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::printable;
    use std::borrow::Cow;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for s in ["", "a.txt", "dir/sub file (1).tar.gz", "naïve-日本語-😀", "quotes \" and '"] {
            assert!(matches!(printable(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
    }

    #[test]
    fn every_control_character_is_escaped() {
        let all: String = (0u32..=0x10ffff).filter_map(char::from_u32).collect();
        let shown = printable(&all);
        assert!(
            !shown.chars().any(|c| c.is_control() || super::is_bidi_control(c)),
            "nothing that moves the cursor or reorders text is left"
        );
        assert_eq!(printable("\x00\x1b\x7f\u{85}\u{9b}\u{2067}"), "\\x00\\x1b\\x7f\\u{0085}\\u{009b}\\u{2067}");
    }

    #[test]
    fn escaped_names_stay_distinct() {
        // A name holding a backslash-n and a name holding a newline must
        // not print the same.
        assert_ne!(printable("a\\nb"), printable("a\nb"));
        assert_eq!(printable("a\\nb"), "a\\\\nb");
    }
}
