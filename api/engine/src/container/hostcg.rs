//! The host cgroup each container's VMM runs in, so that one container cannot starve the
//! host: its memory bounded by the VM's size plus the VMM's own overhead, its CPU by its
//! vCPUs plus one for the VMM's device thread, its threads by a fixed ceiling.
//!
//! The limits inside the guest (`-m`, `--cpus`, ...) are the guest kernel's to enforce
//! (`agent/agent/src/cgroup.rs`); these are the host's side, around the whole VM, which a
//! guest cannot lift. Like dockerd's cgroupfs driver, berth keeps its cgroups in a subtree of
//! its own at the top of the cgroup2 mount (`/sys/fs/cgroup/berth/<run dir name>`), beside
//! whatever cgroup berthd itself runs in. A host without cgroup v2 there (a v1 or hybrid
//! hierarchy) runs VMMs unbounded, and says so once in berthd's log and in `docker info`.
//!
//! A VMM enters its cgroup between fork and exec (it writes `0` to the cgroup's
//! `cgroup.procs`), so none of it ever runs outside.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nix::fcntl::OFlag;

/// Where the host's cgroup v2 tree is mounted.
const MOUNT: &str = "/sys/fs/cgroup";
/// berth's subtree under it.
const SUBTREE: &str = "berth";
/// The controllers a VMM's cgroup uses (those the host has).
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// What a VMM needs beyond its guest's memory: its own heap, the devices' buffers, the
/// snapshot machinery (page cache it reads is reclaimed first under the limit).
const VMM_OVERHEAD_MIB: u64 = 128;
/// A VMM's threads: one per vCPU, its event loop and a few helpers; far below this.
const MAX_PIDS: u32 = 256;
/// The CPU period `cpu.max` is written in.
const PERIOD_US: u64 = 100_000;

/// Why a VMM's host cgroup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HostCgroupError {
    #[error("cannot create the host cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set {path} to {value:?}")]
    Limit {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
}

/// berth's subtree of the host's cgroup v2 tree, or why there is none.
#[derive(Debug)]
pub struct HostCgroups {
    subtree: Result<PathBuf, String>,
    controllers: Vec<&'static str>,
}

/// The daemon's view of the host's tree, found once.
pub fn global() -> &'static HostCgroups {
    static HOST: OnceLock<HostCgroups> = OnceLock::new();
    HOST.get_or_init(|| {
        let host = HostCgroups::open(Path::new(MOUNT));
        if let Some(why) = host.unavailable() {
            log::warn!("{why}");
        }
        host
    })
}

impl HostCgroups {
    /// berth's subtree under the cgroup2 mount `mount`, made if missing, with the
    /// controllers of [`CONTROLLERS`] that the host has enabled for it.
    pub fn open(mount: &Path) -> HostCgroups {
        let available = match std::fs::read_to_string(mount.join("cgroup.controllers")) {
            Ok(s) => s,
            Err(e) => {
                return HostCgroups {
                    subtree: Err(format!(
                        "no cgroup v2 tree at {} ({e}): containers' VMMs run without host limits on their memory and CPU",
                        mount.display()
                    )),
                    controllers: vec![],
                }
            }
        };
        let controllers: Vec<&'static str> = CONTROLLERS
            .into_iter()
            .filter(|c| available.split_whitespace().any(|a| a == *c))
            .collect();
        let subtree = mount.join(SUBTREE);
        let made = enable(mount, &controllers)
            .and_then(|()| match std::fs::create_dir(&subtree) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
                _ => Ok(()),
            })
            .and_then(|()| enable(&subtree, &controllers));
        HostCgroups {
            subtree: made.map(|()| subtree.clone()).map_err(|e| {
                format!(
                    "cannot set up the host cgroup {} ({e}): containers' VMMs run without host limits on their memory and CPU",
                    subtree.display()
                )
            }),
            controllers,
        }
    }

    /// Why VMMs run without host cgroups, if they do.
    pub fn unavailable(&self) -> Option<&str> {
        self.subtree.as_ref().err().map(String::as_str)
    }

    /// Makes the cgroup `name` for a VMM of `vcpus` and `mem_mib` (`None` where the host
    /// has no tree for it: see [`HostCgroups::unavailable`]). An earlier one of that name
    /// (a VMM of a crashed daemon's container, since ended) is reused, its limits written
    /// afresh.
    pub fn create(
        &self,
        name: &str,
        vcpus: u8,
        mem_mib: u64,
    ) -> Result<Option<VmmCgroup>, HostCgroupError> {
        let Ok(subtree) = &self.subtree else {
            return Ok(None);
        };
        let dir = subtree.join(name);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(HostCgroupError::Create {
                    path: dir,
                    source: e,
                })
            }
            _ => {}
        }
        let set = |file: &str, value: String| {
            let path = dir.join(file);
            std::fs::write(&path, &value).map_err(|source| HostCgroupError::Limit {
                path,
                value,
                source,
            })
        };
        let written = limits(vcpus, mem_mib)
            .into_iter()
            .filter(|(file, _)| {
                self.controllers
                    .iter()
                    .any(|c| file.split('.').next() == Some(*c))
            })
            .try_for_each(|(file, value)| set(file, value));
        let opened = written.and_then(|()| {
            let path = dir.join("cgroup.procs");
            nix::fcntl::open(
                &path,
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| HostCgroupError::Create {
                path,
                source: io::Error::from_raw_os_error(e as i32),
            })
        });
        match opened {
            Ok(procs) => Ok(Some(VmmCgroup { procs })),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// Removes the cgroup `name` once its VMM has ended (the kernel refuses while a process
    /// is left in it: then it stays, and its next use takes it over).
    pub fn remove(&self, name: &str) {
        if let Ok(subtree) = &self.subtree {
            let dir = subtree.join(name);
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("host cgroup {} stays: {e}", dir.display()),
            }
        }
    }
}

