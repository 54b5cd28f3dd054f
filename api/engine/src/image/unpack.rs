//! Unpacks one image layer (an untrusted tar stream, plain or compressed) into a directory that
//! becomes an overlayfs lower dir, confined to that directory.
//!
//! Confinement does not rely on checking path strings and then using them: every entry is
//! created relative to a directory file descriptor obtained by walking the entry's parent
//! path one component at a time with `O_NOFOLLOW|O_DIRECTORY`, starting from the layer's
//! root descriptor. So:
//! - a `..` component refuses the layer; absolute paths are taken relative to the layer root
//!   (as tar and Docker do);
//! - a symlink (or a non-directory) anywhere in an entry's parent path refuses the layer:
//!   nothing is ever written "through" a symlink, whatever it points to;
//! - a hardlink's target is resolved the same way and must be a regular file or symlink
//!   already in this layer;
//! - device nodes (character and block) are skipped: the guest gets its /dev from its own
//!   kernel, and device nodes from an untrusted image have no business on the host. The one
//!   device written is the overlayfs whiteout (char 0/0), made by berth from `.wh.` entries;
//! - xattrs are kept only for `user.*` and `security.capability`; `trusted.*` (which would let
//!   a layer forge overlayfs metadata) and other `security.*` names are skipped;
//! - setuid/setgid bits are kept: images need them inside the guest, and the store is 0700
//!   root so no host user can reach those files.
//!
//! AUFS-style whiteouts become overlayfs ones: `.wh.<name>` a char 0/0 device named `<name>`,
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory.

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use sha2::{Digest, Sha256};

/// The opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The prefix of whiteout entries.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The xattr overlayfs reads to make a directory opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Why a layer was refused or could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {0:?} points outside the layer")]
    Escape(String),
    #[error(
        "layer entry {path:?} goes through {through:?}, which is a symlink or not a directory"
    )]
    Through { path: String, through: String },
    #[error("layer entry {path:?} is a hardlink to {target:?}, which is not a file in this layer")]
    HardlinkTarget { path: String, target: String },
    #[error("layer entry {path:?} has an unsupported tar entry type {kind}")]
    Kind { path: String, kind: u8 },
    #[error("layer entry {path:?} has an invalid name")]
    BadName { path: String },
    #[error("layer entry {path:?} has more {what} than the limit of {limit}")]
    Limit {
        path: String,
        what: &'static str,
        limit: usize,
    },
    #[error("invalid tar stream: {0}")]
    Tar(#[source] io::Error),
    #[error("layer entry {path:?}: cannot {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot set {OPAQUE_XATTR} on {path:?}: {source} (the data root's file system must support trusted.* xattrs for overlayfs)"
    )]
    OpaqueXattr {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// What unpacking found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// `sha256:` of the uncompressed tar stream: the layer's DiffID.
    pub diff_id: String,
    /// Bytes in the unpacked tree as Docker counts them (file sizes, symlink lengths, each
    /// inode once).
    pub size: u64,
    /// Length of the uncompressed stream.
    pub tar_size: u64,
    /// Device nodes skipped.
    pub skipped_devices: u64,
    /// Extended attributes skipped.
    pub skipped_xattrs: u64,
}

/// The compressions a layer or archive may come in, as dockerd's `DecompressStream` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

impl Compression {
    /// The compression a stream starts with, by its magic number.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Self::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Self::Zstd)
        } else if head.starts_with(b"BZh") {
            Some(Self::Bzip2)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Self::Xz)
        } else {
            None
        }
    }
}

/// Wraps `input` in a decompressor if it is gzip, bzip2, zstd or xz.
pub fn decompress<'a>(input: impl Read + 'a) -> Result<Box<dyn Read + 'a>, UnpackError> {
    let mut buffered = BufReader::with_capacity(64 << 10, input);
    let head = buffered.fill_buf().map_err(UnpackError::Tar)?;
    Ok(match Compression::sniff(head) {
        None => Box::new(buffered),
        Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Some(Compression::Zstd) => Box::new(ZstdFrames {
            source: buffered,
            frame: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
        }),
        // Every stream of a multi-stream file, as bzip2(1) writes them for large input.
        Some(Compression::Bzip2) => Box::new(bzip2::read::MultiBzDecoder::new(buffered)),
        Some(Compression::Xz) => Box::new(super::xz::XzStreams::new(buffered)),
    })
}

