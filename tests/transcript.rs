//! The hex transcripts in docs/PROTOCOL.md §4.10 are what a real server
//! sends and takes: this test runs both exchanges (a put that resumes a
//! cut upload, a get that resumes a partial download) against a server on
//! 127.0.0.1:0, renders every byte each way, and compares the rendering
//! with the document. `FRAMEWIRE_BLESS=1 cargo test --test transcript`
//! writes the rendering into the document instead.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::TestServer;
use framewire::proto::{AnyMessage, Checksum, Get, Put, PutData};
use framewire::wire::{decode_head, encode_frame, FrameHeader, Preface, PREFACE_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONTENT: &[u8] = b"hello world";
const HELD: usize = 6;
/// 2026-01-01T00:00:00Z, so that the `file` reply's `mtime` is fixed.
const MTIME: u64 = 1_767_225_600;

/// One side's bytes as `xxd` shows them: offset, 16 bytes of hex, ASCII.
fn hex_rows(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, row) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = row.iter().map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '.' }).collect();
        out.push_str(&format!("  {:04x}  {:<47}  {ascii}\n", i * 16, hex.join(" ")));
    }
    out
}

/// A conversation, rendered as it goes.
struct Transcript {
    sock: TcpStream,
    text: String,
    /// Bytes read past the last frame taken.
    buf: BytesMut,
}

impl Transcript {
    async fn open(addr: &str) -> Transcript {
        let sock = TcpStream::connect(addr).await.unwrap();
        let mut t = Transcript { sock, text: String::new(), buf: BytesMut::new() };
        t.send_raw("client preface", &Preface::new(false).encode()).await;
        let mut theirs = [0u8; PREFACE_LEN];
        t.sock.read_exact(&mut theirs).await.unwrap();
        t.note("S→C", "server preface", &theirs);
        t
    }

    fn note(&mut self, dir: &str, what: &str, bytes: &[u8]) {
        self.text.push_str(&format!("{dir} {what} ({} bytes)\n{}", bytes.len(), hex_rows(bytes)));
    }

    async fn send_raw(&mut self, what: &str, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
        self.note("C→S", what, bytes);
    }

    async fn send<H: FrameHeader>(&mut self, what: &str, header: &H, body: &[u8]) {
        let mut buf = BytesMut::new();
        encode_frame(header, body, &mut buf).unwrap();
        self.send_raw(what, &buf).await;
    }

    /// The next frame from the server, rendered, and its message.
    async fn receive(&mut self) -> AnyMessage {
        loop {
            if let Some(head) = decode_head::<AnyMessage>(&self.buf).unwrap() {
                let total = head.head_len + head.body_len as usize;
                if self.buf.len() >= total {
                    let frame = self.buf.split_to(total);
                    let what = format!("{} frame", head.header.kind());
                    self.note("S→C", &what, &frame);
                    return head.header;
                }
            }
            let read = tokio::time::timeout(Duration::from_secs(10), self.sock.read_buf(&mut self.buf)).await;
            assert!(read.unwrap().unwrap() > 0, "the server closed the connection");
        }
    }
}

