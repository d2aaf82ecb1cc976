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

/// The magic number that starts a zstd frame (RFC 8878 §3.1.1), as it
/// is on the wire.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// A body [`compact`] made, expanded to at most `most` bytes: exactly one
/// zstd frame (no skippable frame, nothing after it) that states its
/// content size, at most `most`, and expands to that size.
///
/// # Errors
///
/// `InvalidData` for anything else (nothing past the stated size is
/// held).
pub fn expand(body: &[u8], most: usize) -> io::Result<Vec<u8>> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    if !body.starts_with(&ZSTD_MAGIC) {
        return Err(bad("not a zstd frame".to_owned()));
    }
    match zstd::zstd_safe::find_frame_compressed_size(body) {
        Ok(n) if n == body.len() => {}
        Ok(n) => return Err(bad(format!("{} bytes after the zstd frame", body.len() - n))),
        Err(_) => return Err(bad("a zstd frame cut short or damaged".to_owned())),
    }
    let size = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(size)) => size,
        Ok(None) => return Err(bad("a zstd frame that does not state its size".to_owned())),
        Err(_) => return Err(bad("a damaged zstd frame header".to_owned())),
    };
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s <= most)
        .ok_or_else(|| bad(format!("expands to {size} bytes, over {most}")))?;
    let out = zstd::bulk::Decompressor::new()?.decompress(body, size).map_err(|e| bad(e.to_string()))?;
    if out.len() != size {
        return Err(bad(format!("expands to {} bytes, not the {size} it states", out.len())));
    }
    Ok(out)
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
        // Two frames, a frame and trailing bytes, a frame cut short.
        assert!(expand(&[small.clone(), small.clone()].concat(), 1 << 20).is_err());
        assert!(expand(&[small.as_slice(), b"x"].concat(), 1 << 20).is_err());
        assert!(expand(&small[..small.len() - 1], 1 << 20).is_err());
        // A skippable frame (magic 0x184D2A50) before a good one.
        let mut skippable = vec![0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        skippable.extend_from_slice(&small);
        assert!(expand(&skippable, 1 << 20).is_err());
        // A frame that does not state its size (streamed).
        let mut streamed = Vec::new();
        {
            use std::io::Write;
            let mut encoder = zstd::stream::write::Encoder::new(&mut streamed, 1).unwrap();
            encoder.include_contentsize(false).unwrap();
            encoder.write_all(&body).unwrap();
            encoder.finish().unwrap();
        }
        assert!(expand(&streamed, 1 << 20).is_err());
        // Incompressible: left as it is.
        let noise: Vec<u8> =
            (0..4096u32).flat_map(|i| blake3::hash(&i.to_le_bytes()).as_bytes()[..4].to_vec()).collect();
        assert!(compact(&noise).is_none());
    }
}
