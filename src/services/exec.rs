//! Processes: a command run through a shell in its own process group, so
//! that a timeout, a cancel or a lost client can kill it with everything it
//! started.

use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// A running command and the pipes to it.
#[derive(Debug)]
pub struct Running {
    /// The shell process (leader of its own process group).
    pub child: Child,
    /// Its stdin.
    pub stdin: Option<ChildStdin>,
    /// Its stdout.
    pub stdout: Option<ChildStdout>,
    /// Its stderr.
    pub stderr: Option<ChildStderr>,
    /// Kills the group when dropped, unless disarmed.
    pub group: GroupGuard,
}

/// Starts `shell -c command` in `dir`, in a new process group, with piped
/// stdin, stdout and stderr.
///
/// # Errors
///
/// If the shell cannot be started.
pub fn spawn(shell: &Path, command: &str, dir: &Path) -> io::Result<Running> {
    let mut child = Command::new(shell)
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let pgid = child.id().expect("a just-spawned child has a pid") as i32;
    Ok(Running {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        child,
        group: GroupGuard { pgid: Some(pgid) },
    })
}

/// Kills a process group with SIGKILL when dropped: whatever ends the
/// request (an error, a lost client, the server's drain deadline dropping
/// the task), nothing it started is left running.
#[derive(Debug)]
pub struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    /// Sends SIGKILL to every process of the group now.
    pub fn kill(&self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg has no memory-safety preconditions; a group
            // that is already gone gives ESRCH, which is fine.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }

    /// The command ended normally and its pipes are closed: leave the
    /// group alone (its id may be reused once its processes are gone).
    pub fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
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
