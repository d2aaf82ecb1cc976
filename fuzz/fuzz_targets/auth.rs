//! Fuzz the authentication messages: the input as text through
//! `auth::from_hex` (checked against a plain hex decoder written here),
//! and as frames through the reader both sides use before authentication
//! (`PREAUTH_MAX_HEADER`), each `auth_challenge`, `auth_response` and
//! `auth_ok` handled as `server::conn::authenticate` and
//! `Client::handshake` do: nonces and proofs decoded from hex, a proof
//! checked against the transcript; and the keys-per-person messages
//! (`auth_publickey`, `auth_offer`, a challenge's host key): keys parsed
//! from their `ssh-ed25519 AAAA…` text, signatures decoded and checked. A
//! forged proof or signature must never verify, the real one always
//! must, and nothing may panic.
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

/// A fixed key, as a test's: seed `seed` repeated.
fn fixed(seed: u8) -> ssh_key::PrivateKey {
    use ssh_key::private::{Ed25519Keypair, KeypairData};
    ssh_key::PrivateKey::new(KeypairData::Ed25519(Ed25519Keypair::from_seed(&[seed; 32])), "").unwrap()
}

/// What the server does with an `auth_publickey`: the key parsed, the
/// signature checked over the client transcript; only the real
/// signature of the real key verifies.
fn server_checks_key(nonce: &str, key: &str, signature: &str) {
    use framewire::auth::identity;
    let Some(client_nonce) = hex_field::<NONCE_LEN>(nonce) else { return };
    let host = fixed(7);
    let Some(public) = identity::from_wire(key) else { return };
    let signed = identity::client_transcript((&SERVER_NONCE, &client_nonce), &BINDING, host.public_key(), &public);
    let sig = hex::decode(signature).unwrap_or_default();
    let user = fixed(9);
    let real = framewire::auth::Identity::File { key: Box::new(user.clone()), path: Default::default() }
        .sign(&signed)
        .unwrap();
    let verified = identity::verify(&public, &signed, &sig);
    if public.key_data() == user.public_key().key_data() {
        assert_eq!(verified, sig == real, "only the real signature verifies");
        assert!(identity::verify(&public, &signed, &real));
    } else {
        assert!(!verified, "a signature no one here could make verified");
    }
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
                Message::AuthChallenge(proto::AuthChallenge { nonce, host_key, host_signature, .. }) => {
                    assert_eq!(len, 0);
                    challenge = hex_field::<NONCE_LEN>(&nonce);
                    if let Some(n) = &challenge {
                        client_checks(n, None);
                        // The host key's signature, as the client checks it.
                        use framewire::auth::identity;
                        if let Some(host) = host_key.as_deref().and_then(identity::from_wire) {
                            let sig = host_signature.as_deref().and_then(|s| hex::decode(s).ok()).unwrap_or_default();
                            let _ = identity::verify(&host, &identity::server_transcript(n, &BINDING, &host), &sig);
                        }
                    }
                }
                Message::AuthPublickey(proto::AuthPublickey { nonce, key, signature }) => {
                    assert_eq!(len, 0);
                    server_checks_key(&nonce, &key, &signature);
                }
                Message::AuthOffer(proto::AuthOffer { keys }) => {
                    for k in keys.iter().take(16) {
                        let _ = framewire::auth::identity::from_wire(k);
                    }
                }
                Message::AuthResponse(proto::AuthResponse { nonce, proof }) => {
                    assert_eq!(len, 0);
                    server_checks(&nonce, &proof);
                }
                Message::AuthOk(proto::AuthOk { proof, .. }) => {
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
