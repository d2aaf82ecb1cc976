//! BLAKE3 of a file uploaded in parts, from each part's chaining value.
//!
//! BLAKE3 is a tree hash: a file's hash is the root of a left-balanced
//! binary tree over its 1 KiB chunks. With parts of [`PART`] bytes (a
//! power of two), every part starts at a multiple of its own size, so each
//! part is a whole subtree of that tree, the last one too (what is left
//! after the largest power-of-two left subtrees, all multiples of
//! [`PART`]). A part's chaining value is hashed alone, in parallel with
//! others, and kept in the upload's resume record; the whole-file hash,
//! and the hash of any prefix of whole parts, is merged from them without
//! reading a byte again (the `blake3::hazmat` API, which exists for this).

use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode};

/// The size of an upload part (the last may be shorter).
pub const PART: u64 = 8 * 1024 * 1024;

/// The chaining value of the part at `offset` (a multiple of [`PART`]).
/// At most [`PART`] bytes.
pub fn part_cv(offset: u64, data: &[u8]) -> ChainingValue {
    debug_assert!(offset % PART == 0 && data.len() as u64 <= PART && !data.is_empty());
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(data);
    h.finalize_non_root()
}

/// The hash of a file made of `parts` (each [`PART`] bytes but the last,
/// which is `last_len`), from their chaining values; at least two parts
/// (a file of one part is hashed as a whole).
pub fn root(parts: &[ChainingValue], last_len: u64) -> blake3::Hash {
    assert!(parts.len() >= 2, "a file of one part is hashed whole");
    let total = (parts.len() as u64 - 1) * PART + last_len;
    let left = left_subtree_len(total);
    let k = (left / PART) as usize;
    let right_len = total - left;
    merge_subtrees_root(&subtree(&parts[..k], left), &subtree(&parts[k..], right_len), Mode::Hash)
}

/// The chaining value of the subtree of `parts`, `len` bytes in all.
fn subtree(parts: &[ChainingValue], len: u64) -> ChainingValue {
    if parts.len() == 1 {
        return parts[0];
    }
    let left = left_subtree_len(len);
    let k = (left / PART) as usize;
    merge_subtrees_non_root(&subtree(&parts[..k], left), &subtree(&parts[k..], len - left), Mode::Hash)
}

/// Hex of a chaining value, as records keep it.
pub fn cv_hex(cv: &ChainingValue) -> String {
    blake3::Hash::from_bytes(*cv).to_hex().to_string()
}

/// A chaining value from [`cv_hex`].
pub fn cv_from_hex(hex: &str) -> Option<ChainingValue> {
    blake3::Hash::from_hex(hex).ok().map(|h| *h.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x9e37_79b9;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn merged_part_hashes_are_the_files_hash() {
        let part = PART as usize;
        for len in [part + 1, 2 * part, 2 * part + 1023, 3 * part + 5, 5 * part - 1, 8 * part + 7] {
            let file = data(len);
            let cvs: Vec<_> = file.chunks(part).enumerate().map(|(i, c)| part_cv((i * part) as u64, c)).collect();
            let last = (len - (cvs.len() - 1) * part) as u64;
            assert_eq!(root(&cvs, last), blake3::hash(&file), "{len} bytes");
            // A prefix of whole parts, as a resume offers it.
            if len >= 2 * part {
                assert_eq!(root(&cvs[..2], PART), blake3::hash(&file[..2 * part]), "{len} bytes, 2 parts");
            }
        }
    }
}
