//! Containers: a root filesystem with what Docker mounts in it, in namespaces of its own,
//! that processes are started into.
//!
//! # How a process enters the container's root
//! The agent stays in its own root (the initramfs, moved to a tmpfs at boot: see
//! [`crate::init`]) and every container process enters the container on its way to exec.
//! [`Container::create`] sets the container up once, in a short-lived thread that
//! unshares mount, UTS, IPC and cgroup namespaces (they are per thread until the thread
//! ends): it mounts the root filesystem, `pivot_root`s into it and detaches the agent's
//! tree, mounts `/dev`, `/sys` and the rest *inside* the new root (so the image's symlinks
//! resolve inside it, never in the agent's tree), bind-mounts the generated `/etc` files,
//! and keeps one descriptor per namespace. A process then `setns`es into those in its
//! forked child, mount namespace last, which makes the container's root its root; its
//! `PATH` lookup and exec happen there. `docker exec` lands in the same root the same way.
//!
//! Why not switch the whole agent into the container's root (MS_MOVE onto `/` and
//! chroot, as `switch_root` does): the container would see and could replace the agent's
//! files, `/proc/1` would be the agent, and a VM could hold only one container (a pod holds
//! several). Why not a chroot per process: `chroot` is escapable by any process with
//! `CAP_SYS_CHROOT`, which Docker grants, and mounts made for one container would be the
//! agent's. With `pivot_root` in a mount namespace of its own, the agent's tree is not
//! mounted anywhere the container can reach; the bottom of the mount stack is the kernel's
//! rootfs, which the agent emptied at boot.
//!
//! The container's first process is created in a fresh PID namespace and becomes its PID 1
//! (Docker's init semantics: when it exits the kernel kills the rest, and the container
//! takes no more processes); it mounts `/proc` for that namespace (see [`crate::spawn`]).
//!
//! What Docker provides and where it is done here (moby `oci/defaults.go`, runc's
//! `rootfs_linux.go`): `/proc` (nosuid,noexec,nodev, with Docker's masked and read-only
//! paths), `/dev` as a 64 MiB tmpfs with null, zero, full, random, urandom and tty, the
//! `ptmx` → `pts/ptmx`, `fd`, `stdin`, `stdout`, `stderr` and `core` links, `/dev/pts`
//! (newinstance, ptmxmode=0666, mode=0620, gid=5), `/dev/shm` (1777, `--shm-size`),
//! `/dev/mqueue`, `/sys` read-only with `/sys/firmware` and the powercap tree masked,
//! cgroup2 read-only on `/sys/fs/cgroup` (a cgroup namespace of its own, Docker's default
//! on cgroup v2). `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` are generated in
//! the agent's state directory and bind-mounted over the image's files, as Docker
//! bind-mounts them from its container directory: the image (the host's overlay upper dir
//! behind virtio-fs) is never written, `docker diff` and `docker commit` do not see them,
//! and they stay writable under `--read-only`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agent_protocol::{ContainerSpec, DnsConfig, ErrorCode, FsSource};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::cgroup::{Cgroup, CgroupError};
use crate::spawn::{ContainerContext, InitSetup, Join};
use crate::sys;

/// `/dev/shm`'s size without `--shm-size` (Docker's default).
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;

/// Docker's masked `/sys` paths (the `/proc` ones are masked by the container's init).
const MASKED_SYS: &[&str] = &["/sys/firmware", "/sys/devices/virtual/powercap"];

