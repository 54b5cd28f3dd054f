//! `docker cp`: Docker's archive API (`HEAD`, `GET` and `PUT /containers/{id}/archive`) on
//! running, stopped and never-started containers.
//!
//! Everything happens in the container's root as overlayfs shows it, so overlayfs does the
//! merging (a file of the image written copies up, a removed one gets its whiteout): a
//! running container's root is the overlay already mounted on the host and shared into its
//! VM (virtio-fs without a writeback cache, so what the guest wrote is there, and what is
//! written here the guest sees when it opens the file again); a stopped or never-started
//! container's overlay is mounted for the copy and unmounted after it. The copy holds the
//! container's lifecycle lock throughout, as dockerd holds the container's lock, so no start,
//! stop cleanup or removal mounts, unmounts or deletes the layers under it.
//!
//! Every path is resolved as if the container's root were `/`: directories are opened with
//! openat2 `RESOLVE_IN_ROOT` from the root's descriptor, so an absolute symlink or a `..`
//! climbs no higher than the container's root, whatever a running guest swaps in meanwhile.
//! The last component of a path is examined without following it (dockerd's rule; `path/`
//! and `path/.` follow it). Archives are written by [`crate::layerfs::tarball::subtree`],
//! which never follows a symlink below the directory it starts from.
//!
//! A client's archive (PUT) is untrusted: its names are split by the image unpacker's
//! [`components`] (no `..`, at most 4095 bytes and 1024 directories; absolute names are
//! taken relative to the destination, as tar does); each entry's parent is opened confined
//! to the container's root; the entry itself is created by name in that directory without
//! following anything (`O_EXCL | O_NOFOLLOW`, `symlinkat`, `mkdirat`); a hard link must
//! name a file or symlink inside the destination; a symlink whose target climbs out of the
//! destination is refused (dockerd's "breakout" rule); device nodes are refused (they would
//! be created on the host, and a 0:0 one is an overlayfs whiteout that hides image files).

use std::collections::VecDeque;
use std::ffi::{CString, OsStr};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use tokio::sync::OwnedMutexGuard;

use super::mounts::MountPoint;
use super::record::Status;
use super::{initlayer, vm, Container, Containers};
use crate::image::unpack::{components, decompress, UnpackError};
use crate::layerfs::{tarball, Tree};
use crate::{EngineError, Result};

/// What the archive's tree is called in errors.
const ROOT_WHAT: &str = "the container's file system";
/// Symlinks followed while resolving one path before giving up (dockerd's limit).
const MAX_SYMLINKS: usize = 255;
/// Directories of one PUT whose modification times are restored after the extraction (a
/// directory's time changes as entries are added to it). A list of every directory of an
/// archive would grow with the client's archive; past this many, the rest keep the time
/// of the copy.
const MAX_DIR_TIMES: usize = 4096;

/// Why a copy failed; turned into the engine's errors (with the container's name) by
/// [`CopyError::engine`].
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("extraction point is not a directory")]
    NotADirectory,
    #[error("{0}")]
    Refused(String),
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the archive")]
    Archive(#[source] crate::layerfs::LayerFsError),
}

impl CopyError {
    /// The engine's error, worded as dockerd words it for a missing path.
    fn engine(self, path: &str, container: &str) -> EngineError {
        match self {
            CopyError::NotFound(_) => EngineError::NotFound(format!(
                "Could not find the file {path} in container {container}"
            )),
            CopyError::NotADirectory | CopyError::Refused(_) => {
                EngineError::InvalidArgument(self.to_string())
            }
            e => EngineError::Internal(vmm_launcher::chain(&e)),
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a [u8]) -> impl FnOnce(Errno) -> CopyError + 'a {
    move |e| CopyError::Io {
        op,
        path: shown(path),
        source: e.into(),
    }
}

fn shown(path: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(&path[..path.len().min(200)]).into_owned();
    if path.len() > 200 {
        s.push_str("...");
    }
    s
}

/// What `HEAD` and `GET` say about a path: dockerd's `ContainerPathStat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathStat {
    pub name: String,
    pub size: i64,
    /// Go's `os.FileMode` bits (type bits high, permissions low).
    pub mode: u32,
    pub mtime: SystemTime,
    /// For a symlink: what it resolves to in the container, as an absolute path.
    pub link_target: String,
}

impl PathStat {
    /// The `X-Docker-Container-Path-Stat` header's value: base64 of the JSON dockerd sends.
    pub fn header_value(&self) -> String {
        let json = serde_json::json!({
            "name": self.name,
            "size": self.size,
            "mode": self.mode,
            "mtime": go_time(self.mtime),
            "linkTarget": self.link_target,
        });
        base64(json.to_string().as_bytes())
    }
}

