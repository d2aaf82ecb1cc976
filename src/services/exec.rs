//! Processes: a command run through a shell in a session of its own
//! (`setsid`), so that it has no controlling terminal unless it is given
//! one, and so that a timeout, a cancel or a lost client can kill it with
//! everything it started; on pipes, or on a pseudo-terminal.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use rustix::process::{Pid, Signal};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// What to run, and how.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    /// The shell (`SHELL -c COMMAND`, or alone for a login shell).
    pub shell: &'a Path,
    /// The command line; ignored for a login shell.
    pub command: &'a str,
    /// Run `shell` as an interactive login shell (`argv[0]` is `-NAME`).
    pub login: bool,
    /// The working directory.
    pub dir: &'a Path,
    /// The server's user ([`account`]): `HOME`, `USER`, `LOGNAME`.
    pub account: &'a Account,
    /// The user's shell: `SHELL` in the command's environment.
    pub user_shell: &'a Path,
    /// Variables the client sent and the server accepted, set on top of
    /// the login environment ([`login_env`]).
    pub env: &'a [(String, String)],
    /// A pseudo-terminal of this size, and its `TERM`; pipes if `None`.
    pub pty: Option<(&'a str, u16, u16)>,
}

/// A running command and the pipes (or the terminal) to it.
#[derive(Debug)]
pub struct Running {
    /// The shell process: leader of its own session and process group.
    pub child: Child,
    /// Its stdin (on pipes).
    pub stdin: Option<ChildStdin>,
    /// Its stdout (on pipes).
    pub stdout: Option<ChildStdout>,
    /// Its stderr (on pipes).
    pub stderr: Option<ChildStderr>,
    /// The terminal's master side (on a pseudo-terminal): what the
    /// command writes comes out of it, what is written to it is typed.
    pub pty: Option<Master>,
    /// Kills the session when dropped, unless disarmed.
    pub group: GroupGuard,
}

/// Starts what `spec` says in a new session: on pipes, `/dev/tty` fails
/// for it at once (as under `ssh -T`); on a pseudo-terminal, that terminal
/// is its controlling one and stdin, stdout and stderr all go to it.
///
/// # Errors
///
/// If the terminal cannot be made or the shell cannot be started.
pub fn spawn(spec: &Spec<'_>) -> io::Result<Running> {
    let mut cmd = Command::new(spec.shell);
    if spec.login {
        let name = spec.shell.file_name().unwrap_or(spec.shell.as_os_str());
        let mut arg0 = OsString::from("-");
        arg0.push(name);
        cmd.arg0(arg0);
    } else {
        cmd.arg("-c").arg(spec.command);
    }
    cmd.current_dir(spec.dir).kill_on_drop(true);
    if let Some(limit) = OPEN_FILES_FOR_COMMANDS.get() {
        // The server raised its own open-file limit for its clients; a
        // command gets the one the server was started with.
        // SAFETY: between fork and exec only setrlimit(2) runs, a raw
        // system call (async-signal-safe; nothing is allocated).
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::setrlimit(rustix::process::Resource::Nofile, *limit)?;
                Ok(())
            });
        }
    }
    // A clean login environment, as sshd gives: never the server's own
    // variables (an object store's credentials, say).
    cmd.env_clear();
    for (k, v) in login_env(spec.account, spec.user_shell) {
        cmd.env(k, v);
    }
    for (k, v) in spec.env {
        cmd.env(k, v);
    }
    let master = match spec.pty {
        None => {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            // SAFETY: between fork and exec only setsid(2) runs, a raw
            // system call (async-signal-safe; nothing is allocated).
            unsafe {
                cmd.pre_exec(|| {
                    rustix::process::setsid()?;
                    Ok(())
                });
            }
            None
        }
        Some((term, rows, cols)) => {
            let (master, slave) = open_pty(rows, cols)?;
            cmd.env("TERM", term);
            cmd.stdin(Stdio::from(slave.try_clone()?));
            cmd.stdout(Stdio::from(slave.try_clone()?));
            cmd.stderr(Stdio::from(slave));
            // SAFETY: between fork and exec only setsid(2) and
            // ioctl(TIOCSCTTY) run, raw system calls (async-signal-safe).
            unsafe {
                cmd.pre_exec(|| {
                    rustix::process::setsid()?;
                    // stdin is the terminal: make it the controlling one.
                    rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
                    Ok(())
                });
            }
            Some(master)
        }
    };
    let mut child = cmd.spawn()?;
    // The command holds the terminal's slave side now; ours go with
    // `cmd`, or the master would never see the last close.
    drop(cmd);
    let sid = child.id().expect("a just-spawned child has a pid") as i32;
    Ok(Running {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        pty: master.map(Master::new).transpose()?,
        child,
        group: GroupGuard { sid: Some(sid) },
    })
}

