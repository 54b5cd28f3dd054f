//! The walks over a real overlayfs-shaped tree built in a temp dir: whiteouts (0:0 char
//! devices, so root), opaque directories (trusted xattrs), symlinks pointing out of the
//! tree, hard links.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::diff::{changes, Change, ChangeKind};
use super::tarball::{export, layer};
use super::*;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = crate::fsutil::remove_tree(&self.0);
    }
}

fn scratch(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!(
        "berth-layerfs-{tag}-{}-{}",
        std::process::id(),
        crate::ids::new_id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn write(p: &Path, data: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn whiteout(p: &Path) {
    nix::sys::stat::mknod(
        p,
        nix::sys::stat::SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o644),
        0,
    )
    .unwrap();
}

fn opaque(p: &Path) {
    let f = std::fs::File::open(p).unwrap();
    let name = CString::new(OPAQUE_XATTR).unwrap();
    // SAFETY: fsetxattr reads the NUL-terminated name and one byte of value, both alive for
    // the call, on a descriptor `f` keeps open.
    let r = unsafe { libc::fsetxattr(f.as_raw_fd(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    assert_eq!(r, 0, "{}", io::Error::last_os_error());
}

/// An image of two layers and a container's upper dir that adds, changes and deletes,
/// replaces a directory, and plants a symlink to a host secret and one out of the tree.
fn fixture() -> (Dir, PathBuf, Vec<PathBuf>) {
    let d = scratch("fixture");
    let base = d.0.join("base");
    let top = d.0.join("top");
    let upper = d.0.join("upper");
    write(&base.join("etc/passwd"), "root\n");
    write(&base.join("etc/group"), "root\n");
    write(&base.join("var/spool/mail/box"), "m\n");
    write(&base.join("home/user/.profile"), "p\n");
    write(&base.join("bin/busybox"), "bb\n");
    std::fs::hard_link(base.join("bin/busybox"), base.join("bin/sh")).unwrap();
    write(&base.join("gone-below"), "g\n");
    // The top image layer deletes one file of the base.
    std::fs::create_dir_all(&top).unwrap();
    whiteout(&top.join("gone-below"));
    write(&top.join("opt/tool"), "t\n");
    // The container: adds, changes, deletes, replaces /var/spool.
    write(&upper.join("added"), "added\n");
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    let etc = std::fs::metadata(base.join("etc")).unwrap();
    std::fs::set_permissions(upper.join("etc"), etc.permissions()).unwrap();
    write(&upper.join("etc/passwd"), "root\nchanged\n");
    whiteout(&upper.join("etc/group"));
    std::fs::create_dir_all(upper.join("var/spool")).unwrap();
    opaque(&upper.join("var/spool"));
    write(&upper.join("var/spool/new"), "new\n");
    whiteout(&upper.join("home"));
    write(&upper.join("newdir/sub/f"), "n\n");
    symlink("/etc/shadow", upper.join("leak")).unwrap();
    symlink("../../../../../../", upper.join("up")).unwrap();
    symlink("/", upper.join("root-link")).unwrap();
    symlink(format!("./{}/", "l".repeat(150)), upper.join("long-link")).unwrap();
    (d, upper, vec![top, base])
}

fn stack(upper: &Path, lowers: &[PathBuf]) -> Vec<Tree> {
    let mut dirs = vec![(upper.to_path_buf(), "the container's writable layer")];
    dirs.extend(lowers.iter().map(|l| (l.clone(), "an image layer")));
    open_stack(&dirs).unwrap()
}

fn shown(c: &[Change]) -> Vec<String> {
    c.iter().map(ToString::to_string).collect()
}

#[test]
fn diff_reads_whiteouts_opaque_directories_and_modifications() {
    if !test_gate::require(test_gate::root(), "making whiteouts and trusted xattrs") {
        return;
    }
    let (_d, upper, lowers) = fixture();
    let trees = stack(&upper, &lowers);
    let got = changes(&trees[0], &trees[1..]).unwrap();
    // dockerd's answer for the same changes (its order aside): checked against Debian's
    // dockerd with overlay2 for the same shell commands.
    assert_eq!(
        shown(&got),
        [
            "A /added",
            "C /etc",
            "D /etc/group",
            "C /etc/passwd",
            "D /home",
            "A /leak",
            "A /long-link",
            "A /newdir",
            "A /newdir/sub",
            "A /newdir/sub/f",
            "A /root-link",
            "A /up",
            "C /var",
            "C /var/spool",
            "D /var/spool/mail",
            "A /var/spool/new",
        ]
    );
    assert_eq!(got[0].kind, ChangeKind::Added);
    // A whiteout of what the image itself deleted, and an unchanged copied-up directory,
    // are no change.
    whiteout(&upper.join("gone-below"));
    std::fs::create_dir_all(upper.join("opt")).unwrap();
    let opt = std::fs::metadata(lowers[0].join("opt")).unwrap();
    std::fs::set_permissions(upper.join("opt"), opt.permissions()).unwrap();
    let again = changes(&trees[0], &trees[1..]).unwrap();
    assert_eq!(shown(&again), shown(&got));
    // A container that changed nothing.
    let empty = scratch("empty");
    let trees = stack(&empty.0, &lowers);
    assert!(changes(&trees[0], &trees[1..]).unwrap().is_empty());
}

/// Entries of a tar stream: path → (type, data or link target).
fn entries(tar: &[u8]) -> BTreeMap<String, (tar::EntryType, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(tar);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let kind = e.header().entry_type();
        let data = match e.link_name_bytes() {
            Some(l) => l.into_owned(),
            None => {
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                v
            }
        };
        out.insert(path, (kind, data));
    }
    out
}

#[test]
fn export_is_the_merged_view_and_follows_nothing() {
    if !test_gate::require(test_gate::root(), "making whiteouts and trusted xattrs") {
        return;
    }
    let (_d, upper, lowers) = fixture();
    let trees = stack(&upper, &lowers);
    let mut out = Vec::new();
    export(&trees, &mut out).unwrap();
    let got = entries(&out);
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "added",
            "bin/",
            "bin/busybox",
            "bin/sh",
            "etc/",
            "etc/passwd",
            "leak",
            "long-link",
            "newdir/",
            "newdir/sub/",
            "newdir/sub/f",
            "opt/",
            "opt/tool",
            "root-link",
            "up",
            "var/",
            "var/spool/",
            "var/spool/new",
        ]
    );
    assert_eq!(got["etc/passwd"].1, b"root\nchanged\n");
    assert_eq!(
        got["leak"],
        (tar::EntryType::Symlink, b"/etc/shadow".to_vec())
    );
    assert_eq!(
        got["up"],
        (tar::EntryType::Symlink, b"../../../../../../".to_vec())
    );
    // Targets byte for byte, long ones too.
    assert_eq!(got["root-link"].1, b"/");
    assert_eq!(
        got["long-link"].1,
        format!("./{}/", "l".repeat(150)).as_bytes()
    );
    assert_eq!(
        got["bin/sh"],
        (tar::EntryType::Link, b"bin/busybox".to_vec())
    );
    assert_eq!(got["bin/busybox"].1, b"bb\n");
}

#[test]
fn a_commit_layer_carries_image_spec_whiteouts_and_unpacks_to_the_same_view() {
    if !test_gate::require(test_gate::root(), "making whiteouts and trusted xattrs") {
        return;
    }
    let (d, upper, lowers) = fixture();
    let trees = stack(&upper, &lowers);
    let mut out = Vec::new();
    let summary = layer(&trees[0], &mut out).unwrap();
    let got = entries(&out);
    assert!(got.contains_key("etc/.wh.group"), "{:?}", got.keys());
    assert!(got.contains_key(".wh.home"));
    assert!(got.contains_key("var/spool/.wh..wh..opq"));
    assert_eq!(
        got["leak"],
        (tar::EntryType::Symlink, b"/etc/shadow".to_vec())
    );
    assert_eq!(summary.entries, got.len() as u64);
    // The store's unpacker reads it back into the same upper dir shape.
    let again = d.0.join("again");
    std::fs::create_dir_all(&again).unwrap();
    crate::image::unpack::unpack(&out[..], &again, &mut std::io::sink()).unwrap();
    let trees2 = stack(&again, &lowers);
    assert_eq!(
        shown(&changes(&trees2[0], &trees2[1..]).unwrap()),
        shown(&changes(&trees[0], &trees[1..]).unwrap())
    );
    // Nothing at all is an empty layer.
    let empty = scratch("empty-layer");
    let t = Tree::open(&empty.0, "the container's writable layer").unwrap();
    assert_eq!(layer(&t, &mut Vec::new()).unwrap().entries, 0);
}

#[test]
fn paths_past_path_max_are_refused_by_name_not_followed() {
    let d = scratch("deep");
    let mut cur =
        nix::fcntl::open(&d.0, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    let name = "d".repeat(200);
    for _ in 0..25 {
        nix::sys::stat::mkdirat(&cur, name.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
        cur = nix::fcntl::openat(
            &cur,
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
    }
    drop(cur);
    let t = Tree::open(&d.0, "the container's writable layer").unwrap();
    let e = changes(&t, &[]).unwrap_err();
    assert!(e.to_string().contains("is longer than 4095 bytes"), "{e}");
    assert!(export(std::slice::from_ref(&t), &mut Vec::new()).is_err());
    // A symlink as a layer root is refused; one inside is never gone through.
    let outside = scratch("outside");
    write(&outside.0.join("secret"), "s\n");
    let link = d.0.with_extension("link");
    symlink(&outside.0, &link).unwrap();
    assert!(Tree::open(&link, "an image layer").is_err());
    let _ = std::fs::remove_file(&link);
    let inner = scratch("inner");
    symlink(&outside.0, inner.0.join("s")).unwrap();
    let t = Tree::open(&inner.0, "an image layer").unwrap();
    assert!(t.list(b"s").unwrap().is_none());
    let st = nix::sys::stat::stat(&outside.0.join("secret")).unwrap();
    assert!(t.open_file(b"s/secret", &st).unwrap().is_none());
}
