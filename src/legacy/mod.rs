//! The tutorial's formats, served by their own listeners so its Python
//! clients work unmodified: `struct.pack('i', …)` lengths (4 bytes,
//! little-endian, signed), a JSON header where the format has one, and
//! for downloads a pickled listing. docs/LEGACY.md describes each byte.
//!
//! These formats have no framing beyond one length, no encryption and, at
//! best, an HMAC-MD5 challenge; framewire adds real MD5s, atomic uploads,
//! sanitised names and hard limits, and logs and closes on bad input.

mod pickle;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

pub use pickle::pickle_dict;

use crate::auth::Key;
use crate::services::exec::{account, spawn, Spec};
use crate::services::files::{self, Sandbox};
use crate::services::root::is_partial_name;
use crate::services::{Fault, Refusal};
use crate::session::{BodySource, Receiver};

/// A command is read with one read of at most this many bytes, as the
/// tutorial's `recv(8192)` did.
pub const COMMAND_READ: usize = 8192;
/// Largest JSON header accepted on the upload listener.
pub const MAX_LEGACY_HEADER: usize = 64 * 1024;
/// The listing is sent in one write that the client reads with one
/// `recv(1024)`.
pub const LISTING_MAX: usize = 1024;
/// Largest size an `'i'` (signed 32-bit) length can announce.
pub const MAX_I32_SIZE: u64 = i32::MAX as u64;

/// Which tutorial format a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Command in, `pack('i', size)` + stdout + stderr out.
    ExecSimple,
    /// Command in, `pack('i', len)` + JSON header + stdout + stderr out.
    ExecJson,
    /// `pack('i', len)` + JSON header + the file's bytes in.
    Upload,
    /// A pickled listing out, then numbered choices in and files out.
    Download,
}

impl Mode {
    /// Whether the mode runs commands (and so needs `--allow-exec`).
    pub fn is_exec(self) -> bool {
        matches!(self, Mode::ExecSimple | Mode::ExecJson)
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "exec-simple" => Ok(Mode::ExecSimple),
            "exec-json" => Ok(Mode::ExecJson),
            "upload" => Ok(Mode::Upload),
            "download" => Ok(Mode::Download),
            other => Err(format!("unknown legacy mode `{other}` (one of exec-simple, exec-json, upload, download)")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::ExecSimple => "exec-simple",
            Mode::ExecJson => "exec-json",
            Mode::Upload => "upload",
            Mode::Download => "download",
        })
    }
}

/// What went wrong on a legacy connection; logged with the peer, and the
/// connection closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LegacyError {
    /// The transport failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The HMAC answer was wrong or missing.
    #[error("HMAC challenge failed")]
    HmacFailed,
    /// A length prefix was negative, zero where that is meaningless, or too large.
    #[error("bad length {len} (allowed 1..={max})")]
    BadLength {
        /// The length as sent.
        len: i64,
        /// The largest allowed.
        max: u64,
    },
    /// The header is not the JSON object the format requires.
    #[error("bad header: {0}")]
    BadHeader(String),
    /// The file name is not a plain name.
    #[error("refused file name {0:?}: only a plain file name is accepted")]
    BadName(String),
    /// The peer closed before sending everything it announced.
    #[error("short upload: {got} of {expected} bytes arrived; nothing kept")]
    ShortUpload {
        /// Bytes that arrived.
        got: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// A download choice that is not a number.
    #[error("choice {0:?} is not a number")]
    NotDigits(String),
    /// A download choice outside the listing.
    #[error("choice {choice} is out of range (1..={count})")]
    OutOfRange {
        /// The choice as sent.
        choice: u64,
        /// How many files were listed.
        count: usize,
    },
    /// A file or output too large for the format's `'i'` length.
    #[error("{what} is {size} bytes, more than a signed 32-bit length can announce")]
    TooLarge {
        /// The file or output.
        what: String,
        /// Its size.
        size: u64,
    },
    /// The server refused (path, disk full, exec not allowed…).
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// The peer was silent too long.
    #[error("peer stalled for {0:?}")]
    Stalled(Duration),
}