/// Go's `os.FileMode` of a `stat` mode.
fn go_mode(st_mode: u32) -> u32 {
    let mut mode = st_mode & 0o777;
    if st_mode & libc::S_ISUID != 0 {
        mode |= 1 << 23;
    }
    if st_mode & libc::S_ISGID != 0 {
        mode |= 1 << 22;
    }
    if st_mode & libc::S_ISVTX != 0 {
        mode |= 1 << 20;
    }
    mode | match st_mode & libc::S_IFMT {
        libc::S_IFDIR => 1 << 31,
        libc::S_IFLNK => 1 << 27,
        libc::S_IFIFO => 1 << 25,
        libc::S_IFSOCK => 1 << 24,
        libc::S_IFCHR => (1 << 26) | (1 << 21),
        libc::S_IFBLK => 1 << 26,
        _ => 0,
    }
}

/// Go's `time.Time` in JSON (RFC 3339 with nanoseconds, trailing zeros dropped), UTC.
fn go_time(t: SystemTime) -> String {
    let full = crate::time::rfc3339(t);
    // `...:ssZ` or `...:ss.nnnnnnnnnZ`.
    match full.strip_suffix('Z').and_then(|s| s.split_once('.')) {
        Some((secs, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                format!("{secs}Z")
            } else {
                format!("{secs}.{frac}Z")
            }
        }
        None => full,
    }
}

/// Standard base64 with padding (Go's `base64.StdEncoding`).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A client's path as dockerd takes it: absolute in the container and cleaned lexically
/// (`..` stops at `/`), split into its directory and its last element. `base` is empty for
/// `/` and a path ending in `/`, `.` for one ending in `/.`: both name the directory itself,
/// followed if it is a symlink.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    /// The directory's components.
    dir: Vec<Vec<u8>>,
    base: Vec<u8>,
    /// The name dockerd reports and rebases the archive on (Go's `filepath.Base`).
    name: String,
}

impl Request {
    fn parse(path: &str) -> Request {
        let raw = path.as_bytes();
        let mut comps: Vec<Vec<u8>> = Vec::new();
        for part in raw.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    comps.pop();
                }
                p => comps.push(p.to_vec()),
            }
        }
        let trailing_dot = raw == b"." || raw.ends_with(b"/.");
        let trailing_slash = raw.ends_with(b"/");
        let base = if trailing_dot {
            b".".to_vec()
        } else if trailing_slash {
            Vec::new()
        } else {
            comps.pop().unwrap_or_default()
        };
        let name = if trailing_dot {
            ".".to_string()
        } else if !base.is_empty() {
            String::from_utf8_lossy(&base).into_owned()
        } else {
            comps.last().map_or_else(
                || "/".to_string(),
                |c| String::from_utf8_lossy(c).into_owned(),
            )
        };
        Request {
            dir: comps,
            base,
            name,
        }
    }

    /// Whether the path names its directory itself (`/`, `x/`, `x/.`).
    fn is_dir_itself(&self) -> bool {
        self.base.is_empty() || self.base == b"."
    }

    /// The path's directory, relative to the root (`.` for the root).
    fn dir_rel(&self) -> Vec<u8> {
        join(&self.dir)
    }
}

fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    if comps.is_empty() {
        return b".".to_vec();
    }
    comps.join(&b'/')
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `rel` as if `root` were `/`: symlinks, absolute or with `..`, are followed but
/// never lead above `root`, nor onto another mount, nor through magic links.
pub(crate) fn open_in_root(root: &impl AsFd, rel: &[u8], flags: OFlag) -> io::Result<OwnedFd> {
    let path = CString::new(rel).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let how = OpenHow {
        flags: (flags | OFlag::O_CLOEXEC).bits() as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV,
    };
    // SAFETY: openat2 reads `how` (its size passed) and the NUL-terminated `path`, both alive
    // for the call; the root descriptor is borrowed for it. It returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_fd().as_raw_fd(),
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

/// The directory `rel` below `root`, opened confined; what is missing, or not a directory,
/// is reported as such.
fn open_dir(root: &impl AsFd, rel: &[u8], shown_path: &str) -> Result<OwnedFd, CopyError> {
    open_in_root(root, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::ENOENT) => CopyError::NotFound(shown_path.to_string()),
            Some(libc::ENOTDIR) => CopyError::NotADirectory,
            _ => CopyError::Io {
                op: "open",
                path: shown_path.to_string(),
                source: e,
            },
        }
    })
}

