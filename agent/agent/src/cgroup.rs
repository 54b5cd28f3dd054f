//! A container's cgroup in the guest: where its processes run, what limits them (Docker's
//! resource options), and the cgroup namespace rooted at it.
//!
//! Each container gets `<root>/berth-<id>` (cgroup v2), with the memory, pids, cpu and
//! cpuset controllers enabled from the root. Its limits are written once, at create; its
//! processes are moved in by writing `0` to its `cgroup.procs` in the forked child, before
//! they join the container's namespaces (see [`crate::spawn`]), so nothing of theirs ever
//! runs outside it.
//!
//! The cgroup namespace: Docker's containers on cgroup v2 see their own cgroup as the root
//! of `/sys/fs/cgroup` and `/proc/self/cgroup` (`0::/`), which is what runtimes such as the
//! JVM and Go's memory-limit helpers read to size themselves. A cgroup namespace is rooted
//! at the cgroup of the *process* that creates it, and in a domain cgroup every thread of a
//! process is in the same one, so no thread of the agent can create it. A short-lived
//! helper process does: forked, it moves itself into the cgroup, unshares its cgroup
//! namespace, and waits while the agent opens that namespace through `/proc/<pid>/ns`;
//! then it exits (the reaper takes it as an orphan). The container's mount of cgroup2 and
//! every process of it join that namespace.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use agent_protocol::Resources;
use nix::fcntl::OFlag;

use crate::sys;

/// The controllers a container's cgroup gets (the kernel has exactly these: see the guest
/// kernel's configuration).
const CONTROLLERS: &str = "+cpu +cpuset +memory +pids";

/// Why a container's cgroup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("the agent has no cgroup tree to limit the container's resources in")]
    NoTree,
    #[error("cannot enable the cgroup controllers in {path}")]
    Controllers {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set {file} to {value:?}")]
    Limit {
        file: &'static str,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot make the container's cgroup namespace")]
    Namespace(#[source] io::Error),
}

/// A container's cgroup: its directory, its `cgroup.procs` open for writing, and the
/// cgroup namespace rooted at it. Dropping it removes the directory (the kernel refuses
/// while a process is left in it; then it stays, empty of limits' effect, until the VM
/// ends).
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    procs: OwnedFd,
    ns: OwnedFd,
}

impl Cgroup {
    /// Makes container `id`'s cgroup under `root` (a cgroup2 mount) with `limits`.
    pub fn create(root: &Path, id: &str, limits: &Resources) -> Result<Cgroup, CgroupError> {
        let control = root.join("cgroup.subtree_control");
        std::fs::write(&control, CONTROLLERS).map_err(|source| CgroupError::Controllers {
            path: control.clone(),
            source,
        })?;
        let dir = root.join(format!("berth-{id}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            // An earlier container of that id whose last process had not been reaped when
            // it was deleted: reused, every limit below written afresh.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Create { path: dir, source }),
        }
        let cg = Self::set_up(&dir, limits);
        if cg.is_err() {
            let _ = std::fs::remove_dir(&dir);
        }
        cg
    }

    fn set_up(dir: &Path, limits: &Resources) -> Result<Cgroup, CgroupError> {
        for (file, value) in files(limits) {
            std::fs::write(dir.join(file), &value).map_err(|source| CgroupError::Limit {
                file,
                value,
                source,
            })?;
        }
        let path = dir.join("cgroup.procs");
        let procs = nix::fcntl::open(
            &path,
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| CgroupError::Open {
            path,
            source: io::Error::from_raw_os_error(e as i32),
        })?;
        let ns = namespace_in(procs.as_fd()).map_err(CgroupError::Namespace)?;
        Ok(Cgroup {
            dir: dir.to_owned(),
            procs,
            ns,
        })
    }

    /// Its `cgroup.procs`, for a forked child to move itself in.
    pub fn procs(&self) -> BorrowedFd<'_> {
        self.procs.as_fd()
    }

    /// The cgroup namespace rooted at it.
    pub fn namespace(&self) -> BorrowedFd<'_> {
        self.ns.as_fd()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            log::debug!("cgroup {} stays: {e}", self.dir.display());
        }
    }
}

/// The files `limits` sets, in an order the kernel takes (cpuset before the rest is not
/// needed: each file stands alone).
fn files(limits: &Resources) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(cpus) = &limits.cpuset_cpus {
        out.push(("cpuset.cpus", cpus.clone()));
    }
    if let Some(v) = limits.memory_low {
        out.push(("memory.low", v.to_string()));
    }
    if let Some(v) = limits.memory_max {
        out.push(("memory.max", v.to_string()));
    }
    if let Some(v) = limits.pids_max {
        out.push(("pids.max", v.to_string()));
    }
    if let Some(v) = limits.cpu_weight {
        out.push(("cpu.weight", v.to_string()));
    }
    if let Some(c) = limits.cpu_max {
        out.push(("cpu.max", format!("{} {}", c.quota_us, c.period_us)));
    }
    out
}