/// What a legacy connection needs from the server.
pub(crate) struct Legacy<'a> {
    pub sandbox: &'a Sandbox,
    pub shell: &'a Path,
    pub allow_exec: bool,
    pub hmac: Option<&'a Key>,
    pub io_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Serves one connection in `mode`; logs how it ended, never panics.
pub(crate) async fn serve(mode: Mode, mut tcp: TcpStream, peer: SocketAddr, ctx: Legacy<'_>) {
    let _ = tcp.set_nodelay(true);
    let result = async {
        if let Some(key) = ctx.hmac {
            challenge(&mut tcp, key, ctx.io_timeout).await?;
        }
        match mode {
            Mode::ExecSimple | Mode::ExecJson => exec(mode, &mut tcp, &ctx).await,
            Mode::Upload => upload(&mut tcp, &ctx).await,
            Mode::Download => download(&mut tcp, &ctx).await,
        }
    }
    .await;
    match result {
        Ok(()) => debug!(%peer, %mode, "legacy connection closed"),
        Err(e) => {
            warn!(%peer, %mode, "legacy connection closed: {}", crate::text::printable(&e.to_string()));
            crate::transport::linger_close(&mut tcp).await;
        }
    }
}

/// The HMAC challenge alone, for a server that runs it before giving the
/// connection a session slot; logs a failure, as [`serve`] would, and
/// says whether the client passed. Serve it then with `hmac: None`.
pub(crate) async fn authenticate(
    mode: Mode,
    tcp: &mut TcpStream,
    peer: SocketAddr,
    key: &Key,
    limit: Duration,
) -> bool {
    let _ = tcp.set_nodelay(true);
    match challenge(tcp, key, limit).await {
        Ok(()) => true,
        Err(e) => {
            warn!(%peer, %mode, "legacy connection closed: {}", crate::text::printable(&e.to_string()));
            crate::transport::linger_close(tcp).await;
            false
        }
    }
}

async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, LegacyError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(LegacyError::Stalled(limit)),
    }
}

/// 32 random bytes out; the hex HMAC-MD5 of them, keyed with the key
/// file's line as ASCII, back.
async fn challenge(tcp: &mut TcpStream, key: &Key, limit: Duration) -> Result<(), LegacyError> {
    let challenge = crate::auth::nonce();
    within(limit, tcp.write_all(&challenge)).await?;
    let mut answer = [0u8; 32];
    within(limit, tcp.read_exact(&mut answer)).await.map_err(|_| LegacyError::HmacFailed)?;
    check_hmac_answer(key, &challenge, &answer)
}

/// Checks the answer to the HMAC challenge: the HMAC-MD5 of `challenge`,
/// keyed with the key file's line as ASCII, in hex (32 digits).
///
/// # Errors
///
/// [`LegacyError::HmacFailed`] for anything else.
pub fn check_hmac_answer(key: &Key, challenge: &[u8], answer: &[u8]) -> Result<(), LegacyError> {
    let mut mac = <Hmac<Md5> as Mac>::new_from_slice(key.to_line().as_bytes()).expect("any key length");
    mac.update(challenge);
    let Some(answer) = crate::auth::from_hex::<16>(std::str::from_utf8(answer).unwrap_or("")) else {
        return Err(LegacyError::HmacFailed);
    };
    mac.verify_slice(&answer).map_err(|_| LegacyError::HmacFailed)
}