/// Where `comps` (from the root) leads with every symlink followed as if the root were `/`:
/// the absolute path dockerd reports as a symlink's `linkTarget`. Components that do not
/// exist are kept as they are. A loop, bounded by [`MAX_SYMLINKS`], never by the path.
fn resolve_in_root(root: &impl AsFd, comps: &[Vec<u8>]) -> Result<String, CopyError> {
    let mut todo: VecDeque<Vec<u8>> = comps.iter().cloned().collect();
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        match &c[..] {
            b"" | b"." => continue,
            b".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        // Not a symlink, or not there: kept as it is.
        let target = open_in_root(root, &join(&done), OFlag::O_PATH | OFlag::O_DIRECTORY)
            .ok()
            .and_then(|dir| nix::fcntl::readlinkat(&dir, OsStr::from_bytes(&c)).ok());
        let Some(target) = target else {
            done.push(c);
            if done.iter().map(|c| c.len() + 1).sum::<usize>() > crate::layerfs::MAX_PATH_LEN {
                return Err(CopyError::Refused(
                    "the path is longer than 4095 bytes".into(),
                ));
            }
            continue;
        };
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(CopyError::Io {
                op: "resolve",
                path: shown(&join(comps)),
                source: io::Error::from_raw_os_error(libc::ELOOP),
            });
        }
        let t = target.as_bytes();
        if t.starts_with(b"/") {
            done.clear();
        }
        for part in t.split(|&b| b == b'/').rev() {
            todo.push_front(part.to_vec());
        }
    }
    let mut out = String::new();
    for c in &done {
        out.push('/');
        out.push_str(&String::from_utf8_lossy(c));
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// What a path names: its directory (opened in the root) and, unless the path names that
/// directory itself, the entry's name in it, with its `stat` (not followed).
struct Target {
    dir: OwnedFd,
    base: Option<Vec<u8>>,
    st: libc::stat,
}

fn find(root: &impl AsFd, req: &Request, path: &str) -> Result<Target, CopyError> {
    let dir = open_dir(root, &req.dir_rel(), path).map_err(|e| match e {
        // A file where the path needs a directory: dockerd's lstat says it does not exist.
        CopyError::NotADirectory if !req.is_dir_itself() => CopyError::NotFound(path.into()),
        e => e,
    })?;
    if req.is_dir_itself() {
        let st = nix::sys::stat::fstat(&dir).map_err(io_err("examine", path.as_bytes()))?;
        return Ok(Target {
            dir,
            base: None,
            st,
        });
    }
    match nix::sys::stat::fstatat(
        &dir,
        OsStr::from_bytes(&req.base),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => Ok(Target {
            dir,
            base: Some(req.base.clone()),
            st,
        }),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Err(CopyError::NotFound(path.into())),
        Err(e) => Err(io_err("examine", path.as_bytes())(e)),
    }
}

fn stat_of(root: &impl AsFd, req: &Request, target: &Target) -> Result<PathStat, CopyError> {
    let st = &target.st;
    let link_target = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        let mut comps = req.dir.clone();
        comps.push(req.base.clone());
        resolve_in_root(root, &comps)?
    } else {
        String::new()
    };
    let mtime = UNIX_EPOCH
        + Duration::new(
            u64::try_from(st.st_mtime).unwrap_or(0),
            u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        );
    Ok(PathStat {
        name: req.name.clone(),
        size: st.st_size,
        mode: go_mode(st.st_mode),
        mtime,
        link_target,
    })
}

/// `HEAD`: the stat of `path` in the root `root`.
fn stat_path(root: &impl AsFd, path: &str) -> Result<PathStat, CopyError> {
    let req = Request::parse(path);
    let target = find(root, &req, path)?;
    stat_of(root, &req, &target)
}

/// `GET`: the stat of `path` and its archive, written to `out`.
fn archive_path(root: &impl AsFd, path: &str) -> Result<(PathStat, Source), CopyError> {
    let req = Request::parse(path);
    let target = find(root, &req, path)?;
    let stat = stat_of(root, &req, &target)?;
    // Named as dockerd rebases them: the path's last element (`.` for `dir/.`, its
    // entries `./a`; `/` for the root, its entries `//bin`, which the CLI rebases).
    let name = req.name.as_bytes().to_vec();
    Ok((
        stat,
        Source {
            tree: Tree::from_fd(target.dir, ROOT_WHAT),
            rel: target.base.unwrap_or_default(),
            st: target.st,
            name,
        },
    ))
}

/// An opened path, ready to be archived.
struct Source {
    tree: Tree,
    rel: Vec<u8>,
    st: libc::stat,
    name: Vec<u8>,
}

impl Source {
    fn write_to(&self, out: impl Write) -> Result<(), CopyError> {
        tarball::subtree(&self.tree, &self.rel, &self.st, &self.name, out)
            .map_err(CopyError::Archive)
    }
}

