//! File system helpers: atomic writes, so a crash never leaves a half-written record, and
//! tree removal that costs neither stack nor descriptors however deep the tree.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename, fsync of the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other(format!("{} has no parent", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Serialises `value` as JSON and writes it atomically.
pub fn atomic_write_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    atomic_write(path, &bytes)
}

/// Bytes in the files below `root` (not following symlinks, each hard-linked file once),
/// as dockerd counts a writable layer; what cannot be read counts as nothing.
pub fn tree_size(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.nlink() <= 1 || seen.insert((meta.dev(), meta.ino())) {
                total = total.saturating_add(meta.size());
            }
        }
    }
    total
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Removes whatever is at `path`, a whole tree for a directory, never following a symlink.
/// Nothing there is fine. See [`remove_at`].
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other(format!(
            "{} cannot be removed",
            path.display()
        )));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = match nix::fcntl::open(parent, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    remove_at(&dir, name).map_err(std::io::Error::from)
}

/// Removes whatever is at `name` in `dir`, a whole tree for a directory, never following a
/// symlink. Nothing there is fine.
///
/// A tree's depth is its writer's choice (a layer's author, a container's process), so this
/// walks it with a loop, not recursion, and holds one directory open at a time: it climbs
/// back through "..", checked to be the directory it came down from (a tree moved meanwhile
/// is an error, ESTALE, not a removal somewhere else).
pub fn remove_at(dir: &impl AsFd, name: &OsStr) -> Result<(), Errno> {
    let top = match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if top.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return unlink(dir, name, UnlinkatFlags::NoRemoveDir);
    }
    let mut cur = nix::fcntl::openat(dir, name, DIR_FLAGS, Mode::empty())?;
    // For each level below `name`: its name in its parent, and the parent's identity.
    let mut below: Vec<(OsString, (u64, u64))> = Vec::new();
    loop {
        match empty_until_subdir(&cur)? {
            Scan::Subdir(sub) => {
                let here = nix::sys::stat::fstat(&cur)?;
                match nix::fcntl::openat(&cur, sub.as_os_str(), DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => {
                        below.push((sub, (here.st_dev, here.st_ino)));
                        cur = fd;
                    }
                    Err(Errno::ENOENT) => {}
                    Err(Errno::ENOTDIR | Errno::ELOOP) => {
                        unlink(&cur, &sub, UnlinkatFlags::NoRemoveDir)?
                    }
                    Err(e) => return Err(e),
                }
            }
            Scan::Removed => {}
            Scan::Empty => {
                let Some((sub, parent_id)) = below.pop() else {
                    break;
                };
                let parent = nix::fcntl::openat(&cur, "..", DIR_FLAGS, Mode::empty())?;
                let st = nix::sys::stat::fstat(&parent)?;
                if (st.st_dev, st.st_ino) != parent_id {
                    return Err(Errno::ESTALE);
                }
                unlink(&parent, &sub, UnlinkatFlags::RemoveDir)?;
                cur = parent;
            }
        }
    }
    drop(cur);
    unlink(dir, name, UnlinkatFlags::RemoveDir)
}

/// What one pass over a directory found.
enum Scan {
    /// A subdirectory, to go down into (what came before it was removed).
    Subdir(OsString),
    /// Only non-directories, now removed: look again, in case the listing missed some.
    Removed,
    /// Nothing.
    Empty,
}

/// Removes the non-directories of `dir` up to its first subdirectory.
fn empty_until_subdir(dir: &OwnedFd) -> Result<Scan, Errno> {
    let mut listing = nix::dir::Dir::openat(dir, ".", DIR_FLAGS, Mode::empty())?;
    let mut removed = false;
    for entry in listing.iter() {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            Some(nix::dir::Type::Directory) => true,
            Some(_) => false,
            None => nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR),
        };
        if is_dir {
            return Ok(Scan::Subdir(name.to_os_string()));
        }
        unlink(dir, name, UnlinkatFlags::NoRemoveDir)?;
        removed = true;
    }
    Ok(if removed { Scan::Removed } else { Scan::Empty })
}

/// `unlinkat`, where something already gone is fine.
fn unlink(dir: &impl AsFd, name: &OsStr, how: UnlinkatFlags) -> Result<(), Errno> {
    match nix::unistd::unlinkat(dir, name, how) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_files() {
        let dir = std::env::temp_dir().join(format!("berth-fsutil-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("record.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tree_size_counts_files_once_and_follows_no_links() {
        let dir = std::env::temp_dir().join(format!("berth-treesize-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("ten"), [0u8; 10]).unwrap();
        fs::write(dir.join("twenty"), [0u8; 20]).unwrap();
        fs::hard_link(dir.join("twenty"), dir.join("sub/again")).unwrap();
        fs::write(dir.join("sub/five"), [0u8; 5]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.join("link")).unwrap();
        assert_eq!(tree_size(&dir), 10 + 20 + 5 + "/usr".len() as u64);
        assert_eq!(tree_size(&dir.join("missing")), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remove_tree_takes_a_tree_deeper_than_any_stack_or_path() {
        // 20 000 levels: a path of 40 000 bytes, far past PATH_MAX, and far more levels
        // than one stack frame or one descriptor each could take.
        let dir = std::env::temp_dir().join(format!("berth-fsutil-deep-{}", std::process::id()));
        let _ = remove_tree(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut cur = nix::fcntl::open(&dir, DIR_FLAGS, Mode::empty()).unwrap();
        for i in 0..20_000 {
            nix::sys::stat::mkdirat(&cur, "d", Mode::from_bits_truncate(0o755)).unwrap();
            if i % 1000 == 0 {
                fs::write(format!("/proc/self/fd/{}/f", raw(&cur)), b"x").unwrap();
                std::os::unix::fs::symlink("/", format!("/proc/self/fd/{}/l", raw(&cur))).unwrap();
            }
            cur = nix::fcntl::openat(&cur, "d", DIR_FLAGS, Mode::empty()).unwrap();
        }
        drop(cur);
        // A symlink to a directory outside is removed, never followed.
        let outside = dir.with_extension("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep"), b"k").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        remove_tree(&dir).unwrap();
        assert!(!dir.exists());
        assert!(outside.join("keep").exists());
        remove_tree(&outside).unwrap();
        // Missing is fine; a plain file goes too.
        remove_tree(&dir).unwrap();
        fs::write(&dir, b"f").unwrap();
        remove_tree(&dir).unwrap();
        assert!(!dir.exists());
    }

    fn raw(fd: &OwnedFd) -> i32 {
        use std::os::fd::AsRawFd;
        fd.as_raw_fd()
    }
}
