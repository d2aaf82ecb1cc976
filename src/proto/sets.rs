//! The sets of messages that may arrive at each point of a conversation,
//! one enum each: what a server reads between requests ([`Request`]), and
//! during an exec ([`ExecInput`]); what a client reads during an exec
//! ([`ExecOutput`]) and as the answer to any other request
//! ([`Answer`]). A message outside the set a reader expects is refused
//! by the decoder ([`crate::wire::Error::Unexpected`]), so no handler
//! needs a fallback arm.

use serde::Serialize;

use super::decode;
use super::message::Message;
use super::messages::*;
use super::set::set;
use crate::wire::{Error, FrameHeader};

set! {
    /// What a server reads between requests: the requests.
    Request: "a request", known KINDS, tags Tag, { Echo, Exec, Pty, Env, List, Stat, Mkdir, Get, Put, Remove, Rename, TreeList, TreePut, TreeGet, Compress }
}

set! {
    /// What a client reads answering a `get` with a `basis`.
    GetOutput: "file, signature_wanted or error", known KINDS, tags Tag, { FileReply, SignatureWanted, ErrorFrame }
}

set! {
    /// What a server reads after its `put_ready`.
    PutInput: "put_data, put_delta or signature_wanted (after put_ready)", known KINDS, tags Tag,
    { PutData, PutDelta, SignatureWanted }
}

set! {
    /// What a server reads after its `auth_challenge`.
    AuthInput: "auth_response, auth_publickey or auth_offer", known KINDS, tags Tag, { AuthResponse, AuthPublickey, AuthOffer }
}

set! {
    /// What a server reads during a streamed upload (`tree_put`).
    TreePutInput: "manifest, manifest_end, tree_file, checksum or tree_end (a tree_put is running)", known KINDS, tags Tag,
    { TreeFile, Checksum, Manifest, ManifestEnd, TreeEnd }
}

set! {
    /// What a server reads during a streamed download (`tree_get`).
    TreeGetInput: "wants or wants_end (a tree_get is running)", known KINDS, tags Tag, { Wants, WantsEnd }
}

set! {
    /// What a client reads during a streamed upload.
    TreePutOutput: "wants, wants_end, committed, tree_done or error", known KINDS, tags Tag,
    { Wants, WantsEnd, Committed, TreeDone, ErrorFrame }
}

set! {
    /// What a client reads during a streamed download.
    TreeGetOutput: "tree_file, checksum, tree_skip, tree_done or error", known KINDS, tags Tag,
    { TreeFile, Checksum, TreeSkip, TreeDone, ErrorFrame }
}

set! {
    /// What a client reads answering `tree_list`.
    ListingOutput: "listing, listing_skip, listing_end or error", known KINDS, tags Tag,
    { Listing, ListingSkip, ListingEnd, ErrorFrame }
}

set! {
    /// What a server reads while a command runs.
    ExecInput: "stdin, resize or cancel (an exec is running)", known KINDS, tags Tag, { Stdin, Resize, Cancel }
}

set! {
    /// What a client reads while its command runs: output, the exit, or a
    /// refusal.
    ExecOutput: "stdout, stderr, exit or error", known KINDS, tags Tag, { Stdout, Stderr, Exit, ErrorFrame }
}

/// What a client reads as the answer to a request: the message `T` due at
/// this point, or the server's refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// The message that was due.
    Ok(T),
    /// An error frame.
    Refused(ErrorFrame),
}

impl<T> Answer<T> {
    /// The message, or the refusal as an error.
    ///
    /// # Errors
    ///
    /// The error frame, if that is what came.
    pub fn into_result(self) -> Result<T, ErrorFrame> {
        match self {
            Answer::Ok(m) => Ok(m),
            Answer::Refused(e) => Err(e),
        }
    }
}

impl<T: Message> Serialize for Answer<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Answer::Ok(m) => m.serialize(s),
            Answer::Refused(e) => e.serialize(s),
        }
    }
}

impl<T: Message> FrameHeader for Answer<T> {
    fn body_len(&self) -> u64 {
        match self {
            Answer::Ok(m) => FrameHeader::body_len(m),
            Answer::Refused(_) => 0,
        }
    }

    fn from_json(text: &str) -> Result<Self, Error> {
        // One answer per request: the type read as text is fast enough.
        let peek = decode::peek::<std::borrow::Cow<str>>(text)?;
        if peek.kind == T::KIND {
            decode::member::<T, _>(text, &peek).map(Answer::Ok)
        } else if peek.kind == ErrorFrame::KIND {
            decode::member::<ErrorFrame, _>(text, &peek).map(Answer::Refused)
        } else {
            Err(decode::stranger(text, &peek, T::KIND, KINDS))
        }
    }
}
