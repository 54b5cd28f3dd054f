//! What the agent does only as PID 1 of the VM: move its root off the kernel's rootfs,
//! mount the kernel filesystems, point its stdio at the console, and end the VM on purpose
//! (an exiting PID 1 panics the kernel).
//!
//! # Why the root moves
//! The kernel unpacks the initramfs into its rootfs, the bottom of every mount namespace,
//! which `pivot_root(2)` cannot move. Containers enter their roots with `pivot_root` in a
//! mount namespace of their own (see [`crate::container`]), so the agent first does what
//! LinuxKit's init does for runc: copy the initramfs into a tmpfs, move that tmpfs onto `/`
//! and chroot into it. It also empties the rootfs: whatever a container could reach at the
//! bottom of its mount namespace (by escaping a chroot of its own) is then an empty
//! directory, not the agent's files. The agent binary itself is not copied: it keeps
//! running from its deleted inode and nothing executes it again.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use nix::mount::{mount, MsFlags};

use crate::sys;

/// One mount of the boot sequence.
struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// In order: later targets live inside earlier ones.
const MOUNTS: &[Mount] = &[
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755",
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
    Mount {
        source: "cgroup2",
        target: CGROUP_ROOT,
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
];

/// Where the VM's cgroup2 tree is mounted: containers' cgroups go under it.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Symlinks programs expect in /dev: (link, target).
const DEV_LINKS: &[(&str, &str)] = &[
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

/// Why a boot step failed. None of them stops the agent: it logs and serves what it can.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot create mount point {path}")]
    MountPoint {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("cannot create {link}")]
    Link {
        link: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind {source_path} onto {target}")]
    Bind {
        source_path: &'static str,
        target: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("cannot open {path} as stdio")]
    Stdio {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot move the root off the initramfs ({step})")]
    Relocate {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Where the new root is assembled before it moves onto `/`.
const NEW_ROOT: &str = "/.berth-root";
/// What is not copied into the new root: the agent binary (see the module docs).
const NOT_COPIED: &[&str] = &["/init"];

fn relocate_err(step: &'static str) -> impl FnOnce(io::Error) -> InitError {
    move |source| InitError::Relocate { step, source }
}

fn nix_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// True if our root is the kernel's rootfs: in mountinfo, the mount on `/` is its own
/// parent and of type `rootfs`. Needs /proc, which is mounted for the question only.
fn root_is_rootfs() -> io::Result<bool> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create("/proc")?;
    let mounted = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        NOSUID_NODEV_NOEXEC,
        None::<&str>,
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo");
    if mounted.is_ok() {
        nix::mount::umount2("/proc", nix::mount::MntFlags::MNT_DETACH).map_err(nix_io)?;
    }
    Ok(info?.lines().any(is_rootfs_line))
}

/// One mountinfo line: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE OPTS".
fn is_rootfs_line(line: &str) -> bool {
    let fields: Vec<&str> = line.split(' ').collect();
    let fstype = fields
        .iter()
        .position(|f| *f == "-")
        .and_then(|i| fields.get(i + 1));
    fields.len() > 4 && fields[0] == fields[1] && fields[4] == "/" && fstype == Some(&"rootfs")
}

/// Copies the tree at `src` into `dst` (an existing directory): directories, files,
/// symlinks and device nodes, with their modes and owners. `skip` is left out.
fn copy_tree(src: &Path, dst: &Path, skip: &[&Path]) -> io::Result<()> {
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        if skip.contains(&from.as_path()) {
            continue;
        }
        let to = dst.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            std::fs::create_dir(&to)?;
            copy_tree(&from, &to, skip)?;
            std::fs::set_permissions(&to, meta.permissions())?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if kind.is_file() {
            std::fs::copy(&from, &to)?;
        } else {
            // Device nodes, FIFOs, sockets: the same node again.
            nix::sys::stat::mknod(
                &to,
                nix::sys::stat::SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT),
                nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .map_err(nix_io)?;
        }
        std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

/// Moves the agent's root from the kernel's rootfs to a tmpfs copy of it (see the module
/// docs). Returns false when the root is not the rootfs (the agent was started otherwise).
fn relocate_root() -> Result<bool, InitError> {
    if !root_is_rootfs().map_err(relocate_err("reading the mount table"))? {
        return Ok(false);
    }
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(NEW_ROOT)
        .map_err(relocate_err("creating the new root"))?;
    mount(
        Some("rootfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| relocate_err("mounting a tmpfs")(nix_io(e)))?;
    let mut skip: Vec<&Path> = NOT_COPIED.iter().map(Path::new).collect();
    skip.push(Path::new(NEW_ROOT));
    if let Err(e) = copy_tree(Path::new("/"), Path::new(NEW_ROOT), &skip) {
        let _ = nix::mount::umount2(NEW_ROOT, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(NEW_ROOT);
        return Err(relocate_err("copying the initramfs")(e));
    }
    let root = std::fs::metadata("/").map_err(relocate_err("reading /"))?;
    std::fs::set_permissions(NEW_ROOT, root.permissions())
        .map_err(relocate_err("setting the new root's mode"))?;
    nix::unistd::chdir(NEW_ROOT).map_err(|e| relocate_err("entering the new root")(nix_io(e)))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| relocate_err("moving the new root onto /")(nix_io(e)))?;
    // Until the chroot, "/" still names the old root: empty it. Failures only cost memory.
    if let Ok(entries) = std::fs::read_dir("/") {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
        }
    }
    nix::unistd::chroot(".").map_err(|e| relocate_err("chroot")(nix_io(e)))?;
    nix::unistd::chdir("/").map_err(|e| relocate_err("chdir")(nix_io(e)))?;
    Ok(true)
}

/// True if `path` is already a mount point (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    let (Ok(own), Some(Ok(parent))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    own.dev() != parent.dev()
}

fn mount_one(m: &Mount) -> Result<(), InitError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(m.target)
        .map_err(|source| InitError::MountPoint {
            path: m.target,
            source,
        })?;
    if is_mount_point(Path::new(m.target)) {
        return Ok(());
    }
    let data = (!m.data.is_empty()).then_some(m.data);
    mount(Some(m.source), m.target, Some(m.fstype), m.flags, data).map_err(|source| {
        InitError::Mount {
            fstype: m.fstype,
            target: m.target,
            source,
        }
    })
}

fn link(link: &'static str, target: &str) -> Result<(), InitError> {
    match std::os::unix::fs::symlink(target, link) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(InitError::Link { link, source: e })
        }
        _ => Ok(()),
    }
}

/// Makes /dev/ptmx the multiplexer of our devpts instance. A bind mount rather than
/// replacing the node: a devtmpfs's contents are the kernel's, shared by every mount of it.
fn ptmx() -> Result<(), InitError> {
    const PTMX: &str = "/dev/ptmx";
    if std::fs::symlink_metadata(PTMX).is_err() {
        return link(PTMX, "pts/ptmx");
    }
    if is_mount_point(Path::new(PTMX)) {
        return Ok(());
    }
    mount(
        Some("/dev/pts/ptmx"),
        PTMX,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| InitError::Bind {
        source_path: "/dev/pts/ptmx",
        target: PTMX,
        source,
    })
}

/// What the boot steps did.
#[derive(Debug, Default)]
pub struct Boot {
    /// The failures, each already non-fatal.
    pub errors: Vec<InitError>,
    /// How long moving the root took, if it moved.
    pub relocation: Option<Duration>,
}

/// Runs the PID-1 boot steps.
pub fn boot() -> Boot {
    let mut errors = Vec::new();
    // First, while nothing is mounted yet: nothing has to move along.
    let started = std::time::Instant::now();
    let relocation = match relocate_root() {
        Ok(moved) => moved.then(|| started.elapsed()),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    for m in MOUNTS {
        if let Err(e) = mount_one(m) {
            errors.push(e);
        }
        if m.target == "/dev" {
            // The kernel opens /dev/console as init's stdio only if the initramfs has that
            // node; otherwise 0-2 are closed until now. Open ones are left alone (they are
            // the console already).
            if let Err(source) = sys::ensure_stdio_open("/dev/console") {
                errors.push(InitError::Stdio {
                    path: "/dev/console",
                    source,
                });
                if let Err(source) = sys::ensure_stdio_open("/dev/null") {
                    errors.push(InitError::Stdio {
                        path: "/dev/null",
                        source,
                    });
                }
            }
        }
    }
    if let Err(e) = ptmx() {
        errors.push(e);
    }
    for (l, t) in DEV_LINKS {
        if let Err(e) = link(l, t) {
            errors.push(e);
        }
    }
    Boot { errors, relocation }
}

/// Ends the VM: flush filesystems and reset (the kernel runs with `reboot=k`, so the VMM
/// sees the keyboard controller reset and exits). A power-off would merely halt a VM
/// without ACPI. Never returns.
pub fn end_vm() -> ! {
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    log::error!("reboot failed: {e}");
    // Returning would make PID 1 exit and panic the kernel; wait for the reset instead.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn rootfs_is_told_from_other_roots() {
        assert!(is_rootfs_line(
            "1 1 0:2 / / rw - rootfs rootfs rw,size=118148k,nr_inodes=29537"
        ));
        // A normal system's root, and a mount of a rootfs-typed filesystem elsewhere.
        assert!(!is_rootfs_line(
            "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw"
        ));
        assert!(!is_rootfs_line("30 30 0:2 / /mnt rw - rootfs rootfs rw"));
        assert!(!is_rootfs_line("1 1 0:2 / / rw - tmpfs tmpfs rw"));
        assert!(!is_rootfs_line(""));
        assert!(!is_rootfs_line("1 1"));
    }

    #[test]
    fn copy_tree_keeps_kinds_modes_and_owners() {
        let base = std::env::temp_dir().join(format!("berth-init-copy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (src, dst) = (base.join("src"), base.join("dst"));
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::create_dir_all(src.join("tmp")).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(src.join("bin/tool"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("bin/tool"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::set_permissions(src.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::os::unix::fs::symlink("tool", src.join("bin/alias")).unwrap();
        std::fs::write(src.join("skipped"), b"x").unwrap();
        let skipped = src.join("skipped");
        copy_tree(&src, &dst, &[skipped.as_path()]).unwrap();
        assert_eq!(std::fs::read(dst.join("bin/tool")).unwrap(), b"#!/bin/sh\n");
        let mode = |p: &str| std::fs::metadata(dst.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("bin/tool"), 0o755);
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(
            std::fs::read_link(dst.join("bin/alias")).unwrap(),
            Path::new("tool")
        );
        assert!(!dst.join("skipped").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
