//! Bodies compressed one by one with zstd: a `listing` body to a
//! `tree_list` with `compact` (PROTOCOL.md §4.6.3.1). A frame's body,
//! never the connection (that is `-z`, §3.4); the frame's length and
//! limits are the compressed body's, and what it expands to is bounded
//! by the receiver.

use std::io;

/// The zstd level: the fastest, as a listing is made while the tree is
/// walked.
const LEVEL: i32 = 1;

/// `body` compressed, if that makes it smaller.
pub fn compact(body: &[u8]) -> Option<Vec<u8>> {
    zstd::bulk::compress(body, LEVEL).ok().filter(|c| c.len() < body.len())
}

/// A body [`compact`] made, expanded to at most `most` bytes.
///
/// # Errors
///
/// Not one zstd frame, or one that expands past `most` (nothing past it
/// is held).
pub fn expand(body: &[u8], most: usize) -> io::Result<Vec<u8>> {
    zstd::bulk::Decompressor::new()?.decompress(body, most)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_expands_to_itself_within_its_bound_only() {
        let body = br#"[{"name":"a/b.txt","kind":"file","size":1}]"#.repeat(100);
        let small = compact(&body).expect("repetitive JSON compresses");
        assert!(small.len() < body.len() / 10, "{}", small.len());
        assert_eq!(expand(&small, body.len()).unwrap(), body);
        assert!(expand(&small, body.len() - 1).is_err(), "past its bound");
        assert!(expand(b"not zstd", 1 << 20).is_err());
        // Incompressible: left as it is.
        let noise: Vec<u8> =
            (0..4096u32).flat_map(|i| blake3::hash(&i.to_le_bytes()).as_bytes()[..4].to_vec()).collect();
        assert!(compact(&noise).is_none());
    }
}
