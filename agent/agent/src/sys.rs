//! The agent's syscall layer: thin wrappers over the calls std does not offer (pty, eventfd,
//! poll, signals, vsock, namespaces, the new mount API, scoped opens). The only other
//! module with `unsafe` is `spawn`, whose forked child must not allocate.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow};

fn nix_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// `read(2)`, retried on EINTR.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd, buf) {
            Err(Errno::EINTR) => {}
            r => return r.map_err(nix_err),
        }
    }
}

/// `write(2)`, retried on EINTR.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::write(fd, buf) {
            Err(Errno::EINTR) => {}
            r => return r.map_err(nix_err),
        }
    }
}

/// Writes all of `buf` to a blocking fd.
pub fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match write(fd, buf)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => buf = &buf[n..],
        }
    }
    Ok(())
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(nix_err)
}

/// Opens `/dev/null` close-on-exec, for reading or for writing.
pub fn dev_null(write: bool) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?;
    Ok(OwnedFd::from(f))
}

pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(nix_err)?;
    let mut flags = OFlag::from_bits_retain(flags);
    flags.set(OFlag::O_NONBLOCK, on);
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(nix_err)?;
    Ok(())
}

/// A latch other threads can wait on with [`poll_two`]: once [`Latch::set`], it stays set
/// (nobody ever reads the counter back).
#[derive(Debug)]
pub struct Latch(OwnedFd);

impl Latch {
    pub fn new() -> io::Result<Self> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let fd =
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(nix_err)?;
        Ok(Latch(fd.into()))
    }

    pub fn set(&self) {
        // Cannot fail short of a counter overflow, which 1 per call cannot reach.
        let _ = write(self.0.as_fd(), &1u64.to_ne_bytes());
    }

    pub fn is_set(&self) -> bool {
        matches!(
            poll_two(self.0.as_fd(), PollFlags::POLLIN, None, 0),
            Ok((true, _))
        )
    }
}

impl AsFd for Latch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Polls `a` for `a_events` and, if given, a [`Latch`] for being set; `timeout_ms` < 0
/// waits forever. Returns (a is ready, latch is set). Errors and hang-ups count as ready,
/// so the caller's next read or write reports them.
pub fn poll_two(
    a: BorrowedFd<'_>,
    a_events: PollFlags,
    latch: Option<&Latch>,
    timeout_ms: i32,
) -> io::Result<(bool, bool)> {
    let timeout = if timeout_ms < 0 {
        PollTimeout::NONE
    } else {
        PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::MAX)
    };
    let mut fds = vec![PollFd::new(a, a_events)];
    if let Some(l) = latch {
        fds.push(PollFd::new(l.0.as_fd(), PollFlags::POLLIN));
    }
    loop {
        match nix::poll::poll(&mut fds, timeout) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(nix_err(e)),
            Ok(_) => break,
        }
    }
    let ready = |p: &PollFd<'_>| !p.revents().unwrap_or(PollFlags::empty()).is_empty();
    let a_ready = ready(&fds[0]);
    let latch_set = fds.get(1).is_some_and(ready);
    Ok((a_ready, latch_set))
}

/// Opens a new pseudo-terminal: (master, slave), both close-on-exec, with the given size.
/// With `devpts` (a descriptor of a devpts mount's root, e.g. a container's /dev/pts) the
/// terminal comes from that instance, so that inside the container it has a name; else
/// from the agent's /dev/ptmx. The slave comes from the master itself (`TIOCGPTPEER`), so
/// no path under /dev/pts is looked up and it cannot be swapped.
pub fn open_pty(
    devpts: Option<BorrowedFd<'_>>,
    rows: u16,
    cols: u16,
) -> io::Result<(OwnedFd, OwnedFd)> {
    let master = match devpts {
        None => {
            let m = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
                .map_err(nix_err)?;
            nix::pty::grantpt(&m).map_err(nix_err)?;
            nix::pty::unlockpt(&m).map_err(nix_err)?;
            // SAFETY: PtyMaster owns a valid fd; into_raw_fd hands that ownership over.
            unsafe { OwnedFd::from_raw_fd(m.into_raw_fd()) }
        }
        Some(dir) => {
            let m = nix::fcntl::openat(
                dir,
                "ptmx",
                OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(nix_err)?;
            // devpts sets the slave's owner and mode itself; only the lock is ours to lift.
            let unlock: libc::c_int = 0;
            // SAFETY: TIOCSPTLCK reads one int from the pointer, valid for the call.
            if unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
                return Err(io::Error::last_os_error());
            }
            m
        }
    };
    // SAFETY: TIOCGPTPEER takes open(2) flags by value and returns a new fd or -1; master
    // is a valid pty master fd.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    set_window_size(master.as_fd(), rows, cols)?;
    Ok((master, slave))
}