/// Copies the directory `path` of `root` (resolved confined to it) into the directory
/// `into`, owners kept: its tar, written to an unnamed file beside `into`, extracted there
/// under the rules of a client's archive. A `path` that is missing or not a directory
/// copies nothing. For filling a new volume from the image ([`super::volumes::fill`]).
pub(super) fn copy_dir(
    root: &std::path::Path,
    path: &str,
    into: &std::path::Path,
) -> Result<(), CopyError> {
    let open_dir = |p: &std::path::Path| {
        nix::fcntl::open(
            p,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err("open", p.as_os_str().as_bytes()))
    };
    let root_fd = open_dir(root)?;
    let (stat, source) = match archive_path(&root_fd, &format!("{path}/.")) {
        Ok(found) => found,
        Err(CopyError::NotFound(_) | CopyError::NotADirectory) => return Ok(()),
        Err(CopyError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOTDIR) => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    if stat.mode & (1 << 31) == 0 {
        return Ok(());
    }
    let beside = into.parent().unwrap_or(into);
    let mut tar = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(beside)
        .map_err(|e| CopyError::Io {
            op: "make a temporary file in",
            path: beside.display().to_string(),
            source: e,
        })?;
    source.write_to(&mut tar)?;
    io::Seek::rewind(&mut tar).map_err(|e| CopyError::Io {
        op: "rewind",
        path: "the volume's archive".into(),
        source: e,
    })?;
    let into_fd = open_dir(into)?;
    extract(
        &into_fd,
        "/",
        io::BufReader::with_capacity(256 << 10, tar),
        ExtractOptions {
            no_overwrite_dir_non_dir: false,
            copy_uid_gid: true,
        },
    )?;
    // The volume takes the directory's own owner and mode too, as dockerd's copy does.
    let rel = path.trim_start_matches('/');
    let src = open_in_root(
        &root_fd,
        rel.as_bytes(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
    )
    .map_err(|e| CopyError::Io {
        op: "open",
        path: shown(rel.as_bytes()),
        source: e,
    })?;
    let st = nix::sys::stat::fstat(&src).map_err(io_err("stat", rel.as_bytes()))?;
    nix::unistd::fchown(
        &into_fd,
        Some(nix::unistd::Uid::from_raw(st.st_uid)),
        Some(nix::unistd::Gid::from_raw(st.st_gid)),
    )
    .map_err(io_err("set the owner of", into.as_os_str().as_bytes()))?;
    nix::sys::stat::fchmod(&into_fd, Mode::from_bits_truncate(st.st_mode & 0o7777))
        .map_err(io_err("set the mode of", into.as_os_str().as_bytes()))
}

/// `PUT`'s options (dockerd's query parameters).
#[derive(Clone, Copy, Debug, Default)]
pub struct ExtractOptions {
    /// `noOverwriteDirNonDir`: refuse to replace a directory with a non-directory or the
    /// other way round.
    pub no_overwrite_dir_non_dir: bool,
    /// `copyUIDGID` (`docker cp -a`): keep the archive's owners; otherwise everything
    /// belongs to root, as `docker cp` documents.
    pub copy_uid_gid: bool,
}

/// `PUT`: extracts the tar stream `input` (plain or gzip) into the directory `path`
/// (followed if it is a symlink), confined to `root`. Public for the fuzz target.
pub fn extract(
    root: &impl AsFd,
    path: &str,
    input: impl Read,
    opts: ExtractOptions,
) -> Result<(), CopyError> {
    extract_around(root, path, input, opts, &[])
}

/// [`extract`], refusing any entry that would land on one of `covered` (absolute paths in
/// the container: its binds of single files, whose files the VM sees in place of what is
/// under them in the root).
fn extract_around(
    root: &impl AsFd,
    path: &str,
    input: impl Read,
    opts: ExtractOptions,
    covered: &[String],
) -> Result<(), CopyError> {
    let req = Request::parse(path);
    let mut comps = req.dir.clone();
    if !req.is_dir_itself() {
        comps.push(req.base.clone());
    }
    let dest_rel = join(&comps);
    // Opened once to tell a missing destination or a file from a directory, as dockerd
    // does before it reads the archive.
    drop(open_dir(root, &dest_rel, path)?);
    let refused = |e: UnpackError| CopyError::Refused(e.to_string());
    let plain = decompress(input).map_err(refused)?;
    let mut archive = tar::Archive::new(plain);
    let mut x = Extractor {
        root,
        dest: comps,
        opts,
        dir_times: Vec::new(),
        chown: nix::unistd::geteuid().is_root(),
        covered: covered
            .iter()
            .map(|c| {
                let comps: Vec<Vec<u8>> = c
                    .split('/')
                    .filter(|c| !c.is_empty())
                    .map(|c| c.as_bytes().to_vec())
                    .collect();
                join(&comps)
            })
            .collect(),
    };
    let entries = archive
        .entries()
        .map_err(|e| refused(UnpackError::Tar(e)))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| refused(UnpackError::Tar(e)))?;
        x.entry(&mut entry)?;
    }
    x.finish_dirs();
    Ok(())
}

struct Extractor<'a, R> {
    root: &'a R,
    /// The destination directory's components from the root (as the client named it:
    /// resolved confined whenever it is opened).
    dest: Vec<Vec<u8>>,
    opts: ExtractOptions,
    dir_times: Vec<(Vec<Vec<u8>>, i64)>,
    /// Whether owners are set (berthd runs as root; unit tests may not).
    chown: bool,
    /// Paths from the root no entry may land on (see [`extract_around`]).
    covered: Vec<Vec<u8>>,
}

/// An entry's metadata, as it is applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