/// The device nodes runc creates in a container's /dev: (name, major, minor), all 0666.
const DEVICES: &[(&str, u64, u64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// The symlinks of a container's /dev: (link, target).
const DEV_LINKS: &[(&str, &str)] = &[
    ("/dev/ptmx", "pts/ptmx"),
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/dev/core", "/proc/kcore"),
];

/// Docker's default `/etc/hosts` (libnetwork's `etchosts`), before the container's own
/// entries.
const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n\
    ::1\tlocalhost ip6-localhost ip6-loopback\n\
    fe00::0\tip6-localnet\n\
    ff00::0\tip6-mcastprefix\n\
    ff02::1\tip6-allnodes\n\
    ff02::2\tip6-allrouters\n";

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Why a container could not be set up. Mapped to the wire as `SetupFailed`.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("cannot prepare {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the container's namespaces")]
    Namespaces(#[source] io::Error),
    #[error("cannot mount {what} on {target}")]
    Mount {
        what: String,
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter the container's root filesystem")]
    Pivot(#[source] io::Error),
    #[error("cannot create {path} in the container")]
    Create {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the container's {what}")]
    Uts {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the container's {what}")]
    Handle {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the container setup thread")]
    Thread(#[source] io::Error),
    #[error("the container setup thread panicked")]
    ThreadPanic,
    #[error("cannot set up the container's cgroup")]
    Cgroup(#[from] CgroupError),
    #[error("cannot set sysctl {name}={value}")]
    Sysctl {
        name: String,
        value: String,
        #[source]
        source: io::Error,
    },
}

impl ContainerError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::SetupFailed
    }
}

fn nix_err(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// The container's namespaces, held open so that they outlive the setup thread.
#[derive(Debug)]
struct Namespaces {
    mnt: OwnedFd,
    uts: OwnedFd,
    ipc: OwnedFd,
    cgroup: OwnedFd,
}

/// A set-up container: handles into its namespaces and its root. Dropping it releases the
/// namespaces (the kernel tears them down once no process is left in them) and removes the
/// container's state directory.
#[derive(Debug)]
pub struct Container {
    hostname: String,
    readonly_root: bool,
    privileged: bool,
    ns: Namespaces,
    /// `O_PATH` of the container's `/`, for reading its files from the agent.
    root: OwnedFd,
    /// `O_PATH` of the container's `/dev/pts`, for its terminals.
    devpts: OwnedFd,
    dir: PathBuf,
    /// Its cgroup; `None` where the agent has no cgroup tree (tests on a host), where its
    /// processes stay in the agent's.
    cgroup: Option<Cgroup>,
}

/// Removes a container's state directory unless disarmed.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Container {
    /// Sets up container `id` per `spec`, keeping its files under
    /// `<state_dir>/containers/<id>` and its cgroup under `cgroup_root`, if the agent has
    /// one.
    pub fn create(
        id: &str,
        spec: &ContainerSpec,
        state_dir: &Path,
        cgroup_root: Option<&Path>,
    ) -> Result<Container, ContainerError> {
        let cgroup = match cgroup_root {
            Some(root) => Some(Cgroup::create(root, id, &spec.resources)?),
            None if !spec.resources.is_unlimited() => return Err(CgroupError::NoTree.into()),
            None => None,
        };
        let dir = state_dir.join("containers").join(id);
        let prepare = |path: &Path| {
            let path = path.to_owned();
            move |source| ContainerError::Prepare { path, source }
        };
        // Left by an earlier container of that id: only files (its mounts died with it).
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(prepare(&dir)(e)),
            _ => {}
        }
        let staging = dir.join("rootfs");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&staging)
            .map_err(prepare(&staging))?;
        let guard = DirGuard(Some(dir.clone()));
        let files = [
            ("hostname", format!("{}\n", spec.hostname)),
            ("hosts", hosts_file(spec)),
            ("resolv.conf", resolv_conf(spec.dns.as_ref())),
        ];
        for (name, content) in &files {
            let path = dir.join(name);
            std::fs::write(&path, content)
                .and_then(|()| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                })
                .map_err(prepare(&path))?;
        }
        let setup = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("container".into())
                .spawn_scoped(s, || {
                    setup(&dir, &staging, spec, cgroup.as_ref().map(Cgroup::namespace))
                })
                .map_err(ContainerError::Thread)?
                .join()
                .map_err(|_| ContainerError::ThreadPanic)?
        })?;
        let mut guard = guard;
        guard.0 = None;
        Ok(Container {
            hostname: spec.hostname.clone(),
            readonly_root: spec.readonly_rootfs,
            privileged: spec.privileged,
            ns: setup.ns,
            root: setup.root,
            devpts: setup.devpts,
            dir,
            cgroup,
        })
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// What [`crate::spawn::Prepared`] needs to resolve a user and fill the environment.
    pub fn context(&self) -> ContainerContext<'_> {
        ContainerContext {
            root: self.root.as_fd(),
            hostname: &self.hostname,
        }
    }

    /// The namespaces a process joins; `init` for the container's first process.
    pub fn join(&self, init: bool) -> Join<'_> {
        Join {
            ipc: self.ns.ipc.as_fd(),
            uts: self.ns.uts.as_fd(),
            cgroup: self.ns.cgroup.as_fd(),
            cgroup_procs: self.cgroup.as_ref().map(Cgroup::procs),
            mnt: self.ns.mnt.as_fd(),
            init: init.then_some(InitSetup {
                readonly_root: self.readonly_root,
                privileged: self.privileged,
            }),
        }
    }

    /// The container's root, for reading its files from the agent.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The container's devpts, where its terminals come from.
    pub fn devpts(&self) -> BorrowedFd<'_> {
        self.devpts.as_fd()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the setup thread hands back.
struct Setup {
    ns: Namespaces,
    root: OwnedFd,
    devpts: OwnedFd,
}

fn mount_err(what: &str, target: &str) -> impl FnOnce(nix::errno::Errno) -> ContainerError {
    let (what, target) = (what.to_owned(), target.to_owned());
    move |e| ContainerError::Mount {
        what,
        target,
        source: nix_err(e),
    }
}

/// Mounts a kernel filesystem inside the container, creating the mount point.
fn mount_fs(
    fstype: &str,
    target: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), ContainerError> {
    make_dir(target)?;
    mount(Some(fstype), target, Some(fstype), flags, data).map_err(mount_err(fstype, target))
}

fn make_dir(path: &str) -> Result<(), ContainerError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|source| ContainerError::Create {
            path: path.to_owned(),
            source,
        })
}