/// A new pseudo-terminal of `rows` x `cols`: its master and slave sides.
fn open_pty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let slave = match rustix::pty::ioctl_tiocgptpeer(&master, flags) {
        Ok(slave) => slave,
        // Kernels before 4.13: open it by name.
        Err(_) => {
            let name = rustix::pty::ptsname(&master, Vec::new())?;
            let oflags = rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC;
            rustix::fs::open(name.as_c_str(), oflags, rustix::fs::Mode::empty())?
        }
    };
    rustix::termios::tcsetwinsize(&slave, winsize(rows, cols))?;
    Ok((master, slave))
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 }
}

/// The master side of a pseudo-terminal, non-blocking, shared by the
/// task that reads the command's output and the one that types its input.
#[derive(Debug, Clone)]
pub struct Master(Arc<AsyncFd<OwnedFd>>);

impl Master {
    fn new(fd: OwnedFd) -> io::Result<Master> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open on the
        // same description until it is dropped with it, and always gives
        // the same raw fd.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Master(Arc::new(fd)))
    }

    /// Reads what the command wrote; `Ok(0)` once every process has
    /// closed the terminal (Linux reports that as `EIO`).
    ///
    /// # Errors
    ///
    /// Those of `read(2)`.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.0.readable().await?;
            match ready.try_io(|fd| rustix::io::read(fd.get_ref(), &mut *buf).map_err(io::Error::from)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Types `bytes` into the terminal.
    ///
    /// # Errors
    ///
    /// Those of `write(2)`.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let mut ready = self.0.writable().await?;
            match ready.try_io(|fd| rustix::io::write(fd.get_ref(), bytes).map_err(io::Error::from)) {
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Writes what the terminal takes of `bytes` now, without waiting.
    ///
    /// # Errors
    ///
    /// Those of `write(2)`; `WouldBlock` when it takes nothing now.
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        Ok(rustix::io::write(self.0.get_ref(), bytes)?)
    }

    /// The terminal's end-of-file character (`VEOF`, normally Ctrl-D):
    /// what typing "end of input" means on a terminal.
    pub fn eof_char(&self) -> u8 {
        rustix::termios::tcgetattr(self.0.get_ref())
            .map(|t| t.special_codes[rustix::termios::SpecialCodeIndex::VEOF])
            .unwrap_or(4)
    }

    /// Gives the terminal a new size; the kernel sends `SIGWINCH` to its
    /// foreground process group.
    ///
    /// # Errors
    ///
    /// Those of `ioctl(TIOCSWINSZ)`.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        Ok(rustix::termios::tcsetwinsize(self.0.get_ref().as_fd(), winsize(rows, cols))?)
    }
}

/// Kills a command's session with SIGKILL when dropped: whatever ends the
/// request (an error, a lost client, the server's drain deadline dropping
/// the task), nothing it started is left running.
#[derive(Debug)]
pub struct GroupGuard {
    /// The session's id: its leader's pid, also its process group's id.
    sid: Option<i32>,
}

impl GroupGuard {
    /// Sends SIGKILL to every process of the command's session now: its
    /// process group, and the groups a job-control shell made in it.
    pub fn kill(&self) {
        if let Some(sid) = self.sid {
            kill_session(sid);
        }
    }

