//! Fuzz what the client makes of a server's `list_reply` and `stat_reply`
//! (src/client/files.rs): the input as a `list_reply` body through
//! `parse_listing`, which `Client::list` and `Client::tree` call on the
//! body they read; and as frames, read the way `list_request` and `stat`
//! read them. A listing is accepted only if every name is a plain
//! relative path (restated here, CVE-2019-6111), an accepted listing
//! survives a round trip, and nothing may panic.
//!
//! Input: the body, or read sizes (a length byte, then at most 16) and
//! frames.
#![no_main]

mod common;

use common::{block_on, Chunked, Input};
use framewire::client::parse_listing;
use framewire::wire::{self, FrameReader, MAX_BUFFERED_BODY};
use framewire::{ClientError};
use framewire::proto::{self, AnyMessage as Message};
use libfuzzer_sys::fuzz_target;

/// Names the client may join onto a local directory.
fn is_plain_relative(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\0')
        && name.split('/').all(|part| !matches!(part, "" | "." | ".."))
}

fn body_rules(body: &[u8]) {
    match parse_listing(body) {
        Ok(entries) => {
            assert!(entries.iter().all(|e| is_plain_relative(&e.name)));
            let again = parse_listing(&serde_json::to_vec(&entries).unwrap()).unwrap();
            assert_eq!(again, entries);
        }
        Err(ClientError::UnsafeName(name)) => assert!(!is_plain_relative(&name), "{name:?} refused"),
        Err(ClientError::Wire(e @ wire::Error::InvalidField { .. })) => {
            assert_eq!(e.body_len(), Some(body.len() as u64));
            let _ = e.to_string();
        }
        Err(e) => panic!("unexpected {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    body_rules(data);

    let mut input = Input(data);
    let sizes = input.field(16);
    let mut reader = FrameReader::new(Chunked::new(input.rest(), sizes));
    for _ in 0..8 {
        match block_on(reader.read_head::<Message>()) {
            Ok(Some((Message::ListReply(proto::ListReply { len }), n))) => {
                assert_eq!(len, n);
                match block_on(reader.read_body(MAX_BUFFERED_BODY)) {
                    Ok(body) => body_rules(&body),
                    Err(_) => return,
                }
            }
            // `stat` hands the entry over as it came: only the header
            // decoder stands between it and the caller.
            Ok(Some((Message::StatReply(proto::StatReply { entry }), n))) => {
                assert_eq!(n, 0);
                let _ = serde_json::to_string(&entry).unwrap();
            }
            // Anything else is `unexpected` (or, for an error frame,
            // the server's refusal) to the client.
            Ok(Some((other, _))) => {
                let _ = other.kind();
            }
            Ok(None) | Err(_) => return,
        }
    }
});
