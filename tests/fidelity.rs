//! Issue 30: a tree put with `put -r -X -A` and got back with `get -r -X
//! -A` is the tree that left, as `rsync -aHXA -n -i -c` sees it (POSIX ACLs
//! on a file and a directory too): symlinks copied
//! as links (in, out, dangling, to a directory), hard links kept, modes of
//! files and directories, times to the nanosecond (files, directories,
//! links), owners (a file and a link owned by nobody), user extended
//! attributes, a FIFO and a socket, odd names (a 255-byte one, ones that
//! are not UTF-8), empty nested directories.
//! Owners and special files need the receiver to run as root, as these
//! tests do in CI; run otherwise, those parts are left out (and said).

mod common;

use std::path::Path;
use std::process::Command;

use common::{framewire, Serve};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `touch -d` with nanoseconds, on the path itself (`-h`: a link's own
/// time).
fn touch(path: &Path, when: &str) {
    let out = Command::new("touch").args(["-h", "-d", when]).arg(path).output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// The torture tree: everything `-r` must keep.
fn torture(src: &Path) {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let set_mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    for d in ["d700", "d750/deep", "empty/nested/deeper"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("a.txt"), b"a").unwrap();
    std::fs::write(src.join("d750/deep/b"), b"b").unwrap();
    std::fs::write(src.join("h1"), vec![7u8; 5000]).unwrap();
    std::fs::hard_link(src.join("h1"), src.join("h2")).unwrap();
    std::fs::hard_link(src.join("h1"), src.join("d700/h3")).unwrap();
    for name in ["sp ace", "tab\tx", "new\nline", "-dash", "ünïcødé"] {
        std::fs::write(src.join(name), name.as_bytes()).unwrap();
    }
    // Names are bytes: one that is not UTF-8, and a link to it.
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(src.join(std::ffi::OsStr::from_bytes(b"d\xe9j\xe0"))).unwrap();
    std::fs::write(src.join(std::ffi::OsStr::from_bytes(b"d\xe9j\xe0/bad\xff")), b"latin-1").unwrap();
    symlink(std::ffi::OsStr::from_bytes(b"d\xe9j\xe0/bad\xff"), src.join(std::ffi::OsStr::from_bytes(b"to-\xfe")))
        .unwrap();
    // Sparse: 16 MiB, 8 KiB of data.
    let sparse = std::fs::File::create(src.join("sparse.img")).unwrap();
    sparse.set_len(16 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &[9u8; 8192], 4 << 20).unwrap();
    drop(sparse);
    // 255 bytes: its partial file's name must fit too.
    std::fs::write(src.join(format!("{}.txt", "x".repeat(251))), b"long").unwrap();
    symlink("a.txt", src.join("rel-link")).unwrap();
    symlink("/etc/hostname", src.join("out-link")).unwrap();
    symlink("nowhere", src.join("dangling")).unwrap();
    symlink("d750", src.join("dir-link")).unwrap();
    symlink("../../a.txt", src.join("d750/deep/up")).unwrap();
    set_mode(&src.join("a.txt"), 0o600);
    set_mode(&src.join("d750/deep/b"), 0o750);
    touch(&src.join("a.txt"), "2020-01-02 03:04:05.123456789");
    touch(&src.join("rel-link"), "2019-05-05 05:05:05.5");
    for d in ["d750/deep", "d750", "empty/nested/deeper", "empty/nested", "empty", "d700", ""] {
        touch(&src.join(d), "2018-01-01 00:00:00.25");
    }
    set_mode(&src.join("d700"), 0o700);
    set_mode(&src.join("d750"), 0o750);
    let file = std::fs::File::open(src.join("a.txt")).unwrap();
    rustix::fs::fsetxattr(&file, "user.note", b"kept\0too", rustix::fs::XattrFlags::empty())
        .expect("user extended attributes on the test's file system");
    let dir = std::fs::File::open(src.join("d750")).unwrap();
    rustix::fs::fsetxattr(&dir, "user.dir", b"d", rustix::fs::XattrFlags::empty()).unwrap();

    if rustix::process::geteuid().is_root() {
        let nobody = Some(rustix::fs::Uid::from_raw(65534));
        let nogroup = Some(rustix::fs::Gid::from_raw(65534));
        rustix::fs::chown(src.join("sp ace"), nobody, nogroup).unwrap();
        rustix::fs::chownat(rustix::fs::CWD, src.join("dangling"), nobody, None, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .unwrap();
        rustix::fs::chown(src.join("empty/nested"), nobody, None).unwrap();
        let fifo = rustix::fs::FileType::Fifo;
        rustix::fs::mknodat(rustix::fs::CWD, src.join("d700/fifo"), fifo, rustix::fs::Mode::from_raw_mode(0o640), 0)
            .unwrap();
        drop(std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap());
        touch(&src.join("d700/fifo"), "2017-07-07 07:07:07.7");
        touch(&src.join("d700"), "2018-01-01 00:00:00.25");
        touch(src, "2018-01-01 00:00:00.25");
    } else {
        eprintln!("not root: owners and special files are not in the tree");
    }
    // POSIX ACLs (-A): an access ACL on a file, a default one on a
    // directory and one on a FIFO; `.ci/run` installs setfacl.
    let acl = |args: &[&str], p: &Path| Command::new("setfacl").args(args).arg(p).status().is_ok_and(|s| s.success());
    if !(acl(&["-m", "u:nobody:r"], &src.join("-dash")) && acl(&["-d", "-m", "u:nobody:rx"], &src.join("d700"))) {
        eprintln!("no setfacl: the tree has no ACLs");
    } else if src.join("d700/fifo").exists() {
        assert!(acl(&["-m", "u:nobody:rw"], &src.join("d700/fifo")));
    }
    touch(&src.join("d700"), "2018-01-01 00:00:00.25");
}

/// What `rsync -aHXA -n -i -c` says differs from `from` to `to` (nothing,
/// when the copy is faithful).
fn rsync_differences(from: &Path, to: &Path) -> String {
    let out = Command::new("rsync")
        .args(["-aHXA", "-n", "-i", "-c"])
        .arg(format!("{}/", from.display()))
        .arg(format!("{}/", to.display()))
        .output()
        .expect("rsync is installed (.ci/run installs it)");
    assert!(out.status.success(), "{out:?}");
    text(&out.stdout)
}

#[test]
fn a_tree_round_trips_as_rsync_sees_it() {
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    torture(&src);
    let contents = format!("{}/", src.display());

    let out = framewire(&["put", "-r", "-X", "-A", "-q", a, &contents, "t"]);
    assert!(out.status.success(), "{out:?}");
    let on_server = server.root.path().join("t");
    assert_eq!(rsync_differences(&src, &on_server), "", "the server's copy");
    // Holes are neither sent nor written.
    let allocated = |p: &Path| std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(p).unwrap()) * 512;
    assert!(allocated(&on_server.join("sparse.img")) < 1 << 20, "sparse on the server");
    // Links are data on the server: stored, never followed.
    assert_eq!(std::fs::read_link(on_server.join("out-link")).unwrap(), Path::new("/etc/hostname"));
    assert!(std::fs::symlink_metadata(on_server.join("dir-link")).unwrap().file_type().is_symlink());

    let back = local.path().join("back");
    let out = framewire(&["get", "-r", "-X", "-A", "-q", a, "t/", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // The destination directory itself included: it takes the copied
    // directory's mode and time.
    assert_eq!(rsync_differences(&src, &back), "", "the copy back");
    assert!(allocated(&back.join("sparse.img")) < 1 << 20, "sparse back");

    // Nothing changed: a dry run prints nothing; one file changed: one line.
    let out = framewire(&["put", "-r", "-X", "-A", "-n", "--itemize-changes", a, &contents, "t"]);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    touch(&src.join("d750/deep/b"), "2021-01-01 00:00:00.5");
    let out = framewire(&["put", "-r", "-X", "-A", "-n", "--itemize-changes", a, &contents, "t"]);
    assert_eq!(text(&out.stdout), "<f..t...... t/d750/deep/b\n", "{out:?}");
    let out = framewire(&["put", "-r", "-X", "-A", "-q", a, &contents, "t"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(rsync_differences(&src, &on_server), "", "after the change");

    // -L: a link to a file inside the tree is sent as that file; one
    // leading out is not followed.
    let out = framewire(&["put", "-r", "-L", a, &contents, "l"]);
    assert!(out.status.success(), "{out:?}");
    let l = server.root.path().join("l");
    assert!(std::fs::symlink_metadata(l.join("rel-link")).unwrap().is_file());
    assert!(std::fs::symlink_metadata(l.join("out-link")).is_err(), "never followed out of the tree");

    // get -L: the server's links to files inside the copied tree arrive
    // as those files; one leading out of the tree (if inside the served
    // root), to a directory or nowhere is left out, named.
    std::fs::write(server.root.path().join("beside.txt"), b"beside").unwrap();
    std::os::unix::fs::symlink("../beside.txt", on_server.join("up-and-out")).unwrap();
    let followed = local.path().join("followed");
    let out = framewire(&["get", "-r", "-L", a, "t/", followed.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let is_file = |p: &str| std::fs::symlink_metadata(followed.join(p)).is_ok_and(|m| m.is_file());
    assert!(is_file("rel-link") && is_file("d750/deep/up"), "{out:?}");
    assert_eq!(std::fs::read(followed.join("rel-link")).unwrap(), b"a");
    for gone in ["out-link", "dir-link", "dangling", "up-and-out"] {
        assert!(std::fs::symlink_metadata(followed.join(gone)).is_err(), "{gone} not followed");
        assert!(text(&out.stderr).contains(&format!("t/{gone}: a symlink")), "{gone} named: {out:?}");
    }
}

/// Partial files a cut copy left, that cannot be resumed (an empty one,
/// one longer than the file, one whose bytes are not the file's), are
/// taken over by a tree copy each way, not left beside the files: in a
/// directory of many files (read once for its partial files) and of few
/// (each looked up).
#[test]
fn stale_partial_files_are_taken_over_by_a_tree_copy() {
    let server = Serve::start(&[]);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    for d in ["many", "few"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    for i in 0..24 {
        std::fs::write(src.join(format!("many/f{i:02}")), format!("file {i} ").repeat(i + 1)).unwrap();
    }
    std::fs::write(src.join("few/a"), b"the file a").unwrap();
    std::fs::write(src.join("few/b"), b"the file b").unwrap();
    let stale = |dir: &Path| {
        for d in ["many", "few"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("many/.f00.fwpart"), b"").unwrap();
        std::fs::write(dir.join("many/.f01.fwpart"), vec![b'x'; 4096]).unwrap();
        std::fs::write(dir.join("many/.f02.fwpart"), b"not it").unwrap();
        std::fs::write(dir.join("few/.a.fwpart"), b"").unwrap();
        std::fs::write(dir.join("few/.b.fwpart"), vec![b'y'; 4096]).unwrap();
    };
    let partials = |dir: &Path| {
        let mut left = Vec::new();
        for d in ["many", "few"] {
            for e in std::fs::read_dir(dir.join(d)).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                if name.ends_with(".fwpart") {
                    left.push(format!("{d}/{name}"));
                }
            }
        }
        left
    };
    let on_server = server.root.path().join("t");
    stale(&on_server);
    let out = framewire(&["put", "-r", "-q", &server.addr, &format!("{}/", src.display()), "t"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(partials(&on_server), Vec::<String>::new(), "left on the server");
    let back = local.path().join("back");
    stale(&back);
    let out = framewire(&["get", "-r", "-q", &server.addr, "t/", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(partials(&back), Vec::<String>::new(), "left here");
    for rel in ["many/f00", "many/f01", "many/f02", "many/f23", "few/a", "few/b"] {
        let want = std::fs::read(src.join(rel)).unwrap();
        assert_eq!(std::fs::read(on_server.join(rel)).unwrap(), want, "{rel} on the server");
        assert_eq!(std::fs::read(back.join(rel)).unwrap(), want, "{rel} back");
    }
}

/// A hostile `meta` manifest: a symlink whose target climbs out is stored
/// as data and never followed by the server; a hard link naming a path
/// outside the request's directory is refused.
#[test]
fn hostile_links_stay_data() {
    let server = Serve::start(&[]);
    let root = server.root.path();
    std::fs::create_dir_all(root.join("in")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"s").unwrap();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), src.join("esc")).unwrap();
    let out = framewire(&["put", "-r", "-q", &server.addr, &format!("{}/", src.display()), "in"]);
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::symlink_metadata(root.join("in/esc")).unwrap().file_type().is_symlink());
    // Following it through the server is refused: it leads out.
    let out = framewire(&["get", &server.addr, "in/esc", local.path().join("got").to_str().unwrap()]);
    assert!(!out.status.success() && !local.path().join("got").exists(), "{out:?}");
}

/// With `-A` the receiver's ACLs become the source's: an ACL a new file
/// inherits from the destination's default ACL, and the destination's own
/// default ACL, are removed when the source has none (and a user xattr
/// the source lacks, with `-X`), so `rsync -aHXA` lists nothing.
#[test]
fn what_the_source_lacks_is_removed_with_x_and_a() {
    let server = Serve::start(&[]);
    let dest = server.root.path().join("acl");
    std::fs::create_dir_all(&dest).unwrap();
    let set = |args: &[&str], p: &Path| Command::new("setfacl").args(args).arg(p).status().is_ok_and(|s| s.success());
    if !set(&["-d", "-m", "u:nobody:rwx"], &dest) {
        eprintln!("no setfacl: skipped");
        return;
    }
    let stale = std::fs::File::open(&dest).unwrap();
    rustix::fs::fsetxattr(&stale, "user.stale", b"x", rustix::fs::XattrFlags::empty()).unwrap();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("f"), b"f").unwrap();
    std::fs::write(src.join("d/g"), b"g").unwrap();
    let out = framewire(&["put", "-r", "-X", "-A", "-q", &server.addr, &format!("{}/", src.display()), "acl"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(rsync_differences(&src, &dest), "", "inherited ACLs and the stale xattr removed");
}

/// A file whose contents are unchanged but whose permission bits, owner
/// or extended attributes changed at the source gets the source's, both
/// ways, without being sent again: itemized as rsync does (`.f...p.....`),
/// and `rsync -aHX` sees nothing left; a directory's likewise.
#[test]
fn attributes_of_unchanged_files_follow_the_source() {
    use std::os::unix::fs::PermissionsExt;
    let set_mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let set_xattr = |p: &Path, v: &[u8]| {
        let f = std::fs::File::open(p).unwrap();
        rustix::fs::fsetxattr(&f, "user.x", v, rustix::fs::XattrFlags::empty()).unwrap();
    };
    let server = Serve::start(&[]);
    let a = server.addr.as_str();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("f"), b"f").unwrap();
    std::fs::write(src.join("d/g"), b"g").unwrap();
    set_mode(&src.join("f"), 0o644);
    set_xattr(&src.join("f"), b"1");
    let contents = format!("{}/", src.display());
    let put = |extra: &[&str]| framewire(&[&["put", "-r", "-X", a, &contents, "t"], extra].concat());
    assert!(put(&["-q"]).status.success());
    let on_server = server.root.path().join("t");
    assert_eq!(rsync_differences(&src, &on_server), "");

    // Upload: bits, an attribute's value, a directory's bits, an owner.
    set_mode(&src.join("f"), 0o600);
    set_xattr(&src.join("f"), b"2");
    set_mode(&src.join("d"), 0o700);
    let root = rustix::process::geteuid().is_root();
    if root {
        rustix::fs::chown(src.join("d/g"), Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
    }
    let mut expected = String::from(".d...p..... t/d/\n.f...p....x t/f\n");
    if root {
        expected.push_str(".f....o.... t/d/g\n");
    }
    let sorted = |s: &[u8]| {
        let mut lines: Vec<&str> = std::str::from_utf8(s).unwrap().lines().collect();
        lines.sort_unstable();
        lines.join("\n") + "\n"
    };
    let out = put(&["-n", "--itemize-changes"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sorted(&out.stdout), sorted(expected.as_bytes()), "the dry run");
    let before = std::fs::metadata(on_server.join("f")).unwrap();
    let out = put(&["--itemize-changes"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sorted(&out.stdout), sorted(expected.as_bytes()), "the run");
    assert!(text(&out.stderr).contains("unchanged"), "nothing sent: {out:?}");
    let after = std::fs::metadata(on_server.join("f")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&before),
        std::os::unix::fs::MetadataExt::ino(&after),
        "set in place"
    );
    assert_eq!(rsync_differences(&src, &on_server), "", "the server's copy");
    let out = put(&["-n", "--itemize-changes"]);
    assert!(out.status.success() && out.stdout.is_empty(), "nothing left: {out:?}");

    // Download: the server's file changes its bits and attribute.
    let back = local.path().join("back");
    let get = |extra: &[&str]| framewire(&[&["get", "-r", "-X", a, "t/", back.to_str().unwrap()], extra].concat());
    assert!(get(&["-q"]).status.success());
    set_mode(&on_server.join("f"), 0o640);
    set_xattr(&on_server.join("f"), b"3");
    let out = get(&["--itemize-changes"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), format!(".f...p....x {}/f\n", back.display()), "{out:?}");
    assert_eq!(rsync_differences(&on_server, &back), "", "the copy back");
    let out = get(&["-n", "--itemize-changes"]);
    assert!(out.status.success() && out.stdout.is_empty(), "nothing left: {out:?}");
}