fn hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// An upload cut after [`HELD`] bytes, then the resuming upload; returns
/// the second connection's transcript.
async fn put_with_resume(server: &TestServer) -> String {
    let put = Put {
        path: "notes.txt".into(),
        size: CONTENT.len() as u64,
        force: false,
        mode: Some(0o644),
        mtime: Some(MTIME as i64),
        mtime_ns: None,
        backup: None,
        delta: None,
    };
    let mut first = Transcript::open(&server.addr()).await;
    first.send("put", &put, &[]).await;
    assert!(matches!(first.receive().await, AnyMessage::PutReady(r) if r.offset == 0));
    // The head promises 11 bytes; 6 come, then the connection is cut.
    let mut cut = BytesMut::new();
    encode_frame(&PutData { len: CONTENT.len() as u64, offset: 0, holes: None }, CONTENT, &mut cut).unwrap();
    cut.truncate(cut.len() - (CONTENT.len() - HELD));
    first.sock.write_all(&cut).await.unwrap();
    drop(first);

    // The server notices the cut, keeps the partial file and lets go of
    // the path; until then a second put is told `busy`.
    for _ in 0..100 {
        let mut t = Transcript::open(&server.addr()).await;
        t.send("put (the same file again)", &put, &[]).await;
        match t.receive().await {
            AnyMessage::PutReady(ready) => {
                assert_eq!(ready.offset, HELD as u64, "the cut upload's bytes are held");
                assert_eq!(ready.prefix_blake3, Some(hex(&CONTENT[..HELD])));
                let rest = &CONTENT[HELD..];
                let data = PutData { len: rest.len() as u64, offset: HELD as u64, holes: None };
                t.send("put_data (the rest of the file)", &data, rest).await;
                t.send("checksum (of the whole file)", &Checksum { blake3: hex(CONTENT) }, &[]).await;
                assert!(matches!(t.receive().await, AnyMessage::PutDone(d) if d.size == 11));
                return t.text;
            }
            AnyMessage::ErrorFrame(e) if e.code == framewire::ErrorCode::Busy => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    panic!("the cut upload never let go of its path");
}

/// A download resumed by a client that holds the first [`HELD`] bytes.
async fn get_with_resume(server: &TestServer) -> String {
    let path = server.root.path().join("notes.txt");
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(MTIME)).unwrap();
    // Whatever the umask made of the put's 0644.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut t = Transcript::open(&server.addr()).await;
    let get = Get {
        path: "notes.txt".into(),
        offset: HELD as u64,
        prefix_blake3: Some(hex(&CONTENT[..HELD])),
        sparse: false,
        basis: None,
    };
    t.send("get (6 bytes held)", &get, &[]).await;
    match t.receive().await {
        AnyMessage::FileReply(f) => assert_eq!((f.offset, f.size, f.len, f.mtime), (6, 11, 5, MTIME as i64)),
        other => panic!("{other:?}"),
    }
    match t.receive().await {
        AnyMessage::Checksum(c) => assert_eq!(c.blake3, hex(CONTENT)),
        other => panic!("{other:?}"),
    }
    t.text
}

/// Replaces what lies between `<!-- transcript:NAME -->` and
/// `<!-- /transcript:NAME -->` in `doc`; returns the old content.
fn section(doc: &mut String, name: &str, new: &str) -> String {
    let (open, close) = (format!("<!-- transcript:{name} -->\n```text\n"), format!("```\n<!-- /transcript:{name} -->"));
    let start = doc.find(&open).unwrap_or_else(|| panic!("docs/PROTOCOL.md has no {open:?}")) + open.len();
    let end = start + doc[start..].find(&close).unwrap_or_else(|| panic!("no {close:?}"));
    let old = doc[start..end].to_owned();
    doc.replace_range(start..end, new);
    old
}

#[tokio::test]
async fn protocol_md_transcripts_are_what_the_server_does() {
    let server = TestServer::start().await;
    let put = put_with_resume(&server).await;
    assert_eq!(std::fs::read(server.root.path().join("notes.txt")).unwrap(), CONTENT);
    let get = get_with_resume(&server).await;

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/PROTOCOL.md");
    let mut doc = std::fs::read_to_string(&path).unwrap();
    let old_put = section(&mut doc, "put", &put);
    let old_get = section(&mut doc, "get", &get);
    if std::env::var_os("FRAMEWIRE_BLESS").is_some() {
        std::fs::write(&path, doc).unwrap();
        return;
    }
    assert_eq!(old_put, put, "docs/PROTOCOL.md's put transcript is out of date (FRAMEWIRE_BLESS=1 rewrites it)");
    assert_eq!(old_get, get, "docs/PROTOCOL.md's get transcript is out of date (FRAMEWIRE_BLESS=1 rewrites it)");
}