impl<R: AsFd> Extractor<'_, R> {
    /// The path of `comps` (below the destination) from the root.
    fn rooted(&self, comps: &[Vec<u8>]) -> Vec<u8> {
        let mut all = self.dest.clone();
        all.extend(comps.iter().cloned());
        join(&all)
    }

    /// The directory at `comps` below the destination, opened confined to the container's
    /// root; missing directories are made (0755, root's), one at a time, as dockerd makes
    /// an entry's missing parents.
    fn parent(&self, comps: &[Vec<u8>], name: &[u8]) -> Result<OwnedFd, CopyError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
        let through = |i: usize| {
            CopyError::Refused(format!(
                "archive entry {:?} goes through {:?}, which is not a directory",
                shown(name),
                shown(&join(&comps[..i]))
            ))
        };
        match open_in_root(self.root, &self.rooted(comps), flags) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Err(through(comps.len())),
            Err(source) => {
                return Err(CopyError::Io {
                    op: "open the directory of",
                    path: shown(name),
                    source,
                })
            }
        }
        // Down from the destination: each level opened (or made, then opened) confined.
        let mut cur =
            open_in_root(self.root, &self.rooted(&[]), flags).map_err(|source| CopyError::Io {
                op: "open the destination of",
                path: shown(name),
                source,
            })?;
        for i in 0..comps.len() {
            let rel = self.rooted(&comps[..=i]);
            cur = match open_in_root(self.root, &rel, flags) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    match nix::sys::stat::mkdirat(
                        &cur,
                        OsStr::from_bytes(&comps[i]),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(io_err("make a directory for", name)(e)),
                    }
                    open_in_root(self.root, &rel, flags).map_err(|_| through(i + 1))?
                }
                Err(_) => return Err(through(i + 1)),
            };
        }
        Ok(cur)
    }

    fn entry<T: Read>(&mut self, entry: &mut tar::Entry<'_, T>) -> Result<(), CopyError> {
        let raw = entry.path_bytes().into_owned();
        let refused = |e: UnpackError| CopyError::Refused(e.to_string());
        let comps: Vec<Vec<u8>> = components(&raw)
            .map_err(refused)?
            .into_iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let at = self.rooted(&comps);
        if self.covered.contains(&at) {
            return Err(CopyError::Refused(format!(
                "berth does not support copying onto /{}, a bind mount of a single file: write its host file",
                shown(&at)
            )));
        }
        let header = entry.header();
        let mut kind = header.entry_type();
        if kind == tar::EntryType::Regular && raw.ends_with(b"/") {
            kind = tar::EntryType::Directory;
        }
        let tar_err = |e: io::Error| refused(UnpackError::Tar(e));
        let (uid, gid) = if self.opts.copy_uid_gid {
            (
                u32::try_from(header.uid().map_err(tar_err)?).unwrap_or(u32::MAX),
                u32::try_from(header.gid().map_err(tar_err)?).unwrap_or(u32::MAX),
            )
        } else {
            (0, 0)
        };
        let meta = Meta {
            mode: header.mode().map_err(tar_err)? & 0o7777,
            uid,
            gid,
            mtime: i64::try_from(header.mtime().map_err(tar_err)?).unwrap_or(0),
        };
        match kind {
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => return Ok(()),
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(CopyError::Refused(format!(
                    "archive entry {:?} is a device node: berth creates no device nodes in a container's file system",
                    shown(&raw)
                )))
            }
            _ => {}
        }
        // The destination itself (`.`, `./`): dockerd leaves it as it is.
        let Some((name, parent)) = comps.split_last() else {
            return Ok(());
        };
        let dir = self.parent(parent, &raw)?;
        let name_os = OsStr::from_bytes(name);
        let existing = nix::sys::stat::fstatat(&dir, name_os, AtFlags::AT_SYMLINK_NOFOLLOW).ok();
        let is_dir = |st: &libc::stat| st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if let Some(st) = &existing {
            let want_dir = kind == tar::EntryType::Directory;
            if self.opts.no_overwrite_dir_non_dir && is_dir(st) != want_dir {
                return Err(CopyError::Refused(if want_dir {
                    format!(
                        "cannot overwrite non-directory {:?} with directory {:?}",
                        shown(&raw),
                        shown(&raw)
                    )
                } else {
                    format!(
                        "cannot overwrite directory {:?} with non-directory {:?}",
                        shown(&raw),
                        shown(&raw)
                    )
                }));
            }
        }
        let replace =
            |dir: &OwnedFd| crate::fsutil::remove_at(dir, name_os).map_err(io_err("replace", &raw));
        match kind {
            tar::EntryType::Directory => {
                if !existing.as_ref().is_some_and(is_dir) {
                    replace(&dir)?;
                    nix::sys::stat::mkdirat(&dir, name_os, Mode::from_bits_truncate(0o700))
                        .map_err(io_err("make the directory", &raw))?;
                }
                let fd = nix::fcntl::openat(
                    &dir,
                    name_os,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io_err("open the directory", &raw))?;
                if self.chown {
                    nix::unistd::fchown(&fd, Some(meta.uid.into()), Some(meta.gid.into()))
                        .map_err(io_err("chown", &raw))?;
                }
                nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(meta.mode))
                    .map_err(io_err("chmod", &raw))?;
                if self.dir_times.len() < MAX_DIR_TIMES {
                    self.dir_times.push((comps.clone(), meta.mtime));
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                replace(&dir)?;
                let fd = nix::fcntl::openat(
                    &dir,
                    name_os,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(io_err("create", &raw))?;
                let mut file = std::fs::File::from(fd);
                io::copy(entry, &mut file).map_err(|source| CopyError::Io {
                    op: "write",
                    path: shown(&raw),
                    source,
                })?;
                if self.chown {
                    nix::unistd::fchown(&file, Some(meta.uid.into()), Some(meta.gid.into()))
                        .map_err(io_err("chown", &raw))?;
                }
                nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(meta.mode))
                    .map_err(io_err("chmod", &raw))?;
                let t = TimeSpec::new(meta.mtime, 0);
                nix::sys::stat::futimens(&file, &t, &t)
                    .map_err(io_err("set the times of", &raw))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() || climbs_out(parent.len(), &target) {
                    return Err(CopyError::Refused(format!(
                        "invalid symlink {:?} -> {:?}",
                        shown(&raw),
                        shown(&target)
                    )));
                }
                replace(&dir)?;
                nix::unistd::symlinkat(OsStr::from_bytes(&target), &dir, name_os)
                    .map_err(io_err("make the symlink", &raw))?;
                self.owner_and_time(&dir, name_os, &meta, &raw)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let bad = || {
                    CopyError::Refused(format!(
                        "invalid hardlink {:?} -> {:?}: not a file in the destination",
                        shown(&raw),
                        shown(&target)
                    ))
                };
                let tcomps: Vec<Vec<u8>> = components(&target)
                    .map_err(|_| bad())?
                    .into_iter()
                    .map(|c| c.as_bytes().to_vec())
                    .collect();
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(bad());
                };
                if tcomps == comps {
                    return Ok(());
                }
                let tdir = open_in_root(
                    self.root,
                    &self.rooted(tparent),
                    OFlag::O_PATH | OFlag::O_DIRECTORY,
                )
                .map_err(|_| bad())?;
                let tname = OsStr::from_bytes(tname);
                match nix::sys::stat::fstatat(&tdir, tname, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st)
                        if matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFLNK) => {}
                    _ => return Err(bad()),
                }
                replace(&dir)?;
                nix::unistd::linkat(&tdir, tname, &dir, name_os, AtFlags::empty())
                    .map_err(io_err("make the hardlink", &raw))?;
            }
            tar::EntryType::Fifo => {
                replace(&dir)?;
                nix::sys::stat::mknodat(
                    &dir,
                    name_os,
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(meta.mode & 0o777),
                    0,
                )
                .map_err(io_err("make the fifo", &raw))?;
                self.owner_and_time(&dir, name_os, &meta, &raw)?;
                nix::sys::stat::fchmodat(
                    &dir,
                    name_os,
                    Mode::from_bits_truncate(meta.mode),
                    nix::sys::stat::FchmodatFlags::NoFollowSymlink,
                )
                .map_err(io_err("chmod", &raw))?;
            }
            other => {
                return Err(CopyError::Refused(format!(
                    "archive entry {:?} has an unsupported tar entry type {}",
                    shown(&raw),
                    other.as_byte()
                )))
            }
        }
        Ok(())
    }

    fn owner_and_time(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        raw: &[u8],
    ) -> Result<(), CopyError> {
        if self.chown {
            nix::unistd::fchownat(
                dir,
                name,
                Some(meta.uid.into()),
                Some(meta.gid.into()),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(io_err("chown", raw))?;
        }
        let t = TimeSpec::new(meta.mtime, 0);
        nix::sys::stat::utimensat(
            dir,
            name,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io_err("set the times of", raw))
    }

    /// Sets directory times last, deepest first (adding entries changed them), each
    /// directory opened confined again.
    fn finish_dirs(&mut self) {
        let mut dirs = std::mem::take(&mut self.dir_times);
        dirs.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        for (comps, mtime) in dirs {
            if let Ok(fd) = open_in_root(
                self.root,
                &self.rooted(&comps),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            ) {
                let t = TimeSpec::new(mtime, 0);
                let _ = nix::sys::stat::futimens(&fd, &t, &t);
            }
        }
    }
}

