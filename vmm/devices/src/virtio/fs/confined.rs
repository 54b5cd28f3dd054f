//! The file system a virtio-fs share serves: fuse-backend-rs's `PassthroughFs` over one host
//! directory, behind a filter that holds the share's confinement policy.
//!
//! `PassthroughFs` already does the essential part: every inode it hands out is an `O_PATH`
//! file descriptor obtained with `openat(parent_fd, name, O_NOFOLLOW)`, every operation is
//! relative to such a descriptor, and files are reopened through `/proc/self/fd` (a magic link
//! to the inode itself, never followed further, so a symlink inode reopens as `ELOOP`). Nothing
//! is ever resolved by host path after the share's root is opened. [`ConfinedFs`] adds what
//! must not depend on the details of that library, checked before any call reaches it:
//!
//! - **names**: every name a request carries is one path component: not empty, not `.` or
//!   `..`, no `/`, at most 255 bytes (`EINVAL`, `ENAMETOOLONG`). A single component opened
//!   with `O_NOFOLLOW` relative to a directory inside the share cannot leave it.
//! - **device nodes**: `MKNOD` of a character or block device is refused (`EPERM`), except
//!   the 0:0 character device overlayfs uses as a whiteout, which names no device. FIFOs and
//!   sockets may be created. `OPEN` and `CREATE` open regular files only, `OPENDIR`
//!   directories only: a device node (a layer may carry one), FIFO or socket in the share is
//!   never opened on the host (`EACCES`). The guest's kernel opens such nodes itself, as its
//!   own devices; the host never does.
//! - **open flags**: only flags that change how an existing regular file is read or written
//!   pass (`O_PATH`, `O_TMPFILE`, `O_CREAT`, `O_NOCTTY`, `O_ASYNC` are dropped).
//! - **extended attributes**: only the `user.` namespace. `security.*` (file capabilities,
//!   LSM labels), `trusted.*` (overlayfs metadata) and `system.*` (ACLs) would change what the
//!   host grants: writes are refused (`EPERM`), reads answer `ENODATA`, lists omit them.
//! - **read-only shares**: every operation that could change the share fails with `EROFS`,
//!   including opens for writing or truncation.
//! - **set-id bits** (`nosuid` shares): the guest cannot set S_ISUID or S_ISGID on a file
//!   (S_ISGID stays allowed on directories, where it only sets the group of new entries), and
//!   a set-id file the guest opens for writing or truncates loses those bits first.
//! - **sizes**: buffers the library allocates from guest-given sizes are capped.
//!
//! - **single-file shares** ([`ShareOptions::file`], a bind of one file): the share's root
//!   is the file's directory, but the guest reaches the file alone. A lookup in the root of
//!   any other name answers `ENOENT`; the root cannot be listed (`EACCES`) nor changed: no
//!   entry is created, removed, renamed or linked in it, and its attributes and extended
//!   attributes are left alone (`EACCES`). The file itself is served as any file.
//!
//! Ownership follows the guest's credentials (the library switches the serving thread's
//! effective uid/gid to the caller's for creations), so guest root owns files as host root:
//! shares must live where host users cannot reach them (berthd's 0700 data root).

use std::ffi::CStr;
use std::io;
use std::path::Path;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

/// Per-share policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShareOptions {
    /// Refuse every change (`EROFS`).
    pub read_only: bool,
    /// Never let the guest create set-user-ID or set-group-ID files.
    pub nosuid: bool,
    /// Serve this one entry of the share's directory and nothing else (one path
    /// component, checked by [`ConfinedFs::new`]).
    pub file: Option<String>,
}

/// The share's root inode (FUSE's `FUSE_ROOT_ID`).
const ROOT_INODE: u64 = 1;

/// Longest name of one path component (NAME_MAX).
const NAME_MAX: usize = 255;
/// Longest symlink target (PATH_MAX including its NUL).
const SYMLINK_MAX: usize = 4095;
/// Largest extended attribute value and name list (XATTR_SIZE_MAX, XATTR_LIST_MAX).
const XATTR_MAX: u32 = 64 << 10;
/// The only extended attribute namespace the guest may see or change.
const XATTR_ALLOWED_PREFIX: &[u8] = b"user.";

