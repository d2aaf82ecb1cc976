//! framewire: length-prefixed framing over TCP done properly, and a small
//! agent for commands and files built on it.
//!
//! TCP is a byte stream: two small writes can arrive as one read ("sticky
//! packets") and one large write over many reads ("half packets"). A frame
//! here is a `u32` big-endian header length, a UTF-8 JSON header, and a body
//! of the length the header declares; decoding never assumes one read is
//! one message. `docs/PROTOCOL.md` specifies the bytes.
//!
//! # Layout
//!
//! Layers, lowest first; each uses only those below it (checked by
//! `tests/layout.rs`, which also finds any import cycle):
//!
//! | layer | public | what it is |
//! |---|---|---|
//! | [`wire`] | yes | frames and the connection preface: sans-IO decoding ([`wire::decode_head`], [`wire::FrameCodec`], the bare [`wire::BareCodec`]), streaming over async I/O ([`wire::FrameReader`], [`wire::FrameWriter`]), every limit a named constant, typed [`wire::Error`]s |
//! | [`transport`] | yes | TCP as it is, or TLS 1.3 (rustls) with a generated certificate and the channel binding authentication is tied to |
//! | [`auth`] | yes | key files and the mutual HMAC-SHA256 challenge-response |
//! | [`proto`] | yes | one struct per message ([`proto::Put`], [`proto::FileReply`]…), each marked with its direction ([`proto::ToServer`], [`proto::ToClient`]), and the sets a reader expects at each point ([`proto::Request`], [`proto::Answer`]…); every message is one entry of one table |
//! | `services` | no | what requests do apart from the wire, failing with one typed `Fault` (kind and path) that one conversion turns into the wire's refusal: files under a root held open and resolved by descriptor, partial files, processes in their own group; and (feature `s3`, on by default) `services::bucket`, an object-store bucket as the root (listings, multipart uploads with resume records, ranged reads, moves as checked copies) |
//! | `session` | no | one established connection (reader, writer, time limits, cut-off, what each end may send) and the transfer steps both ends share: one `Receiver` that owns the partial file (server `put`, client `get`, legacy upload) and one `Sender` (server `get`, client `put`) |
//! | [`server`] | yes | listener, admission (the door: silent sets, the handshake table and its queue), handshake, then one dispatcher calling one handler per request, all of one shape, the file and tree ones generic over the root's storage (`server/storage`: a directory or a bucket, one seam at the level of transfer steps), the tree conversations socket-free state machines the I/O loops drive; [`server::Server`] opens a [`server::Root`] and serves it |
//! | [`client`] | yes | [`Client`], the typed async API over one connection, and [`client::tree`], copies of trees over several (each connection's streamed share driven by socket-free state machines) |
//! | [`legacy`] | yes | the tutorial's `struct.pack('i', …)` formats on their own listeners, so its Python clients work unmodified |
//!
//! [`text::printable`] shows names and messages that came from a peer
//! without letting them drive the terminal or forge lines.
//!
//! The `framewire` binary (`src/main.rs`, `src/cli/`, behind the default
//! `cli` feature) only parses arguments, draws progress, and words errors
//! in terms of its flags; `cargo build --lib --no-default-features` builds
//! the library without clap, indicatif, rustyline, anyhow or
//! tracing-subscriber.
//!
//! # Examples
//!
//! A server on an ephemeral loopback port, and a client echoing through it:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use framewire::{server, Client};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?.to_string();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(server::Server::open(server::Config::new(".")).await?.serve(listener, stopped));
//!
//! let mut client = Client::connect(&addr).await?;
//! assert_eq!(client.echo(b"sticky? not here").await?, "sticky? not here");
//!
//! drop(client);
//! stop.send(()).unwrap();
//! server.await??;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod auth;
pub mod client;
#[cfg(feature = "config")]
pub mod config;
pub mod delta;
pub mod legacy;
pub mod proto;
pub mod server;
mod services;
mod session;
pub mod text;
pub mod transport;
pub mod wire;

pub use client::{Client, ClientError};
pub use proto::ErrorCode;