/// Commands, one read each, until the client closes.
async fn exec(mode: Mode, tcp: &mut TcpStream, ctx: &Legacy<'_>) -> Result<(), LegacyError> {
    if !ctx.allow_exec {
        return Err(Refusal::new(crate::ErrorCode::ExecDisabled, "exec is not allowed on this server").into());
    }
    let mut buf = vec![0u8; COMMAND_READ];
    loop {
        let n = within(ctx.idle_timeout, tcp.read(&mut buf)).await?;
        if n == 0 {
            return Ok(());
        }
        let Some(command) = parse_command(&buf[..n]) else {
            continue;
        };
        info!(?command, "legacy exec");
        let (out, err, digest) = run_spooled(&command, ctx).await?;
        let (out_len, err_len) = (out.metadata()?.len(), err.metadata()?.len());
        let total = out_len + err_len;
        if total > MAX_I32_SIZE {
            return Err(LegacyError::TooLarge { what: format!("the output of {command:?}"), size: total });
        }
        let mut head = Vec::new();
        match mode {
            Mode::ExecJson => {
                let header = serde_json::json!({
                    "filename": "stdout+stderr",
                    "md5": digest,
                    "total_size": total,
                })
                .to_string();
                head.extend_from_slice(&(header.len() as i32).to_le_bytes());
                head.extend_from_slice(header.as_bytes());
            }
            _ => head.extend_from_slice(&(total as i32).to_le_bytes()),
        }
        within(ctx.io_timeout, tcp.write_all(&head)).await?;
        for file in [out, err] {
            let mut file = tokio::fs::File::from_std(file);
            copy_with_timeout(&mut file, tcp, ctx.io_timeout).await?;
        }
    }
}

/// The command in one read of an exec listener, trimmed (bytes that are
/// not UTF-8 replaced); `None` if only white space came.
pub fn parse_command(read: &[u8]) -> Option<String> {
    let command = String::from_utf8_lossy(read).trim().to_owned();
    (!command.is_empty()).then_some(command)
}

/// Runs `command`, its stdout and stderr spooled to temporary files (the
/// format needs the total size before the first byte), and the MD5 of
/// stdout followed by stderr.
async fn run_spooled(command: &str, ctx: &Legacy<'_>) -> Result<(std::fs::File, std::fs::File, String), LegacyError> {
    let account = account();
    let user_shell = account.login_shell(ctx.shell);
    let spec = Spec {
        shell: ctx.shell,
        command,
        login: false,
        dir: ctx.sandbox.root(),
        account: &account,
        user_shell: &user_shell,
        env: &[],
        pty: None,
    };
    let mut run = spawn(&spec)?;
    drop(run.stdin.take()); // the format has no stdin: EOF at once
    let (out, err) = (tempfile::tempfile()?, tempfile::tempfile()?);
    let (mut out_w, mut err_w) =
        (tokio::fs::File::from_std(out.try_clone()?), tokio::fs::File::from_std(err.try_clone()?));
    let (mut so, mut se) = (run.stdout.take().expect("piped"), run.stderr.take().expect("piped"));
    let (a, b, status) =
        tokio::join!(tokio::io::copy(&mut so, &mut out_w), tokio::io::copy(&mut se, &mut err_w), run.child.wait());
    a?;
    b?;
    status?;
    out_w.flush().await?;
    err_w.flush().await?;
    run.group.disarm();
    // Hash the spooled output, then rewind it for sending, off the async threads.
    let spooled = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        use std::io::{Seek, SeekFrom};
        let mut md5 = Md5::new();
        for f in [&out, &err] {
            let mut f = f;
            f.seek(SeekFrom::Start(0))?;
            std::io::copy(&mut f, &mut md5)?;
            f.seek(SeekFrom::Start(0))?;
        }
        Ok((out, err, hex::encode(md5.finalize())))
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(spooled)
}

async fn copy_with_timeout<R: AsyncRead + Unpin>(
    src: &mut R,
    tcp: &mut TcpStream,
    limit: Duration,
) -> Result<u64, LegacyError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        within(limit, tcp.write_all(&buf[..n])).await?;
        total += n as u64;
    }
}

/// Reads a `pack('i', n)` length and checks it against `1..=max`.
async fn read_len(tcp: &mut TcpStream, limit: Duration, max: u64) -> Result<u64, LegacyError> {
    let mut raw = [0u8; 4];
    within(limit, tcp.read_exact(&mut raw)).await?;
    check_len(raw, max)
}

/// Checks a `pack('i', n)` length (4 bytes, little-endian, signed) against
/// `1..=max`.
///
/// # Errors
///
/// [`LegacyError::BadLength`] for 0, a negative length or one above `max`.
pub fn check_len(raw: [u8; 4], max: u64) -> Result<u64, LegacyError> {
    let len = i32::from_le_bytes(raw);
    if len <= 0 || len as u64 > max {
        return Err(LegacyError::BadLength { len: len.into(), max });
    }
    Ok(len as u64)
}

