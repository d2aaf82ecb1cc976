//! What `-r` keeps beside contents, times and permission bits, where both
//! sides can (PROTOCOL.md §4.6.3.5): special files, owners and extended
//! attributes. Read by the sender of a tree (the server's walk, the
//! client's), applied by its receiver; one implementation for both sides.
//!
//! What is applied is bounded by policy, not by what a peer asks: owners
//! only by a receiver running as root; extended attributes only in the
//! `user` namespace and POSIX ACLs (`system.posix_acl_*`), never
//! `security.*` (a file capability would grant privileges, as a setuid bit
//! would, which is stripped too) nor `trusted.*`; special files only by a
//! receiver running as root, devices only when asked (`--devices`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;

use crate::proto::{Attrs, Special};

/// What a sender reads into [`Attrs`], as the receiver asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Owners (ids, and names unless `numeric`).
    pub owners: bool,
    /// Owners by id only (`--numeric-ids`).
    pub numeric: bool,
    /// Extended attributes of the `user` namespace (`-X`).
    pub xattrs: bool,
    /// POSIX ACLs, as their extended attributes (`-A`).
    pub acls: bool,
}

/// The most bytes of one extended attribute's value carried (the size
/// Linux allows on most file systems).
pub const MAX_XATTR_VALUE: usize = 64 * 1024;

/// The most extended attributes of one file carried.
pub const MAX_XATTRS: usize = 256;

/// The most bytes of one file's extended attributes carried, names and
/// values (past it, the rest are left out): what keeps an entry, hex and
/// all, well within a frame.
pub const MAX_XATTR_TOTAL: usize = 64 * 1024;

/// Whether this process runs as root (owners and special files are then
/// kept by what it receives).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether an extended attribute of this name is carried and applied, as
/// `wanted` says: `user.*` with `xattrs`, `system.posix_acl_access` and
/// `system.posix_acl_default` with `acls`; never another namespace.
pub fn carried(name: &str, wanted: Wanted) -> bool {
    (wanted.xattrs && name.starts_with("user.") && name.len() > 5)
        || (wanted.acls && matches!(name, "system.posix_acl_access" | "system.posix_acl_default"))
}

/// What a special file is, from its `st_mode`.
pub fn special_of(mode: u32) -> Option<Special> {
    match FileType::from_raw_mode(mode as _) {
        FileType::Fifo => Some(Special::Fifo),
        FileType::Socket => Some(Special::Socket),
        FileType::CharacterDevice => Some(Special::Char),
        FileType::BlockDevice => Some(Special::Block),
        _ => None,
    }
}

/// Names of users and groups, looked up once each.
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
    uids: HashMap<String, Option<u32>>,
    gids: HashMap<String, Option<u32>>,
}

impl Names {
    /// No name looked up yet.
    pub fn new() -> Names {
        Names::default()
    }

    fn user(&mut self, uid: u32) -> Option<String> {
        let look = || nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name);
        self.users.entry(uid).or_insert_with(look).clone()
    }

    fn group(&mut self, gid: u32) -> Option<String> {
        let look = || nix::unistd::Group::from_gid(gid.into()).ok().flatten().map(|g| g.name);
        self.groups.entry(gid).or_insert_with(look).clone()
    }

    /// The names of the user `uid` and the group `gid`, where this side
    /// has them.
    pub fn names(&mut self, uid: u32, gid: u32) -> (Option<String>, Option<String>) {
        (self.user(uid), self.group(gid))
    }

    /// The local id of the owner `attrs` names: by name where it has one
    /// known here (unless `numeric`), else its id (as rsync maps them).
    fn owner(&mut self, attrs: &Attrs, numeric: bool) -> (Option<u32>, Option<u32>) {
        let mut uid = attrs.uid;
        let mut gid = attrs.gid;
        if !numeric {
            if let Some(name) = &attrs.user {
                let found = match self.uids.get(name) {
                    Some(id) => *id,
                    None => {
                        let id = nix::unistd::User::from_name(name).ok().flatten().map(|u| u.uid.as_raw());
                        *self.uids.entry(name.clone()).or_insert(id)
                    }
                };
                uid = found.or(uid);
            }
            if let Some(name) = &attrs.group {
                let found = match self.gids.get(name) {
                    Some(id) => *id,
                    None => {
                        let id = nix::unistd::Group::from_name(name).ok().flatten().map(|g| g.gid.as_raw());
                        *self.gids.entry(name.clone()).or_insert(id)
                    }
                };
                gid = found.or(gid);
            }
        }
        (uid, gid)
    }
}

