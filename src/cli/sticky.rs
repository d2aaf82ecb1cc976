//! `framewire demo sticky`: the sticky-packet and half-packet problems,
//! reproduced read by read on loopback, then the same traffic through
//! framewire's codec, and UDP for contrast.
//!
//! Plain blocking sockets on purpose: this is what the tutorial's code does,
//! and the framed case feeds the very same `recv(1024)` reads into the
//! sans-IO decoder.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use bytes::BytesMut;
use framewire::wire::{Envelope, Frame, FrameCodec};
use tokio_util::codec::{Decoder, Encoder};

/// The tutorial's receive buffer.
const RECV: usize = 1024;
/// The commands the tutorial's client sends.
const COMMANDS: [&str; 5] = ["ls", "pwd", "whoami", "date", "uptime"];
/// Size of the long reply (`ipconfig` in the tutorial).
const LONG_REPLY: usize = 64 * 1024;

pub fn run() -> anyhow::Result<ExitCode> {
    say!("framewire demo sticky: TCP keeps no message boundaries; frames put them back.\n");
    let results = [coalescing()?, short_read()?, framed()?, udp()?];
    let failed = results.iter().filter(|ok| !**ok).count();
    if failed == 0 {
        say!("All 4 cases behaved as expected.");
        Ok(ExitCode::SUCCESS)
    } else {
        say!("{failed} of 4 cases did not reproduce as expected (see above).");
        Ok(ExitCode::FAILURE)
    }
}

fn verdict(expected: &str, seen: String, ok: bool) -> bool {
    say!("    expected: {expected}");
    say!("    seen:     {seen}  [{}]\n", if ok { "as expected" } else { "UNEXPECTED" });
    ok
}

/// Up to 48 bytes of `bytes`, escaped, with the total length.
fn preview(bytes: &[u8]) -> String {
    let shown: String = bytes.iter().take(48).flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect();
    let more = if bytes.len() > 48 { "..." } else { "" };
    format!("{:>5} bytes \"{shown}{more}\"", bytes.len())
}

/// A connected pair of loopback TCP sockets.
fn tcp_pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
    }
    Ok((client, server))
}

/// Every read of up to `RECV` bytes until `total` bytes have arrived.
fn reads_until(sock: &mut TcpStream, total: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut reads = Vec::new();
    let mut got = 0;
    let mut buf = [0u8; RECV];
    while got < total {
        let n = sock.read(&mut buf)?;
        anyhow::ensure!(n > 0, "peer closed after {got} of {total} bytes");
        got += n;
        reads.push(buf[..n].to_vec());
    }
    Ok(reads)
}

/// (a) Several small writes, one read: the receiver cannot tell where one
/// message ended. The reader starts only once every write has returned, as
/// a busy server would; on loopback the bytes are then all queued.
fn coalescing() -> anyhow::Result<bool> {
    say!("(a) Sticky packets: {} small writes, read with recv({RECV})", COMMANDS.len());
    let (mut client, mut server) = tcp_pair()?;
    let total: usize = COMMANDS.iter().map(|c| c.len()).sum();
    for cmd in COMMANDS {
        client.write_all(cmd.as_bytes())?;
        say!("    client write: {}", preview(cmd.as_bytes()));
    }
    thread::sleep(Duration::from_millis(50));
    let reads = reads_until(&mut server, total)?;
    for (i, r) in reads.iter().enumerate() {
        say!("    server read #{}: {}", i + 1, preview(r));
    }
    Ok(verdict(
        "fewer reads than writes: messages run together",
        format!("{} writes arrived in {} read(s)", COMMANDS.len(), reads.len()),
        reads.len() < COMMANDS.len(),
    ))
}

/// A tutorial-style server: reads a command with recv(1024) and sends its
/// output with one sendall, no length, no framing.
fn naive_server(mut sock: TcpStream) {
    let mut buf = [0u8; RECV];
    while let Ok(n) = sock.read(&mut buf) {
        if n == 0 {
            break;
        }
        let reply = fake_output(&String::from_utf8_lossy(&buf[..n]));
        if sock.write_all(&reply).is_err() {
            break;
        }
    }
}

/// What the tutorial's commands printed: `ipconfig` a long listing, the
/// rest a line.
fn fake_output(cmd: &str) -> Vec<u8> {
    if cmd == "ipconfig" {
        let mut out = Vec::with_capacity(LONG_REPLY);
        let mut i = 0;
        while out.len() < LONG_REPLY {
            out.extend_from_slice(format!("ipconfig line {i:05}: adapter eth0 10.0.0.{}\n", i % 250).as_bytes());
            i += 1;
        }
        out.truncate(LONG_REPLY);
        out
    } else {
        format!("output of {cmd}: a.txt b.txt\n").into_bytes()
    }
}

/// (b) A long reply read with one recv(1024): the rest stays queued and
/// is taken for the reply to the next command.
fn short_read() -> anyhow::Result<bool> {
    say!("(b) Half packets: a {} KiB reply read with one recv({RECV})", LONG_REPLY / 1024);
    let (mut client, server) = tcp_pair()?;
    let handle = thread::spawn(move || naive_server(server));
    let mut buf = [0u8; RECV];

    client.write_all(b"ipconfig")?;
    let first = client.read(&mut buf)?;
    say!("    client sends \"ipconfig\", reads its reply:  {}", preview(&buf[..first]));
    client.write_all(b"dir")?;
    let n = client.read(&mut buf)?;
    let reply_to_dir = buf[..n].to_vec();
    say!("    client sends \"dir\", reads its reply:       {}", preview(&reply_to_dir));

    client.shutdown(std::net::Shutdown::Both)?;
    let _ = handle.join();
    // The bytes taken for dir's reply are exactly the next ones of ipconfig's.
    let ipconfig = fake_output("ipconfig");
    let bled = ipconfig.get(first..first + reply_to_dir.len()) == Some(&reply_to_dir[..]);
    Ok(verdict(
        "the reply to `dir` starts with the rest of ipconfig's output",
        if bled {
            "ipconfig's output bled into the reply to `dir`".into()
        } else {
            "the reply to `dir` was its own".into()
        },
        bled,
    ))
}

