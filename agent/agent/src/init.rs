//! What the agent does only as PID 1 of the VM: mount the kernel filesystems, point its
//! stdio at the console, and end the VM on purpose (an exiting PID 1 panics the kernel).

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
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
];

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

/// Runs the PID-1 boot steps. Returns the failures, each already non-fatal.
pub fn boot() -> Vec<InitError> {
    let mut errors = Vec::new();
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
    errors
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