/// What a sender says of the thing `st` describes (the name `name` in
/// `dir`, not followed), as `wanted`: what special file it is, its owner,
/// its extended attributes. `None` when there is nothing to say. The
/// extended attributes of a file or directory are read through a
/// descriptor opened without following a link and without blocking
/// (never those of a symlink or a special file: opening a device may act
/// on it); an attribute that cannot be read is left out.
pub fn read(
    dir: &OwnedFd,
    name: &OsStr,
    st: &rustix::fs::Stat,
    wanted: Wanted,
    names: &mut Names,
) -> Option<Box<Attrs>> {
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    let mode = st.st_mode as u32;
    let mut attrs = Attrs { special: special_of(mode), ..Attrs::default() };
    if attrs.special.is_some_and(Special::is_device) {
        #[allow(clippy::useless_conversion)]
        let rdev = st.st_rdev.into();
        attrs.rdev = Some([rustix::fs::major(rdev), rustix::fs::minor(rdev)]);
    }
    if wanted.owners {
        attrs.uid = Some(st.st_uid);
        attrs.gid = Some(st.st_gid);
        if !wanted.numeric {
            attrs.user = names.user(st.st_uid);
            attrs.group = names.group(st.st_gid);
        }
    }
    let kind = FileType::from_raw_mode(mode as _);
    if (wanted.xattrs || wanted.acls) && matches!(kind, FileType::RegularFile | FileType::Directory) {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        if let Ok(fd) = rustix::fs::openat(dir, name, flags, Mode::empty()) {
            // All of them, none included: the receiver removes the others
            // (unless they could not be read: then it leaves its own).
            attrs.xattrs = read_xattrs(&fd, wanted);
        }
    } else if (wanted.xattrs || wanted.acls) && attrs.special.is_some() {
        // Never opened: reached through /proc by an O_PATH descriptor.
        if let Ok(fd) = rustix::fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        {
            attrs.xattrs = read_xattrs_at(&proc_path(&fd), wanted);
        }
    }
    (attrs != Attrs::default()).then(|| Box::new(attrs))
}

/// The path through `/proc` of what the `O_PATH` descriptor `fd` is open
/// on: the inode itself (a special file, never opened), whatever is at
/// its name now.
fn proc_path(fd: &OwnedFd) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// [`read_xattrs`] of what `path` (a `/proc/self/fd` path) leads to.
fn read_xattrs_at(path: &str, wanted: Wanted) -> Option<BTreeMap<String, String>> {
    read_xattrs_with(
        wanted,
        &mut |buf| rustix::fs::listxattr(path, rustix::buffer::spare_capacity(buf)).map(drop),
        &mut |name, buf| rustix::fs::getxattr(path, name, rustix::buffer::spare_capacity(buf)).map(drop),
    )
}

/// The extended attributes of `fd` that `wanted` carries, values in hex;
/// `None` if they cannot be listed (none at all on a file system without
/// them).
fn read_xattrs(fd: impl AsFd, wanted: Wanted) -> Option<BTreeMap<String, String>> {
    read_xattrs_with(
        wanted,
        &mut |buf| rustix::fs::flistxattr(&fd, rustix::buffer::spare_capacity(buf)).map(drop),
        &mut |name, buf| rustix::fs::fgetxattr(&fd, name, rustix::buffer::spare_capacity(buf)).map(drop),
    )
}