/// Encodes one frame with a `type` and a body.
fn frame(kind: &str, body: &[u8]) -> anyhow::Result<BytesMut> {
    let mut buf = BytesMut::new();
    let header = Envelope { kind: Some(kind.into()), len: body.len() as u64 };
    FrameCodec::<Envelope>::new().encode(Frame { header, body: body.to_vec().into() }, &mut buf)?;
    Ok(buf)
}

/// Reads with recv(1024) into a decoder until `want` frames came out;
/// returns them and how many reads it took.
fn read_frames(sock: &mut TcpStream, want: usize) -> anyhow::Result<(Vec<Frame<Envelope>>, usize)> {
    let mut codec = FrameCodec::<Envelope>::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut reads = 0;
    let mut chunk = [0u8; RECV];
    while frames.len() < want {
        let n = sock.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "peer closed inside a frame");
        reads += 1;
        buf.extend_from_slice(&chunk[..n]);
        while let Some(f) = codec.decode(&mut buf)? {
            frames.push(f);
        }
    }
    Ok((frames, reads))
}

/// A framed server: one frame in, one frame out.
fn framed_server(mut sock: TcpStream) {
    while let Ok((frames, _)) = read_frames(&mut sock, 1) {
        let cmd = String::from_utf8_lossy(&frames[0].body).into_owned();
        let Ok(reply) = frame("output", &fake_output(&cmd)) else {
            break;
        };
        if sock.write_all(&reply).is_err() {
            break;
        }
    }
}

/// (c) The same traffic, framed: the reads are just as sticky and just as
/// short, but every message comes out whole.
fn framed() -> anyhow::Result<bool> {
    say!("(c) The same traffic through framewire's codec (still recv({RECV}))");
    let (mut client, mut server) = tcp_pair()?;
    for cmd in COMMANDS {
        client.write_all(&frame("cmd", cmd.as_bytes())?)?;
    }
    thread::sleep(Duration::from_millis(50));
    let (frames, reads) = read_frames(&mut server, COMMANDS.len())?;
    let bodies: Vec<String> = frames.iter().map(|f| String::from_utf8_lossy(&f.body).into_owned()).collect();
    say!("    {} framed writes, {reads} read(s), decoded: {bodies:?}", COMMANDS.len());
    let sticky_ok = bodies == COMMANDS;

    let handle = thread::spawn(move || framed_server(server));
    client.write_all(&frame("cmd", b"ipconfig")?)?;
    let (reply1, reads1) = read_frames(&mut client, 1)?;
    client.write_all(&frame("cmd", b"dir")?)?;
    let (reply2, reads2) = read_frames(&mut client, 1)?;
    say!("    reply to \"ipconfig\": {} bytes, 1 frame, {reads1} reads", reply1[0].body.len());
    say!("    reply to \"dir\":      {}, {reads2} read(s)", preview(&reply2[0].body));
    client.shutdown(std::net::Shutdown::Both)?;
    let _ = handle.join();
    let whole = reply1[0].body[..] == fake_output("ipconfig")[..] && reply2[0].body[..] == fake_output("dir")[..];
    Ok(verdict(
        "5 commands decoded separately; each reply whole and its own",
        format!(
            "commands {}; ipconfig reply {}; dir reply {}",
            if sticky_ok { "separate" } else { "MIXED" },
            if reply1[0].body.len() == LONG_REPLY { "whole" } else { "CUT" },
            if whole { "its own" } else { "WRONG" },
        ),
        sticky_ok && whole,
    ))
}

/// (d) UDP keeps datagram boundaries, and truncates a datagram larger than
/// the buffer: the rest is lost, not kept for the next read.
fn udp() -> anyhow::Result<bool> {
    say!("(d) UDP for contrast: datagrams keep their boundaries");
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    rx.set_read_timeout(Some(Duration::from_secs(5)))?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    tx.connect(rx.local_addr()?)?;
    let big = vec![b'x'; 4000];
    for cmd in COMMANDS.iter().take(3) {
        tx.send(cmd.as_bytes())?;
    }
    tx.send(&big)?;
    tx.send(b"next")?;
    let mut buf = [0u8; RECV];
    let mut reads = Vec::new();
    for _ in 0..5 {
        let n = rx.recv(&mut buf)?;
        say!("    recv({RECV}): {}", preview(&buf[..n]));
        reads.push(buf[..n].to_vec());
    }
    let boundaries = reads[..3].iter().zip(COMMANDS).all(|(r, c)| r == c.as_bytes());
    let truncated = reads[3].len() == RECV && reads[4] == b"next";
    Ok(verdict(
        "3 datagrams in 3 reads; the 4000-byte one cut to 1024, its rest gone",
        format!(
            "boundaries {}; big datagram gave {} bytes, next read was {:?}",
            if boundaries { "kept" } else { "LOST" },
            reads[3].len(),
            String::from_utf8_lossy(&reads[4])
        ),
        boundaries && truncated,
    ))
}
