//! The connection preface: 8 bytes each side sends first, so that a stray
//! HTTP request, a TLS client or another version gets a clear error.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Error, FramePart, PREFACE_LEN};

/// The first four bytes of every framewire connection, in both directions.
/// The leading 0x89 is not ASCII, so no text protocol starts this way, and
/// a channel that strips the 8th bit is caught at once.
pub const MAGIC: [u8; 4] = [0x89, b'F', b'W', b'R'];

/// The protocol version this build speaks.
pub const VERSION: u16 = 1;

/// Preface flag: this side uses a key, and everything after the prefaces
/// runs over TLS 1.3 with mutual key authentication.
pub const FLAG_TLS: u16 = 0x0001;

/// Preface flag, server to client only: the server refuses this connection
/// (it is busy); one error frame follows in plaintext, whatever `tls`
/// says, and then the server closes.
pub const FLAG_REFUSED: u16 = 0x0002;

/// Flag bits this build understands.
const KNOWN_FLAGS: u16 = FLAG_TLS | FLAG_REFUSED;

/// The 8-byte preface: [`MAGIC`], `u16` big-endian version, `u16`
/// big-endian flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preface {
    /// Protocol version.
    pub version: u16,
    /// Feature flags: [`FLAG_TLS`], [`FLAG_REFUSED`] or 0.
    pub flags: u16,
}

impl Default for Preface {
    fn default() -> Self {
        Preface { version: VERSION, flags: 0 }
    }
}

impl Preface {
    /// The preface's bytes.
    pub fn encode(&self) -> [u8; PREFACE_LEN] {
        let mut out = [0; PREFACE_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.version.to_be_bytes());
        out[6..].copy_from_slice(&self.flags.to_be_bytes());
        out
    }

    /// Checks what has arrived so far against the magic, so a peer that
    /// is not framewire is refused on its first byte rather than waited
    /// for: `Ok(false)` means "consistent so far, need more".
    pub fn check_partial(got: &[u8]) -> Result<bool, Error> {
        let n = got.len().min(MAGIC.len());
        if got[..n] != MAGIC[..n] {
            return Err(Error::BadPreface { got: got.to_vec() });
        }
        Ok(got.len() >= PREFACE_LEN)
    }

    /// Parses a whole preface.
    ///
    /// # Errors
    ///
    /// [`Error::BadPreface`] if the magic is wrong, [`Error::UnsupportedVersion`]
    /// if the version is not [`VERSION`], [`Error::UnsupportedFlags`] for
    /// unknown flag bits.
    pub fn decode(got: &[u8; PREFACE_LEN]) -> Result<Preface, Error> {
        Self::check_partial(got)?;
        let version = u16::from_be_bytes([got[4], got[5]]);
        let flags = u16::from_be_bytes([got[6], got[7]]);
        if version != VERSION {
            return Err(Error::UnsupportedVersion { ours: VERSION, theirs: version });
        }
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::UnsupportedFlags { flags });
        }
        Ok(Preface { version, flags })
    }
}

impl Preface {
    /// This side's preface, with [`FLAG_TLS`] if `tls`.
    pub fn new(tls: bool) -> Preface {
        Preface { version: VERSION, flags: if tls { FLAG_TLS } else { 0 } }
    }

    /// The preface of a server refusing the connection: [`FLAG_REFUSED`].
    pub fn refusal() -> Preface {
        Preface { version: VERSION, flags: FLAG_REFUSED }
    }

    /// Whether [`FLAG_REFUSED`] is set.
    pub fn refused(&self) -> bool {
        self.flags & FLAG_REFUSED != 0
    }

    /// Whether [`FLAG_TLS`] is set.
    pub fn tls(&self) -> bool {
        self.flags & FLAG_TLS != 0
    }
}

/// A preface as it arrives: the bytes so far, kept between reads, so that
/// a read given up in a `select!` loses nothing (the server reads a
/// connection's preface while ready to evict it; see `server::admission`).
#[derive(Debug, Default)]
pub struct PartialPreface {
    got: [u8; PREFACE_LEN],
    n: usize,
}

impl PartialPreface {
    /// Where the next bytes read go (never empty before the preface is
    /// whole).
    pub fn unfilled(&mut self) -> &mut [u8] {
        &mut self.got[self.n..]
    }

    /// Takes the `read` bytes just written into [`unfilled`](Self::unfilled)
    /// (0: the peer closed): `Ok(None)` if more are due, the preface once
    /// it is whole.
    ///
    /// # Errors
    ///
    /// A wrong magic as soon as its first differing byte is in, then see
    /// [`Preface::decode`]; [`Error::UnexpectedEof`] if `read` is 0.
    pub fn advance(&mut self, read: usize) -> Result<Option<Preface>, Error> {
        if read == 0 {
            return Err(Error::UnexpectedEof {
                part: FramePart::Preface,
                got: self.n as u64,
                expected: PREFACE_LEN as u64,
            });
        }
        self.n += read;
        if !Preface::check_partial(&self.got[..self.n])? {
            return Ok(None);
        }
        Preface::decode(&self.got).map(Some)
    }
}

/// Reads the peer's preface straight from `r`, never a byte past it (what
/// follows may be a TLS handshake, which must reach rustls whole), and
/// refuses a wrong magic as soon as its first differing byte arrives.
///
/// # Errors
///
/// See [`Preface::decode`]; [`Error::UnexpectedEof`] if the peer closes
/// early; I/O errors. No time limit: wrap it in one.
pub async fn read_preface<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> Result<Preface, Error> {
    let mut partial = PartialPreface::default();
    loop {
        let read = r.read(partial.unfilled()).await?;
        if let Some(preface) = partial.advance(read)? {
            return Ok(preface);
        }
    }
}
