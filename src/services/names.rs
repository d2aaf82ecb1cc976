//! Names that are not UTF-8, carried in strings (PROTOCOL.md §4.7.1).
//!
//! A Linux name is bytes (anything but NUL and `/`); the protocol's paths
//! are JSON strings, and so are framewire's. A name's valid UTF-8 is
//! carried as it is, and each byte of an invalid sequence as a NUL
//! followed by two lower-case hex digits (`\u0000ff` in JSON for the byte
//! 0xff). No name holds a NUL, so the form cannot be mistaken for a name,
//! and it is lossless. Exactly one form is accepted for each name (the
//! one [`encode`] gives): a NUL that does not start an escape of a byte
//! that UTF-8 could not have taken there is refused, so that two strings
//! never name one file (a partial file's name, say, spelled another way).
//!
//! Strings are decoded to bytes only where they meet the file system
//! ([`os`], [`decode`]), and shown escaped (`crate::text::printable`
//! shows such a byte as `\xHH`).

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The string that carries the name (or path) `raw`: itself where it is
/// UTF-8, else each byte of its invalid sequences escaped.
pub fn encode(raw: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(raw) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            let mut out = String::with_capacity(raw.len() + 8);
            for chunk in raw.utf8_chunks() {
                out.push_str(chunk.valid());
                for b in chunk.invalid() {
                    out.push('\0');
                    out.push_str(&format!("{b:02x}"));
                }
            }
            Cow::Owned(out)
        }
    }
}

/// The bytes `s` carries (see the module). A NUL that starts no escape
/// is kept as a NUL (which any system call refuses); check with
/// [`is_canonical`] first where a peer gave `s`.
pub fn decode(s: &str) -> Cow<'_, [u8]> {
    if !s.contains('\0') {
        return Cow::Borrowed(s.as_bytes());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == 0 {
            if let Some(byte) = b.get(i + 1..i + 3).and_then(hex_byte) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(out)
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

/// Whether `s` is the one form [`encode`] gives of what it carries: every
/// NUL starts an escape, and the escaped bytes are exactly the invalid
/// ones.
pub fn is_canonical(s: &str) -> bool {
    if !s.contains('\0') {
        return true;
    }
    let raw = decode(s);
    // A NUL that escaped nothing is still there: never a name's.
    !raw.contains(&0) && encode(&raw) == s
}

/// The name (or path) `s` carries, for the file system.
pub fn os(s: &str) -> Cow<'_, OsStr> {
    match decode(s) {
        Cow::Borrowed(b) => Cow::Borrowed(OsStr::from_bytes(b)),
        Cow::Owned(v) => Cow::Owned(std::ffi::OsStr::from_bytes(&v).to_owned()),
    }
}

/// [`os`] as a path.
pub fn path(s: &str) -> Cow<'_, Path> {
    match os(s) {
        Cow::Borrowed(o) => Cow::Borrowed(Path::new(o)),
        Cow::Owned(o) => Cow::Owned(o.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_in_one_form() {
        for raw in [&b"plain"[..], b"caf\xc3\xa9", b"bad\xff", b"\xfe\xff", b"mix\xc3\xa9\xff\xc3", b"\xed\xa0\x80"] {
            let s = encode(raw);
            assert_eq!(&*decode(&s), raw, "{s:?}");
            assert!(is_canonical(&s), "{s:?}");
            assert_eq!(os(&s).as_bytes(), raw);
        }
        assert_eq!(encode(b"a\xffb"), "a\u{0}ffb");
    }

    #[test]
    fn other_spellings_are_refused() {
        // An ASCII byte escaped: `.a.fwpart` spelled another way.
        assert!(!is_canonical(".a.fwpar\u{0}74"));
        // A valid UTF-8 sequence escaped.
        assert!(!is_canonical("caf\u{0}c3\u{0}a9"));
        // Upper-case digits, a bare NUL, a short escape.
        assert!(!is_canonical("x\u{0}FF"));
        assert!(!is_canonical("x\u{0}"));
        assert!(!is_canonical("x\u{0}f"));
        assert!(!is_canonical("\u{0}2f"), "a `/` never hides in a name");
        assert!(is_canonical("x\u{0}ff"));
    }
}
