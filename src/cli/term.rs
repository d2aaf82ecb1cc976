//! The local terminal during a remote terminal session (`exec -t`,
//! `shell`): raw mode, entered once and restored on every way out (the
//! session's end, an error, a lost connection, SIGTERM or SIGHUP, a
//! panic), the window's size, and its changes (`SIGWINCH`).

use std::io::IsTerminal;
use std::sync::Mutex;

use framewire::client::WindowSize;
use rustix::termios::{OptionalActions, Termios};

/// The settings to put back, for the panic hook.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Whether stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// The window's size, from stdin's terminal, or stdout's.
pub fn window_size() -> Option<WindowSize> {
    let from = |fd| rustix::termios::tcgetwinsize(fd).ok().filter(|w| w.ws_row > 0 && w.ws_col > 0);
    let w = from(rustix::stdio::stdin()).or_else(|| from(rustix::stdio::stdout()))?;
    Some(WindowSize { rows: w.ws_row, cols: w.ws_col })
}

/// `TERM` to ask the server for: ours, or `dumb`.
pub fn term() -> String {
    std::env::var("TERM").ok().filter(|t| !t.is_empty()).unwrap_or_else(|| "dumb".to_owned())
}

/// stdin's terminal in raw mode until dropped: every key goes to the
/// remote program as it is typed (Ctrl-C, Ctrl-Z and Ctrl-\ included, as
/// characters), nothing is echoed or translated here.
pub struct Raw {
    saved: Termios,
}

impl Raw {
    /// Puts stdin's terminal in raw mode.
    ///
    /// # Errors
    ///
    /// If stdin is not a terminal, or its settings cannot be changed.
    pub fn enter() -> std::io::Result<Raw> {
        let stdin = rustix::stdio::stdin();
        let saved = rustix::termios::tcgetattr(stdin)?;
        install_panic_hook();
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved.clone());
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin, OptionalActions::Now, &raw)?;
        Ok(Raw { saved })
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &self.saved);
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Restores the terminal before a panic's message is printed (the
/// unwinding then drops [`Raw`], which restores it again, harmlessly).
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(saved) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                let _ = rustix::termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, saved);
            }
            previous(info);
        }));
    });
}

/// The window's new size each time it changes (`SIGWINCH`), until the
/// receiver is dropped.
pub fn resizes() -> std::io::Result<tokio::sync::mpsc::Receiver<WindowSize>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut winch = signal(SignalKind::window_change())?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while winch.recv().await.is_some() {
            if let Some(size) = window_size() {
                // Only the latest size matters: drop one that finds the
                // queue full.
                if tx.is_closed() {
                    break;
                }
                let _ = tx.try_send(size);
            }
        }
    });
    Ok(rx)
}

/// Completes on SIGTERM or SIGHUP: a terminal session is ended (its
/// remote command killed, the local terminal restored) rather than left
/// in raw mode by a killed client.
pub async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}

/// A terminal's descriptor read and written without a blocking thread in
/// between (what `tokio::io::stdin` and `stdout` hand each read and write
/// to): non-blocking, woken by the reactor. `O_NONBLOCK` belongs to the
/// open file description, which the terminal's other users (the shell
/// that started us) share, so it is put back when this is dropped, as ssh
/// does.
pub struct Nonblocking {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    flags: rustix::fs::OFlags,
}

impl Nonblocking {
    /// A non-blocking handle on `fd`, if the reactor can watch it (a
    /// terminal or a pipe; not a regular file).
    ///
    /// # Errors
    ///
    /// If it cannot be duplicated, set non-blocking or watched.
    pub fn new(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Nonblocking> {
        let fd = fd.try_clone_to_owned()?;
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        // SAFETY: the AsyncFd owns the duplicate, open until it drops.
        match unsafe { tokio::io::unix::AsyncFd::register(fd) } {
            Ok(fd) => Ok(Nonblocking { fd, flags }),
            Err(e) => {
                let (fd, e) = e.into_parts();
                let _ = rustix::fs::fcntl_setfl(&fd, flags);
                Err(e)
            }
        }
    }
}

impl Drop for Nonblocking {
    fn drop(&mut self) {
        let _ = rustix::fs::fcntl_setfl(self.fd.get_ref(), self.flags);
    }
}

impl tokio::io::AsyncRead for Nonblocking {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        loop {
            let mut ready = std::task::ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match ready.try_io(|fd| rustix::io::read(fd.get_ref(), &mut *unfilled).map_err(std::io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                // A terminal hung up: the end of input.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return std::task::Poll::Ready(Ok(())),
                Ok(Err(e)) => return std::task::Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl tokio::io::AsyncWrite for Nonblocking {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            let mut ready = std::task::ready!(self.fd.poll_write_ready(cx))?;
            match ready.try_io(|fd| rustix::io::write(fd.get_ref(), buf).map_err(std::io::Error::from)) {
                Ok(result) => return std::task::Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