/// The final component of a tutorial client's `filename`, which may carry
/// a Unix or Windows directory part; refused unless a plain name remains.
pub fn plain_name(filename: &str) -> Result<&str, LegacyError> {
    let name = filename.rsplit(['/', '\\']).next().unwrap_or("");
    if name.is_empty() || name == "." || name == ".." || name.contains('\0') || is_partial_name(name.as_bytes()) {
        return Err(LegacyError::BadName(filename.to_owned()));
    }
    Ok(name)
}

/// Parses an upload's JSON header, `{"filename": …, "filesize": …}`, into
/// the name to write (see [`plain_name`]) and the size announced.
///
/// # Errors
///
/// [`LegacyError::BadHeader`] if it is not JSON or a field is missing or
/// mistyped, [`LegacyError::BadName`] if no plain name remains.
pub fn parse_upload_header(raw: &[u8]) -> Result<(String, u64), LegacyError> {
    let header: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| LegacyError::BadHeader(format!("not JSON: {e}")))?;
    let filename = header
        .get("filename")
        .and_then(|v| v.as_str())
        .ok_or_else(|| LegacyError::BadHeader("missing string field `filename`".into()))?;
    let size = header
        .get("filesize")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| LegacyError::BadHeader("missing non-negative integer field `filesize`".into()))?;
    Ok((plain_name(filename)?.to_owned(), size))
}

/// One file in: header, then exactly `filesize` bytes into a partial file,
/// synced and renamed into place only once all of them arrived.
async fn upload(tcp: &mut TcpStream, ctx: &Legacy<'_>) -> Result<(), LegacyError> {
    let len = read_len(tcp, ctx.io_timeout, MAX_LEGACY_HEADER as u64).await?;
    let mut raw = vec![0u8; len as usize];
    within(ctx.io_timeout, tcp.read_exact(&mut raw)).await?;
    let (name, size) = parse_upload_header(&raw)?;
    let sandbox = ctx.sandbox.clone();
    // Private and locked as every partial file (docs/DESIGN.md), never a
    // link followed; a legacy upload always starts over, so what it held
    // is dropped.
    let shown = name.clone();
    let (receiver, claim) = tokio::task::spawn_blocking(move || -> Result<_, Fault> {
        let (dir, file_name) = sandbox.for_write(&name)?;
        let claim = sandbox.claim(&dir, &file_name, &name)?;
        let receiver = Receiver::fresh(dir, &file_name).map_err(|e| Fault::io(&name, e))?;
        Ok((receiver, claim))
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(Refusal::from)?;
    info!(name = ?shown, size, "legacy upload");
    let mut body = RawBody { tcp, left: size, size, timeout: ctx.io_timeout };
    let received = match receiver.receive(&mut body, &mut |_| {}).await {
        Ok(received) => received,
        Err(e) => {
            // No resume in this format: nothing is kept.
            let (e, kept) = e.into_parts();
            if let Some(kept) = kept {
                kept.discard();
            }
            return Err(match e {
                Ok(crate::wire::Error::UnexpectedEof { got, expected, .. }) => {
                    LegacyError::ShortUpload { got, expected }
                }
                Ok(crate::wire::Error::Stalled(limit)) => LegacyError::Stalled(limit),
                Ok(crate::wire::Error::Io(e)) | Err(e) => e.into(),
                Ok(e) => std::io::Error::other(e).into(),
            });
        }
    };
    // The tutorial's server overwrites: so does this one, atomically.
    let mode = files::received_mode(0o666);
    tokio::task::spawn_blocking(move || received.commit(mode, true).map(|_| drop(claim)))
        .await
        .map_err(std::io::Error::other)??;
    Ok(())
}

/// The `filesize` bytes of an upload, read straight from the socket.
struct RawBody<'a> {
    tcp: &'a mut TcpStream,
    left: u64,
    size: u64,
    timeout: Duration,
}

impl BodySource for RawBody<'_> {
    fn body_left(&self) -> u64 {
        self.left
    }

    async fn read_body_into(&mut self, buf: &mut Vec<u8>) -> Result<(), crate::wire::Error> {
        use bytes::BufMut;
        let want = (buf.capacity() - buf.len()).min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(());
        }
        let mut room = (&mut *buf).limit(want);
        let got = match tokio::time::timeout(self.timeout, self.tcp.read_buf(&mut room)).await {
            Ok(got) => got?,
            Err(_) => return Err(crate::wire::Error::Stalled(self.timeout)),
        };
        if got == 0 {
            let part = crate::wire::FramePart::Body;
            return Err(crate::wire::Error::UnexpectedEof { part, got: self.size - self.left, expected: self.size });
        }
        self.left -= got as u64;
        Ok(())
    }
}

