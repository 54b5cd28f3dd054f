//! `docker cp` on a plain directory standing for a container's root (the mounted overlay is
//! a directory like any other to this code), with a sentinel directory beside it that
//! nothing may reach.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::*;
use crate::image::unpack::tests::{RawTar, TempDir};

/// `<t>/root` (the container's root, with `/etc/passwd` and a directory tree) and
/// `<t>/outside/secret`.
fn scene() -> (TempDir, OwnedFd) {
    let t = TempDir::new("cp");
    let root = t.0.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::create_dir_all(root.join("d/sub")).unwrap();
    std::fs::write(root.join("d/a"), b"A").unwrap();
    std::fs::write(root.join("d/sub/b"), b"BB").unwrap();
    std::os::unix::fs::symlink("../a", root.join("d/sub/rel")).unwrap();
    std::fs::create_dir_all(t.0.join("outside")).unwrap();
    std::fs::write(t.0.join("outside/secret"), b"host secret").unwrap();
    // Escapes as a hostile guest would plant them.
    std::os::unix::fs::symlink("/", root.join("hostroot")).unwrap();
    std::os::unix::fs::symlink("../../outside", root.join("up")).unwrap();
    std::os::unix::fs::symlink(t.0.join("outside"), root.join("abs")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etclink")).unwrap();
    let fd = nix::fcntl::open(
        &root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    (t, fd)
}

fn assert_outside_untouched(t: &TempDir) {
    let names: Vec<_> = std::fs::read_dir(t.0.join("outside"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"], "something reached outside the root");
    assert_eq!(
        std::fs::read(t.0.join("outside/secret")).unwrap(),
        b"host secret"
    );
}

/// name → (kind, contents or link target) of a tar stream.
type Listing = BTreeMap<String, (char, Vec<u8>)>;

fn listing(tar: &[u8]) -> Listing {
    let mut a = tar::Archive::new(tar);
    let mut out = BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let kind = match e.header().entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            _ => 'f',
        };
        let mut data = Vec::new();
        if kind == 'l' || kind == 'h' {
            data = e.link_name_bytes().unwrap().into_owned();
        } else {
            e.read_to_end(&mut data).unwrap();
        }
        out.insert(name, (kind, data));
    }
    out
}

fn archive_of(root: &OwnedFd, path: &str) -> Result<(PathStat, Listing), CopyError> {
    let (stat, source) = archive_path(root, path)?;
    let mut out = Vec::new();
    source.write_to(&mut out)?;
    Ok((stat, listing(&out)))
}

#[test]
fn paths_are_taken_as_dockerd_takes_them() {
    let r = Request::parse("/etc/hostname");
    assert_eq!(
        (r.dir, r.base, r.name.as_str()),
        (vec![b"etc".to_vec()], b"hostname".to_vec(), "hostname")
    );
    let r = Request::parse("../../../etc/./passwd");
    assert_eq!((r.dir, r.base), (vec![b"etc".to_vec()], b"passwd".to_vec()));
    let r = Request::parse("/d/");
    assert!(r.is_dir_itself());
    assert_eq!((r.dir, r.name.as_str()), (vec![b"d".to_vec()], "d"));
    let r = Request::parse("/d/.");
    assert!(r.is_dir_itself());
    assert_eq!((r.dir, r.name.as_str()), (vec![b"d".to_vec()], "."));
    let r = Request::parse("/");
    assert!(r.is_dir_itself() && r.dir.is_empty());
    assert_eq!(r.name, "/");
}

#[test]
fn the_stat_header_is_dockerds() {
    for (input, want) in [
        (&b""[..], ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (b"fooba", "Zm9vYmE="),
    ] {
        assert_eq!(base64(input), want);
    }
    assert_eq!(go_mode(libc::S_IFDIR | 0o755), (1 << 31) | 0o755);
    assert_eq!(go_mode(libc::S_IFLNK | 0o777), (1 << 27) | 0o777);
    assert_eq!(go_mode(libc::S_IFREG | 0o4755), (1 << 23) | 0o755);
    assert_eq!(
        go_mode(libc::S_IFDIR | 0o1777),
        (1 << 31) | (1 << 20) | 0o777
    );
    let t = UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000);
    assert_eq!(go_time(t), "2023-11-14T22:13:20.5Z");
    assert_eq!(
        go_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        "2023-11-14T22:13:20Z"
    );
    let stat = PathStat {
        name: "passwd".into(),
        size: 26,
        mode: 0o644,
        mtime: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        link_target: String::new(),
    };
    // {"linkTarget":"","mode":420,"mtime":"2023-11-14T22:13:20Z","name":"passwd","size":26}
    assert_eq!(
        stat.header_value(),
        base64(br#"{"linkTarget":"","mode":420,"mtime":"2023-11-14T22:13:20Z","name":"passwd","size":26}"#)
    );
}

#[test]
fn stat_resolves_symlinks_inside_the_root() {
    let (t, root) = scene();
    let s = stat_path(&root, "/etc/passwd").unwrap();
    assert_eq!((s.name.as_str(), s.size, s.mode >> 20), ("passwd", 26, 0));
    // Through an absolute symlink to the host's root: the container's /etc/passwd.
    let s = stat_path(&root, "/hostroot/etc/passwd").unwrap();
    assert_eq!(s.size, 26);
    // `..` and an absolute host path lead nowhere outside.
    for p in ["/up/secret", "/abs/secret", "/../outside/secret", "/nope"] {
        assert!(
            matches!(stat_path(&root, p), Err(CopyError::NotFound(_))),
            "{p}"
        );
    }
    // A symlink is reported as one, with its target resolved in the root.
    let s = stat_path(&root, "/up").unwrap();
    assert_eq!(s.mode & (1 << 27), 1 << 27);
    assert_eq!(s.link_target, "/outside");
    assert_eq!(stat_path(&root, "/etclink").unwrap().link_target, "/etc");
    assert_eq!(stat_path(&root, "/hostroot").unwrap().link_target, "/");
    assert_eq!(stat_path(&root, "/d/sub/rel").unwrap().link_target, "/d/a");
    // `path/` follows it.
    let s = stat_path(&root, "/etclink/").unwrap();
    assert_eq!((s.mode >> 31, s.name.as_str()), (1, "etclink"));
    // A file where a directory is needed.
    assert!(matches!(
        stat_path(&root, "/etc/passwd/x"),
        Err(CopyError::NotFound(_))
    ));
    assert_outside_untouched(&t);
}

#[test]
fn archives_files_trees_and_symlinks_without_following_them() {
    let (t, root) = scene();
    let (stat, l) = archive_of(&root, "/etc/passwd").unwrap();
    assert_eq!(stat.name, "passwd");
    assert_eq!(l.keys().collect::<Vec<_>>(), ["passwd"]);
    assert_eq!(l["passwd"].1, b"root:x:0:0::/root:/bin/sh\n");
    let (_, l) = archive_of(&root, "/d").unwrap();
    assert_eq!(
        l.keys().collect::<Vec<_>>(),
        ["d/", "d/a", "d/sub/", "d/sub/b", "d/sub/rel"]
    );
    assert_eq!(l["d/sub/rel"], ('l', b"../a".to_vec()));
    let (stat, l) = archive_of(&root, "/d/.").unwrap();
    assert_eq!(stat.name, ".");
    // `./` kept: the CLI rebases the entries of `dir/.` on it.
    assert!(l.contains_key("./") && l.contains_key("./sub/b"), "{l:?}");
    // A symlink is archived as itself, whatever it points to.
    let (_, l) = archive_of(&root, "/abs").unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l["abs"].0, 'l');
    // Through a symlink that climbs out: the root's own (missing) directory, not the host's.
    assert!(matches!(
        archive_of(&root, "/up/"),
        Err(CopyError::NotFound(_))
    ));
    assert!(matches!(
        archive_of(&root, "/abs/secret"),
        Err(CopyError::NotFound(_))
    ));
    // Through one to `/`: the container's root.
    let (_, l) = archive_of(&root, "/hostroot/etc/").unwrap();
    assert_eq!(l.keys().collect::<Vec<_>>(), ["etc/", "etc/passwd"]);
    assert_outside_untouched(&t);
}

fn put(root: &OwnedFd, path: &str, tar: &[u8]) -> Result<(), CopyError> {
    extract(root, path, tar, ExtractOptions::default())
}

#[test]
fn extracts_files_and_trees_into_a_directory() {
    let (t, root) = scene();
    let r = t.0.join("root");
    let tar = RawTar::new()
        .dir("new/")
        .file("new/f", b"hello")
        .file("deep/er/g", b"g")
        .symlink("new/l", "f")
        .hardlink("new/h", "new/f")
        .file("/abs-name", b"inside")
        .finish();
    put(&root, "/d/sub", &tar).unwrap();
    assert_eq!(std::fs::read(r.join("d/sub/new/f")).unwrap(), b"hello");
    assert_eq!(std::fs::read(r.join("d/sub/deep/er/g")).unwrap(), b"g");
    assert_eq!(
        std::fs::read_link(r.join("d/sub/new/l")).unwrap(),
        Path::new("f")
    );
    assert_eq!(
        std::fs::metadata(r.join("d/sub/new/h")).unwrap().ino(),
        std::fs::metadata(r.join("d/sub/new/f")).unwrap().ino()
    );
    assert_eq!(std::fs::read(r.join("d/sub/abs-name")).unwrap(), b"inside");
    assert_eq!(
        std::fs::metadata(r.join("d/sub/new")).unwrap().mtime(),
        1_700_000_000
    );
    // Into a symlink to a directory: followed, in the root.
    put(
        &root,
        "/etclink",
        &RawTar::new().file("hosts", b"h").finish(),
    )
    .unwrap();
    assert_eq!(std::fs::read(r.join("etc/hosts")).unwrap(), b"h");
    // A file replaces a file.
    put(
        &root,
        "/etc",
        &RawTar::new().file("passwd", b"new").finish(),
    )
    .unwrap();
    assert_eq!(std::fs::read(r.join("etc/passwd")).unwrap(), b"new");
    assert_outside_untouched(&t);
}

#[test]
fn extraction_points_must_be_directories_in_the_root() {
    let (t, root) = scene();
    let tar = RawTar::new().file("x", b"x").finish();
    assert!(matches!(
        put(&root, "/etc/passwd", &tar),
        Err(CopyError::NotADirectory)
    ));
    assert!(matches!(
        put(&root, "/nope", &tar),
        Err(CopyError::NotFound(_))
    ));
    // A destination through a symlink that climbs out is the root's own, missing.
    assert!(matches!(
        put(&root, "/up", &tar),
        Err(CopyError::NotFound(_))
    ));
    assert!(matches!(
        put(&root, "/abs", &tar),
        Err(CopyError::NotFound(_))
    ));
    // One to `/` is the container's root.
    put(&root, "/hostroot", &tar).unwrap();
    assert_eq!(std::fs::read(t.0.join("root/x")).unwrap(), b"x");
    assert_outside_untouched(&t);
}

#[test]
fn hostile_archives_stay_inside() {
    let (t, root) = scene();
    let r = t.0.join("root");
    // `..` anywhere is refused.
    for name in ["../outside/x", "a/../../outside/x", "../../x"] {
        let tar = RawTar::new().file(name, b"evil").finish();
        assert!(
            matches!(put(&root, "/d", &tar), Err(CopyError::Refused(_))),
            "{name}"
        );
    }
    // A symlink that climbs out of the destination (dockerd's breakout rule).
    let tar = RawTar::new().symlink("l", "../../../outside").finish();
    assert!(matches!(put(&root, "/d", &tar), Err(CopyError::Refused(_))));
    // An absolute symlink, then an entry through it: resolved in the root, never the host's.
    let tar = RawTar::new()
        .symlink("l", "/")
        .file("l/berth-cp-test-escape", b"evil")
        .finish();
    put(&root, "/d", &tar).unwrap();
    assert!(!Path::new("/berth-cp-test-escape").exists());
    assert_eq!(
        std::fs::read(r.join("berth-cp-test-escape")).unwrap(),
        b"evil"
    );
    // One to the host's outside directory leads to the root's own (missing) one: refused.
    let tar = RawTar::new()
        .symlink("m", &t.0.join("outside").display().to_string())
        .file("m/secret", b"evil")
        .finish();
    assert!(matches!(put(&root, "/d", &tar), Err(CopyError::Refused(_))));
    assert_outside_untouched(&t);
}

#[test]
fn hostile_links_and_devices_are_refused() {
    let (t, root) = scene();
    let r = t.0.join("root");
    // An entry through a symlink of the container that climbs out: its target is the
    // root's own /outside, missing, and not made through a symlink.
    let tar = RawTar::new().file("up/secret", b"evil").finish();
    assert!(matches!(put(&root, "/", &tar), Err(CopyError::Refused(_))));
    // Hard links: to a path outside, through `..` or a symlink, or to a directory.
    for target in ["../outside/secret", "up/secret", "abs/secret", "etc"] {
        let tar = RawTar::new().hardlink("h", target).finish();
        let e = put(&root, "/", &tar);
        assert!(matches!(e, Err(CopyError::Refused(_))), "{target}: {e:?}");
        assert!(!r.join("h").exists());
    }
    // Device nodes are refused: a 0:0 one would be an overlayfs whiteout.
    for kind in [tar::EntryType::Char, tar::EntryType::Block] {
        let tar = RawTar::new().push("dev", kind, b"", 0o600, "").finish();
        assert!(matches!(put(&root, "/", &tar), Err(CopyError::Refused(_))));
        assert!(!r.join("dev").exists());
    }
    // Long and deep names are refused by the image unpacker's limits.
    let deep = vec!["a"; 1500].join("/");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    b.append_data(&mut h, &deep, io::empty()).unwrap();
    let tar = b.into_inner().unwrap();
    assert!(matches!(put(&root, "/", &tar), Err(CopyError::Refused(_))));
    assert_outside_untouched(&t);
}

#[test]
fn no_overwrite_dir_non_dir_is_dockerds() {
    let (t, root) = scene();
    let opts = ExtractOptions {
        no_overwrite_dir_non_dir: true,
        copy_uid_gid: false,
    };
    let tar = RawTar::new().file("sub", b"x").finish();
    assert!(matches!(
        extract(&root, "/d", &tar[..], opts),
        Err(CopyError::Refused(_))
    ));
    let tar = RawTar::new().dir("a/").finish();
    assert!(matches!(
        extract(&root, "/d", &tar[..], opts),
        Err(CopyError::Refused(_))
    ));
    // Without it, either replaces the other.
    put(&root, "/d", &RawTar::new().file("sub", b"x").finish()).unwrap();
    assert_eq!(std::fs::read(t.0.join("root/d/sub")).unwrap(), b"x");
}

#[test]
fn symlink_breakout_is_read_lexically() {
    assert!(!climbs_out(0, b"/etc/passwd"));
    assert!(!climbs_out(0, b"a/../b"));
    assert!(climbs_out(0, b"../x"));
    assert!(!climbs_out(1, b"../x"));
    assert!(climbs_out(1, b"../../x"));
    assert!(!climbs_out(2, b"a/../../../x"));
    assert!(climbs_out(2, b"a/../../../../x"));
}

#[test]
fn copies_within_a_mount_go_to_it_with_their_meaning_kept() {
    let bind = |d: &str| MountPoint::Bind {
        source: format!("/host{d}"),
        destination: d.into(),
        readonly: false,
        mode: String::new(),
    };
    let mounts = [bind("/data"), bind("/data/sub"), bind("/srv")];
    let at = |p: &str| {
        in_mount(&mounts, p)
            .unwrap()
            .map(|(m, rel)| (m.destination().to_string(), rel))
    };
    assert_eq!(at("/etc/passwd"), None);
    assert_eq!(at("/database"), None);
    assert_eq!(at("/data"), Some(("/data".into(), "/".into())));
    assert_eq!(at("/data/"), Some(("/data".into(), "/".into())));
    assert_eq!(at("/data/."), Some(("/data".into(), "/.".into())));
    assert_eq!(at("data/x/"), Some(("/data".into(), "/x/".into())));
    assert_eq!(at("//data/./x/."), Some(("/data".into(), "/x/.".into())));
    assert_eq!(at("/data/sub/f"), Some(("/data/sub".into(), "/f".into())));
    assert!(in_mount(&mounts, "/etc/../data/x").is_err());
    assert_eq!(
        in_mount(&mounts, "/data/x/../../etc").unwrap().map(|m| m.1),
        None
    );
    assert_eq!(in_mount(&[], "/data/../data").unwrap().map(|m| m.1), None);
}

#[test]
fn nothing_lands_on_a_bind_of_a_single_file() {
    let (t, root) = scene();
    let r = t.0.join("root");
    let covered = ["/etc/app.conf".to_string()];
    let onto = RawTar::new().file("app.conf", b"hidden").finish();
    let e = extract_around(
        &root,
        "/etc",
        &onto[..],
        ExtractOptions::default(),
        &covered,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("a bind mount of a single file"),
        "{e}"
    );
    assert!(!r.join("etc/app.conf").exists());
    // Beside it, as into any directory.
    let beside = RawTar::new().file("other.conf", b"seen").finish();
    extract_around(
        &root,
        "/etc/",
        &beside[..],
        ExtractOptions::default(),
        &covered,
    )
    .unwrap();
    assert_eq!(std::fs::read(r.join("etc/other.conf")).unwrap(), b"seen");
}