/// A cgroup namespace rooted at the cgroup whose `cgroup.procs` is `procs`, made by a
/// helper process (see the module documentation).
fn namespace_in(procs: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let (ready_r, ready_w) = sys::pipe()?;
    let raw = [procs.as_raw_fd(), ready_w.as_raw_fd()];
    // SAFETY: fork has no memory-safety preconditions; the child calls `helper` only,
    // which makes async-signal-safe calls on the raw descriptors copied above.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => return Err(io::Error::last_os_error()),
        // SAFETY: we are the freshly forked child.
        0 => unsafe { helper(raw[0], raw[1]) },
        _ => {}
    }
    drop(ready_w);
    // The helper answers 4 zero bytes once its namespace exists, or its errno; within
    // HELPER_TIMEOUT, or where it is stuck is the answer (a create must not hang the
    // host's request until its own timeout, with nothing said).
    let mut buf = [0u8; 4];
    let mut got = 0;
    let mut answer = Ok(());
    let start = std::time::Instant::now();
    while got < buf.len() {
        let left = HELPER_TIMEOUT.saturating_sub(start.elapsed());
        match sys::poll_two(
            ready_r.as_fd(),
            nix::poll::PollFlags::POLLIN,
            None,
            i32::try_from(left.as_millis()).unwrap_or(i32::MAX),
        ) {
            Ok((true, _)) => {}
            Ok((false, _)) => {
                answer = Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the helper process {pid} did not answer within {HELPER_TIMEOUT:?}: {}",
                        stuck_where(pid)
                    ),
                ));
                break;
            }
            Err(e) => {
                answer = Err(e);
                break;
            }
        }
        match sys::read(ready_r.as_fd(), &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                answer = Err(e);
                break;
            }
        }
    }
    let ns = answer.and_then(|()| match (got, i32::from_ne_bytes(buf)) {
        (4, 0) => nix::fcntl::open(
            format!("/proc/{pid}/ns/cgroup").as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| io::Error::from_raw_os_error(e as i32)),
        (4, errno) => Err(io::Error::from_raw_os_error(errno)),
        _ => Err(io::Error::other("the helper process died before answering")),
    });
    // The helper waits for this (it cannot have been reaped yet, so the pid is still its
    // own); the reaper collects it as an orphan. A pipe it waited on could be held open by
    // another helper forked meanwhile; a signal cannot.
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    ns
}

/// How long the helper may take to move into the cgroup and unshare (milliseconds on a
/// real host; seconds on a loaded emulated one).
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Where process `pid` is stuck, from /proc: its state, its kernel wait channel and, where
/// the kernel shows it, its kernel stack.
fn stuck_where(pid: libc::pid_t) -> String {
    let read = |f: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{f}"))
            .map(|s| s.trim().replace('\n', " | "))
            .unwrap_or_else(|e| format!("({e})"))
    };
    let state = read("stat")
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    format!(
        "state {state}, waiting in {}, stack: {}",
        read("wchan"),
        read("stack")
    )
}

/// The helper's side: moves into the cgroup, unshares the cgroup namespace, says so, and
/// sleeps until the agent kills it. Never returns.
///
/// # Safety
/// Only in a child just forked from the agent; only async-signal-safe calls.
unsafe fn helper(procs: libc::c_int, ready: libc::c_int) -> ! {
    // SAFETY: write(2), unshare(2), pause(2) and _exit(2) on descriptors inherited across
    // the fork and on local buffers.
    unsafe {
        let mut errno = 0i32;
        if libc::write(procs, b"0".as_ptr().cast(), 1) < 0
            || libc::unshare(libc::CLONE_NEWCGROUP) < 0
        {
            errno = *libc::__errno_location();
        }
        let msg = errno.to_ne_bytes();
        libc::write(ready, msg.as_ptr().cast(), msg.len());
        // Every signal is blocked (the agent's mask): only SIGKILL ends this.
        loop {
            libc::pause();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::CpuMax;

    #[test]
    fn limits_become_the_controllers_files() {
        assert!(files(&Resources::default()).is_empty());
        let all = Resources {
            memory_max: Some(64 << 20),
            memory_low: Some(32 << 20),
            pids_max: Some(50),
            cpu_weight: Some(39),
            cpu_max: Some(CpuMax {
                quota_us: 150_000,
                period_us: 100_000,
            }),
            cpuset_cpus: Some("0-1".into()),
        };
        assert_eq!(
            files(&all),
            [
                ("cpuset.cpus", "0-1".to_string()),
                ("memory.low", "33554432".into()),
                ("memory.max", "67108864".into()),
                ("pids.max", "50".into()),
                ("cpu.weight", "39".into()),
                ("cpu.max", "150000 100000".into()),
            ]
        );
    }
}