/// Whether a symlink at depth `depth` below the destination with `target` would lead out
/// of the destination, read lexically as dockerd reads it (an absolute target is taken
/// inside the destination).
fn climbs_out(depth: usize, target: &[u8]) -> bool {
    if target.starts_with(b"/") {
        return false;
    }
    let mut level = depth as i64;
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                level -= 1;
                if level < 0 {
                    return true;
                }
            }
            _ => level += 1,
        }
    }
    false
}

/// A container's root, held for one copy: its descriptor, the mount made for the copy if
/// the container was not running (unmounted when this is dropped), and the container's
/// lifecycle lock (released last).
pub struct CopyRoot {
    root: OwnedFd,
    mounted: Option<PathBuf>,
    _op: OwnedMutexGuard<()>,
}

impl Drop for CopyRoot {
    fn drop(&mut self) {
        // Lazily: the root's descriptor, closed right after this (fields drop after
        // `drop`), keeps the detached overlay alive until then; the lifecycle lock, dropped
        // last, keeps a start from mounting the same upper dir meanwhile.
        if let Some(target) = self.mounted.take() {
            vm::unmount_rootfs(&target);
        }
    }
}

/// `GET`'s answer: the path's stat, and its archive to stream.
pub struct Archive {
    pub stat: PathStat,
    source: Source,
    _root: CopyRoot,
}