/// The extended attributes `list` names and `get` reads that `wanted`
/// carries, values in hex.
#[allow(clippy::type_complexity)]
fn read_xattrs_with(
    wanted: Wanted,
    list: &mut dyn FnMut(&mut Vec<u8>) -> rustix::io::Result<()>,
    get: &mut dyn FnMut(&str, &mut Vec<u8>) -> rustix::io::Result<()>,
) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut total = 0;
    let mut names = Vec::with_capacity(64 * 1024);
    match list(&mut names) {
        Ok(()) => {}
        Err(Errno::OPNOTSUPP) => return Some(out),
        Err(_) => return None,
    }
    for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(raw) else { continue };
        if !carried(name, wanted) || out.len() >= MAX_XATTRS {
            continue;
        }
        let mut value = Vec::with_capacity(MAX_XATTR_VALUE);
        if get(name, &mut value).is_ok() {
            total += name.len() + value.len();
            if total > MAX_XATTR_TOTAL {
                tracing::warn!("{name}: extended attributes past {MAX_XATTR_TOTAL} bytes are left out");
                break;
            }
            out.insert(name.to_owned(), hex::encode(value));
        }
    }
    Some(out)
}

/// What a receiver does with [`Attrs`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applying {
    /// Owners are set (only a receiver running as root sets them).
    pub owners: bool,
    /// Owners by id only, names ignored (`--numeric-ids`).
    pub numeric: bool,
    /// Which extended attributes are set (see `carried`: the `user`
    /// namespace and POSIX ACLs only).
    pub wanted: Wanted,
}

impl Applying {
    /// What a receiver running as this process does with what `wanted`
    /// asks for: owners only as root.
    pub fn here(wanted: Wanted) -> Applying {
        Applying { owners: wanted.owners && is_root(), numeric: wanted.numeric, wanted }
    }
}

/// Gives the file or directory open as `fd` the owner and extended
/// attributes `attrs` names, as `how` allows (the owner first: changing
/// it clears setuid bits, which are not kept anyway). Extended attributes
/// it should not set, or whose values are not hex, are left out.
///
/// # Errors
///
/// Those of `fchown(2)` and `fsetxattr(2)`.
pub fn apply(fd: impl AsFd, attrs: &Attrs, how: Applying, names: &mut Names) -> io::Result<()> {
    apply_having(fd, None, attrs, how, names)
}

/// [`apply`] to a file whose owner is known to be `had` (`(uid, gid)`):
/// an owner already right is not set again.
///
/// # Errors
///
/// As [`apply`].
pub fn apply_having(
    fd: impl AsFd,
    had: Option<(u32, u32)>,
    attrs: &Attrs,
    how: Applying,
    names: &mut Names,
) -> io::Result<()> {
    if how.owners {
        let (mut uid, mut gid) = names.owner(attrs, how.numeric);
        if let Some((had_uid, had_gid)) = had {
            uid = uid.filter(|&u| u != had_uid);
            gid = gid.filter(|&g| g != had_gid);
        }
        if uid.is_some() || gid.is_some() {
            // Any id from the wire is an id.
            let uid = uid.map(Uid::from_raw);
            let gid = gid.map(Gid::from_raw);
            rustix::fs::fchown(&fd, uid, gid)?;
        }
    }
    set_xattrs(
        attrs,
        how,
        &mut XattrOps {
            list: &mut |buf| rustix::fs::flistxattr(&fd, rustix::buffer::spare_capacity(buf)).map(drop),
            remove: &mut |name| rustix::fs::fremovexattr(&fd, name),
            set: &mut |name, value| rustix::fs::fsetxattr(&fd, name, value, rustix::fs::XattrFlags::empty()),
        },
    )
}

/// How extended attributes are listed, removed and set on one file.
struct XattrOps<'a> {
    list: &'a mut dyn FnMut(&mut Vec<u8>) -> rustix::io::Result<()>,
    remove: &'a mut dyn FnMut(&str) -> rustix::io::Result<()>,
    set: &'a mut dyn FnMut(&str, &[u8]) -> rustix::io::Result<()>,
}