/// Enables `controllers` for the children of the cgroup `dir`.
fn enable(dir: &Path, controllers: &[&str]) -> io::Result<()> {
    if controllers.is_empty() {
        return Ok(());
    }
    let line: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    std::fs::write(dir.join("cgroup.subtree_control"), line.join(" "))
}

/// The files of a VMM's cgroup for a VM of `vcpus` and `mem_mib`.
fn limits(vcpus: u8, mem_mib: u64) -> Vec<(&'static str, String)> {
    vec![
        (
            "memory.max",
            ((mem_mib + VMM_OVERHEAD_MIB) << 20).to_string(),
        ),
        (
            "cpu.max",
            format!("{} {PERIOD_US}", (u64::from(vcpus) + 1) * PERIOD_US),
        ),
        ("pids.max", MAX_PIDS.to_string()),
    ]
}

/// A VMM's cgroup, open for a VMM to enter.
#[derive(Debug)]
pub struct VmmCgroup {
    procs: OwnedFd,
}

impl VmmCgroup {
    /// Makes `cmd`'s process enter the cgroup before it executes. `self` must outlive the
    /// spawn.
    pub fn enter_on_spawn(&self, cmd: &mut Command) {
        let fd = self.procs.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and makes one write(2)
        // of a static buffer to a descriptor the parent keeps open until the spawn
        // returns: async-signal-safe, no allocation, no locks.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_bound_the_vm_and_its_vmm() {
        assert_eq!(
            limits(2, 64),
            [
                ("memory.max", (192u64 << 20).to_string()),
                ("cpu.max", "300000 100000".to_string()),
                ("pids.max", "256".to_string()),
            ]
        );
    }

    /// A plain directory standing in for a cgroup2 mount: the files berth writes are
    /// what it reads back.
    #[test]
    fn a_vmm_cgroup_gets_the_limits_of_the_controllers_the_host_has() {
        let mount = std::env::temp_dir().join(format!("berth-hostcg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&mount);
        std::fs::create_dir_all(&mount).unwrap();
        std::fs::write(mount.join("cgroup.controllers"), "cpuset cpu io memory\n").unwrap();
        let host = HostCgroups::open(&mount);
        assert_eq!(host.unavailable(), None);
        assert_eq!(
            std::fs::read_to_string(mount.join("berth/cgroup.subtree_control")).unwrap(),
            "+cpu +memory"
        );
        // The kernel makes cgroup.procs with the directory; a plain one needs it made.
        let dir = mount.join("berth/0123456789abcdef");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        let cg = host.create("0123456789abcdef", 2, 64).unwrap();
        assert!(cg.is_some());
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max")).unwrap(),
            (192u64 << 20).to_string()
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "300000 100000"
        );
        // No pids controller on that host: no pids file written.
        assert!(!dir.join("pids.max").exists());
        std::fs::remove_dir_all(&mount).unwrap();

        let none = HostCgroups::open(&mount);
        assert!(none.unavailable().unwrap().contains("no cgroup v2 tree"));
        assert!(none.create("x", 1, 64).unwrap().is_none());
    }
}
