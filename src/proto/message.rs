//! What a message is: the trait every message struct implements, and the
//! markers of the way it goes.

use crate::wire::FrameHeader;

/// What every message struct knows about itself. Implemented by the table
/// (`messages!`), for every message and no other type.
pub trait Message: FrameHeader + serde::de::DeserializeOwned + 'static {
    /// The `"type"` tag on the wire.
    const KIND: &'static str;
    /// Whether the frame carries a body (of the header's `len`).
    const HAS_BODY: bool;
    /// The message built from the fields of the fast parse, for the types
    /// on the data paths; `None` for the others (they parse in full).
    #[doc(hidden)]
    fn from_hot(hot: &Hot) -> Option<Self>;
}

/// A message a client sends. A server's session cannot send one.
pub trait ToServer: Message {}
/// A message a server sends. A client cannot send one.
pub trait ToClient: Message {}
/// A message either side sends (the `checksum` trailer).
pub trait ToBoth: ToServer + ToClient {}

/// The fields of the data-path frames, as the fast parse found them.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Hot {
    pub len: u64,
    pub upper: bool,
    pub eof: bool,
    pub offset: u64,
}
