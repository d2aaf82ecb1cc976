//! Fuzz the authentication messages: the input as text through
//! `auth::from_hex` (checked against a plain hex decoder written here),
//! and as frames through the reader both sides use before authentication
//! (`PREAUTH_MAX_HEADER`), each `auth_challenge`, `auth_response` and
//! `auth_ok` handled as `server::conn::authenticate` and
//! `Client::handshake` do: nonces and proofs decoded from hex, a proof
//! checked against the transcript. A forged proof must never verify, the
//! real one always must, and nothing may panic.
//!
//! Input: the text, or read sizes (a length byte, then at most 16) and
//! frames.
#![no_main]

mod common;

use common::{block_on, Chunked, Input};
use framewire::auth::{self, Key, Role, Transcript, BINDING_LEN, NONCE_LEN};
use framewire::wire::{FrameReader, PREAUTH_MAX_HEADER};
use framewire::proto::{self, AnyMessage as Message};
use libfuzzer_sys::fuzz_target;

/// `from_hex` as the specification says: exactly `2 * N` hex digits of
/// either case, nothing else.
fn oracle<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let raw = text.as_bytes();
    if raw.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in raw.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn hex_field<const N: usize>(text: &str) -> Option<[u8; N]> {
    let got = auth::from_hex::<N>(text);
    assert_eq!(got, oracle::<N>(text), "{text:?}");
    if let Some(bytes) = got {
        assert_eq!(hex::encode(bytes), text.to_ascii_lowercase());
    }
    got
}

const SERVER_NONCE: [u8; NONCE_LEN] = [0x5a; NONCE_LEN];
const BINDING: [u8; BINDING_LEN] = [0xb1; BINDING_LEN];

fn key() -> Key {
    Key::from_bytes([0x42; 32])
}

/// What the server does with an `auth_response`.
fn server_checks(nonce: &str, proof: &str) {
    let (Some(client_nonce), Some(proof)) = (hex_field::<NONCE_LEN>(nonce), hex_field::<32>(proof)) else {
        return;
    };
    let t = Transcript { server_nonce: &SERVER_NONCE, client_nonce: &client_nonce, binding: &BINDING };
    let real = auth::prove(&key(), Role::Client, &t);
    assert_eq!(auth::verify(&key(), Role::Client, &t, &proof), proof == real);
    assert!(auth::verify(&key(), Role::Client, &t, &real));
    assert!(!auth::verify(&key(), Role::Server, &t, &real), "a client proof passed for the server");
}

/// What the client does with an `auth_challenge`, then an `auth_ok`.
fn client_checks(server_nonce: &[u8; NONCE_LEN], proof: Option<&str>) {
    let client_nonce = [0x3c; NONCE_LEN];
    let t = Transcript { server_nonce, client_nonce: &client_nonce, binding: &BINDING };
    let ours = auth::prove(&key(), Role::Client, &t);
    assert_eq!(auth::from_hex::<32>(&hex::encode(ours)), Some(ours));
    if let Some(proof) = proof.and_then(hex_field::<32>) {
        let real = auth::prove(&key(), Role::Server, &t);
        assert_eq!(auth::verify(&key(), Role::Server, &t, &proof), proof == real);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        hex_field::<NONCE_LEN>(text);
        hex_field::<16>(text);
        hex_field::<1>(text);
        hex_field::<0>(text);
    }

    let mut input = Input(data);
    let sizes = input.field(16);
    let mut reader = FrameReader::new(Chunked::new(input.rest(), sizes));
    reader.set_max_header(PREAUTH_MAX_HEADER);
    let mut challenge = None;
    // Either side reads at most two frames before authentication is over
    // or has failed; a few more keep the fuzzer's options open.
    for _ in 0..8 {
        match block_on(reader.read_head::<Message>()) {
            Ok(Some((message, len))) => match message {
                Message::AuthChallenge(proto::AuthChallenge { nonce }) => {
                    assert_eq!(len, 0);
                    challenge = hex_field::<NONCE_LEN>(&nonce);
                    if let Some(n) = &challenge {
                        client_checks(n, None);
                    }
                }
                Message::AuthResponse(proto::AuthResponse { nonce, proof }) => {
                    assert_eq!(len, 0);
                    server_checks(&nonce, &proof);
                }
                Message::AuthOk(proto::AuthOk { proof }) => {
                    assert_eq!(len, 0);
                    client_checks(challenge.as_ref().unwrap_or(&SERVER_NONCE), Some(&proof));
                }
                other => {
                    let _ = other.kind();
                }
            },
            Ok(None) => return,
            Err(e) => {
                // Both sides give up on any error here, recoverable or not.
                let _ = e.to_string();
                return;
            }
        }
    }
});