/// `TIOCSWINSZ` on a pty master (it applies to the terminal and signals SIGWINCH).
pub fn set_window_size(master: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one struct winsize from the pointer, which is valid for the
    // duration of the call.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The terminal's end-of-file character and whether it is in canonical mode (where that
/// character means anything). On a pty master, `TCGETS` reports the slave's settings.
pub fn terminal_eof(master: BorrowedFd<'_>) -> io::Result<(u8, bool)> {
    let t = nix::sys::termios::tcgetattr(master).map_err(nix_err)?;
    let veof = t.control_chars[nix::sys::termios::SpecialCharacterIndices::VEOF as usize];
    let canonical = t
        .local_flags
        .contains(nix::sys::termios::LocalFlags::ICANON);
    Ok((veof, canonical))
}

/// Blocks every signal in the calling thread; threads created afterwards inherit the mask.
pub fn block_all_signals() -> io::Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None)
        .map_err(nix_err)
}

/// Marks every descriptor above 2 close-on-exec, so nothing the agent inherited (in tests,
/// whatever its parent left open) reaches the processes it starts. Everything the agent
/// opens itself is close-on-exec already.
pub fn cloexec_inherited_fds() -> io::Result<()> {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes sure fds 0, 1 and 2 are open, opening `path` (read-write, not as a controlling
/// tty) for each closed one. Afterwards every fd the agent opens is above 2, so `dup2` into
/// a child's stdio never aliases its source.
pub fn ensure_stdio_open(path: &str) -> io::Result<()> {
    for fd in 0..3 {
        // SAFETY: F_GETFD only inspects the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)?;
        let f = OwnedFd::from(f);
        if f.as_raw_fd() == fd {
            // open(2) returns the lowest free number, which is this one: keep it for good.
            let _kept = f.into_raw_fd();
        } else {
            // SAFETY: dup2 onto a descriptor number that is not open; `f` stays owned and
            // is closed on drop.
            if unsafe { libc::dup2(f.as_raw_fd(), fd) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// The peer CID the kernel reports for an accepted vsock connection.
pub fn vsock_peer_cid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let addr: nix::sys::socket::VsockAddr =
        nix::sys::socket::getpeername(fd.as_raw_fd()).map_err(nix_err)?;
    Ok(addr.cid())
}

/// A vsock stream socket listening on `port` for any CID, close-on-exec.
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(nix_err)?;
    let addr = nix::sys::socket::VsockAddr::new(libc::VMADDR_CID_ANY, port);
    bind(fd.as_raw_fd(), &addr).map_err(nix_err)?;
    listen(&fd, Backlog::new(64).unwrap_or(Backlog::MAXCONN)).map_err(nix_err)?;
    Ok(fd)
}

/// Connects a vsock stream socket to (`cid`, `port`), close-on-exec, giving up after
/// `timeout` without an answer (ETIMEDOUT).
pub fn vsock_connect(cid: u32, port: u32, timeout: std::time::Duration) -> io::Result<OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType};
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(nix_err)?;
    // Linux gives up on an unanswered vsock connect after 2 s; a busy host can take
    // longer to answer, and the connection it then completes would be reset.
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    // SAFETY: a valid timeval of the size given, on a socket this function owns; the result
    // is checked.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::AF_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT_OLD,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let addr = nix::sys::socket::VsockAddr::new(cid, port);
    // Every signal is blocked in the agent's threads: connect is not interrupted.
    connect(fd.as_raw_fd(), &addr).map(|()| fd).map_err(nix_err)
}

/// linux/vm_sockets.h: the connect timeout, as a `struct timeval` (the "old" 64-bit one,
/// which every kernel takes).
const SO_VM_SOCKETS_CONNECT_TIMEOUT_OLD: libc::c_int = 6;

/// `accept4` with close-on-exec, retried on EINTR.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    loop {
        match nix::sys::socket::accept4(
            listener.as_raw_fd(),
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        ) {
            Err(Errno::EINTR) => {}
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(e) => return Err(nix_err(e)),
        }
    }
}

