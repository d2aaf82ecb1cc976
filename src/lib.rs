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
//! Data flows up and down these layers, never sideways:
//!
//! - [`wire`]: frames and the connection preface, sans-IO decoding
//!   ([`wire::decode_head`], [`wire::FrameCodec`], the bare
//!   [`wire::BareCodec`]), streaming over async I/O ([`wire::FrameReader`],
//!   [`wire::FrameWriter`]), every limit a named constant, typed
//!   [`wire::Error`]s.
//! - [`transport`]: TCP as it is, or TLS 1.3 (rustls) with a generated
//!   certificate and the channel binding authentication is tied to.
//! - [`auth`]: key files and the mutual HMAC-SHA256 challenge-response.
//! - [`proto`]: the typed messages of the native protocol
//!   ([`proto::Message`]) and error codes.
//! - [`services`]: what requests do, apart from the wire: files under a
//!   sandboxed root ([`services::files`]) and processes in their own
//!   process group ([`services::exec`]).
//! - [`server`]: the listener, connection limits, time limits, graceful
//!   shutdown, and request dispatch.
//! - [`client`]: [`Client`], the typed async API a program uses to talk to
//!   a server.
//!
//! - [`text`]: [`text::printable`], for showing names and messages that
//!   came from a peer without letting them drive the terminal or forge
//!   lines.
//! - [`legacy`]: the tutorial's `struct.pack('i', …)` formats on their own
//!   listeners, so its Python clients work unmodified.
//!
//! The `framewire` binary (`src/main.rs`, `src/cli/`) only parses arguments
//! and calls this library.
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
//! let server = tokio::spawn(server::run(listener, server::Config::new("."), stopped));
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