/// A zstd stream of any number of frames (skippable ones skipped), decoded as it is read:
/// ruzstd's own streaming reader stops after one frame. ruzstd refuses a frame whose window
/// is over 100 MiB, which bounds what a hostile layer makes the decoder hold.
struct ZstdFrames<R> {
    source: R,
    frame: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: io::BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        use ruzstd::decoding::BlockDecodingStrategy;
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                while self.frame.can_collect() < buf.len() && !self.frame.is_finished() {
                    let want = buf.len() - self.frame.can_collect();
                    let before = (
                        self.frame.bytes_read_from_source(),
                        self.frame.can_collect(),
                    );
                    self.frame
                        .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(want))
                        .map_err(io::Error::other)?;
                    // A hostile stream must not spin the decoder in place.
                    let after = (
                        self.frame.bytes_read_from_source(),
                        self.frame.can_collect(),
                    );
                    if after == before && !self.frame.is_finished() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the zstd stream ends inside a frame",
                        ));
                    }
                }
                let n = self.frame.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                if !self.frame.is_finished() {
                    continue;
                }
                self.in_frame = false;
            }
            if self.source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.frame.reset(&mut self.source) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped = io::copy(
                        &mut (&mut self.source).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                    if skipped < u64::from(length) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "a zstd skippable frame is cut short",
                        ));
                    }
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }
}

/// A reader that hashes and copies everything read through it.
struct Tee<'a, R> {
    inner: R,
    hasher: Sha256,
    copy: &'a mut dyn Write,
    count: u64,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.copy.write_all(&buf[..n])?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Unpacks a layer stream (plain or gzip tar) into `dest`, an existing empty directory.
/// The uncompressed stream is also written to `copy` (the store keeps it for `docker save`).
pub fn unpack(
    input: impl Read,
    dest: &Path,
    copy: &mut dyn Write,
) -> Result<Unpacked, UnpackError> {
    let plain = decompress(input)?;
    let tee = Tee {
        inner: plain,
        hasher: Sha256::new(),
        copy,
        count: 0,
    };
    let root = open_dir_path(dest).map_err(|source| UnpackError::Io {
        path: dest.display().to_string(),
        op: "open the layer directory",
        source,
    })?;
    let mut unpacker = Unpacker {
        root,
        dir_times: Vec::new(),
        chown: nix::unistd::geteuid().is_root(),
        stats: Unpacked::default(),
    };
    let mut archive = tar::Archive::new(tee);
    {
        let entries = archive.entries().map_err(UnpackError::Tar)?;
        for entry in entries {
            let mut entry = entry.map_err(UnpackError::Tar)?;
            unpacker.entry(&mut entry)?;
        }
    }
    // The DiffID covers the whole stream, including the end-of-archive blocks and padding.
    let mut tee = archive.into_inner();
    io::copy(&mut tee, &mut io::sink()).map_err(UnpackError::Tar)?;
    unpacker.finish_dirs();
    let mut stats = unpacker.stats;
    stats.diff_id = format!("sha256:{}", hex::encode(tee.hasher.finalize()));
    stats.tar_size = tee.count;
    stats.size = tree_size(dest).map_err(|source| UnpackError::Io {
        path: dest.display().to_string(),
        op: "measure the layer",
        source,
    })?;
    Ok(stats)
}

fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// Docker's size of a layer directory: every non-directory's lstat size, each inode once.
fn tree_size(dir: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.nlink() < 2 || seen.insert(meta.ino()) {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// Splits a tar path into components: no `..`, no empty or `.` parts, absolute paths taken
/// relative to the root. An empty result names the root itself.
/// Paths longer than these are refused: Linux's PATH_MAX, and a depth no real image comes
/// near. Every entry is opened one component at a time, so depth is also the work per
/// entry, and a client's tarball sets it.
pub const MAX_PATH_LEN: usize = 4095;
pub const MAX_PATH_DEPTH: usize = 1024;

pub fn components(raw: &[u8]) -> Result<Vec<OsString>, UnpackError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(UnpackError::Limit {
            path: shortened(raw),
            what: "bytes in its path",
            limit: MAX_PATH_LEN,
        });
    }
    let mut out = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(UnpackError::Escape(
                    String::from_utf8_lossy(raw).into_owned(),
                ))
            }
            p => out.push(OsString::from_vec(p.to_vec())),
        }
        if out.len() > MAX_PATH_DEPTH {
            return Err(UnpackError::Limit {
                path: shortened(raw),
                what: "directories in its path",
                limit: MAX_PATH_DEPTH,
            });
        }
    }
    Ok(out)
}

/// The start of an over-long path, for an error message.
fn shortened(raw: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(&raw[..raw.len().min(100)]).into_owned();
    if raw.len() > 100 {
        s.push_str("...");
    }
    s
}

fn display(comps: &[OsString]) -> String {
    let parts: Vec<_> = comps.iter().map(|c| c.to_string_lossy()).collect();
    parts.join("/")
}

fn io_err<'a>(path: &'a [OsString], op: &'static str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        path: display(path),
        op,
        source: io::Error::from(e),
    }
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

struct Unpacker {
    root: OwnedFd,
    /// Directories whose mtime is set at the end (adding entries changes it).
    dir_times: Vec<(Vec<u8>, i64)>,
    chown: bool,
    stats: Unpacked,
}