/// Opens `path` as an `O_PATH` descriptor (close-on-exec): a handle on a place in some
/// mount namespace, usable from any other through `*at` calls.
pub fn open_path(path: &str, directory: bool) -> io::Result<OwnedFd> {
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if directory {
        flags |= OFlag::O_DIRECTORY;
    }
    nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()).map_err(nix_err)
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens the absolute `path` read-only inside `root` as though `root` were `/`: symlinks
/// and `..` resolve within it (openat2 `RESOLVE_IN_ROOT`), the way Docker scopes paths
/// into a container's root. Without a root, an ordinary open. Never blocks on a FIFO.
pub fn open_in_root(root: Option<BorrowedFd<'_>>, path: &str) -> io::Result<std::fs::File> {
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
    let fd = match root {
        None => nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()).map_err(nix_err)?,
        Some(root) => {
            let c = std::ffi::CString::new(path)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let how = OpenHow {
                flags: flags.bits() as u64,
                mode: 0,
                resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
            };
            // SAFETY: openat2 reads `how` (its size passed) and the C string, both valid
            // for the call; it returns a new descriptor or -1.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    root.as_raw_fd(),
                    c.as_ptr(),
                    &how as *const OpenHow,
                    std::mem::size_of::<OpenHow>(),
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a new descriptor that nothing else owns; it fits an int.
            unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
        }
    };
    Ok(std::fs::File::from(fd))
}

/// Reads the regular file `path` inside `root` (see [`open_in_root`]), at most `max` bytes.
/// `Ok(None)` when it cannot be opened: Docker treats a missing user database as empty.
pub fn read_file_in_root(
    root: Option<BorrowedFd<'_>>,
    path: &str,
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let Ok(f) = open_in_root(root, path) else {
        return Ok(None);
    };
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut data = Vec::new();
    f.take(max as u64 + 1).read_to_end(&mut data)?;
    if data.len() > max {
        return Err(io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(Some(data))
}

/// Creates a PID namespace for the calling thread's future children.
pub fn unshare_pidns() -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).map_err(nix_err)
}

/// The PID namespace the calling thread's children go to. A fresh one from
/// [`unshare_pidns`] can be opened only once its first process (its init) exists.
pub fn pidns_for_children() -> io::Result<OwnedFd> {
    nix::fcntl::open(
        "/proc/thread-self/ns/pid_for_children",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(nix_err)
}

/// Moves the calling thread into the namespace `fd` (for `CLONE_NEWPID`: its children).
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    nix::sched::setns(fd, nix::sched::CloneFlags::from_bits_retain(nstype)).map_err(nix_err)
}

/// Opens the namespace of kind `kind` ("mnt", "uts", ...) of the calling thread.
pub fn own_namespace(kind: &str) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        format!("/proc/thread-self/ns/{kind}").as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(nix_err)
}

/// A detached copy of the mount at (or bind of the file at) `path`: open_tree(2) with
/// `OPEN_TREE_CLONE`. It can be attached later with [`move_mount`], even after the
/// caller's root has moved away from `path`.
/// With `recursive`, the mounts below `path` come along.
pub fn clone_mount(path: &str, recursive: bool) -> io::Result<OwnedFd> {
    let c =
        std::ffi::CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree reads the C string, valid for the call, and returns a new
    // descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns; it fits an int.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Attaches the detached mount `tree` (from [`clone_mount`]) at `target`, following a
/// symlink there (the caller resolves inside the right root).
pub fn move_mount(tree: BorrowedFd<'_>, target: &str) -> io::Result<()> {
    let c =
        std::ffi::CString::new(target).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: move_mount reads two C strings ("" and `target`), valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_SYMLINKS,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Makes the detached mount tree `tree` read-only, every mount in it.
pub fn make_tree_readonly(tree: BorrowedFd<'_>) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads the empty C string and `attr` (its size passed), both
    // valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// setdomainname(2) for the calling thread's UTS namespace.
pub fn set_domainname(name: &str) -> io::Result<()> {
    // SAFETY: setdomainname reads `len` bytes from the pointer, valid for the call.
    let r = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