/// Open flags that only change how an existing regular file or directory is accessed.
const OPEN_FLAGS_KEPT: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DSYNC
    | libc::O_SYNC
    | libc::O_DIRECT
    | libc::O_LARGEFILE
    | libc::O_NOATIME
    | libc::O_TRUNC
    | libc::O_DIRECTORY
    | libc::O_NOFOLLOW
    | libc::O_CLOEXEC;
/// Flags a file status change (`F_SETFL` before each read and write) may carry.
const STATUS_FLAGS_KEPT: i32 =
    libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME;

const SETID: u32 = libc::S_ISUID | libc::S_ISGID;

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Checks that `name` is exactly one path component that stays in its directory.
pub fn check_name(name: &CStr) -> io::Result<()> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(err(libc::EINVAL));
    }
    if bytes.len() > NAME_MAX {
        return Err(err(libc::ENAMETOOLONG));
    }
    Ok(())
}

fn xattr_allowed(name: &CStr) -> bool {
    let bytes = name.to_bytes();
    bytes.len() > XATTR_ALLOWED_PREFIX.len() && bytes.starts_with(XATTR_ALLOWED_PREFIX)
}

/// How much larger a FUSE directory entry can be than the host's `linux_dirent64` for the
/// same name: 8 bytes more for READDIR, 136 more for READDIRPLUS (its attributes), which
/// for the shortest names (24-byte host records) is 2x and 7x.
const READDIR_GROWTH: u32 = 2;
const READDIRPLUS_GROWTH: u32 = 7;
/// Enough for one host entry with the longest name.
const MIN_DIRENTS_SIZE: u32 = 512;

/// How many bytes of host directory entries to read for a reply of `reply_size` bytes.
///
/// The library reads host entries with `getdents64` into a buffer of the size it is given
/// and drops those that do not fit the reply; the guest's next request then seeks back to
/// the last entry it got. On file systems whose directory offsets are positions (tmpfs, and
/// overlayfs's merged directories), seeking back after entries were deleted (`rm -rf`
/// deletes while it lists) skips entries, and the guest sees "Directory not empty". Reading
/// no more than always fits keeps every request starting where the host's directory stream
/// already is, so the host keeps its own cursor.
fn host_dirents_size(reply_size: u32, growth: u32) -> u32 {
    (reply_size / growth).max(MIN_DIRENTS_SIZE).min(reply_size)
}

fn writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// A share's file system: `PassthroughFs` behind the share's policy.
pub struct ConfinedFs {
    inner: PassthroughFs<()>,
    opts: ShareOptions,
    /// [`ShareOptions::file`], as FUSE names come.
    file: Option<std::ffi::CString>,
}