fn create_err(path: &str) -> impl FnOnce(io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Create {
        path: path.to_owned(),
        source,
    }
}

/// Covers `path` the way runc masks: a directory with an empty read-only tmpfs, anything
/// else with /dev/null; a missing path is left alone.
fn mask(path: &str) -> Result<(), ContainerError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(mount_err("tmpfs", path))
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(mount_err("/dev/null", path))
    }
}

/// The setup thread's work: see the module documentation. Everything it mounts lives in
/// the namespaces it creates, which die with the thread unless the returned descriptors
/// keep them. `cgroupns` is the container's cgroup namespace (rooted at its cgroup, which
/// its cgroup2 mount then shows); without one the thread makes its own.
fn setup(
    dir: &Path,
    staging: &Path,
    spec: &ContainerSpec,
    cgroupns: Option<BorrowedFd<'_>>,
) -> Result<Setup, ContainerError> {
    // CLONE_FS with CLONE_NEWNS: this thread gets its own root and working directory, so
    // the pivot below moves nobody else.
    let mut flags = CloneFlags::CLONE_FS
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    match cgroupns {
        Some(fd) => sys::setns(fd, libc::CLONE_NEWCGROUP).map_err(ContainerError::Namespaces)?,
        None => flags |= CloneFlags::CLONE_NEWCGROUP,
    }
    nix::sched::unshare(flags).map_err(|e| ContainerError::Namespaces(nix_err(e)))?;
    // In the new IPC namespace, with the agent's /proc still reachable: the IPC sysctls
    // are the container's own, the rest the VM's.
    for (name, value) in &spec.sysctls {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        std::fs::write(&path, value).map_err(|source| ContainerError::Sysctl {
            name: name.clone(),
            value: value.clone(),
            source,
        })?;
    }
    let open_ns = |kind| sys::own_namespace(kind).map_err(ContainerError::Namespaces);
    let ns = Namespaces {
        mnt: open_ns("mnt")?,
        uts: open_ns("uts")?,
        ipc: open_ns("ipc")?,
        cgroup: open_ns("cgroup")?,
    };
    // Nothing mounted from now on may propagate back to the agent (or, in tests, the host).
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(mount_err("private propagation", "/"))?;

    let staging_str = staging.to_str().ok_or_else(|| ContainerError::Prepare {
        path: staging.to_owned(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    match &spec.rootfs {
        FsSource::Directory { path } => mount(
            Some(path.as_str()),
            staging_str,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(mount_err(path, staging_str))?,
        FsSource::Virtiofs { tag } => mount(
            Some(tag.as_str()),
            staging_str,
            Some("virtiofs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(mount_err(&format!("virtiofs {tag}"), staging_str))?,
        // Refused by validation; said again rather than assumed.
        FsSource::Tmpfs { .. } => {
            return Err(ContainerError::Mount {
                what: "a tmpfs".to_owned(),
                target: "the root".to_owned(),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            })
        }
    }

    // The generated files, as detached bind mounts: once the root has moved, the agent's
    // state directory is out of reach.
    let clone = |name: &str| {
        let path = dir.join(name);
        let path = path.to_str().unwrap_or_default();
        sys::clone_mount(path, false).map_err(|source| ContainerError::Mount {
            what: path.to_owned(),
            target: "a detached mount".to_owned(),
            source,
        })
    };
    let etc = [
        ("/etc/hostname", clone("hostname")?, false),
        ("/etc/hosts", clone("hosts")?, false),
        // Without DNS settings the image's own file stays; a generated empty one stands in
        // where it has none.
        (
            "/etc/resolv.conf",
            clone("resolv.conf")?,
            spec.dns.is_none(),
        ),
    ];

    let volumes = prepare_volumes(dir, spec)?;
    // Read while the guest's /dev is still in reach.
    let devices = if spec.privileged {
        guest_devices(Path::new("/dev"))?
    } else {
        Vec::new()
    };

    nix::unistd::chdir(staging).map_err(|e| ContainerError::Pivot(nix_err(e)))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one, and is detached
    // at once; no directory in the image is needed for it.
    nix::unistd::pivot_root(".", ".").map_err(|e| ContainerError::Pivot(nix_err(e)))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| ContainerError::Pivot(nix_err(e)))?;
    nix::unistd::chdir("/").map_err(|e| ContainerError::Pivot(nix_err(e)))?;

    // From here on every path is inside the container's root.
    make_dir("/proc")?;
    mount_fs(
        "tmpfs",
        "/dev",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    make_dir("/dev/pts")?;
    mount(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .map_err(mount_err("devpts", "/dev/pts"))?;
    let shm = format!(
        "mode=1777,size={}",
        spec.shm_size.unwrap_or(DEFAULT_SHM_SIZE)
    );
    make_dir("/dev/shm")?;
    mount(
        Some("shm"),
        "/dev/shm",
        Some("tmpfs"),
        NOSUID_NODEV_NOEXEC,
        Some(shm.as_str()),
    )
    .map_err(mount_err("tmpfs", "/dev/shm"))?;
    mount_fs("mqueue", "/dev/mqueue", NOSUID_NODEV_NOEXEC, None)?;
    for &(path, major, minor) in DEVICES {
        nix::sys::stat::mknod(
            path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(major, minor),
        )
        .map_err(nix_err)
        // mknod's mode passes through the umask.
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)))
        .map_err(create_err(path))?;
    }
    for &(link, target) in DEV_LINKS {
        std::os::unix::fs::symlink(target, link).map_err(create_err(link))?;
    }
    for d in &devices {
        add_device(d)?;
    }
    // Docker's --privileged: /sys and the cgroup tree writable, nothing masked.
    let sys_flags = if spec.privileged {
        NOSUID_NODEV_NOEXEC
    } else {
        MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC
    };
    mount_fs("sysfs", "/sys", sys_flags, None)?;
    mount(
        Some("cgroup2"),
        "/sys/fs/cgroup",
        Some("cgroup2"),
        sys_flags,
        None::<&str>,
    )
    .map_err(mount_err("cgroup2", "/sys/fs/cgroup"))?;
    if !spec.privileged {
        for path in MASKED_SYS {
            mask(path)?;
        }
    }
    for v in &volumes {
        attach_volume(v)?;
    }

    for (target, tree, only_if_missing) in &etc {
        if *only_if_missing && std::fs::metadata(target).is_ok() {
            continue;
        }
        make_dir("/etc")?;
        // The mount point: the image's file (through its symlink, inside this root), or a
        // new empty one.
        nix::fcntl::open(
            OsStr::new(target),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .map(drop)
        .map_err(|e| create_err(target)(nix_err(e)))?;
        sys::move_mount(tree.as_fd(), target).map_err(|source| ContainerError::Mount {
            what: "the generated file".to_owned(),
            target: (*target).to_owned(),
            source,
        })?;
    }

    nix::unistd::sethostname(&spec.hostname).map_err(|e| ContainerError::Uts {
        what: "hostname",
        source: nix_err(e),
    })?;
    if !spec.domainname.is_empty() {
        sys::set_domainname(&spec.domainname).map_err(|source| ContainerError::Uts {
            what: "domain name",
            source,
        })?;
    }
    let handle = |what, path| {
        sys::open_path(path, true).map_err(|source| ContainerError::Handle { what, source })
    };
    Ok(Setup {
        ns,
        root: handle("root", "/")?,
        devpts: handle("/dev/pts", "/dev/pts")?,
    })
}

/// A volume, mounted and detached before the pivot, to be attached inside.
struct Volume {
    destination: String,
    tree: OwnedFd,
    /// A single file rather than a directory.
    file: bool,
}

/// Mounts every volume's source under the state directory and takes a detached copy of it
/// (recursive, read-only where asked), parents first as Docker orders them.
/// A device node of the guest, for a privileged container's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDevice {
    /// Below `/dev`, e.g. `net/tun`.
    pub path: String,
    pub block: bool,
    pub rdev: u64,
    pub mode: u32,
}

/// Entries of the guest's `/dev` a privileged container gets: every device node, as
/// Docker gives a privileged container the host's (runc's `HostDevices`), less what the
/// container's `/dev` has of its own (its `pts`, `shm`, `mqueue`, console and the basic
/// nodes).
const SKIPPED_DEV: &[&str] = &[
    "pts", "shm", "mqueue", "fd", "console", "ptmx", "null", "zero", "full", "random", "urandom",
    "tty",
];

/// The most device nodes copied, and the deepest directory walked.
const MAX_DEVICES: usize = 4096;
const MAX_DEV_DEPTH: usize = 4;

/// The device nodes under `root` (the guest's devtmpfs), walked without recursion.
pub fn guest_devices(root: &Path) -> Result<Vec<GuestDevice>, ContainerError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut found = Vec::new();
    let mut dirs = vec![(root.to_owned(), String::new(), 0usize)];
    while let Some((dir, prefix, depth)) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| ContainerError::Prepare {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if prefix.is_empty() && SKIPPED_DEV.contains(&name.as_str()) {
                continue;
            }
            let path = format!("{prefix}{name}");
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            let kind = meta.file_type();
            if kind.is_dir() && depth < MAX_DEV_DEPTH {
                dirs.push((entry.path(), format!("{path}/"), depth + 1));
            } else if (kind.is_char_device() || kind.is_block_device()) && found.len() < MAX_DEVICES
            {
                found.push(GuestDevice {
                    path,
                    block: kind.is_block_device(),
                    rdev: meta.rdev(),
                    mode: meta.mode() & 0o7777,
                });
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Makes `d` in the container's `/dev` (a tmpfs of its own), its directories first.
fn add_device(d: &GuestDevice) -> Result<(), ContainerError> {
    let path = format!("/dev/{}", d.path);
    if let Some((parent, _)) = path.rsplit_once('/') {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(create_err(parent))?;
    }
    let kind = if d.block {
        nix::sys::stat::SFlag::S_IFBLK
    } else {
        nix::sys::stat::SFlag::S_IFCHR
    };
    nix::sys::stat::mknod(
        path.as_str(),
        kind,
        nix::sys::stat::Mode::from_bits_truncate(d.mode),
        d.rdev,
    )
    .map_err(nix_err)
    // mknod's mode passes through the umask.
    .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(d.mode)))
    .map_err(create_err(&path))
}

fn prepare_volumes(dir: &Path, spec: &ContainerSpec) -> Result<Vec<Volume>, ContainerError> {
    let mut mounts: Vec<_> = spec.mounts.iter().collect();
    mounts.sort_by_key(|m| m.destination.split('/').filter(|c| !c.is_empty()).count());
    let mut volumes = Vec::with_capacity(mounts.len());
    for (i, m) in mounts.into_iter().enumerate() {
        let staging = dir.join("mounts").join(i.to_string());
        let staging_str = staging.to_string_lossy().into_owned();
        let prepare = |source| ContainerError::Prepare {
            path: staging.clone(),
            source,
        };
        std::fs::create_dir_all(dir.join("mounts")).map_err(prepare)?;
        // What is attached: the staging mount, or one file of it.
        let mut attached = staging_str.clone();
        let file = match &m.source {
            FsSource::Directory { path } => {
                let meta = std::fs::metadata(path).map_err(|source| ContainerError::Mount {
                    what: path.clone(),
                    target: m.destination.clone(),
                    source,
                })?;
                if meta.is_dir() {
                    std::fs::create_dir(&staging).map_err(prepare)?;
                } else {
                    std::fs::File::create(&staging).map_err(prepare)?;
                }
                mount(
                    Some(path.as_str()),
                    staging_str.as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(mount_err(path, &m.destination))?;
                !meta.is_dir()
            }
            FsSource::Virtiofs { tag } => {
                std::fs::create_dir(&staging).map_err(prepare)?;
                mount(
                    Some(tag.as_str()),
                    staging_str.as_str(),
                    Some("virtiofs"),
                    MsFlags::empty(),
                    None::<&str>,
                )
                .map_err(mount_err(&format!("virtiofs {tag}"), &m.destination))?;
                match &m.file {
                    // A bind of one file: the share is its directory, with it alone in it.
                    Some(name) => {
                        attached = format!("{staging_str}/{name}");
                        true
                    }
                    None => false,
                }
            }
            FsSource::Tmpfs { options } => {
                std::fs::create_dir(&staging).map_err(prepare)?;
                let (flags, data) = tmpfs_options(options);
                mount(
                    Some("tmpfs"),
                    staging_str.as_str(),
                    Some("tmpfs"),
                    flags,
                    Some(data.as_str()),
                )
                .map_err(mount_err("a tmpfs", &m.destination))?;
                false
            }
        };
        let tree = sys::clone_mount(&attached, true).map_err(|source| ContainerError::Mount {
            what: attached.clone(),
            target: "a detached mount".to_owned(),
            source,
        })?;
        if m.readonly {
            sys::make_tree_readonly(tree.as_fd()).map_err(|source| ContainerError::Mount {
                what: "read-only".to_owned(),
                target: m.destination.clone(),
                source,
            })?;
        }
        volumes.push(Volume {
            destination: m.destination.clone(),
            tree,
            file,
        });
    }
    Ok(volumes)
}

/// A tmpfs's mount flags and data from its (validated) options, mount(8)'s way: the last
/// of two opposite flags wins.
fn tmpfs_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (flag, set) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, true),
            "rw" => (MsFlags::MS_RDONLY, false),
            "noexec" => (MsFlags::MS_NOEXEC, true),
            "exec" => (MsFlags::MS_NOEXEC, false),
            "nosuid" => (MsFlags::MS_NOSUID, true),
            "suid" => (MsFlags::MS_NOSUID, false),
            "nodev" => (MsFlags::MS_NODEV, true),
            "dev" => (MsFlags::MS_NODEV, false),
            "sync" => (MsFlags::MS_SYNCHRONOUS, true),
            "async" => (MsFlags::MS_SYNCHRONOUS, false),
            "dirsync" => (MsFlags::MS_DIRSYNC, true),
            "noatime" => (MsFlags::MS_NOATIME, true),
            "atime" => (MsFlags::MS_NOATIME, false),
            "nodiratime" => (MsFlags::MS_NODIRATIME, true),
            "diratime" => (MsFlags::MS_NODIRATIME, false),
            "relatime" => (MsFlags::MS_RELATIME, true),
            "norelatime" => (MsFlags::MS_RELATIME, false),
            "strictatime" => (MsFlags::MS_STRICTATIME, true),
            "nostrictatime" => (MsFlags::MS_STRICTATIME, false),
            _ => {
                data.push(o.as_str());
                continue;
            }
        };
        flags.set(flag, set);
    }
    (flags, data.join(","))
}

/// Attaches a volume inside the container, creating its mount point (through the image's
/// symlinks, inside this root).
fn attach_volume(v: &Volume) -> Result<(), ContainerError> {
    let dest = v.destination.as_str();
    if v.file {
        if let Some(parent) = Path::new(dest).parent().and_then(Path::to_str) {
            make_dir(parent)?;
        }
        nix::fcntl::open(
            OsStr::new(dest),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .map(drop)
        .map_err(|e| create_err(dest)(nix_err(e)))?;
    } else {
        make_dir(dest)?;
    }
    sys::move_mount(v.tree.as_fd(), dest).map_err(|source| ContainerError::Mount {
        what: "a volume".to_owned(),
        target: dest.to_owned(),
        source,
    })
}

/// Docker's `/etc/hosts`: the defaults, then the container's entries.
pub fn hosts_file(spec: &ContainerSpec) -> String {
    let mut s = String::from(DEFAULT_HOSTS);
    for h in &spec.hosts {
        s.push_str(&h.address);
        s.push('\t');
        s.push_str(&h.names.join(" "));
        s.push('\n');
    }
    s
}

/// The container's `/etc/resolv.conf` (empty without DNS settings; see [`ContainerSpec`]).
pub fn resolv_conf(dns: Option<&DnsConfig>) -> String {
    let Some(dns) = dns else {
        return String::new();
    };
    let mut s = String::new();
    for n in &dns.nameservers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !dns.search.is_empty() {
        s.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::HostsEntry;

    #[test]
    fn hosts_file_is_dockers() {
        let mut spec = ContainerSpec::new(FsSource::Directory { path: "/r".into() }, "c0ffee");
        assert_eq!(hosts_file(&spec), DEFAULT_HOSTS);
        spec.hosts = vec![
            HostsEntry {
                address: "172.17.0.2".into(),
                names: vec!["c0ffee".into()],
            },
            HostsEntry {
                address: "10.1.2.3".into(),
                names: vec!["db".into(), "db.local".into()],
            },
        ];
        let h = hosts_file(&spec);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"));
        assert!(h.ends_with("ff02::2\tip6-allrouters\n172.17.0.2\tc0ffee\n10.1.2.3\tdb db.local\n"));
    }

    #[test]
    fn resolv_conf_lines() {
        assert_eq!(resolv_conf(None), "");
        let dns = DnsConfig {
            nameservers: vec!["10.0.0.1".into(), "fd00::53".into()],
            search: vec!["a.example".into(), "b.example".into()],
            options: vec!["ndots:2".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns)),
            "nameserver 10.0.0.1\nnameserver fd00::53\nsearch a.example b.example\noptions ndots:2\n"
        );
        assert_eq!(resolv_conf(Some(&DnsConfig::default())), "");
    }
}