impl Archive {
    /// Writes the tar stream (blocking: run it on a blocking thread). The container's root
    /// stays held until this returns.
    pub fn write_to(self, out: impl Write) -> Result<()> {
        self.source
            .write_to(out)
            .map_err(|e| EngineError::Internal(vmm_launcher::chain(&e)))
    }
}

fn blocking_error(e: tokio::task::JoinError) -> EngineError {
    EngineError::internal("docker cp", e)
}

impl Containers {
    /// The container's root for a copy: the running container's mounted overlay, or the
    /// overlay mounted for this copy. Holds its lifecycle lock.
    ///
    /// A path in one of the container's bind mounts is copied from or to the bind's host
    /// directory (`path` becomes the path in it), as dockerd copies through its volumes; a
    /// path in a tmpfs is refused (its files live in the VM's memory), and so is a write to
    /// a read-only root or bind. Returns the root and the path in it.
    async fn copy_root(
        &self,
        c: &Arc<Container>,
        path: &str,
        write: bool,
    ) -> Result<(CopyRoot, String)> {
        let op = c.op.clone().lock_owned().await;
        let record = c.record().await;
        let rootfs = c.rootfs();
        let running = match record.state.status {
            Status::Running => true,
            Status::Created | Status::Exited => false,
            Status::Removing | Status::Dead => {
                return Err(EngineError::Conflict(format!(
                    "container {} is marked for removal",
                    record.id
                )))
            }
        };
        match in_mount(&record.host_config.mounts, path)? {
            Some((MountPoint::Tmpfs { destination, .. }, _)) => {
                return Err(EngineError::InvalidArgument(format!(
                    "berth does not support copying within a tmpfs mount ({destination}): its files live in the container's VM, out of the host's reach"
                )))
            }
            Some((
                MountPoint::Bind {
                    source, readonly, ..
                }
                | MountPoint::Volume {
                    source, readonly, ..
                },
                rel,
            )) => {
                if write && *readonly {
                    return Err(EngineError::Forbidden(
                        "mounted volume is marked read-only".into(),
                    ));
                }
                let mount = in_mount(&record.host_config.mounts, path)?.map(|(m, _)| m);
                let (source, rel) = match mount.and_then(MountPoint::single_file) {
                    // A bind of one file: read in its directory, by its name alone.
                    Some(_) if write => {
                        return Err(EngineError::InvalidArgument(format!(
                            "berth does not support copying into a bind mount of a single file ({}): write its host file, {source}",
                            mount.map(MountPoint::destination).unwrap_or_default()
                        )))
                    }
                    Some(name) => {
                        let dir = std::path::Path::new(source)
                            .parent()
                            .map(|p| p.to_string_lossy().into_owned())
                            .unwrap_or_else(|| "/".into());
                        let rest = if rel == "/" { String::new() } else { rel };
                        (dir, format!("/{name}{rest}"))
                    }
                    None => (source.clone(), rel),
                };
                let root = nix::fcntl::open(
                    source.as_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| EngineError::internal(format!("cannot open {source}"), e))?;
                let root = CopyRoot {
                    root,
                    mounted: None,
                    _op: op,
                };
                return Ok((root, rel));
            }
            None if write && record.host_config.readonly_rootfs => {
                return Err(EngineError::Forbidden(
                    "container rootfs is marked read-only".into(),
                ))
            }
            None => {}
        }
        let path = path.to_string();
        let images = self.images.clone();
        let dir = c.dir.clone();
        tokio::task::spawn_blocking(move || {
            if !running {
                let image = images.resolve_for_container(&record.image_id)?;
                let init = initlayer::prepare(&dir, &image.layers)
                    .map_err(|e| EngineError::Internal(vmm_launcher::chain(&e)))?;
                let mut layers = image.layers.clone();
                layers.push(init);
                vm::mount_rootfs(
                    &layers,
                    &dir.join("upper"),
                    &dir.join("work"),
                    &rootfs,
                    &dir.join("empty"),
                )
                .map_err(EngineError::Internal)?;
            } else if !vm::is_mountpoint(&rootfs) {
                return Err(EngineError::Internal(format!(
                    "container {}: its root file system is not mounted",
                    record.id
                )));
            }
            let opened = nix::fcntl::open(
                &rootfs,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            );
            match opened {
                Ok(root) => Ok((
                    CopyRoot {
                        root,
                        mounted: (!running).then_some(rootfs),
                        _op: op,
                    },
                    path,
                )),
                Err(e) => {
                    if !running {
                        vm::unmount_rootfs(&rootfs);
                    }
                    Err(EngineError::internal(
                        format!("cannot open {}", rootfs.display()),
                        e,
                    ))
                }
            }
        })
        .await
        .map_err(blocking_error)?
    }

