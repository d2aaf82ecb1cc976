//! The table of messages: one entry per message type, and from it the
//! struct, its `"type"` tag, its direction, whether it carries a body,
//! its fast decoding (for the data-path frames), and the example the
//! round-trip test encodes and decodes. Adding a message is adding an
//! entry here and naming it in the sets (`super::sets`) it may arrive in.

use serde::{Deserialize, Serialize};

use super::decode::{self, Hot};
use super::message::{Message, ToBoth, ToClient, ToServer};
use super::set::set;
#[cfg(test)]
use super::Kind;
use super::{Entry, ErrorCode, ExitReason};

macro_rules! messages {
    ($(
        $(#[$meta:meta])*
        $name:ident = $tag:literal, $dir:ident, $body:ident, $hot:ident, example: $example:expr;
        { $( $(#[$fmeta:meta])* $field:ident : $fty:ty ),* $(,)? }
    )*) => {
        $(
            $(#[$meta])*
            #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
            #[serde(tag = "type", rename = $tag)]
            pub struct $name {
                $( $(#[$fmeta])* pub $field: $fty, )*
            }

            impl Message for $name {
                const KIND: &'static str = $tag;
                const HAS_BODY: bool = messages!(@has $body);
                fn from_hot(_hot: &Hot) -> Option<Self> {
                    messages!(@hot $hot _hot $($field)*)
                }
            }

            impl $dir for $name {}

            impl crate::wire::FrameHeader for $name {
                fn body_len(&self) -> u64 {
                    messages!(@len $body self)
                }
                fn from_json(text: &str) -> Result<Self, crate::wire::Error> {
                    decode::only::<Self, Tag>(text, Tag::$name, KINDS)
                }
            }

        )*

        /// Every `"type"` tag the protocol defines.
        pub const KINDS: &[&str] = &[$($tag),*];

        /// The `"type"` of a header as the fast parse reads it: one
        /// variant per message, without allocating.
        #[doc(hidden)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
        pub enum Tag {
            $( #[serde(rename = $tag)] $name, )*
            /// A type this build does not know.
            #[serde(other)]
            Unknown,
        }

        /// One of each message, as the round-trip test encodes them.
        #[cfg(test)]
        pub(crate) fn examples() -> Vec<AnyMessage> {
            vec![$( AnyMessage::$name($example) ),*]
        }

        set! {
            /// Any message at all, whichever way it goes: what tests, fuzz
            /// targets and debugging tools read. The protocol's own readers
            /// take the narrower sets.
            AnyMessage: "a framewire message", known KINDS, tags Tag, { $($name),* }
        }
    };
    (@has body) => { true };
    (@has none) => { false };
    (@len body $s:ident) => { $s.len };
    (@len none $s:ident) => { 0 };
    (@hot hot $h:ident $($field:ident)*) => { Some(Self { $($field: $h.$field),* }) };
    (@hot cold $h:ident $($field:ident)*) => { None };
}

messages! {
    /// Request: send the body back unchanged (or ASCII upper-cased, as the
    /// tutorial's first server did, when `upper` is set).
    Echo = "echo", ToServer, body, hot, example: Echo { len: 1, upper: true };
    {
        /// Body length.
        #[serde(default)]
        len: u64,
        /// Upper-case ASCII letters of the reply.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        upper: bool,
    }

    /// Reply to [`Echo`]: the body follows, as it arrives.
    EchoReply = "echo_reply", ToClient, body, hot, example: EchoReply { len: 1 };
    {
        /// Body length.
        #[serde(default)]
        len: u64,
    }

    /// Request: run `command` through the server's shell in its root.
    Exec = "exec", ToServer, none, cold, example: Exec { command: "true".into(), timeout_ms: Some(5), login: false };
    {
        /// A shell command line.
        command: String,
        /// Kill the process group after this many milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        /// Run the server user's login shell, interactive, instead of a
        /// command (`command` is then empty): what `framewire shell`
        /// asks for after a [`Pty`].
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        login: bool,
    }

    /// Request: the next exec on this connection runs on a
    /// pseudo-terminal of this size, with `TERM` set to `term`.
    Pty = "pty", ToServer, none, cold, example: Pty { term: "xterm-256color".into(), rows: 24, cols: 80 };
    {
        /// The client's terminal type (`TERM`).
        term: String,
        /// Rows of the window.
        rows: u16,
        /// Columns of the window.
        cols: u16,
    }

    /// Reply to [`Pty`]: the next exec gets a terminal.
    PtyReady = "pty_ready", ToClient, none, cold, example: PtyReady {};
    {}

    /// Request: environment variables for the next exec on this
    /// connection, set where the server accepts them.
    Env = "env", ToServer, none, cold, example: Env { vars: [("LANG".to_owned(), "C.UTF-8".to_owned())].into() };
    {
        /// Name to value.
        vars: std::collections::BTreeMap<String, String>,
    }

    /// Reply to [`Env`]: which names will be set, and which the server
    /// refused (not allowed by its `--accept-env`, or not a valid name).
    EnvSet = "env_set", ToClient, none, cold, example: EnvSet { accepted: vec!["LANG".into()], refused: vec![] };
    {
        /// Names that will be set.
        #[serde(default)]
        accepted: Vec<String>,
        /// Names that will not.
        #[serde(default)]
        refused: Vec<String>,
    }

    /// During an exec on a terminal, client to server: the window's new
    /// size (the remote program gets `SIGWINCH`).
    Resize = "resize", ToServer, none, cold, example: Resize { rows: 50, cols: 132 };
    {
        /// Rows of the window.
        rows: u16,
        /// Columns of the window.
        cols: u16,
    }

    /// During an exec, client to server: bytes for the command's stdin;
    /// `eof` closes it.
    Stdin = "stdin", ToServer, body, hot, example: Stdin { len: 1, eof: true };
    {
        /// Body length.
        #[serde(default)]
        len: u64,
        /// Close the command's stdin after this body.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        eof: bool,
    }

    /// During an exec, client to server: kill the command's process group.
    Cancel = "cancel", ToServer, none, cold, example: Cancel {};
    {}

    /// During an exec, server to client: bytes the command wrote to stdout.
    Stdout = "stdout", ToClient, body, hot, example: Stdout { len: 1 };
    {
        /// Body length.
        #[serde(default)]
        len: u64,
    }

    /// During an exec, server to client: bytes the command wrote to stderr.
    Stderr = "stderr", ToClient, body, hot, example: Stderr { len: 1 };
    {
        /// Body length.
        #[serde(default)]
        len: u64,
    }

    /// Ends an exec: how the command ended.
    Exit = "exit", ToClient, none, cold, example: Exit { status: Some(3), signal: None, reason: ExitReason::Exited };
    {
        /// Exit status, if it exited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<i32>,
        /// The signal that ended it, if one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// Why it ended.
        reason: ExitReason,
    }

    /// Request: list a directory (or describe a file).
    List = "list", ToServer, none, cold, example: List { path: "d".into(), recursive: true, dirs: true, blake3: true, partial: false };
    {
        /// Path relative to the served root; empty for the root.
        #[serde(default)]
        path: String,
        /// List every file below, with paths relative to `path`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        recursive: bool,
        /// With `recursive`: list the directories below too, so that a copy
        /// of the tree can recreate empty ones.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dirs: bool,
        /// Give each file's BLAKE3 (`Entry::blake3`), from the hash cache
        /// or by reading it: what `--checksum` compares.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        blake3: bool,
        /// List only the partial files (`.NAME.fwpart`) below `path`,
        /// under their own names, which other listings hide (`ls
        /// --partial`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        partial: bool,
    }

    /// Reply to [`List`]: the body is a JSON array of [`Entry`].
    ListReply = "list_reply", ToClient, body, cold, example: ListReply { len: 1 };
    {
        /// Body length.
        #[serde(default)]
        len: u64,
    }

    /// Request: describe one path.
    Stat = "stat", ToServer, none, cold, example: Stat { path: "a".into() };
    {
        /// Path relative to the served root.
        path: String,
    }

    /// Reply to [`Stat`].
    StatReply = "stat_reply", ToClient, none, cold,
        example: StatReply {
            entry: Entry::new("a".into(), 1, Kind::File, 2, 0o644),
        };
    {
        /// What is there.
        entry: Entry,
    }

    /// Request: download a file, from `offset` on.
    Get = "get", ToServer, none, cold,
        example: Get {
            path: "a".into(),
            offset: 4,
            prefix_blake3: Some("ab".into()),
            sparse: true,
            basis: Some(super::Basis {
                len: 9,
                append: false,
                blake3: Some("ef".into()),
                tail: Some("01".into()),
                layout: Some(crate::delta::Layout::Blocks(8192)),
                count: 2,
                streamed: false,
                pipelined: false,
            }),
        };
    {
        /// Path relative to the served root.
        path: String,
        /// Resume from this byte.
        #[serde(default)]
        offset: u64,
        /// BLAKE3 (hex) of the first `offset` bytes the client holds; the
        /// server starts from 0 if its file does not begin with them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix_blake3: Option<String>,
        /// The client takes a body with `holes` (PROTOCOL.md §4.6.5).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sparse: bool,
        /// The client holds an older version of the file: its signature
        /// follows in `count` entries of [`SignatureFrame`]s, and the
        /// server may answer with a delta (PROTOCOL.md §4.6.6).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        basis: Option<super::Basis>,
    }

    /// Reply to [`Get`]: bytes `offset..size` follow as the body, then a
    /// [`Checksum`] of the whole file.
    FileReply = "file", ToClient, body, cold,
        example: FileReply {
            len: 1,
            size: 5,
            offset: 4,
            mtime: 2,
            mode: 0o644,
            mtime_ns: Some(2_000_000_001),
            holes: Some(vec![[1, 3]]),
            delta: false,
        };
    {
        /// Body length (`size - offset`).
        #[serde(default)]
        len: u64,
        /// Whole file size.
        size: u64,
        /// Where the body starts in the file.
        #[serde(default)]
        offset: u64,
        /// Modification time, seconds since the Unix epoch.
        #[serde(default)]
        mtime: i64,
        /// Unix permission bits.
        #[serde(default)]
        mode: u32,
        /// The exact modification time, nanoseconds since the epoch:
        /// given when it is not whole seconds (absent, `mtime` is exact).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ns: Option<i64>,
        /// Holes of the file the body leaves out, `[start, length]` each
        /// (only where the `get` said `sparse`; PROTOCOL.md §4.6.5).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holes: Option<Vec<[u64; 2]>>,
        /// The body is empty: `delta` frames follow instead, building
        /// bytes `offset..size` from the client's `basis` (PROTOCOL.md
        /// §4.6.6).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        delta: bool,
    }

    /// Trailer of a transfer, from whichever side sent the file: BLAKE3
    /// (hex) of the whole file.
    Checksum = "checksum", ToBoth, none, cold, example: Checksum { blake3: "cd".into() };
    {
        /// Lower-case hex.
        blake3: String,
    }

    /// Request: upload `size` bytes to `path`.
    Put = "put", ToServer, none, cold,
        example: Put {
            path: "a".into(),
            size: 5,
            force: true,
            mode: Some(0o600),
            mtime: Some(1_767_225_600),
            mtime_ns: Some(1_767_225_600_000_000_001),
            backup: Some(super::Backup { dir: None, of: String::new(), suffix: "~".into() }),
            delta: Some(super::DeltaAsk { append: Some(super::Sample { len: 3, blake3: "ab".into() }), trust: true, stream: true }),
        };
    {
        /// Path relative to the served root.
        path: String,
        /// Whole file size.
        size: u64,
        /// Replace an existing file.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
        /// Unix permission bits for the new file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// Modification time to give the file once it is in place,
        /// seconds since the Unix epoch (kept as `rsync -t` keeps it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime: Option<i64>,
        /// The same, exact, in nanoseconds since the epoch: given when it
        /// is not whole seconds, and then it wins over `mtime`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ns: Option<i64>,
        /// Keep the file this one replaces there (a server that does
        /// says so in `put_ready`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<super::Backup>,
        /// The client takes a delta: the server may answer that it holds
        /// an older version (`put_ready.basis`; PROTOCOL.md §4.6.6).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delta: Option<super::DeltaAsk>,
    }

    /// Reply to [`Put`]: the server holds `offset` bytes of an earlier,
    /// interrupted upload of this path.
    PutReady = "put_ready", ToClient, none, cold,
        example: PutReady {
            offset: 4,
            prefix_blake3: Some("ab".into()),
            backup: true,
            sparse: true,
            basis: Some(super::Basis { len: 3, append: true, blake3: Some("cd".into()), tail: None, layout: None, count: 0, streamed: false, pipelined: false }),
        };
    {
        /// Bytes already held.
        #[serde(default)]
        offset: u64,
        /// BLAKE3 (hex) of those bytes, so the client can check they are
        /// the start of its file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix_blake3: Option<String>,
        /// The server keeps what the upload replaces, as `put.backup`
        /// asked (an older server leaves it out: it would not).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        backup: bool,
        /// The server takes a body with `holes` (PROTOCOL.md §4.6.5).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sparse: bool,
        /// The server holds an older version of the file (`put.delta`
        /// asked): the upload may come as a delta ([`PutDelta`]). Its
        /// signature follows in `count` entries of [`SignatureFrame`]s,
        /// or, `streamed`, as it is cut, until an empty one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        basis: Option<super::Basis>,
    }

    /// Upload data: bytes `offset..size` of the file, then a [`Checksum`]
    /// of the whole file.
    PutData = "put_data", ToServer, body, cold, example: PutData { len: 1, offset: 4, holes: Some(vec![[5, 2]]) };
    {
        /// Body length.
        #[serde(default)]
        len: u64,
        /// Where the body starts: the `PutReady` offset, or 0 to start over.
        #[serde(default)]
        offset: u64,
        /// Holes of the file the body leaves out (only where `put_ready`
        /// said `sparse`; PROTOCOL.md §4.6.5).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holes: Option<Vec<[u64; 2]>>,
    }

    /// Reply: the upload is verified, synced and in place.
    PutDone = "put_done", ToClient, none, cold, example: PutDone { size: 5 };
    {
        /// Final size.
        size: u64,
    }

    /// Entries of a signature (PROTOCOL.md §4.6.6): 12 bytes each, a
    /// chunk's length (`u32`, big endian) and the first 8 bytes of its
    /// BLAKE3; at most 32,768 entries a frame. An empty one ends a
    /// streamed signature.
    SignatureFrame = "signature", ToBoth, body, cold, example: SignatureFrame { len: 24, failed: false };
    {
        /// Body length.
        #[serde(default)]
        len: u64,
        /// A streamed signature's empty last frame: the sender could not
        /// finish it (its file changed or could not be read), and there
        /// is none.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        failed: bool,
    }

    /// Reply to a [`Get`] with a `basis`: the server will answer with a
    /// delta, and wants the basis's signature first (the client sends its
    /// [`SignatureFrame`]s, then reads the `file`). From a client, after a
    /// `put_ready` whose basis was a likely append that is not one: the
    /// server answers with another `put_ready`, its basis's signature
    /// following.
    SignatureWanted = "signature_wanted", ToBoth, none, cold, example: SignatureWanted {};
    {}

    /// Upload, after a `put_ready` with a `basis`: bytes `offset..size`
    /// of the file come as [`DeltaFrame`]s built from it, then a
    /// [`Checksum`] of the whole file.
    PutDelta = "put_delta", ToServer, none, cold, example: PutDelta { offset: 4 };
    {
        /// Where the new bytes start: the `put_ready` offset, or 0.
        #[serde(default)]
        offset: u64,
    }

    /// Ops of a delta (PROTOCOL.md §4.6.6): copies of the receiver's
    /// older version and new bytes, in order; frames follow until the
    /// file is whole.
    DeltaFrame = "delta", ToBoth, body, cold, example: DeltaFrame { len: 13 };
    {
        /// Body length.
        #[serde(default)]
        len: u64,
    }

    /// Request: from the next frame on, both directions of the connection
    /// go through zstd (PROTOCOL.md §3.4). The client sends nothing more
    /// until the answer.
    Compress = "compress", ToServer, none, cold, example: Compress { level: 3 };
    {
        /// The level the client compresses with (1 to 19); the server
        /// uses it too, up to its own limit.
        level: i32,
    }

    /// Reply to [`Compress`]: the frames after this one are compressed,
    /// both ways.
    CompressReady = "compress_ready", ToClient, none, cold, example: CompressReady { level: 3 };
    {
        /// The level the server compresses with.
        level: i32,
    }

    /// Request: create a directory and any missing parents (`mkdir -p`).
    Mkdir = "mkdir", ToServer, none, cold, example: Mkdir { path: "d/e".into(), parents: Some(false) };
    {
        /// Path relative to the served root.
        path: String,
        /// Create missing parents too (`mkdir -p`); absent means yes, as
        /// before the member existed. With `false`, an existing directory
        /// is `exists` and a missing parent `not_found`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parents: Option<bool>,
    }

    /// Reply to [`Mkdir`]: the directory is there.
    MkdirReply = "mkdir_reply", ToClient, none, cold, example: MkdirReply { created: true };
    {
        /// Whether this request created it (false: it already existed).
        created: bool,
    }

    /// Request: remove a file, a symlink (the link itself) or a directory
    /// with everything below it (a mirror's `--delete`).
    Remove = "remove", ToServer, none, cold, example: Remove { path: "old/x".into(), recursive: Some(false) };
    {
        /// Path relative to the served root; never the root itself.
        path: String,
        /// Remove a directory with everything below it; absent means yes,
        /// as before the member existed. With `false`, a directory is
        /// refused with `is_a_directory` (`rm` without `-r`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recursive: Option<bool>,
    }

    /// Request: rename `from` to `to` inside the root (atomic,
    /// `renameat2`), never over an existing name unless `force`.
    Rename = "rename", ToServer, none, cold, example: Rename { from: "a".into(), to: "d/b".into(), force: false };
    {
        /// The path to move.
        from: String,
        /// Its new path; its parent must exist.
        to: String,
        /// Replace what is at `to` (a file, or an empty directory for a
        /// directory).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    }

    /// Reply to [`Rename`]: done.
    RenameReply = "rename_reply", ToClient, none, cold, example: RenameReply {};
    {}

    /// Reply to [`Remove`].
    RemoveReply = "remove_reply", ToClient, none, cold, example: RemoveReply { removed: true };
    {
        /// Whether something was there to remove.
        removed: bool,
    }

    /// Request: stream the tree at `path` as `listing` frames, then
    /// `listing_end` (PROTOCOL.md §4.6.3.1).
    TreeList = "tree_list", ToServer, none, cold,
        example: TreeList {
            path: "d".into(),
            blake3: true,
            skips: true,
            meta: true,
            owners: true,
            xattrs: true,
            acls: true,
            copy_links: true,
            compact: true,
        };
    {
        /// The directory, relative to the root.
        #[serde(default)]
        path: String,
        /// Give each file's BLAKE3.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        blake3: bool,
        /// The client takes [`ListingSkip`] frames: a path below that
        /// cannot be read is reported and the listing goes on past it
        /// (without, the first one ends the listing with an error).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        skips: bool,
        /// List symlinks (with their targets), mark hard links, and give
        /// exact times (`mtime_ns`); without, files and directories only.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        meta: bool,
        /// With `meta`: each entry's owner (`attrs.uid`, `gid`, `user`,
        /// `group`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        owners: bool,
        /// With `meta`: extended attributes of the `user` namespace.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        xattrs: bool,
        /// With `meta`: POSIX ACLs, as their extended attributes.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        acls: bool,
        /// With `meta`: a symlink leading to a regular file beneath `path`
        /// is listed as that file, under the link's name (`get -r -L`);
        /// other links as links.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        copy_links: bool,
        /// The client takes `listing` bodies compressed with zstd
        /// ([`Listing::zstd`]): a listing's JSON is most of what a re-sync
        /// of a large tree moves over a slow link.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        compact: bool,
    }

    /// Answer to `tree_list`: a JSON array of up to 1000 entries (paths
    /// relative to the directory listed).
    Listing = "listing", ToClient, body, cold, example: Listing { len: 2, count: 0, zstd: true };
    {
        /// Body length.
        #[serde(default)]
        len: u64,
        /// Entries in the body.
        #[serde(default)]
        count: u64,
        /// The body is one zstd frame of that JSON array, which is at most
        /// 1 MiB once decompressed (only to a `tree_list` with `compact`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        zstd: bool,
    }

    /// Part of a `tree_list` answer asked with `skips`: a path below the
    /// listed one that could not be read (a directory: nothing below it is
    /// listed), and why. The listing goes on.
    ListingSkip = "listing_skip", ToClient, none, cold,
        example: ListingSkip { path: "a/locked".into(), code: ErrorCode::PermissionDenied, message: "a/locked: permission denied".into() };
    {
        /// The path, relative to the listed one (empty: that one itself).
        path: String,
        /// Why, as an error code.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    }

    /// The end of a `tree_list` answer.
    ListingEnd = "listing_end", ToClient, none, cold, example: ListingEnd { count: 7, owners: true, umask: Some(0o022) };
    {
        /// Entries sent in all.
        count: u64,
        /// A `tree_put` to this server sets the owners its entries name
        /// (it runs as root); an older server leaves it out.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        owners: bool,
        /// The permission bits a `tree_put`'s files and directories lose
        /// (the server's umask), where it keeps modes: a client compares
        /// the modes it would give with it. Left out by a bucket root and
        /// an older server.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        umask: Option<u32>,
    }

    /// Request: receive a whole tree into the directory `path`
    /// (PROTOCOL.md §4.6.3.2).
    TreePut = "tree_put", ToServer, none, cold,
        example: TreePut {
            path: "d".into(),
            force: true,
            meta: true,
            backup: Some(super::Backup { dir: Some("old".into()), of: "d".into(), suffix: String::new() }),
            xattrs: true,
            acls: false,
            delta: true,
        };
    {
        /// The directory, relative to the root (created as needed).
        #[serde(default)]
        path: String,
        /// Replace files that differ even when they are not older.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
        /// The manifest may hold symlinks, hard links and directories'
        /// attributes; a server that takes them says so in `tree_ready`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        meta: bool,
        /// Keep what the upload replaces there; a server that does says so
        /// in `tree_ready`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<super::Backup>,
        /// Entries' `attrs.xattrs` list every extended attribute of the
        /// `user` namespace (`-X`): the receiver sets those and removes the
        /// others of that namespace (PROTOCOL.md §4.6.3.5).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        xattrs: bool,
        /// The same for POSIX ACLs (`-A`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        acls: bool,
        /// The client takes deltas in the stream (PROTOCOL.md §4.6.6.1): a
        /// server that makes them may answer a wanted file with a `basis`
        /// and its signature.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        delta: bool,
    }

    /// Request: send the files the `wants` frames that follow name, below
    /// the directory `path` (PROTOCOL.md §4.6.3.3).
    TreeGet = "tree_get", ToServer, none, cold, example: TreeGet { path: "d".into(), sparse: true, delta: true };
    {
        /// The directory, relative to the root.
        #[serde(default)]
        path: String,
        /// The client takes bodies with `holes` (PROTOCOL.md §4.6.5).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sparse: bool,
        /// The client would send the signatures of files it holds older
        /// versions of (PROTOCOL.md §4.6.6.1), if the server says it takes
        /// them (`tree_ready.delta`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        delta: bool,
    }

    /// Answer to `tree_put` and `tree_get`: the server streams trees.
    TreeReady = "tree_ready", ToClient, none, cold,
        example: TreeReady {
            meta: true,
            backup: true,
            owners: true,
            specials: true,
            xattrs: true,
            sparse: true,
            delta: true,
        };
    {
        /// The server takes the `meta` entries a `tree_put` with `meta`
        /// asked for (an older server leaves it out: it would take them
        /// for files).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        meta: bool,
        /// The server keeps what the `tree_put` replaces, as its `backup`
        /// asked (an older server leaves it out: it would not).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        backup: bool,
        /// With `meta`: the server sets the owners entries name (it runs
        /// as root).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        owners: bool,
        /// With `meta`: the server makes special files (it runs as root).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        specials: bool,
        /// With `meta`: the server sets extended attributes.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        xattrs: bool,
        /// `tree_put`: the server takes bodies with `holes` (PROTOCOL.md
        /// §4.6.5).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sparse: bool,
        /// `tree_get` asked with `delta`: the server takes wants with a
        /// `basis` and their signatures (PROTOCOL.md §4.6.6.1).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        delta: bool,
    }

    /// Part of a `tree_put` manifest: a JSON array of up to 1000
    /// [`crate::proto::ManifestEntry`].
    Manifest = "manifest", ToServer, body, cold, example: Manifest { len: 2, count: 0 };
    {
        /// Body length.
        #[serde(default)]
        len: u64,
        /// Entries in the body.
        #[serde(default)]
        count: u64,
    }

    /// The end of a `tree_put` manifest.
    ManifestEnd = "manifest_end", ToServer, none, cold, example: ManifestEnd { count: 7 };
    {
        /// Entries sent in all.
        count: u64,
    }

    /// What a receiver wants: a [`crate::proto::WantList`] (the server's
    /// answer to each manifest frame; the client's asks in a `tree_get`).
    Wants = "wants", ToBoth, body, cold, example: Wants { len: 2, count: 0 };
    {
        /// Body length.
        #[serde(default)]
        len: u64,
        /// Entries the body covers.
        #[serde(default)]
        count: u64,
    }

    /// The end of the wants.
    WantsEnd = "wants_end", ToBoth, none, cold, example: WantsEnd { count: 7 };
    {
        /// Entries covered in all.
        count: u64,
    }

    /// One file of a streamed tree, its body the bytes `offset..size`; a
    /// `checksum` of the whole file follows.
    TreeFile = "tree_file", ToBoth, body, cold,
        example: TreeFile {
            len: 1,
            i: 3,
            offset: 4,
            size: 5,
            mtime: 2,
            mode: 0o644,
            mtime_ns: Some(2_000_000_001),
            holes: None,
            delta: false,
        };
    {
        /// Body length: `size - offset`.
        #[serde(default)]
        len: u64,
        /// Its index (manifest index, or the order of the wants).
        #[serde(default)]
        i: u64,
        /// Where the body starts.
        #[serde(default)]
        offset: u64,
        /// The file's size.
        #[serde(default)]
        size: u64,
        /// Its modification time (`tree_get`; a `tree_put` takes the manifest's).
        #[serde(default)]
        mtime: i64,
        /// Its permission bits (`tree_get`).
        #[serde(default)]
        mode: u32,
        /// Its exact modification time in nanoseconds since the epoch
        /// (`tree_get`), where it fits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ns: Option<i64>,
        /// Holes of the file the body leaves out, where the receiver said
        /// it takes them (PROTOCOL.md §4.6.5).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holes: Option<Vec<[u64; 2]>>,
        /// The body is `delta` frames built against the receiver's older
        /// version (its `basis`), not bytes: `len` is 0 (PROTOCOL.md
        /// §4.6.6.1).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        delta: bool,
    }

    /// A wanted file the server cannot send, and why (`tree_get`).
    TreeSkip = "tree_skip", ToClient, none, cold,
        example: TreeSkip { i: 3, code: ErrorCode::NotFound, message: "a: gone".into() };
    {
        /// Its index.
        i: u64,
        /// Why, as an error code.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    }

    /// The end of a `tree_put`'s files.
    TreeEnd = "tree_end", ToServer, none, cold, example: TreeEnd { files: 7 };
    {
        /// Files sent.
        #[serde(default)]
        files: u64,
    }

    /// Files of a `tree_put` now in place (or failed): a
    /// [`crate::proto::CommitList`].
    Committed = "committed", ToClient, body, cold, example: Committed { len: 2 };
    {
        /// Body length.
        #[serde(default)]
        len: u64,
    }

    /// The end of a tree transfer, with its totals.
    TreeDone = "tree_done", ToClient, none, cold, example: TreeDone { files: 7, bytes: 9 };
    {
        /// Files moved.
        files: u64,
        /// Their bytes.
        bytes: u64,
    }

    /// Authentication, server to client, first frame over TLS: the
    /// server's nonce (64 hex digits), how it takes clients, and its host
    /// key with its signature (PROTOCOL.md §2.3).
    AuthChallenge = "auth_challenge", ToClient, none, cold,
        example: AuthChallenge {
            nonce: "00".into(),
            methods: vec!["key".into(), "publickey".into()],
            host_key: Some("ssh-ed25519 AAAA".into()),
            host_signature: Some("01".into()),
        };
    {
        /// 32 random bytes, hex.
        nonce: String,
        /// `key` (the shared key's proof), `publickey` (a key of its
        /// `authorized_keys`); an older server leaves it out: `key` only.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        methods: Vec<String>,
        /// With `publickey`: the server's host key, `ssh-ed25519 AAAA…`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host_key: Option<String>,
        /// Its signature over the server's transcript (SSH's encoding,
        /// hex).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host_signature: Option<String>,
    }

    /// Authentication, client to server: the client's nonce and its proof.
    AuthResponse = "auth_response", ToServer, none, cold,
        example: AuthResponse { nonce: "01".into(), proof: "02".into() };
    {
        /// 32 random bytes, hex.
        nonce: String,
        /// HMAC-SHA256 proof, hex (docs/SECURITY.md).
        proof: String,
    }

    /// Authentication with a key of the server's `authorized_keys`: the
    /// client's nonce, its public key and its signature over the client's
    /// transcript (PROTOCOL.md §2.3.1).
    AuthPublickey = "auth_publickey", ToServer, none, cold,
        example: AuthPublickey { nonce: "01".into(), key: "ssh-ed25519 AAAA".into(), signature: "02".into() };
    {
        /// 32 random bytes, hex.
        nonce: String,
        /// `ssh-ed25519 AAAA…`.
        key: String,
        /// SSH's encoding of the signature, hex.
        signature: String,
    }

    /// Before `auth_publickey`, a client holding several keys (an agent's)
    /// asks which the server takes, at most 16.
    AuthOffer = "auth_offer", ToServer, none, cold, example: AuthOffer { keys: vec!["ssh-ed25519 AAAA".into()] };
    {
        /// `ssh-ed25519 AAAA…` each.
        keys: Vec<String>,
    }

    /// The answer to `auth_offer`: the index of the first key the server
    /// takes from that address now, or none.
    AuthOfferReply = "auth_offer_reply", ToClient, none, cold, example: AuthOfferReply { key: Some(0) };
    {
        /// Index into the offer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<u32>,
    }

    /// Authentication, server to client: the client is accepted, and the
    /// server's own proof (shared key), or what the key may do
    /// (`publickey`).
    AuthOk = "auth_ok", ToClient, none, cold, example: AuthOk { proof: "03".into(), rights: None };
    {
        /// HMAC-SHA256 proof, hex; empty after `auth_publickey` (the host
        /// key's signature proved the server already).
        #[serde(default)]
        proof: String,
        /// After `auth_publickey`: the verbs the key may use
        /// (`list,get,…`), for the client to show.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rights: Option<String>,
    }

    /// Reply: the request failed. Never carries a body.
    ErrorFrame = "error", ToClient, none, cold,
        example: ErrorFrame { code: ErrorCode::Exists, message: "there".into() };
    {
        /// Machine-readable cause.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    }
}

impl ToServer for Checksum {}
impl ToClient for Checksum {}
impl ToServer for SignatureWanted {}
impl ToClient for SignatureWanted {}
impl ToServer for SignatureFrame {}
impl ToClient for SignatureFrame {}
impl ToServer for DeltaFrame {}
impl ToClient for DeltaFrame {}
impl ToServer for Wants {}
impl ToClient for Wants {}
impl ToServer for WantsEnd {}
impl ToClient for WantsEnd {}
impl ToServer for TreeFile {}
impl ToClient for TreeFile {}

impl ErrorFrame {
    /// An error frame.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorFrame { code, message: message.into() }
    }
}
