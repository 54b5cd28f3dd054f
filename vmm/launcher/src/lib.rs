//! The one way to start a `berth-vmm boot` or `restore` process and to learn how it ended,
//! shared by the engine and `berth-vmm run`: a typed [`BootSpec`] or [`RestoreSpec`] becomes
//! the VMM's argument list, the VMM's exit status becomes a [`VmmExit`] (the producer,
//! `berth-vmm boot`, uses the same enum), [`launch`] starts the VMM and waits for its guest
//! agent's ready call while watching the VMM, [`launch_restored`] starts a restored one, and
//! [`template`] boots a VM once and snapshots it for clones. Nobody parses a VMM's stderr to
//! learn what happened.
//!
//! It holds no policy: whether a failed boot is tried again, and how a failure is worded for
//! a user, belong to the callers. It depends on nothing of the VMM (the engine must not).

pub mod control;
mod exit;
mod net;
mod spec;
pub mod template;

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use agent_client::{ClientError, ReadyListener};

pub use exit::VmmExit;
pub use net::{check_unicast, format_mac, inherit_fd, parse_mac, MacError};
pub use spec::{BootSpec, Console, NetSpec, RestoreSpec, Share};

/// Why a VM's agent did not come up. The VMM is gone in every case (killed if need be).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot listen for the guest agent")]
    Listen(#[source] ClientError),
    #[error("cannot start the VMM {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The VMM ended before the agent called: how it ended says why.
    #[error("the VM stopped before its agent was ready: {0}")]
    Exited(VmmExit),
    /// The agent did not call within the time allowed; the VMM was killed.
    #[error("the guest agent did not come up within {} s", .0.as_secs())]
    Stalled(Duration),
    #[error("the guest agent's ready call failed")]
    Ready(#[source] ClientError),
}

/// How often the VMM is checked while the agent is awaited.
const POLL: Duration = Duration::from_millis(20);

/// Starts `cmd` (a `berth-vmm boot` whose vsock socket is `uds`) and waits up to `timeout`
/// for its guest agent's ready call, which arrives on the socket beside `uds` (bound here,
/// before the VMM starts, so the call cannot be missed). Returns the running VMM.
pub fn launch(cmd: &mut Command, uds: &Path, timeout: Duration) -> Result<Child, LaunchError> {
    let ready = ReadyListener::bind(uds).map_err(LaunchError::Listen)?;
    let mut vmm = cmd.spawn().map_err(|source| LaunchError::Spawn {
        path: PathBuf::from(cmd.get_program()),
        source,
    })?;
    // The listener waits on its own thread so this one can watch the VMM.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("agent-ready".into())
        .spawn(move || {
            let _ = tx.send(ready.wait(timeout));
        })
        .map_err(|source| {
            kill(&mut vmm);
            LaunchError::Spawn {
                path: PathBuf::from("an agent-ready thread"),
                source,
            }
        })?;
    // A last word from the listener thread beyond its own deadline is not awaited.
    let deadline = Instant::now() + timeout + Duration::from_secs(5);
    loop {
        match rx.recv_timeout(POLL) {
            Ok(Ok(_)) => return Ok(vmm),
            Ok(Err(ClientError::Timeout { .. })) => {
                return Err(ended_or(&mut vmm, LaunchError::Stalled(timeout)))
            }
            Ok(Err(e)) => return Err(ended_or(&mut vmm, LaunchError::Ready(e))),
            Err(_) if Instant::now() > deadline => {
                return Err(ended_or(&mut vmm, LaunchError::Stalled(timeout)))
            }
            Err(_) => {}
        }
        if let Ok(Some(status)) = vmm.try_wait() {
            return Err(LaunchError::Exited(VmmExit::from_status(status)));
        }
    }
}

/// Starts `cmd` (a `berth-vmm restore` whose vsock socket is `uds`) and waits up to
/// `timeout` for the restored VM's vsock socket to appear: its agent, already running in the
/// snapshot, is then a connection away (it makes no ready call). Returns the running VMM.
pub fn launch_restored(
    cmd: &mut Command,
    uds: &Path,
    timeout: Duration,
) -> Result<Child, LaunchError> {
    let mut vmm = cmd.spawn().map_err(|source| LaunchError::Spawn {
        path: PathBuf::from(cmd.get_program()),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = vmm.try_wait() {
            return Err(LaunchError::Exited(VmmExit::from_status(status)));
        }
        if uds.exists() {
            return Ok(vmm);
        }
        if Instant::now() >= deadline {
            return Err(ended_or(&mut vmm, LaunchError::Stalled(timeout)));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Makes the process `cmd` starts die (SIGKILL) when the thread that starts it ends: a VM
/// must not outlive the process that runs it, however that process ends.
pub fn tie_to_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// How long a VMM gets to end after its agent's connection broke: a guest that resets
/// breaks the connection first, and its VMM exits a moment later.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// The VMM's own end if it ends within [`EXIT_GRACE`] (it says more), else `otherwise`
/// with the VMM killed.
fn ended_or(vmm: &mut Child, otherwise: LaunchError) -> LaunchError {
    if let Some(exit) = wait_exit(vmm, EXIT_GRACE) {
        return LaunchError::Exited(exit);
    }
    let threads = dump_and_kill(vmm);
    if !threads.is_empty() {
        eprintln!("vmm-launcher: the VMM's threads when it was killed: {threads}");
    }
    otherwise
}

/// Kills a VMM that is stuck, after asking it to write its devices' state to its stderr
/// (SIGUSR1; berth-vmm does it from a thread of its own): what the guest was waiting for,
/// if it waited on a device, is then in the VMM's log. Returns where each of the VMM's
/// threads was (name, state, kernel wait channel, system call), for the caller's log: a
/// VMM too stuck to write its own state still shows where it is.
pub fn dump_and_kill(vmm: &mut Child) -> String {
    let mut threads = String::new();
    if let Ok(None) = vmm.try_wait() {
        // Read before any signal: what a VMM was doing is what the caller needs to know.
        threads = thread_states(vmm.id());
        // A VMM takes SIGUSR1 only once its loop runs (it blocks the signal then, for its
        // signalfd); before that the signal would kill it and the dump would never come.
        if blocks_sigusr1(vmm.id()) {
            // SAFETY: kill(2) on our own child, not yet reaped (we hold its Child).
            unsafe { libc::kill(vmm.id() as i32, libc::SIGUSR1) };
            std::thread::sleep(Duration::from_millis(500));
        } else {
            threads.push_str(" (still setting the VM up: no device state to ask for)");
        }
    }
    kill(vmm);
    threads
}

/// Whether `pid`'s main thread has SIGUSR1 blocked (`SigBlk` in its status).
fn blocks_sigusr1(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGUSR1 - 1)) != 0)
}

/// One line per thread of `pid`: `name state wchan syscall`.
fn thread_states(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return String::new();
    };
    let mut lines = Vec::new();
    for task in tasks.flatten() {
        let read = |name: &str| {
            std::fs::read_to_string(task.path().join(name))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let stat = read("stat");
        // The state is the first field after the ")" that ends the name.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("?")
            .to_string();
        let syscall = read("syscall");
        let syscall = syscall.split(' ').next().unwrap_or("").to_string();
        lines.push(format!(
            "{} {state} wchan={} syscall={syscall}",
            read("comm"),
            read("wchan")
        ));
    }
    lines.sort();
    lines.join("; ")
}

/// An error and every cause under it, on one line (`a: b: c`).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn kill(vmm: &mut Child) {
    let _ = vmm.kill();
    let _ = vmm.wait();
}

/// Waits up to `timeout` for the VMM to exit; `None` if it still runs.
pub fn wait_exit(vmm: &mut Child, timeout: Duration) -> Option<VmmExit> {
    let deadline = Instant::now() + timeout;
    loop {
        match vmm.try_wait() {
            Ok(Some(status)) => return Some(VmmExit::from_status(status)),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return Some(VmmExit::Unknown(-1)),
        }
    }
}

/// The last `lines` lines of a console log, for messages that must say why far from it (a
/// CI log). Empty when there is none.
pub fn console_tail(console: &Path, lines: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(console) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("berth-launcher-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn only_a_process_that_blocks_sigusr1_is_asked_for_a_dump() {
        use std::os::unix::process::CommandExt;
        let mut plain = Command::new("sleep").arg("30").spawn().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        // SAFETY: only async-signal-safe calls (sigemptyset, sigaddset, sigprocmask) on a
        // set on the child's own stack, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR1);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        let mut blocking = cmd.spawn().unwrap();
        assert!(!blocks_sigusr1(plain.id()));
        assert!(blocks_sigusr1(blocking.id()));
        let said = dump_and_kill(&mut plain);
        assert!(said.contains("still setting the VM up"), "{said}");
        assert!(said.starts_with("sleep "), "{said}");
        let said = dump_and_kill(&mut blocking);
        assert!(!said.contains("still setting"), "{said}");
        // Killed by SIGKILL, not by the SIGUSR1 it was sent (which it blocks).
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(blocking.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert_eq!(plain.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn a_vmm_that_ends_before_the_agent_calls_says_how() {
        let dir = scratch("exits");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 5"]);
        let err = launch(&mut cmd, &dir.join("vsock.sock"), Duration::from_secs(30)).unwrap_err();
        assert!(
            matches!(err, LaunchError::Exited(VmmExit::GuestCrash)),
            "{err:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_silent_vmm_is_killed_at_the_deadline() {
        let dir = scratch("stalls");
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let started = Instant::now();
        let err = launch(
            &mut cmd,
            &dir.join("vsock.sock"),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(err, LaunchError::Stalled(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_vmm_is_a_spawn_error() {
        let dir = scratch("missing");
        let mut cmd = Command::new(dir.join("no-such-vmm"));
        let err = launch(&mut cmd, &dir.join("vsock.sock"), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, LaunchError::Spawn { .. }), "{err:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn console_tails_keep_the_last_lines() {
        let dir = scratch("tail");
        let log = dir.join("console.log");
        std::fs::write(&log, "a\r\nb\nc\n").unwrap();
        assert_eq!(console_tail(&log, 2), ["b", "c"]);
        assert!(console_tail(&dir.join("none"), 2).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