    /// The command ended normally and its output is closed: leave its
    /// session alone (its id may be reused once its processes are gone).
    pub fn disarm(&mut self) {
        self.sid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGKILL to the process group `sid` and to every process whose session
/// is `sid` (`/proc/PID/stat`). While any process of the session or
/// group lives, the kernel does not give its id to a new process, so
/// nothing else is hit. A process that made a session of its own
/// (`setsid`) has left, as it would leave an ssh session.
fn kill_session(sid: i32) {
    let Some(pid) = Pid::from_raw(sid) else { return };
    // A group that is already gone gives ESRCH, which is fine.
    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for entry in procs.flatten() {
        let Some(other) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        if session_of(&stat) == Some(sid) {
            if let Some(p) = Pid::from_raw(other) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
    }
}

/// The session id in a `/proc/PID/stat` line: the fourth field after the
/// command name, which is in parentheses and may itself hold any bytes.
fn session_of(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// `PATH` of a command run by an ordinary user: sshd's default
/// (`_PATH_STDPATH`, as Debian builds it), never the server's own.
pub const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// `PATH` of a command run by root (sshd's `SUPERUSER_PATH`).
pub const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The user the server runs as, from the password database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user id (the effective one).
    pub uid: u32,
    /// The user name; the uid in decimal when the database has no entry.
    pub name: OsString,
    /// The home directory; `/` when the database has none.
    pub home: PathBuf,
    /// The login shell, if the database names one that exists.
    pub shell: Option<PathBuf>,
}

/// The server user's entry in the password database (`getpwuid_r`).
pub fn account() -> Account {
    use std::os::unix::ffi::OsStrExt;
    let uid = rustix::process::geteuid().as_raw();
    let missing = || Account { uid, name: OsString::from(uid.to_string()), home: PathBuf::from("/"), shell: None };
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for an out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `pw` and `found` are
    // out-parameters, `buf` is writable for its length; the strings that
    // `pw` points to live in `buf`, read before it is dropped.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return missing();
    }
    // SAFETY: getpwuid_r succeeded: each non-null string member is a
    // NUL-terminated string inside `buf`.
    let text = |p: *const libc::c_char| {
        (!p.is_null())
            .then(|| std::ffi::OsStr::from_bytes(unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes()).to_owned())
            .filter(|s| !s.is_empty())
    };
    let shell = text(pw.pw_shell).map(PathBuf::from).filter(|s| s.is_absolute() && s.exists());
    Account {
        uid,
        name: text(pw.pw_name).unwrap_or_else(|| missing().name),
        home: text(pw.pw_dir).map(PathBuf::from).unwrap_or_else(|| missing().home),
        shell,
    }
}

/// The open-file limit commands get, when the server raised its own
/// (`server::raise_open_files`): the one it was started with.
static OPEN_FILES_FOR_COMMANDS: std::sync::OnceLock<rustix::process::Rlimit> = std::sync::OnceLock::new();

/// Gives commands started from now on the open-file limit `limit` (the
/// server's own, before it raised it); the first call wins.
pub fn keep_open_files_for_commands(limit: rustix::process::Rlimit) {
    let _ = OPEN_FILES_FOR_COMMANDS.set(limit);
}

impl Account {
    /// The user's login shell (from the password database), or
    /// `fallback` when it has none.
    pub fn login_shell(&self, fallback: &Path) -> PathBuf {
        self.shell.clone().unwrap_or_else(|| fallback.to_owned())
    }
}

/// The environment every command starts from, as sshd gives a session:
/// `PATH` ([`USER_PATH`], [`ROOT_PATH`] for root), `HOME`, `USER`,
/// `LOGNAME` and `SHELL` (`shell`); nothing of the server's own.
pub fn login_env(account: &Account, shell: &Path) -> Vec<(&'static str, OsString)> {
    let path = if account.uid == 0 { ROOT_PATH } else { USER_PATH };
    vec![
        ("PATH", OsString::from(path)),
        ("HOME", account.home.clone().into_os_string()),
        ("USER", account.name.clone()),
        ("LOGNAME", account.name.clone()),
        ("SHELL", shell.as_os_str().to_owned()),
    ]
}

/// `(status, signal)` of an exit status: one of the two is set.
pub fn status_parts(status: ExitStatus) -> (Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    (status.code(), status.signal())
}

/// Quotes `args` for a POSIX shell so that `sh -c` runs exactly that argv:
/// each word in single quotes, a single quote written as `'\''`. Words made
/// only of safe characters are left bare, for readable logs.
///
/// # Examples
///
/// ```
/// use framewire::client::shell_join;
///
/// assert_eq!(shell_join(&["ls", "-l"]), "ls -l");
/// assert_eq!(shell_join(&["echo", "it's", "a b", ""]), r#"echo 'it'\''s' 'a b' ''"#);
/// ```
pub fn shell_join<S: AsRef<str>>(args: &[S]) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    args.iter()
        .map(|a| {
            let a = a.as_ref();
            if !a.is_empty() && a.chars().all(safe) {
                a.to_owned()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_environment_names_the_user_and_nothing_else() {
        let me = account();
        let env = login_env(&me, Path::new("/bin/zsh"));
        let names: Vec<_> = env.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["PATH", "HOME", "USER", "LOGNAME", "SHELL"]);
        assert_eq!(env[4].1, "/bin/zsh");
        assert_eq!(env[2].1, env[3].1);
        let root = Account { uid: 0, ..me.clone() };
        assert_eq!(login_env(&root, Path::new("/bin/sh"))[0].1, ROOT_PATH);
        let user = Account { uid: 1000, ..me };
        assert_eq!(login_env(&user, Path::new("/bin/sh"))[0].1, USER_PATH);
    }

    #[test]
    fn the_session_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (a (b) c) S 1 4240 4241 34816 4240 4194560";
        assert_eq!(session_of(stat), Some(4241));
        assert_eq!(session_of("garbage"), None);
    }
}