/// Sets the extended attributes `attrs` names, as `how` allows, through
/// `set`.
fn set_xattrs(attrs: &Attrs, how: Applying, ops: &mut XattrOps<'_>) -> io::Result<()> {
    if let Some(xattrs) = &attrs.xattrs {
        // The list is all the sender has in the namespaces it covers:
        // what else the file has there goes (an ACL inherited from the
        // directory, one removed at the source).
        let mut names = Vec::with_capacity(64 * 1024);
        if (ops.list)(&mut names).is_ok() {
            for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
                let Ok(name) = std::str::from_utf8(raw) else { continue };
                if carried(name, how.wanted) && !xattrs.contains_key(name) {
                    match (ops.remove)(name) {
                        Ok(()) | Err(Errno::NODATA) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        let mut total = 0;
        for (name, value) in xattrs.iter().take(MAX_XATTRS) {
            total += name.len() + value.len() / 2;
            if total > MAX_XATTR_TOTAL {
                break;
            }
            if !carried(name, how.wanted) {
                continue;
            }
            let Ok(value) = hex::decode(value) else { continue };
            if value.len() > MAX_XATTR_VALUE {
                continue;
            }
            match (ops.set)(name.as_str(), &value) {
                Ok(()) => {}
                // A file system without them: the file is kept without
                // (as rsync goes on), said in the log.
                Err(Errno::OPNOTSUPP) => {
                    tracing::warn!("{name}: this file system keeps no such extended attribute; left out");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Which of what a receiver keeps besides contents, times and permission
/// bits differ between what a sender sends of a file and what the
/// receiver holds under its name, read the same way: what a re-sync sets
/// on a file whose contents are unchanged. A side that says nothing of
/// one (not asked for, not readable) is taken to agree on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Differs {
    /// The owner (itemized `o`).
    pub owner: bool,
    /// The group (`g`).
    pub group: bool,
    /// POSIX ACLs (`a`).
    pub acls: bool,
    /// Other extended attributes (`x`).
    pub xattrs: bool,
}

impl Differs {
    /// `src` (what the sender sends) against `held` (what the receiver
    /// has), as `how` applies them: owners only where the receiver sets
    /// them, by name where both sides have one (unless `numeric`), else
    /// by id; extended attributes of the namespaces asked for.
    pub fn of(src: Option<&Attrs>, held: Option<&Attrs>, how: Applying) -> Differs {
        let (Some(src), Some(held)) = (src, held) else { return Differs::default() };
        let mut d = Differs::default();
        if how.owners {
            let by_name = |a: &Option<String>, b: &Option<String>| !how.numeric && a.is_some() && b.is_some();
            let ids = |a: Option<u32>, b: Option<u32>| matches!((a, b), (Some(a), Some(b)) if a != b);
            d.owner = if by_name(&src.user, &held.user) { src.user != held.user } else { ids(src.uid, held.uid) };
            d.group = if by_name(&src.group, &held.group) { src.group != held.group } else { ids(src.gid, held.gid) };
        }
        if let (Some(a), Some(b)) = (&src.xattrs, &held.xattrs) {
            let wanted = how.wanted;
            let same = |acls: bool| {
                let part = |m: &BTreeMap<String, String>| {
                    let acl = |n: &str| n.starts_with("system.posix_acl_");
                    m.iter()
                        .filter(|(n, _)| acl(n) == acls && carried(n, wanted))
                        .map(|(n, v)| (n.clone(), v.clone()))
                        .collect::<Vec<_>>()
                };
                part(a) == part(b)
            };
            d.acls = !same(true);
            d.xattrs = !same(false);
        }
        d
    }

    /// Whether anything differs.
    pub fn any(self) -> bool {
        self.owner || self.group || self.acls || self.xattrs
    }
}

/// Gives what the `O_PATH` descriptor `fd` is open on (a regular file or
/// a directory, never opened for reading: its bits need not let this
/// process read it) the owner and extended attributes `attrs` names, as
/// `how` allows.
///
/// # Errors
///
/// Those of `fchownat(2)` and `setxattr(2)`.
pub fn apply_through(fd: &OwnedFd, attrs: &Attrs, how: Applying, names: &mut Names) -> io::Result<()> {
    if how.owners {
        let (uid, gid) = names.owner(attrs, how.numeric);
        if uid.is_some() || gid.is_some() {
            let (uid, gid) = (uid.map(Uid::from_raw), gid.map(Gid::from_raw));
            rustix::fs::chownat(fd, "", uid, gid, AtFlags::EMPTY_PATH)?;
        }
    }
    xattrs_through(fd, attrs, how)
}

/// [`set_xattrs`] on what the `O_PATH` descriptor `fd` is open on,
/// through `/proc`.
fn xattrs_through(fd: &OwnedFd, attrs: &Attrs, how: Applying) -> io::Result<()> {
    if attrs.xattrs.is_none() {
        return Ok(());
    }
    let path = proc_path(fd);
    let path = path.as_str();
    set_xattrs(
        attrs,
        how,
        &mut XattrOps {
            list: &mut |buf| rustix::fs::listxattr(path, rustix::buffer::spare_capacity(buf)).map(drop),
            remove: &mut |name| rustix::fs::removexattr(path, name),
            set: &mut |n, v| rustix::fs::setxattr(path, n, v, rustix::fs::XattrFlags::empty()),
        },
    )
}

/// Gives the permission bits `mode` to what the `O_PATH` descriptor `fd`
/// is open on (through `/proc`: `fchmod` refuses such a descriptor).
///
/// # Errors
///
/// Those of `chmod(2)`.
pub fn chmod_through(fd: &OwnedFd, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::chmod(proc_path(fd).as_str(), Mode::from_raw_mode(mode as _))?)
}

/// Gives the special file `name` in `dir` (not followed, never opened:
/// through `/proc` by an `O_PATH` descriptor) the extended attributes
/// `attrs` names, as `how` allows.
///
/// # Errors
///
/// Those of `openat(2)` and `setxattr(2)`.
pub fn apply_xattrs_at(dir: &OwnedFd, name: &OsStr, attrs: &Attrs, how: Applying) -> io::Result<()> {
    if attrs.xattrs.is_none() {
        return Ok(());
    }
    let fd = rustix::fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode).is_symlink() {
        return Ok(());
    }
    xattrs_through(&fd, attrs, how)
}

/// Gives the symlink or special file `name` in `dir` (not followed) the
/// owner `attrs` names, as `how` allows.
///
/// # Errors
///
/// Those of `fchownat(2)`.
pub fn apply_owner_at(dir: &OwnedFd, name: &OsStr, attrs: &Attrs, how: Applying, names: &mut Names) -> io::Result<()> {
    if !how.owners {
        return Ok(());
    }
    let (uid, gid) = names.owner(attrs, how.numeric);
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    let flags = AtFlags::SYMLINK_NOFOLLOW;
    Ok(rustix::fs::chownat(dir, name, uid.map(Uid::from_raw), gid.map(Gid::from_raw), flags)?)
}

/// Makes the special file `special` (a FIFO, a socket's name, a device
/// with `rdev`) as `name` in `dir`, with the permission bits `mode`
/// (masked by the umask). Only root makes them here: anyone else gets
/// `PermissionDenied`.
///
/// # Errors
///
/// `PermissionDenied` unless root; those of `mknodat(2)`.
pub fn make_special(dir: &OwnedFd, name: &str, special: Special, rdev: Option<[u32; 2]>, mode: u32) -> io::Result<()> {
    if !is_root() {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "special files are kept only by root"));
    }
    let kind = match special {
        Special::Fifo => FileType::Fifo,
        Special::Socket => FileType::Socket,
        Special::Char => FileType::CharacterDevice,
        Special::Block => FileType::BlockDevice,
    };
    let dev = match (special.is_device(), rdev) {
        (true, Some([major, minor])) => rustix::fs::makedev(major, minor),
        (true, None) => return Err(io::Error::new(io::ErrorKind::InvalidInput, "a device without its numbers")),
        (false, _) => 0,
    };
    match rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode((mode & 0o777) as _), dev) {
        Ok(()) => Ok(()),
        Err(Errno::PERM) => Err(io::Error::new(io::ErrorKind::PermissionDenied, "mknod refused")),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_user_attributes_and_acls_are_carried() {
        let all = Wanted { xattrs: true, acls: true, ..Wanted::default() };
        assert!(carried("user.note", all));
        assert!(carried("system.posix_acl_access", all));
        assert!(!carried("user.", all));
        assert!(!carried("security.capability", all), "a file capability is never set");
        assert!(!carried("trusted.x", all));
        assert!(!carried("system.posix_acl_access", Wanted { xattrs: true, ..Wanted::default() }));
        assert!(!carried("user.note", Wanted { acls: true, ..Wanted::default() }));
    }

    #[test]
    fn differences_are_told_as_the_receiver_applies_them() {
        let xattrs = |pairs: &[(&str, &str)]| Some(pairs.iter().map(|(n, v)| ((*n).into(), (*v).into())).collect());
        let src = Attrs {
            uid: Some(1000),
            gid: Some(1000),
            user: Some("alice".into()),
            group: Some("staff".into()),
            xattrs: xattrs(&[("user.a", "01"), ("system.posix_acl_access", "02")]),
            ..Attrs::default()
        };
        let all = Wanted { owners: true, numeric: false, xattrs: true, acls: true };
        let how = Applying { owners: true, numeric: false, wanted: all };
        assert!(!Differs::of(Some(&src), Some(&src), how).any());
        // Owners by name where both have one: the same name under another
        // id is the same owner.
        let other_ids = Attrs { uid: Some(7), gid: Some(7), ..src.clone() };
        assert!(!Differs::of(Some(&src), Some(&other_ids), how).any());
        let numeric = Applying { numeric: true, ..how };
        let d = Differs::of(Some(&src), Some(&other_ids), numeric);
        assert!(d.owner && d.group && !d.xattrs && !d.acls);
        // Not set by this receiver: not compared.
        let d = Differs::of(Some(&src), Some(&other_ids), Applying { owners: false, ..numeric });
        assert!(!d.any());
        let bob = Attrs { user: Some("bob".into()), ..src.clone() };
        assert_eq!(Differs::of(Some(&src), Some(&bob), how), Differs { owner: true, ..Differs::default() });
        // An attribute more, or one fewer, in either namespace.
        let more = Attrs {
            xattrs: xattrs(&[("user.a", "01"), ("user.b", ""), ("system.posix_acl_access", "02")]),
            ..src.clone()
        };
        assert_eq!(Differs::of(Some(&src), Some(&more), how), Differs { xattrs: true, ..Differs::default() });
        let no_acl = Attrs { xattrs: xattrs(&[("user.a", "01")]), ..src.clone() };
        assert_eq!(Differs::of(Some(&src), Some(&no_acl), how), Differs { acls: true, ..Differs::default() });
        let only_user = Applying { wanted: Wanted { acls: false, ..all }, ..how };
        assert!(!Differs::of(Some(&src), Some(&no_acl), only_user).any(), "ACLs not asked for");
        // Unread on one side: taken to agree.
        let unread = Attrs { xattrs: None, ..src.clone() };
        assert!(!Differs::of(Some(&src), Some(&unread), how).any());
        assert!(!Differs::of(Some(&src), None, how).any());
    }

    #[test]
    fn a_file_s_user_attributes_are_read_and_set_again() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let dir: OwnedFd = std::fs::File::open(tmp.path()).unwrap().into();
        let fa = std::fs::File::open(&a).unwrap();
        if rustix::fs::fsetxattr(&fa, "user.note", b"\x00hi", rustix::fs::XattrFlags::empty()).is_err() {
            eprintln!("no user xattrs on this file system: skipped");
            return;
        }
        let st = rustix::fs::statat(&dir, "a", AtFlags::SYMLINK_NOFOLLOW).unwrap();
        let wanted = Wanted { xattrs: true, owners: true, ..Wanted::default() };
        let mut names = Names::new();
        let attrs = read(&dir, OsStr::new("a"), &st, wanted, &mut names).unwrap();
        assert_eq!(attrs.xattrs.as_ref().unwrap()["user.note"], "006869");
        assert_eq!(attrs.uid, Some(st.st_uid));
        let fb = std::fs::File::open(&b).unwrap();
        apply(&fb, &attrs, Applying::here(wanted), &mut names).unwrap();
        let mut value = Vec::with_capacity(64);
        rustix::fs::fgetxattr(&fb, "user.note", rustix::buffer::spare_capacity(&mut value)).unwrap();
        assert_eq!(value, b"\x00hi");
        let mut hostile = (*attrs).clone();
        hostile.xattrs = Some([("security.capability".to_owned(), "00".to_owned())].into_iter().collect());
        apply(&fb, &hostile, Applying::here(wanted), &mut names).unwrap();
        let mut value = Vec::with_capacity(64);
        let got = rustix::fs::fgetxattr(&fb, "security.capability", rustix::buffer::spare_capacity(&mut value));
        assert!(got.is_err(), "never set");
    }
}