/// One read of the download listener's choice: `Ok(None)` to end (EOF or
/// `q`), else the 0-based index of the chosen file among the `count` listed
/// (the client sends it 1-based).
///
/// # Errors
///
/// [`LegacyError::NotDigits`], [`LegacyError::OutOfRange`].
pub fn parse_choice(read: &[u8], count: usize) -> Result<Option<usize>, LegacyError> {
    let choice = String::from_utf8_lossy(read).trim().to_owned();
    if read.is_empty() || choice == "q" {
        return Ok(None);
    }
    if choice.is_empty() || !choice.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LegacyError::NotDigits(choice));
    }
    let index: u64 = choice.parse().map_err(|_| LegacyError::NotDigits(choice.clone()))?;
    if index == 0 || index > count as u64 {
        return Err(LegacyError::OutOfRange { choice: index, count });
    }
    Ok(Some(index as usize - 1))
}

/// The listing, then files by number until `q` or EOF.
async fn download(tcp: &mut TcpStream, ctx: &Legacy<'_>) -> Result<(), LegacyError> {
    let sandbox = ctx.sandbox.clone();
    let listing = tokio::task::spawn_blocking(move || sandbox.list("", crate::services::files::Listing::Entries))
        .await
        .map_err(std::io::Error::other)?
        .map_err(Refusal::from)?;
    let names: Vec<String> =
        listing.into_iter().filter(|e| e.kind == crate::proto::Kind::File).map(|e| e.name).collect();
    // Only what fits the client's single recv(1024).
    let mut shown = names.len();
    let mut pickled;
    loop {
        let entries: Vec<(u32, &str)> =
            names[..shown].iter().enumerate().map(|(i, n)| (i as u32 + 1, n.as_str())).collect();
        pickled = pickle_dict(&entries);
        if pickled.len() <= LISTING_MAX || shown == 0 {
            break;
        }
        shown -= 1;
    }
    if shown < names.len() {
        warn!(shown, total = names.len(), "legacy download listing cut to fit the client's recv(1024)");
    }
    within(ctx.io_timeout, tcp.write_all(&pickled)).await?;
    let mut buf = [0u8; 1024];
    loop {
        let n = within(ctx.idle_timeout, tcp.read(&mut buf)).await?;
        let Some(index) = parse_choice(&buf[..n], shown)? else {
            return Ok(());
        };
        let name = &names[index];
        let (sandbox, wanted) = (ctx.sandbox.clone(), name.clone());
        let opened = tokio::task::spawn_blocking(move || sandbox.open(&wanted));
        let (file, meta) = opened.await.map_err(std::io::Error::other)?.map_err(Refusal::from)?;
        let mut file = tokio::fs::File::from_std(file);
        if let Some((kind, why)) = crate::services::files::not_regular(&meta) {
            return Err(std::io::Error::new(kind, format!("{name}: {why}")).into());
        }
        let size = meta.len();
        if size > MAX_I32_SIZE {
            return Err(LegacyError::TooLarge { what: name.clone(), size });
        }
        info!(?name, size, "legacy download");
        within(ctx.io_timeout, tcp.write_all(&(size as i32).to_le_bytes())).await?;
        let sent = copy_with_timeout(&mut (&mut file).take(size), tcp, ctx.io_timeout).await?;
        if sent < size {
            // The file shrank: the client would wait for bytes that never come.
            return Err(LegacyError::ShortUpload { got: sent, expected: size });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names() {
        assert_eq!(plain_name("a.txt").unwrap(), "a.txt");
        assert_eq!(plain_name("/home/u/a.txt").unwrap(), "a.txt");
        assert_eq!(plain_name("C:\\Users\\u\\a.txt").unwrap(), "a.txt");
        for bad in ["", "dir/", "..", "x/..", ".", "a\0b", ".x.fwpart"] {
            assert!(plain_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lengths() {
        assert_eq!(check_len(5i32.to_le_bytes(), 5).unwrap(), 5);
        for bad in [0, -1, i32::MIN, 6] {
            let err = check_len(bad.to_le_bytes(), 5).unwrap_err();
            assert_eq!(err.to_string(), format!("bad length {bad} (allowed 1..=5)"));
        }
    }

    #[test]
    fn upload_headers() {
        let ok = parse_upload_header(br#"{"filename": "C:\\u\\a.txt", "filesize": 3}"#).unwrap();
        assert_eq!(ok, ("a.txt".to_owned(), 3));
        for (raw, want) in [
            (&b"{"[..], "bad header: not JSON: EOF while parsing an object at line 1 column 1"),
            (br#"{"filesize": 3}"#, "bad header: missing string field `filename`"),
            (br#"{"filename": "a", "filesize": -1}"#, "bad header: missing non-negative integer field `filesize`"),
            (
                br#"{"filename": "x/..", "filesize": 1}"#,
                "refused file name \"x/..\": only a plain file name is accepted",
            ),
        ] {
            assert_eq!(parse_upload_header(raw).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn commands_and_choices() {
        assert_eq!(parse_command(b" ls -l\r\n").as_deref(), Some("ls -l"));
        assert_eq!(parse_command(b" \n"), None);
        assert_eq!(parse_choice(b"2\n", 2).unwrap(), Some(1));
        assert_eq!(parse_choice(b"", 2).unwrap(), None);
        assert_eq!(parse_choice(b" q\n", 2).unwrap(), None);
        assert!(matches!(parse_choice(b"\n", 2), Err(LegacyError::NotDigits(c)) if c.is_empty()));
        assert!(matches!(parse_choice(b"-1", 2), Err(LegacyError::NotDigits(_))));
        assert!(matches!(parse_choice(b"99999999999999999999", 2), Err(LegacyError::NotDigits(_))));
        assert!(matches!(parse_choice(b"0", 2), Err(LegacyError::OutOfRange { choice: 0, count: 2 })));
        assert!(matches!(parse_choice(b"3", 2), Err(LegacyError::OutOfRange { choice: 3, count: 2 })));
    }

    #[test]
    fn hmac_answers() {
        let key = Key::from_bytes([7; 32]);
        let mut mac = <Hmac<Md5> as Mac>::new_from_slice(key.to_line().as_bytes()).unwrap();
        mac.update(b"challenge");
        let answer = hex::encode(mac.finalize().into_bytes());
        assert!(check_hmac_answer(&key, b"challenge", answer.as_bytes()).is_ok());
        assert!(check_hmac_answer(&key, b"challenge", answer.to_uppercase().as_bytes()).is_ok());
        for bad in [&b"challengf"[..], b""] {
            assert!(matches!(check_hmac_answer(&key, bad, answer.as_bytes()), Err(LegacyError::HmacFailed)));
        }
        assert!(matches!(
            check_hmac_answer(&key, b"challenge", &answer.as_bytes()[..30]),
            Err(LegacyError::HmacFailed)
        ));
        assert!(matches!(check_hmac_answer(&key, b"challenge", &[0xff; 32]), Err(LegacyError::HmacFailed)));
    }

    #[test]
    fn modes_parse() {
        assert_eq!("exec-json".parse::<Mode>().unwrap(), Mode::ExecJson);
        assert!("ftp".parse::<Mode>().unwrap_err().contains("one of exec-simple"));
    }
}