impl Unpacker {
    /// Opens the directory at `comps` below the root, one component at a time, never
    /// following a symlink; missing directories are created (0755) when `create`.
    fn open_dir(
        &self,
        comps: &[OsString],
        whole: &[OsString],
        create: bool,
    ) -> Result<OwnedFd, UnpackError> {
        let mut cur = self.root.try_clone().map_err(|source| UnpackError::Io {
            path: display(whole),
            op: "duplicate the layer descriptor",
            source,
        })?;
        for (i, comp) in comps.iter().enumerate() {
            let next = match nix::fcntl::openat(&cur, comp.as_os_str(), DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    match nix::sys::stat::mkdirat(
                        &cur,
                        comp.as_os_str(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(io_err(whole, "create a parent directory")(e)),
                    }
                    nix::fcntl::openat(&cur, comp.as_os_str(), DIR_FLAGS, Mode::empty()).map_err(
                        |_| UnpackError::Through {
                            path: display(whole),
                            through: display(&comps[..=i]),
                        },
                    )?
                }
                Err(Errno::ELOOP | Errno::ENOTDIR | Errno::ENOENT) => {
                    return Err(UnpackError::Through {
                        path: display(whole),
                        through: display(&comps[..=i]),
                    })
                }
                Err(e) => return Err(io_err(whole, "open a parent directory")(e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let comps = components(&raw_path)?;
        let header = entry.header();
        let mut kind = header.entry_type();
        // Old-style tars mark directories with a trailing slash only.
        if kind == tar::EntryType::Regular && raw_path.ends_with(b"/") {
            kind = tar::EntryType::Directory;
        }
        let mode = header.mode().map_err(UnpackError::Tar)? & 0o7777;
        let uid = header.uid().map_err(UnpackError::Tar)?;
        let gid = header.gid().map_err(UnpackError::Tar)?;
        let mtime = header.mtime().map_err(UnpackError::Tar)? as i64;
        let meta = Meta { mode, uid, gid };

        match kind {
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => return Ok(()),
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink => return Ok(()),
            _ => {}
        }

        let Some((name, parent)) = comps.split_last() else {
            // The layer root itself: only a directory may name it.
            if kind == tar::EntryType::Directory {
                self.apply_dir_meta(
                    &self.root.try_clone().map_err(|source| UnpackError::Io {
                        path: ".".into(),
                        op: "duplicate the layer descriptor",
                        source,
                    })?,
                    &comps,
                    &meta,
                )?;
                self.dir_times.push((raw_path, mtime));
                return Ok(());
            }
            return Err(UnpackError::BadName {
                path: String::from_utf8_lossy(&raw_path).into_owned(),
            });
        };
        let name_bytes = name.as_bytes();

        // Whiteouts.
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            let dir = self.open_dir(parent, &comps, true)?;
            set_xattr(&dir, OPAQUE_XATTR, b"y").map_err(|source| UnpackError::OpaqueXattr {
                path: display(parent),
                source,
            })?;
            return Ok(());
        }
        if name_bytes.starts_with(b".wh..wh.") {
            // AUFS metadata (hardlink directories, ...): meaningless to overlayfs.
            return Ok(());
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(UnpackError::BadName {
                    path: display(&comps),
                });
            }
            let hidden = OsStr::from_bytes(hidden);
            let dir = self.open_dir(parent, &comps, true)?;
            crate::fsutil::remove_at(&dir, hidden)
                .map_err(io_err(&comps, "replace an entry with a whiteout"))?;
            nix::sys::stat::mknodat(
                &dir,
                hidden,
                SFlag::S_IFCHR,
                Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(io_err(&comps, "create a whiteout"))?;
            self.chown_at(&dir, hidden, &meta, &comps)?;
            return Ok(());
        }

        match kind {
            tar::EntryType::Directory => {
                let dir = self.open_dir(parent, &comps, true)?;
                match stat_at(&dir, name) {
                    Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                    Some(_) => {
                        crate::fsutil::remove_at(&dir, name)
                            .map_err(io_err(&comps, "replace an entry"))?;
                        mkdir(&dir, name, &comps)?;
                    }
                    None => mkdir(&dir, name, &comps)?,
                }
                let fd = nix::fcntl::openat(&dir, name.as_os_str(), DIR_FLAGS, Mode::empty())
                    .map_err(io_err(&comps, "open the new directory"))?;
                self.apply_dir_meta(&fd, &comps, &meta)?;
                self.set_xattrs(entry, &fd)?;
                self.dir_times.push((raw_path, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let dir = self.open_dir(parent, &comps, true)?;
                crate::fsutil::remove_at(&dir, name).map_err(io_err(&comps, "replace an entry"))?;
                let fd = nix::fcntl::openat(
                    &dir,
                    name.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(io_err(&comps, "create a file"))?;
                let mut file = std::fs::File::from(fd);
                io::copy(entry, &mut file).map_err(|source| UnpackError::Io {
                    path: display(&comps),
                    op: "write a file",
                    source,
                })?;
                if self.chown {
                    nix::unistd::fchown(&file, Some(uid_of(uid)), Some(gid_of(gid)))
                        .map_err(io_err(&comps, "chown"))?;
                }
                nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(meta.mode))
                    .map_err(io_err(&comps, "chmod"))?;
                self.set_xattrs(entry, &file)?;
                let t = TimeSpec::new(mtime, 0);
                nix::sys::stat::futimens(&file, &t, &t).map_err(io_err(&comps, "set times"))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() {
                    return Err(UnpackError::BadName {
                        path: display(&comps),
                    });
                }
                let dir = self.open_dir(parent, &comps, true)?;
                crate::fsutil::remove_at(&dir, name).map_err(io_err(&comps, "replace an entry"))?;
                nix::unistd::symlinkat(OsStr::from_bytes(&target), &dir, name.as_os_str())
                    .map_err(io_err(&comps, "create a symlink"))?;
                self.chown_at(&dir, name, &meta, &comps)?;
                let t = TimeSpec::new(mtime, 0);
                nix::sys::stat::utimensat(
                    &dir,
                    name.as_os_str(),
                    &t,
                    &t,
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                )
                .map_err(io_err(&comps, "set times"))?;
            }
            tar::EntryType::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let tcomps = components(&raw_target)?;
                let hardlink_err = || UnpackError::HardlinkTarget {
                    path: display(&comps),
                    target: String::from_utf8_lossy(&raw_target).into_owned(),
                };
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(hardlink_err());
                };
                if tcomps == comps {
                    return Ok(());
                }
                let tdir = self
                    .open_dir(tparent, &tcomps, false)
                    .map_err(|_| hardlink_err())?;
                match stat_at(&tdir, tname) {
                    Some(st)
                        if matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFLNK) => {}
                    _ => return Err(hardlink_err()),
                }
                let dir = self.open_dir(parent, &comps, true)?;
                crate::fsutil::remove_at(&dir, name).map_err(io_err(&comps, "replace an entry"))?;
                nix::unistd::linkat(
                    &tdir,
                    tname.as_os_str(),
                    &dir,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(io_err(&comps, "create a hardlink"))?;
            }
            tar::EntryType::Fifo => {
                let dir = self.open_dir(parent, &comps, true)?;
                crate::fsutil::remove_at(&dir, name).map_err(io_err(&comps, "replace an entry"))?;
                nix::sys::stat::mknodat(
                    &dir,
                    name.as_os_str(),
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(meta.mode & 0o777),
                    0,
                )
                .map_err(io_err(&comps, "create a fifo"))?;
                self.chown_at(&dir, name, &meta, &comps)?;
                nix::sys::stat::fchmodat(
                    &dir,
                    name.as_os_str(),
                    Mode::from_bits_truncate(meta.mode),
                    nix::sys::stat::FchmodatFlags::NoFollowSymlink,
                )
                .map_err(io_err(&comps, "chmod"))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                self.stats.skipped_devices += 1;
                log::debug!("layer entry {}: device node skipped", display(&comps));
            }
            other => {
                return Err(UnpackError::Kind {
                    path: display(&comps),
                    kind: other.as_byte(),
                })
            }
        }
        Ok(())
    }

    fn chown_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        comps: &[OsString],
    ) -> Result<(), UnpackError> {
        if !self.chown {
            return Ok(());
        }
        nix::unistd::fchownat(
            dir,
            name,
            Some(uid_of(meta.uid)),
            Some(gid_of(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io_err(comps, "chown"))
    }

    fn apply_dir_meta(
        &self,
        fd: &OwnedFd,
        comps: &[OsString],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        if self.chown {
            nix::unistd::fchown(fd, Some(uid_of(meta.uid)), Some(gid_of(meta.gid)))
                .map_err(io_err(comps, "chown"))?;
        }
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(meta.mode))
            .map_err(io_err(comps, "chmod"))
    }

    fn set_xattrs<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        fd: &impl AsFd,
    ) -> Result<(), UnpackError> {
        let Some(exts) = entry.pax_extensions().map_err(UnpackError::Tar)? else {
            return Ok(());
        };
        let mut wanted = Vec::new();
        for ext in exts {
            let ext = ext.map_err(UnpackError::Tar)?;
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            if name.starts_with(b"user.") || name == b"security.capability" {
                wanted.push((name.to_vec(), ext.value_bytes().to_vec()));
            } else {
                self.stats.skipped_xattrs += 1;
            }
        }
        for (name, value) in wanted {
            let name = String::from_utf8_lossy(&name).into_owned();
            if let Err(e) = set_xattr(fd, &name, &value) {
                // A file system without user xattrs loses them, as with Docker's rootless mode.
                log::debug!("xattr {name} not set: {e}");
                self.stats.skipped_xattrs += 1;
            }
        }
        Ok(())
    }

    /// Sets directory mtimes last, deepest first, through the same confined walk.
    fn finish_dirs(&mut self) {
        // Kept as the raw paths (the tar stream's own bytes bound them), split again here.
        let mut dirs: Vec<(Vec<OsString>, i64)> = std::mem::take(&mut self.dir_times)
            .into_iter()
            .filter_map(|(raw, mtime)| components(&raw).ok().map(|c| (c, mtime)))
            .collect();
        dirs.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        for (comps, mtime) in dirs {
            if let Ok(fd) = self.open_dir(&comps, &comps, false) {
                let t = TimeSpec::new(mtime, 0);
                let _ = nix::sys::stat::futimens(&fd, &t, &t);
            }
        }
    }
}

struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
}

fn uid_of(id: u64) -> nix::unistd::Uid {
    nix::unistd::Uid::from_raw(u32::try_from(id).unwrap_or(u32::MAX - 1))
}

fn gid_of(id: u64) -> nix::unistd::Gid {
    nix::unistd::Gid::from_raw(u32::try_from(id).unwrap_or(u32::MAX - 1))
}

fn mkdir(dir: &OwnedFd, name: &OsStr, comps: &[OsString]) -> Result<(), UnpackError> {
    nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o700))
        .map_err(io_err(comps, "create a directory"))
}

