//! Reading stacks of overlayfs layers on the host, confined: a container's writable layer
//! (its overlay upper dir, written by a hostile guest) and the image layers below it, for
//! `docker diff` ([`diff`]), `docker export` and the new layer of `docker commit`
//! ([`tarball`]). It owns no layer: the image store and the container directories do.
//!
//! Nothing here resolves a host path built from a layer's contents. Every directory or file
//! is opened with openat2 below its layer's root descriptor, refusing symlinks anywhere in
//! the path (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV`); entries are examined with `fstatat(AT_SYMLINK_NOFOLLOW)`; only regular
//! files are ever opened for reading (`O_NOFOLLOW | O_NONBLOCK`, then checked to be the
//! regular file that was listed). A symlink in a layer is data, never a way out of it.
//!
//! Trees are walked with an explicit stack, not recursion, holding no descriptor between
//! steps; a path longer than [`MAX_PATH_LEN`] is refused by name (it could not be opened
//! relative to a root anyway, and bounds what one entry costs).
//!
//! Overlayfs's own metadata is read the way overlayfs reads it: a character device 0:0 is
//! a whiteout (the name is deleted), `trusted.overlay.opaque=y` on a directory hides every
//! lower layer's directory of that path.

pub mod diff;
pub mod tarball;

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

/// The longest path below a layer's root that is read: Linux's PATH_MAX less its NUL.
pub const MAX_PATH_LEN: usize = 4095;
/// The xattr overlayfs marks an opaque directory with.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Why a layer stack could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LayerFsError {
    #[error("cannot open {what} at {}", dir.display())]
    Root {
        what: &'static str,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read /{path} in {what}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("/{path}... in {what} is longer than {MAX_PATH_LEN} bytes")]
    PathTooLong { what: &'static str, path: String },
    #[error("cannot write the archive")]
    Write(#[source] io::Error),
}

/// A layer's root, opened once; everything below it is reached relative to it.
pub struct Tree {
    root: OwnedFd,
    /// What the layer is, for errors ("the container's writable layer", "an image layer").
    pub what: &'static str,
}

/// The kind of an entry, as overlayfs sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
    /// A character device 0:0: the name is deleted in this layer.
    Whiteout,
}

impl Kind {
    /// The kind of what `st` describes.
    pub fn of(st: &libc::stat) -> Kind {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR if st.st_rdev == 0 => Kind::Whiteout,
            libc::S_IFCHR => Kind::Char,
            libc::S_IFBLK => Kind::Block,
            _ => Kind::File,
        }
    }
}

/// One entry of a directory, examined without following it.
#[derive(Clone)]
pub struct Node {
    pub name: OsString,
    pub kind: Kind,
    pub st: libc::stat,
}