impl ConfinedFs {
    /// Serves `dir` (an absolute path to a directory, resolved again at each FUSE_INIT) with
    /// the policy `opts`.
    pub fn new(dir: &Path, opts: ShareOptions) -> io::Result<Self> {
        let root_dir = dir
            .to_str()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path is not UTF-8"))?
            .to_string();
        let config = Config {
            root_dir,
            // No virtual file system layer above: the library imports the root itself and
            // validates names too (we do it first regardless).
            do_import: true,
            // Close-to-open consistency: the host may change the share (docker cp) while the
            // guest runs, so the guest must not trust its cache across opens.
            cache_policy: CachePolicy::Auto,
            entry_timeout: Duration::from_secs(1),
            attr_timeout: Duration::from_secs(1),
            writeback: false,
            // Filtered to the user namespace here.
            xattr: true,
            // Inodes are O_PATH descriptors, never file handles: open_by_handle_at could
            // open any inode of the host file system, not only those under the share.
            inode_file_handles: false,
            no_open: false,
            no_opendir: false,
            killpriv_v2: false,
            // Virtual inode numbers in replies; the host's appear only in attributes.
            use_host_ino: false,
            ..Config::default()
        };
        let file = match &opts.file {
            Some(name) => {
                let c = std::ffi::CString::new(name.as_str())
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))?;
                check_name(&c)?;
                Some(c)
            }
            None => None,
        };
        let inner = PassthroughFs::new(config)?;
        Ok(ConfinedFs { inner, opts, file })
    }

    /// On a single-file share, refuses anything done to or in the root directory.
    fn check_not_root(&self, inode: u64) -> io::Result<()> {
        if self.file.is_some() && inode == ROOT_INODE {
            Err(err(libc::EACCES))
        } else {
            Ok(())
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.opts.read_only {
            Err(err(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// The inode's file type bits, from an `fstat` of its `O_PATH` descriptor (no open).
    fn file_type(&self, ctx: &Context, inode: u64) -> io::Result<u32> {
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        Ok(st.st_mode & libc::S_IFMT)
    }

    fn require_regular(&self, ctx: &Context, inode: u64) -> io::Result<()> {
        match self.file_type(ctx, inode)? {
            libc::S_IFREG => Ok(()),
            libc::S_IFDIR => Err(err(libc::EISDIR)),
            _ => Err(err(libc::EACCES)),
        }
    }

    /// Mode bits the guest asks for, less the set-id bits a nosuid share refuses.
    fn allowed_mode(&self, mode: u32, is_dir: bool) -> u32 {
        if !self.opts.nosuid {
            mode
        } else if is_dir {
            mode & !libc::S_ISUID
        } else {
            mode & !SETID
        }
    }

    /// On a nosuid share, clears the set-id bits of a file about to be written.
    fn drop_setid_before_write(&self, ctx: &Context, inode: u64) -> io::Result<()> {
        if !self.opts.nosuid {
            return Ok(());
        }
        let (mut st, _) = self.inner.getattr(ctx, inode, None)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_mode & SETID == 0 {
            return Ok(());
        }
        st.st_mode &= !SETID & 0o7777;
        self.inner
            .setattr(ctx, inode, st, None, SetattrValid::MODE)
            .map(|_| ())
    }
}

impl FileSystem for ConfinedFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // No DAX window on this device: never offer per-file DAX.
        Ok(self.inner.init(capable)? & !FsOptions::PERFILE_DAX)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        check_name(name)?;
        if let Some(file) = &self.file {
            if parent == ROOT_INODE && name != file.as_c_str() {
                return Err(err(libc::ENOENT));
            }
        }
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        mut attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.check_writable()?;
        self.check_not_root(inode)?;
        let kind = self.file_type(ctx, inode)?;
        if valid.contains(SetattrValid::SIZE) {
            match kind {
                libc::S_IFREG => {}
                libc::S_IFDIR => return Err(err(libc::EISDIR)),
                _ => return Err(err(libc::EINVAL)),
            }
            self.drop_setid_before_write(ctx, inode)?;
        }
        if valid.contains(SetattrValid::MODE) {
            attr.st_mode = self.allowed_mode(attr.st_mode, kind == libc::S_IFDIR);
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        self.check_not_root(parent)?;
        check_name(name)?;
        // The target is stored, never followed by the host: any text is fine.
        if linkname.to_bytes().is_empty() {
            return Err(err(libc::ENOENT));
        }
        if linkname.to_bytes().len() > SYMLINK_MAX {
            return Err(err(libc::ENAMETOOLONG));
        }
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        self.check_not_root(parent)?;
        check_name(name)?;
        match mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => {}
            // The overlayfs whiteout: a character device 0:0 names no device.
            libc::S_IFCHR if rdev == 0 => {}
            _ => return Err(err(libc::EPERM)),
        }
        let mode = self.allowed_mode(mode, false);
        self.inner.mknod(ctx, parent, name, mode, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        self.check_not_root(parent)?;
        check_name(name)?;
        let mode = self.allowed_mode(mode, true);
        self.inner.mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.check_writable()?;
        self.check_not_root(parent)?;
        check_name(name)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.check_writable()?;
        self.check_not_root(parent)?;
        check_name(name)?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.check_writable()?;
        self.check_not_root(olddir)?;
        self.check_not_root(newdir)?;
        check_name(oldname)?;
        check_name(newname)?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.check_writable()?;
        self.check_not_root(newparent)?;
        check_name(newname)?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let flags = flags as i32 & OPEN_FLAGS_KEPT & !libc::O_DIRECTORY;
        if writes(flags) {
            self.check_writable()?;
        }
        self.require_regular(ctx, inode)?;
        if writes(flags) {
            self.drop_setid_before_write(ctx, inode)?;
        }
        self.inner.open(ctx, inode, flags as u32, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mut args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.check_writable()?;
        self.check_not_root(parent)?;
        check_name(name)?;
        let flags = args.flags as i32 & (OPEN_FLAGS_KEPT | libc::O_EXCL) & !libc::O_DIRECTORY;
        args.mode = self.allowed_mode(args.mode, false);
        // Only ever create here (O_EXCL): an existing entry is opened below, after the same
        // type check as OPEN, never by the library's own fallback.
        args.flags = (flags | libc::O_EXCL) as u32;
        match self.inner.create(ctx, parent, name, args) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {}
            other => return other,
        }
        let entry = self.inner.lookup(ctx, parent, name)?;
        let opened = self
            .require_regular(ctx, entry.inode)
            .and_then(|()| self.drop_setid_before_write(ctx, entry.inode))
            .and_then(|()| {
                self.inner
                    .open(ctx, entry.inode, flags as u32, args.fuse_flags)
            });
        match opened {
            Ok((handle, opts, passthrough)) => Ok((entry, handle, opts, passthrough)),
            Err(e) => {
                // The guest never sees this entry, so it will never forget it.
                self.inner.forget(ctx, entry.inode, 1);
                Err(e)
            }
        }
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let flags = (flags as i32 & STATUS_FLAGS_KEPT) as u32;
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.check_writable()?;
        let flags = (flags as i32 & STATUS_FLAGS_KEPT) as u32;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.check_writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.check_writable()?;
        self.check_not_root(inode)?;
        if !xattr_allowed(name) {
            return Err(err(libc::EPERM));
        }
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        if !xattr_allowed(name) {
            return Err(err(libc::ENODATA));
        }
        // The library allocates `size` bytes up front; no value is larger than XATTR_MAX.
        self.inner.getxattr(ctx, inode, name, size.min(XATTR_MAX))
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let names = match self.inner.listxattr(ctx, inode, XATTR_MAX)? {
            ListxattrReply::Names(names) => names,
            // Asked for XATTR_MAX bytes, the library answers with names.
            ListxattrReply::Count(_) => return Err(err(libc::EIO)),
        };
        let mut kept = Vec::with_capacity(names.len());
        for name in names.split_inclusive(|&b| b == 0) {
            if name.len() > XATTR_ALLOWED_PREFIX.len() + 1
                && name.starts_with(XATTR_ALLOWED_PREFIX)
                && name.ends_with(&[0])
            {
                kept.extend_from_slice(name);
            }
        }
        if size == 0 {
            Ok(ListxattrReply::Count(kept.len() as u32))
        } else if kept.len() > size as usize {
            Err(err(libc::ERANGE))
        } else {
            Ok(ListxattrReply::Names(kept))
        }
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.check_writable()?;
        self.check_not_root(inode)?;
        if !xattr_allowed(name) {
            return Err(err(libc::EPERM));
        }
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let flags = flags as i32 & OPEN_FLAGS_KEPT;
        if writes(flags) {
            return Err(err(libc::EISDIR));
        }
        self.check_not_root(inode)?;
        if self.file_type(ctx, inode)? != libc::S_IFDIR {
            return Err(err(libc::ENOTDIR));
        }
        self.inner.opendir(ctx, inode, flags as u32)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let host_size = host_dirents_size(size, READDIR_GROWTH);
        self.inner
            .readdir(ctx, inode, handle, host_size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let host_size = host_dirents_size(size, READDIRPLUS_GROWTH);
        self.inner
            .readdirplus(ctx, inode, handle, host_size, offset, add_entry)
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        if mask as i32 & libc::W_OK != 0 {
            self.check_writable()?;
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    // Not forwarded, so the trait's refusals apply: ioctl (ENOTTY), file locks (ENOSYS: the
    // guest's kernel keeps POSIX locks local), bmap, poll, and the DAX mapping requests.
}