fn stat_at(dir: &impl AsFd, name: &OsStr) -> Option<libc::stat> {
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()
}

fn set_xattr(fd: &impl AsFd, name: &str, value: &[u8]) -> io::Result<()> {
    let cname = CString::new(name).map_err(io::Error::other)?;
    let fd: BorrowedFd<'_> = fd.as_fd();
    // SAFETY: fsetxattr reads `cname` (NUL-terminated, alive for the call) and `value.len()`
    // bytes from `value`; `fd` is an open descriptor borrowed for the call.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    /// A tar builder that writes any name, hostile ones included.
    pub(crate) struct RawTar(pub Vec<u8>);

    impl RawTar {
        pub(crate) fn new() -> Self {
            RawTar(Vec::new())
        }

        fn header(
            name: &[u8],
            kind: tar::EntryType,
            size: u64,
            mode: u32,
            link: &[u8],
        ) -> tar::Header {
            let mut h = tar::Header::new_ustar();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            h
        }

        pub(crate) fn push(
            &mut self,
            name: &str,
            kind: tar::EntryType,
            data: &[u8],
            mode: u32,
            link: &str,
        ) -> &mut Self {
            let h = Self::header(
                name.as_bytes(),
                kind,
                data.len() as u64,
                mode,
                link.as_bytes(),
            );
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.0.extend(std::iter::repeat_n(0u8, pad));
            self
        }

        pub(crate) fn dir(&mut self, name: &str) -> &mut Self {
            self.push(name, tar::EntryType::Directory, b"", 0o755, "")
        }

        pub(crate) fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
            self.push(name, tar::EntryType::Regular, data, 0o644, "")
        }

        pub(crate) fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.push(name, tar::EntryType::Symlink, b"", 0o777, target)
        }

        pub(crate) fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.push(name, tar::EntryType::Link, b"", 0o644, target)
        }

        pub(crate) fn finish(&mut self) -> Vec<u8> {
            let mut out = self.0.clone();
            out.extend(std::iter::repeat_n(0u8, 1024));
            out
        }
    }

    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "berth-unpack-{tag}-{}-{}",
                std::process::id(),
                &crate::ids::new_id()[..8]
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Unpacks `tar` into `<scratch>/layer` and returns the scratch dir (which also holds a
    /// sentinel `outside/` directory that must stay empty).
    fn unpack_in(tar: &[u8]) -> (TempDir, Result<Unpacked, UnpackError>) {
        let t = TempDir::new("t");
        std::fs::create_dir(t.0.join("layer")).unwrap();
        std::fs::create_dir(t.0.join("outside")).unwrap();
        let mut copy = Vec::new();
        let r = unpack(tar, &t.0.join("layer"), &mut copy);
        if r.is_ok() {
            assert_eq!(copy, tar, "the copy is the uncompressed stream");
        }
        (t, r)
    }

    fn assert_outside_untouched(t: &TempDir) {
        let listing: Vec<_> = std::fs::read_dir(t.0.join("outside")).unwrap().collect();
        assert!(listing.is_empty(), "something escaped: {listing:?}");
        let top: Vec<_> = std::fs::read_dir(&t.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut top = top;
        top.sort();
        assert_eq!(top, ["layer", "outside"]);
    }

    #[test]
    fn unpacks_files_dirs_links_and_hashes() {
        let tar = RawTar::new()
            .dir("./")
            .dir("bin/")
            .file("bin/busybox", b"ELF")
            .hardlink("bin/sh", "bin/busybox")
            .symlink("bin/ls", "busybox")
            .push("etc/shadow", tar::EntryType::Regular, b"x", 0o4640, "")
            .push("dev/null", tar::EntryType::Char, b"", 0o666, "")
            .push("dev/sda", tar::EntryType::Block, b"", 0o660, "")
            .push("run/fifo", tar::EntryType::Fifo, b"", 0o600, "")
            .finish();
        let (t, r) = unpack_in(&tar);
        let u = r.unwrap();
        let l = t.0.join("layer");
        assert_eq!(std::fs::read(l.join("bin/sh")).unwrap(), b"ELF");
        assert_eq!(
            std::fs::metadata(l.join("bin/sh")).unwrap().ino(),
            std::fs::metadata(l.join("bin/busybox")).unwrap().ino()
        );
        assert_eq!(
            std::fs::read_link(l.join("bin/ls")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            std::fs::metadata(l.join("etc/shadow"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o4640
        );
        assert!(std::fs::symlink_metadata(l.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert!(!l.join("dev/null").exists() && !l.join("dev/sda").exists());
        assert_eq!(u.skipped_devices, 2);
        // 3 (busybox, once despite the hardlink) + 7 ("busybox" symlink) + 1.
        assert_eq!(u.size, 11);
        assert_eq!(
            u.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
        assert_eq!(u.tar_size, tar.len() as u64);
        assert_eq!(
            std::fs::metadata(l.join("bin")).unwrap().mtime(),
            1_700_000_000
        );
        assert_outside_untouched(&t);
    }

    #[test]
    fn gzip_layers_hash_the_uncompressed_stream() {
        let tar = RawTar::new().file("a", b"hello").finish();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let t = TempDir::new("gz");
        std::fs::create_dir(t.0.join("layer")).unwrap();
        let mut copy = Vec::new();
        let u = unpack(&gz[..], &t.0.join("layer"), &mut copy).unwrap();
        assert_eq!(copy, tar, "the copy is the uncompressed stream");
        assert_eq!(
            u.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
        assert_eq!(std::fs::read(t.0.join("layer/a")).unwrap(), b"hello");
    }

    #[test]
    fn xz_layers_unpack_and_hash_the_uncompressed_stream() {
        // `tar --format=ustar -cf - a | xz`, a holding "hello\n".
        let xz = include_bytes!("testdata/layer.tar.xz");
        let t = TempDir::new("xz");
        std::fs::create_dir(t.0.join("layer")).unwrap();
        let mut copy = Vec::new();
        let u = unpack(&xz[..], &t.0.join("layer"), &mut copy).unwrap();
        assert_eq!(std::fs::read(t.0.join("layer/a")).unwrap(), b"hello\n");
        assert_eq!(copy.len() % 512, 0, "the copy is the tar itself");
        assert_eq!(
            u.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&copy)))
        );
        // Cut short: refused, as a broken gzip layer is.
        let t = TempDir::new("xz-cut");
        assert!(unpack(&xz[..xz.len() - 8], &t.0, &mut io::sink()).is_err());
    }

    #[test]
    fn bzip2_layers_of_several_streams_unpack() {
        use bzip2::{write::BzEncoder, Compression};
        let tar = RawTar::new()
            .file("a", b"hello")
            .file("b", &vec![7u8; 300_000])
            .finish();
        let (first, second) = tar.split_at(1000);
        let mut bz = Vec::new();
        for part in [first, second] {
            let mut e = BzEncoder::new(Vec::new(), Compression::fast());
            e.write_all(part).unwrap();
            bz.extend(e.finish().unwrap());
        }
        let t = TempDir::new("bz");
        std::fs::create_dir(t.0.join("layer")).unwrap();
        let u = unpack(&bz[..], &t.0.join("layer"), &mut io::sink()).unwrap();
        assert_eq!(
            u.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
        assert_eq!(std::fs::read(t.0.join("layer/a")).unwrap(), b"hello");
        // A broken stream is an error, not a short layer.
        bz.truncate(bz.len() - 20);
        std::fs::remove_dir_all(t.0.join("layer")).unwrap();
        std::fs::create_dir(t.0.join("layer")).unwrap();
        assert!(unpack(&bz[..], &t.0.join("layer"), &mut io::sink()).is_err());
    }

    #[test]
    fn zstd_layers_of_several_frames_unpack() {
        use ruzstd::encoding::{compress_to_vec, CompressionLevel};
        let tar = RawTar::new()
            .file("a", b"hello")
            .file("b", &[7u8; 70000])
            .finish();
        // Two frames with a skippable frame between them, as a parallel compressor writes.
        let (first, second) = tar.split_at(1024);
        let mut zst = compress_to_vec(first, CompressionLevel::Fastest);
        zst.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        zst.extend(compress_to_vec(second, CompressionLevel::Fastest));
        let t = TempDir::new("zst");
        std::fs::create_dir(t.0.join("layer")).unwrap();
        let mut copy = Vec::new();
        let u = unpack(&zst[..], &t.0.join("layer"), &mut copy).unwrap();
        assert_eq!(copy, tar, "the copy is the uncompressed stream");
        assert_eq!(
            u.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
        assert_eq!(std::fs::read(t.0.join("layer/a")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read(t.0.join("layer/b")).unwrap(),
            vec![7u8; 70000]
        );
        // A stream cut short, or corrupt, is an error, not a short layer.
        std::fs::create_dir(t.0.join("cut")).unwrap();
        let cut = &zst[..zst.len() - 10];
        assert!(unpack(cut, &t.0.join("cut"), &mut io::sink()).is_err());
        std::fs::create_dir(t.0.join("bad")).unwrap();
        let mut bad = zst.clone();
        bad[6] ^= 0xff;
        assert!(unpack(&bad[..], &t.0.join("bad"), &mut io::sink()).is_err());
    }

    #[test]
    fn refuses_dotdot() {
        for name in ["../outside/x", "a/../../outside/x", "./../x", "a/.."] {
            let tar = RawTar::new().file(name, b"evil").finish();
            let (t, r) = unpack_in(&tar);
            assert!(matches!(r, Err(UnpackError::Escape(_))), "{name}: {r:?}");
            assert_outside_untouched(&t);
        }
        let tar = RawTar::new()
            .file("f", b"x")
            .hardlink("g", "../outside/f")
            .finish();
        let (t, r) = unpack_in(&tar);
        assert!(matches!(r, Err(UnpackError::Escape(_))), "{r:?}");
        assert_outside_untouched(&t);
    }

    #[test]
    fn absolute_paths_stay_inside() {
        let tar = RawTar::new().file("/etc/passwd", b"root").finish();
        let (t, r) = unpack_in(&tar);
        r.unwrap();
        assert_eq!(
            std::fs::read(t.0.join("layer/etc/passwd")).unwrap(),
            b"root"
        );
        assert_outside_untouched(&t);
    }

    #[test]
    fn never_writes_through_symlinks() {
        // Symlinks to a directory outside (absolute, relative, the host's root), then a
        // file written through them.
        let victim = TempDir::new("victimdir");
        for target in [
            victim.0.display().to_string(),
            "../outside".to_string(),
            "/".to_string(),
        ] {
            let tar = RawTar::new()
                .symlink("link", &target)
                .file("link/pwned-by-berth-test", b"evil")
                .finish();
            let (t, r) = unpack_in(&tar);
            assert!(
                matches!(r, Err(UnpackError::Through { .. })),
                "{target}: {r:?}"
            );
            assert_outside_untouched(&t);
            assert_eq!(std::fs::read_dir(&victim.0).unwrap().count(), 0);
            assert!(!Path::new("/pwned-by-berth-test").exists());
        }
        // A symlink named like a directory that comes later, then a directory entry there.
        let tar = RawTar::new().symlink("d", "/").dir("d/x/").finish();
        let (t, r) = unpack_in(&tar);
        assert!(matches!(r, Err(UnpackError::Through { .. })), "{r:?}");
        assert_outside_untouched(&t);
        // A symlink in the place of a file is replaced, not followed.
        let t0 = TempDir::new("probe2");
        let target = format!("{}/victim", t0.0.display());
        std::fs::write(&target, b"safe").unwrap();
        let tar = RawTar::new()
            .symlink("f", &target)
            .file("f", b"new")
            .finish();
        let (t, r) = unpack_in(&tar);
        r.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"safe");
        assert_eq!(std::fs::read(t.0.join("layer/f")).unwrap(), b"new");
        // Whiteouts and opaque markers through a symlink are refused too.
        for name in ["s/.wh.x", "s/.wh..wh..opq"] {
            let tar = RawTar::new()
                .symlink("s", "../outside")
                .file(name, b"")
                .finish();
            let (t, r) = unpack_in(&tar);
            assert!(
                matches!(r, Err(UnpackError::Through { .. })),
                "{name}: {r:?}"
            );
            assert_outside_untouched(&t);
        }
    }

    #[test]
    fn hardlinks_stay_in_the_layer() {
        // To a file that is not in the layer (absolute: relative to the layer root).
        let t0 = TempDir::new("victim");
        let victim = t0.0.join("victim");
        std::fs::write(&victim, b"secret").unwrap();
        let tar = RawTar::new()
            .hardlink("h", &victim.display().to_string())
            .finish();
        let (t, r) = unpack_in(&tar);
        assert!(
            matches!(r, Err(UnpackError::HardlinkTarget { .. })),
            "{r:?}"
        );
        assert_outside_untouched(&t);
        // Through a symlink in the layer that points outside.
        let tar = RawTar::new()
            .symlink("s", &t0.0.display().to_string())
            .hardlink("h", "s/victim")
            .finish();
        let (t, r) = unpack_in(&tar);
        assert!(
            matches!(r, Err(UnpackError::HardlinkTarget { .. })),
            "{r:?}"
        );
        assert_outside_untouched(&t);
        assert_eq!(std::fs::metadata(&victim).unwrap().nlink(), 1);
        // To a directory.
        let tar = RawTar::new().dir("d/").hardlink("h", "d").finish();
        let (_t, r) = unpack_in(&tar);
        assert!(
            matches!(r, Err(UnpackError::HardlinkTarget { .. })),
            "{r:?}"
        );
    }

    #[test]
    fn whiteouts_become_overlayfs_whiteouts() {
        let tar = RawTar::new()
            .dir("etc/")
            .file("etc/.wh.passwd", b"")
            .dir("var/cache/")
            .file("var/cache/.wh..wh..opq", b"")
            .file("var/cache/kept", b"k")
            .file("new/.wh..wh..opq", b"")
            .file(".wh..wh.plnk", b"")
            .finish();
        let (t, r) = unpack_in(&tar);
        r.unwrap();
        let l = t.0.join("layer");
        let st = std::fs::symlink_metadata(l.join("etc/passwd")).unwrap();
        assert!(st.file_type().is_char_device());
        assert_eq!(st.rdev(), 0);
        assert!(!l.join("etc/.wh.passwd").exists());
        for dir in ["var/cache", "new"] {
            assert_eq!(
                get_xattr(&l.join(dir), OPAQUE_XATTR).as_deref(),
                Some(&b"y"[..]),
                "{dir}"
            );
        }
        assert_eq!(std::fs::read(l.join("var/cache/kept")).unwrap(), b"k");
        assert!(!l.join(".wh..wh.plnk").exists());
    }

    #[test]
    fn skips_dangerous_xattrs() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_pax_extensions([
            ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
            ("SCHILY.xattr.user.ok", &b"1"[..]),
        ])
        .unwrap();
        b.append_data(&mut h, "f", &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let (t, r) = unpack_in(&tar);
        let u = r.unwrap();
        assert_eq!(u.skipped_xattrs, 1);
        let f = t.0.join("layer/f");
        assert_eq!(get_xattr(&f, "trusted.overlay.redirect"), None);
        assert_eq!(get_xattr(&f, "user.ok").as_deref(), Some(&b"1"[..]));
    }

    /// A tar of one directory `depth` levels deep (GNU long names), as `docker import` of a
    /// hostile client's file would bring it.
    fn deep_tar(depth: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let path = vec!["a"; depth].join("/");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, &path, std::io::empty()).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn deep_and_long_paths_are_refused_by_name_of_the_limit() {
        for (depth, what) in [
            (15_000, "bytes in its path"),
            (MAX_PATH_DEPTH + 1, "directories in its path"),
        ] {
            let (t, r) = unpack_in(&deep_tar(depth));
            let e = r.unwrap_err();
            assert!(matches!(e, UnpackError::Limit { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains(what), "{msg}");
            assert!(msg.len() < 300, "the message stays short: {msg}");
            assert_outside_untouched(&t);
        }
        // At the limit it unpacks, and goes again however deep.
        let (t, r) = unpack_in(&deep_tar(MAX_PATH_DEPTH));
        r.unwrap();
        crate::fsutil::remove_tree(&t.0.join("layer")).unwrap();
    }

    #[test]
    fn replaces_entries_and_refuses_garbage() {
        let tar = RawTar::new()
            .file("a", b"file")
            .dir("a/")
            .file("a/b", b"x")
            .dir("a/")
            .finish();
        let (t, r) = unpack_in(&tar);
        r.unwrap();
        assert_eq!(std::fs::read(t.0.join("layer/a/b")).unwrap(), b"x");
        let tar = RawTar::new().file("a", b"file").file("a/b", b"x").finish();
        let (_t, r) = unpack_in(&tar);
        assert!(matches!(r, Err(UnpackError::Through { .. })), "{r:?}");
        let (_t, r) = unpack_in(b"this is not a tar archive at all, not even close. .........");
        assert!(r.is_err());
        let mut truncated = RawTar::new().file("a", &[7u8; 2000]).finish();
        truncated.truncate(1000);
        let (_t, r) = unpack_in(&truncated);
        assert!(r.is_err(), "{r:?}");
    }

    pub(crate) fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
        let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
        let cn = CString::new(name).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: lgetxattr writes at most buf.len() bytes into buf; both strings are
        // NUL-terminated and alive for the call.
        let n = unsafe {
            libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        (n >= 0).then(|| {
            buf.truncate(n as usize);
            buf
        })
    }
}
