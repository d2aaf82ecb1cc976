//! How a header becomes a message of an expected set: one small parse of
//! the fields the data-path frames carry, which also reads the `"type"`
//! (into the table's field-less `Tag` enum, so choosing the message is one
//! integer compare), and for the other types a second parse into their own
//! struct. A known type outside the set is [`Error::Unexpected`]; a type
//! nobody defines is [`Error::UnknownType`]. Both leave the stream in sync.
//!
//! The small parse is the measured fast path: a data frame (`echo`,
//! `stdin`, `stdout`, `put_data`…) is decoded in one pass through a
//! five-field struct, with no buffering, no allocation and no second look.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use super::message::Hot;
use super::message::Message;
use crate::wire::{json_error, Error};

#[derive(Deserialize)]
struct HotParse<T> {
    #[serde(rename = "type")]
    kind: T,
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
struct TypeOnly<T> {
    #[serde(rename = "type")]
    kind: T,
}

#[derive(Deserialize)]
struct TypeText<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// A header's type (as a `T`: the table's `Tag`, or a string), and the
/// data-path fields if they parsed.
#[doc(hidden)]
pub struct Peek<T> {
    pub kind: T,
    hot: Option<Hot>,
}

/// The fast path alone: the type and the data-path fields, if the one
/// small parse takes the header (no error is built when it does not).
#[doc(hidden)]
#[inline]
pub fn peek_hot<T: DeserializeOwned>(text: &str) -> Option<(T, Hot)> {
    let p = serde_json::from_str::<HotParse<T>>(text).ok()?;
    Some((p.kind, Hot { len: p.len, upper: p.upper, eof: p.eof, offset: p.offset }))
}

/// Reads the `"type"` (and, when they parse, the data-path fields).
#[doc(hidden)]
#[inline]
pub fn peek<T: DeserializeOwned>(text: &str) -> Result<Peek<T>, Error> {
    if let Ok(p) = serde_json::from_str::<HotParse<T>>(text) {
        let hot = Hot { len: p.len, upper: p.upper, eof: p.eof, offset: p.offset };
        return Ok(Peek { kind: p.kind, hot: Some(hot) });
    }
    match serde_json::from_str::<TypeOnly<T>>(text) {
        Ok(t) => Ok(Peek { kind: t.kind, hot: None }),
        Err(e) => Err(json_error(text, e)),
    }
}

/// `M` built from the fast parse's fields, if it is a data-path message
/// and what it read is valid for it (a body-less type with a `len` is
/// left to [`member`], which refuses it).
#[doc(hidden)]
#[inline]
pub fn from_hot<M: Message>(hot: &Hot) -> Option<M> {
    if M::HAS_BODY || hot.len == 0 {
        M::from_hot(hot)
    } else {
        None
    }
}

/// The `len` the header declares, whatever its type.
fn declared_len(text: &str, hot: Option<Hot>) -> Result<u64, Error> {
    match hot {
        Some(hot) => Ok(hot.len),
        None => match crate::wire::declared_body_len(text) {
            Ok(len) => Ok(len),
            // `len` itself is unusable: the body length is unknown.
            Err(source) => Err(Error::HeaderNotJson { source }),
        },
    }
}

/// Decodes the header as `M`, whose type [`peek`] found.
#[doc(hidden)]
#[inline]
pub fn member<M: Message, T>(text: &str, peek: &Peek<T>) -> Result<M, Error> {
    let message = match peek.hot.as_ref().and_then(M::from_hot) {
        Some(m) => m,
        None => serde_json::from_str::<M>(text).map_err(|e| json_error(text, e))?,
    };
    if !M::HAS_BODY {
        // `len` is the body length of every frame: a type without a body
        // may not declare one.
        let len = declared_len(text, peek.hot)?;
        if len != 0 {
            let why = format!("`{}` carries no body, but `len` is {len}", M::KIND);
            return Err(Error::InvalidField { source: serde::de::Error::custom(why), body_len: len });
        }
    }
    Ok(message)
}

/// The error for a header whose type is not among those `expected`:
/// [`Error::Unexpected`] if it is one of the `known` types. Off the fast
/// path: the type is read again, as text.
#[doc(hidden)]
#[cold]
pub fn stranger<T>(text: &str, peek: &Peek<T>, expected: &'static str, known: &[&str]) -> Error {
    let body_len = match declared_len(text, peek.hot) {
        Ok(len) => len,
        Err(e) => return e,
    };
    let kind = match serde_json::from_str::<TypeText>(text) {
        Ok(t) => t.kind.into_owned(),
        Err(e) => return json_error(text, e),
    };
    if known.contains(&kind.as_str()) {
        Error::Unexpected { kind, expected, body_len }
    } else {
        Error::UnknownType { kind, body_len }
    }
}

/// Decodes a header that must be an `M`, whose tag is `tag`.
pub(crate) fn only<M: Message, T: DeserializeOwned + PartialEq>(
    text: &str,
    tag: T,
    known: &[&str],
) -> Result<M, Error> {
    let peek = peek::<T>(text)?;
    if peek.kind == tag {
        member(text, &peek)
    } else {
        Err(stranger(text, &peek, M::KIND, known))
    }
}