/// A directory's entries, sorted by name (bytes), and whether it is opaque.
pub struct Listing {
    pub nodes: Vec<Node>,
    pub opaque: bool,
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// A path below a layer root as openat2 takes it: `.` for the root itself.
fn c_path(rel: &[u8]) -> io::Result<CString> {
    let rel = if rel.is_empty() { b"." as &[u8] } else { rel };
    CString::new(rel).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

impl Tree {
    /// Opens the layer rooted at `dir` (which must not itself be a symlink).
    pub fn open(dir: &Path, what: &'static str) -> Result<Tree, LayerFsError> {
        let root = nix::fcntl::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LayerFsError::Root {
            what,
            dir: dir.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Tree { root, what })
    }

    /// Another handle on the same root (its own descriptor).
    pub fn try_clone(&self) -> Result<Tree, LayerFsError> {
        let root = self.root.try_clone().map_err(|source| LayerFsError::Read {
            what: self.what,
            path: String::new(),
            source,
        })?;
        Ok(Tree {
            root,
            what: self.what,
        })
    }

    /// The root directory's own metadata.
    pub fn stat_root(&self) -> Result<libc::stat, LayerFsError> {
        nix::sys::stat::fstat(&self.root).map_err(|e| LayerFsError::Read {
            what: self.what,
            path: String::new(),
            source: e.into(),
        })
    }

    /// A tree rooted at an open directory (`docker cp`'s, resolved in a container's root).
    pub fn from_fd(root: OwnedFd, what: &'static str) -> Tree {
        Tree { root, what }
    }

    /// Opens `rel` below the root without following a symlink anywhere in it.
    fn open_beneath(&self, rel: &[u8], flags: OFlag) -> io::Result<OwnedFd> {
        let path = c_path(rel)?;
        let how = OpenHow {
            flags: (flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits() as u64,
            mode: 0,
            resolve: libc::RESOLVE_BENEATH
                | libc::RESOLVE_NO_SYMLINKS
                | libc::RESOLVE_NO_MAGICLINKS
                | libc::RESOLVE_NO_XDEV,
        };
        // SAFETY: openat2 reads `how` (its size passed) and the NUL-terminated `path`, both
        // alive for the call; the root descriptor is open while `self` lives. It returns a
        // new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        // SAFETY: a new descriptor the kernel just gave this process; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The directory at `rel`: `None` when there is none (gone, or not a directory any
    /// more: a running guest changes its layer while it is read).
    pub fn list(&self, rel: &[u8]) -> Result<Option<Listing>, LayerFsError> {
        let read_err = |source: io::Error| LayerFsError::Read {
            what: self.what,
            path: shown(rel),
            source,
        };
        let fd = match self.open_beneath(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        let opaque = get_xattr(&fd, OPAQUE_XATTR).is_some_and(|v| v == b"y");
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(|e| read_err(e.into()))?;
        let mut nodes = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| read_err(e.into()))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            nodes.push(name.to_os_string());
        }
        let mut listed = Vec::with_capacity(nodes.len());
        for name in nodes {
            match nix::sys::stat::fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => listed.push(Node {
                    kind: Kind::of(&st),
                    name,
                    st,
                }),
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(read_err(e.into())),
            }
        }
        listed.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Ok(Some(Listing {
            nodes: listed,
            opaque,
        }))
    }

    /// Opens the regular file at `rel` for reading, if it is still the file `expected`
    /// describes (same inode, still regular): `None` otherwise. Never follows a symlink and
    /// never blocks on a FIFO swapped in meanwhile.
    pub fn open_file(
        &self,
        rel: &[u8],
        expected: &libc::stat,
    ) -> Result<Option<(std::fs::File, libc::stat)>, LayerFsError> {
        let fd = match self.open_beneath(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        {
            Ok(fd) => fd,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => {
                return Err(LayerFsError::Read {
                    what: self.what,
                    path: shown(rel),
                    source: e,
                })
            }
        };
        let st = nix::sys::stat::fstat(&fd).map_err(|e| LayerFsError::Read {
            what: self.what,
            path: shown(rel),
            source: e.into(),
        })?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG
            || (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino)
        {
            return Ok(None);
        }
        Ok(Some((std::fs::File::from(fd), st)))
    }

    /// The metadata of the entry at `rel` itself (a symlink's own, never its target's):
    /// `None` when it is not there, or something on the way is not a directory. One
    /// openat2, so that resolving a path costs no directory listing.
    pub fn stat(&self, rel: &[u8]) -> Result<Option<libc::stat>, LayerFsError> {
        let read_err = |source: io::Error| LayerFsError::Read {
            what: self.what,
            path: shown(rel),
            source,
        };
        let fd = match self.open_beneath(rel, OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        nix::sys::stat::fstat(&fd)
            .map(Some)
            .map_err(|e| read_err(e.into()))
    }

    /// The target of the symlink at `rel` (`None` when it is gone or no longer a symlink).
    pub fn read_link(&self, rel: &[u8]) -> Result<Option<OsString>, LayerFsError> {
        let (parent, name) = split_last(rel);
        let dir = match self.open_beneath(parent, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => {
                return Err(LayerFsError::Read {
                    what: self.what,
                    path: shown(rel),
                    source: e,
                })
            }
        };
        match nix::fcntl::readlinkat(&dir, OsStr::from_bytes(name)) {
            Ok(target) => Ok(Some(target)),
            Err(Errno::ENOENT | Errno::EINVAL) => Ok(None),
            Err(e) => Err(LayerFsError::Read {
                what: self.what,
                path: shown(rel),
                source: e.into(),
            }),
        }
    }
}

/// Whether an open failed because the entry went away or changed kind under us.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV | libc::ENXIO)
    )
}

/// `a/b/c` → (`a/b`, `c`); `c` → (``, `c`).
fn split_last(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (b"", rel),
    }
}

/// `rel` joined with `name`, refused past [`MAX_PATH_LEN`].
pub fn child(rel: &[u8], name: &OsStr, what: &'static str) -> Result<Vec<u8>, LayerFsError> {
    let mut out = Vec::with_capacity(rel.len() + 1 + name.len());
    out.extend_from_slice(rel);
    if !rel.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name.as_bytes());
    if out.len() > MAX_PATH_LEN {
        out.truncate(200);
        return Err(LayerFsError::PathTooLong {
            what,
            path: String::from_utf8_lossy(&out).into_owned(),
        });
    }
    Ok(out)
}

