//! Just enough of Python's pickle format (protocol 2) to write the dict
//! `{1: "name", 2: "name", ...}` the tutorial's download client loads.

/// Pickles `{key: value, ...}` with int keys and str values, in order.
///
/// # Examples
///
/// ```
/// use framewire::legacy::pickle_dict;
/// assert_eq!(pickle_dict(&[(1, "a")]), b"\x80\x02}(K\x01X\x01\x00\x00\x00au.");
/// ```
pub fn pickle_dict(entries: &[(u32, &str)]) -> Vec<u8> {
    // PROTO 2, EMPTY_DICT, then MARK, the pairs, SETITEMS; STOP.
    let mut out = vec![0x80, 2, b'}'];
    if !entries.is_empty() {
        out.push(b'(');
        for (key, value) in entries {
            match *key {
                k if k < 0x100 => out.extend_from_slice(&[b'K', k as u8]),
                k if k < 0x1_0000 => {
                    out.push(b'M');
                    out.extend_from_slice(&(k as u16).to_le_bytes());
                }
                k => {
                    out.push(b'J');
                    out.extend_from_slice(&(k as i32).to_le_bytes());
                }
            }
            out.push(b'X');
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'u');
    }
    out.push(b'.');
    out
}