    /// `HEAD /containers/{id}/archive`: what `path` is in the container.
    pub async fn stat_path(&self, name_or_id: &str, path: &str) -> Result<PathStat> {
        let c = self.get(name_or_id).await?;
        let (root, inner) = self.copy_root(&c, path, false).await?;
        let (path, name) = (path.to_string(), name_or_id.to_string());
        tokio::task::spawn_blocking(move || {
            stat_path(&root.root, &inner).map_err(|e| e.engine(&path, &name))
        })
        .await
        .map_err(blocking_error)?
    }

    /// `GET /containers/{id}/archive`: `path` found and opened; its archive is written by
    /// [`Archive::write_to`].
    pub async fn archive_path(&self, name_or_id: &str, path: &str) -> Result<Archive> {
        let c = self.get(name_or_id).await?;
        let (root, inner) = self.copy_root(&c, path, false).await?;
        let (p, name) = (path.to_string(), name_or_id.to_string());
        let archive = tokio::task::spawn_blocking(move || {
            let (stat, source) =
                archive_path(&root.root, &inner).map_err(|e| e.engine(&p, &name))?;
            Ok::<_, EngineError>(Archive {
                stat,
                source,
                _root: root,
            })
        })
        .await
        .map_err(blocking_error)??;
        self.event(&c.record().await, "archive-path", &[]);
        Ok(archive)
    }

    /// `PUT /containers/{id}/archive`: extracts `input` (a tar stream, received whole
    /// before this is called) into the directory `path`.
    pub async fn extract_to_dir(
        &self,
        name_or_id: &str,
        path: &str,
        opts: ExtractOptions,
        input: std::fs::File,
    ) -> Result<()> {
        let c = self.get(name_or_id).await?;
        let (root, inner) = self.copy_root(&c, path, true).await?;
        // Into the root (not a bind): its single-file binds cover what is under them.
        let mounts = c.record().await.host_config.mounts;
        let covered: Vec<String> = if in_mount(&mounts, path)?.is_none() {
            mounts
                .iter()
                .filter(|m| m.single_file().is_some())
                .map(|m| m.destination().to_string())
                .collect()
        } else {
            Vec::new()
        };
        let (p, name) = (path.to_string(), name_or_id.to_string());
        tokio::task::spawn_blocking(move || {
            let input = io::BufReader::with_capacity(256 << 10, input);
            let result = extract_around(&root.root, &inner, input, opts, &covered)
                .map_err(|e| e.engine(&p, &name));
            drop(root);
            result
        })
        .await
        .map_err(blocking_error)??;
        self.event(&c.record().await, "extract-to-dir", &[]);
        Ok(())
    }
}

/// The mount `path` is in (the deepest one) and the path within it, its trailing `/` or
/// `/.` kept (they mean something to a copy). A path that climbs with `..` into a mount is
/// refused rather than guessed at.
fn in_mount<'a>(mounts: &'a [MountPoint], path: &str) -> Result<Option<(&'a MountPoint, String)>> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let names: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let climbs = names.contains(&"..");
    let mut clean: Vec<&str> = Vec::new();
    for n in &names {
        if *n == ".." {
            clean.pop();
        } else {
            clean.push(n);
        }
    }
    let under = |dest: &str| {
        let dest: Vec<&str> = dest.split('/').filter(|c| !c.is_empty()).collect();
        clean.starts_with(&dest).then_some(dest.len())
    };
    let Some((mount, depth)) = mounts
        .iter()
        .filter_map(|m| under(m.destination()).map(|d| (m, d)))
        .max_by_key(|(_, d)| *d)
    else {
        return Ok(None);
    };
    if climbs {
        return Err(EngineError::InvalidArgument(format!(
            "berth does not support copying through '..' into a mount ({}): give the path without it",
            mount.destination()
        )));
    }
    let mut rel = format!("/{}", names[depth..].join("/"));
    if path.ends_with("/.") {
        rel.push_str(if rel == "/" { "." } else { "/." });
    } else if path.ends_with('/') && rel != "/" {
        rel.push('/');
    }
    Ok(Some((mount, rel)))
}

#[cfg(test)]
mod tests;
