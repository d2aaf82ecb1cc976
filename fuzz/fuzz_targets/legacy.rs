//! Fuzz every legacy format (src/legacy/), through the functions the
//! listeners call on what they read: the `pack('i', …)` length
//! (`check_len`), the upload's header as the upload listener reads it
//! (length, then that many bytes, `parse_upload_header` and so
//! `plain_name`), an exec listener's command read (`parse_command`), a
//! download choice (`parse_choice`, against listings of several sizes)
//! and the answer to the HMAC challenge (`check_hmac_answer`). Each result
//! is checked against the format's rules restated here; nothing may panic.
//!
//! Input: the bytes of one read (or of the upload's length and header);
//! for the HMAC, a 32-byte challenge and the answer after it.
#![no_main]

mod common;

use framewire::auth::Key;
use framewire::legacy::{
    check_hmac_answer, check_len, parse_choice, parse_command, parse_upload_header, plain_name, LegacyError,
    COMMAND_READ, MAX_I32_SIZE, MAX_LEGACY_HEADER,
};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use md5::Md5;

/// A name the upload listener may write: one plain component that is no
/// partial file's name (`.NAME.fwpart`, as `services::root` has it).
fn is_plain(name: &str) -> bool {
    let partial = name.len() > ".".len() + ".fwpart".len() && name.starts_with('.') && name.ends_with(".fwpart");
    !name.is_empty() && !matches!(name, "." | "..") && !name.contains(['/', '\\', '\0']) && !partial
}

fn lengths(data: &[u8]) {
    let Some(raw) = data.get(..4) else { return };
    let raw: [u8; 4] = raw.try_into().unwrap();
    let len = i32::from_le_bytes(raw);
    for max in [0, 1, MAX_LEGACY_HEADER as u64, MAX_I32_SIZE, u64::MAX] {
        match check_len(raw, max) {
            Ok(n) => assert!(len > 0 && n == len as u64 && n <= max),
            Err(e) => {
                assert!(len <= 0 || len as u64 > max, "{len} refused for {max}");
                assert_eq!(e.to_string(), format!("bad length {len} (allowed 1..={max})"));
            }
        }
    }
}

/// The upload listener: a length, then exactly that many header bytes.
fn upload(data: &[u8]) {
    let Some((raw, rest)) = data.split_first_chunk::<4>() else { return };
    let Ok(len) = check_len(*raw, MAX_LEGACY_HEADER as u64) else { return };
    let Some(header) = rest.get(..len as usize) else { return }; // a short read: the listener closes
    header_rules(header);
}

fn header_rules(header: &[u8]) {
    match parse_upload_header(header) {
        Ok((name, size)) => {
            assert!(is_plain(&name), "{name:?}");
            assert_eq!(plain_name(&name).unwrap(), name);
            let value: serde_json::Value = serde_json::from_slice(header).unwrap();
            assert_eq!(value["filesize"].as_u64(), Some(size));
            assert!(value["filename"].as_str().unwrap().ends_with(&name));
        }
        Err(LegacyError::BadHeader(why)) => assert!(!why.is_empty()),
        Err(LegacyError::BadName(filename)) => {
            let last = filename.rsplit(['/', '\\']).next().unwrap();
            assert!(!is_plain(last), "{filename:?} refused");
        }
        Err(e) => panic!("unexpected {e}"),
    }
}

fn command(data: &[u8]) {
    let read = &data[..data.len().min(COMMAND_READ)];
    match parse_command(read) {
        Some(c) => {
            assert!(!c.is_empty() && c.trim() == c);
            assert!(c.len() <= 3 * read.len());
        }
        None => assert!(String::from_utf8_lossy(read).trim().is_empty()),
    }
}

fn choice(data: &[u8]) {
    let read = &data[..data.len().min(1024)];
    let text = String::from_utf8_lossy(read);
    let text = text.trim();
    for count in [0, 1, 2, 9, 10, 255, usize::MAX] {
        match parse_choice(read, count) {
            Ok(None) => assert!(read.is_empty() || text == "q"),
            Ok(Some(i)) => {
                assert!(i < count);
                assert!(!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()));
                assert_eq!(text.parse::<u64>().unwrap(), i as u64 + 1);
            }
            Err(LegacyError::NotDigits(c)) => {
                assert_eq!(c, text);
                assert!(c.is_empty() || !c.bytes().all(|b| b.is_ascii_digit()) || c.parse::<u64>().is_err());
            }
            Err(LegacyError::OutOfRange { choice, count: n }) => {
                assert_eq!(n, count);
                assert!(choice == 0 || choice > count as u64);
                assert_eq!(text.parse::<u64>().unwrap(), choice);
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

fn hmac_answer(data: &[u8]) {
    let key = Key::from_bytes([0x42; 32]);
    let (challenge, answer) = data.split_at(data.len().min(32));
    let mut mac = <Hmac<Md5> as Mac>::new_from_slice(key.to_line().as_bytes()).unwrap();
    mac.update(challenge);
    let real = hex::encode(mac.finalize().into_bytes());
    let ok = check_hmac_answer(&key, challenge, answer).is_ok();
    assert_eq!(ok, answer.eq_ignore_ascii_case(real.as_bytes()), "{answer:02x?}");
    assert!(check_hmac_answer(&key, challenge, real.as_bytes()).is_ok());
    assert!(check_hmac_answer(&key, challenge, real.to_uppercase().as_bytes()).is_ok());
}

fuzz_target!(|data: &[u8]| {
    lengths(data);
    upload(data);
    header_rules(data);
    command(data);
    choice(data);
    hmac_answer(data);
});