/// A relative path for messages.
fn shown(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

/// The value of xattr `name` on `fd`, if it has one (at most 64 KiB, the kernel's limit).
pub fn get_xattr(fd: &impl AsFd, name: &str) -> Option<Vec<u8>> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: fgetxattr writes at most `buf.len()` bytes into `buf`; `cname` is
        // NUL-terminated and alive for the call; the descriptor is borrowed for it.
        let n = unsafe {
            libc::fgetxattr(
                fd.as_fd().as_raw_fd(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Some(buf);
        }
        if io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) && buf.len() < 65536 {
            buf.resize(65536, 0);
            continue;
        }
        return None;
    }
}

/// The extended attributes a layer tar carries for a file (what the unpacker keeps:
/// `user.*` and `security.capability`), by name.
pub fn carried_xattrs(fd: &impl AsFd) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    // SAFETY: flistxattr writes at most `names.len()` bytes into `names`; the descriptor is
    // borrowed for the call.
    let n = unsafe {
        libc::flistxattr(
            fd.as_fd().as_raw_fd(),
            names.as_mut_ptr().cast(),
            names.len(),
        )
    };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    names
        .split(|&b| b == 0)
        .filter(|n| n.starts_with(b"user.") || *n == b"security.capability")
        .filter_map(|n| {
            let name = String::from_utf8(n.to_vec()).ok()?;
            let value = get_xattr(fd, &name)?;
            Some((name, value))
        })
        .collect()
}

/// One name of a directory merged over a stack of layers.
#[derive(Clone)]
pub struct Merged {
    pub name: OsString,
    /// The layer (index into the stack) whose entry is seen.
    pub layer: usize,
    pub kind: Kind,
    pub st: libc::stat,
    /// For a directory: the layers whose directory of this path it merges, topmost first
    /// (cut at the first opaque one when listed).
    pub dirs: Vec<usize>,
}

/// A directory as overlayfs shows it: the directories of `rel` in `candidates` (indexes
/// into `stack`, topmost first) merged. A name comes from the topmost layer that has it; a
/// whiteout there hides it; a directory also merges the directories of lower candidates
/// until one of them has the name as anything but a directory. The merge stops below the
/// first opaque directory. Sorted by name; deleted names left out.
pub fn merge(
    stack: &[Tree],
    rel: &[u8],
    candidates: &[usize],
) -> Result<Vec<Merged>, LayerFsError> {
    // A name's fate: `None` deleted by a whiteout; else its entry, and whether lower
    // layers still add to it (a directory not yet cut off).
    let mut names: std::collections::BTreeMap<Vec<u8>, Option<(Merged, bool)>> = Default::default();
    for &i in candidates {
        let Some(tree) = stack.get(i) else { continue };
        let Some(listing) = tree.list(rel)? else {
            continue;
        };
        for node in listing.nodes {
            let key = node.name.as_bytes().to_vec();
            match names.get_mut(&key) {
                None => {
                    let seen = (node.kind != Kind::Whiteout).then(|| {
                        let is_dir = node.kind == Kind::Dir;
                        let entry = Merged {
                            name: node.name,
                            layer: i,
                            kind: node.kind,
                            st: node.st,
                            dirs: if is_dir { vec![i] } else { Vec::new() },
                        };
                        (entry, is_dir)
                    });
                    names.insert(key, seen);
                }
                Some(Some((entry, open))) if *open => {
                    if node.kind == Kind::Dir {
                        entry.dirs.push(i);
                    } else {
                        *open = false;
                    }
                }
                Some(_) => {}
            }
        }
        if listing.opaque {
            break;
        }
    }
    Ok(names
        .into_values()
        .flatten()
        .map(|(entry, _)| entry)
        .collect())
}

/// The entry at `rel` (`a/b/c`, no leading `/`) as the merged view of `stack` (topmost
/// first) shows it, walked a component at a time: `None` when it is not there, or when a
/// component on the way is not a directory.
pub fn lookup(stack: &[Tree], rel: &[u8]) -> Result<Option<Merged>, LayerFsError> {
    let mut candidates: Vec<usize> = (0..stack.len()).collect();
    let mut parent: Vec<u8> = Vec::new();
    let mut found = None;
    for name in rel.split(|&b| b == b'/').filter(|n| !n.is_empty()) {
        if let Some(Merged { kind, dirs, .. }) = &found {
            if *kind != Kind::Dir {
                return Ok(None);
            }
            candidates = dirs.clone();
        }
        let Some(entry) = merge(stack, &parent, &candidates)?
            .into_iter()
            .find(|m| m.name.as_bytes() == name)
        else {
            return Ok(None);
        };
        parent = child(&parent, &entry.name, "a layer")?;
        found = Some(entry);
    }
    Ok(found)
}

/// Opens every layer of a stack, topmost first.
pub fn open_stack(dirs: &[(PathBuf, &'static str)]) -> Result<Vec<Tree>, LayerFsError> {
    dirs.iter()
        .map(|(dir, what)| Tree::open(dir, what))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
