//! How a header becomes a message of an expected set: one small parse of
//! the fields the data-path frames carry (which also yields the `"type"`),
//! and for the other types a second parse into their own struct. A known
//! type outside the set is [`Error::Unexpected`]; a type nobody defines is
//! [`Error::UnknownType`]. Both leave the stream in sync.
//!
//! The small parse is the measured fast path: a data frame (`echo`,
//! `stdin`, `stdout`, `put_data`…) is decoded in one pass through a
//! five-field struct, with no buffering and no second look.

use std::borrow::Cow;

use serde::Deserialize;

pub use super::message::Hot;
use super::message::Message;
use crate::wire::{json_error, Envelope, Error};

#[derive(Deserialize)]
struct HotParse<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    len: u64,
    #[serde(default)]
    upper: bool,
    #[serde(default)]
    eof: bool,
    #[serde(default)]
    offset: u64,
}

#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// A header's type, and the data-path fields if they parsed.
#[doc(hidden)]
pub struct Peek<'a> {
    pub kind: Cow<'a, str>,
    hot: Option<Hot>,
}

/// Reads the `"type"` (and, when they parse, the data-path fields).
#[doc(hidden)]
pub fn peek(text: &str) -> Result<Peek<'_>, Error> {
    if let Ok(p) = serde_json::from_str::<HotParse>(text) {
        let hot = Hot { len: p.len, upper: p.upper, eof: p.eof, offset: p.offset };
        return Ok(Peek { kind: p.kind, hot: Some(hot) });
    }
    match serde_json::from_str::<Tag>(text) {
        Ok(tag) => Ok(Peek { kind: tag.kind, hot: None }),
        Err(e) => Err(json_error(text, e)),
    }
}

/// The `len` the header declares, whatever its type.
fn declared_len(text: &str, peek: &Peek) -> Result<u64, Error> {
    match peek.hot {
        Some(hot) => Ok(hot.len),
        None => match serde_json::from_str::<Envelope>(text) {
            Ok(envelope) => Ok(envelope.len),
            // `len` itself is unusable: the body length is unknown.
            Err(source) => Err(Error::HeaderNotJson { source }),
        },
    }
}

/// Decodes the header as `M`, whose type [`peek`] found.
#[doc(hidden)]
pub fn member<M: Message>(text: &str, peek: &Peek) -> Result<M, Error> {
    let message = match peek.hot.as_ref().and_then(M::from_hot) {
        Some(m) => m,
        None => serde_json::from_str::<M>(text).map_err(|e| json_error(text, e))?,
    };
    if !M::HAS_BODY {
        // `len` is the body length of every frame: a type without a body
        // may not declare one.
        let len = declared_len(text, peek)?;
        if len != 0 {
            let why = format!("`{}` carries no body, but `len` is {len}", M::KIND);
            return Err(Error::InvalidField { source: serde::de::Error::custom(why), body_len: len });
        }
    }
    Ok(message)
}

/// The error for a header whose type is not among those `expected`:
/// [`Error::Unexpected`] if it is one of the `known` types.
#[doc(hidden)]
pub fn stranger(text: &str, peek: &Peek, expected: &'static str, known: &[&str]) -> Error {
    let body_len = match declared_len(text, peek) {
        Ok(len) => len,
        Err(e) => return e,
    };
    let kind = peek.kind.clone().into_owned();
    if known.contains(&kind.as_str()) {
        Error::Unexpected { kind, expected, body_len }
    } else {
        Error::UnknownType { kind, body_len }
    }
}

/// Decodes a header that must be an `M`.
pub(crate) fn only<M: Message>(text: &str, known: &[&str]) -> Result<M, Error> {
    let peek = peek(text)?;
    if peek.kind == M::KIND {
        member(text, &peek)
    } else {
        Err(stranger(text, &peek, M::KIND, known))
    }
}
