//! Starting a process: our own fork/exec.
//!
//! Not `std::process::Command`: the agent reaps every child with `waitpid(-1)` from one
//! thread, and std's spawn waits on its own child after an exec failure, which would race
//! with (and assert against) that reaper.
//!
//! Everything that allocates happens before `fork` ([`Prepared::new`]): the program is
//! looked up in `PATH`, every string becomes a `CString`, pointer arrays are built. The child
//! then makes only async-signal-safe calls and reports a failure as (stage, errno) through a
//! close-on-exec pipe that reads empty once `execve` succeeds.

use std::ffi::{CString, NulError};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::ptr;

use agent_protocol::{ErrorCode, ProcessSpec, RlimitResource};

use crate::sys;

/// `PATH` for programs whose environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The step of child setup that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    Setsid = 1,
    ControllingTty = 2,
    Stdio = 3,
    Rlimit = 4,
    Groups = 5,
    Gid = 6,
    Uid = 7,
    Chdir = 8,
    SignalMask = 9,
    Exec = 10,
}

impl Stage {
    fn from_u32(v: u32) -> Option<Stage> {
        use Stage::*;
        [
            Setsid,
            ControllingTty,
            Stdio,
            Rlimit,
            Groups,
            Gid,
            Uid,
            Chdir,
            SignalMask,
            Exec,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Setsid => "setsid",
            Stage::ControllingTty => "setting the controlling terminal",
            Stage::Stdio => "redirecting stdio",
            Stage::Rlimit => "setrlimit",
            Stage::Groups => "setgroups",
            Stage::Gid => "setgid",
            Stage::Uid => "setuid",
            Stage::Chdir => "changing to the working directory",
            Stage::SignalMask => "resetting the signal mask",
            Stage::Exec => "exec",
        })
    }
}

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{program}: executable file not found in $PATH")]
    NotFound { program: String },
    #[error("{program}: permission denied (no executable file of that name in $PATH)")]
    NotExecutable { program: String },
    #[error("{program}: {stage} failed")]
    Child {
        program: String,
        stage: Stage,
        #[source]
        source: io::Error,
    },
    #[error("{field} contains a NUL byte")]
    Nul {
        field: &'static str,
        #[source]
        source: NulError,
    },
    #[error("cannot set up the process's stdio")]
    Stdio(#[source] io::Error),
    #[error("cannot create the exec status pipe")]
    Pipe(#[source] io::Error),
    #[error("fork failed")]
    Fork(#[source] io::Error),
    #[error("cannot read the exec status of the new process")]
    Report(#[source] io::Error),
    #[error("the new process sent a truncated exec status ({got} bytes)")]
    ReportTruncated { got: usize },
}

fn is_not_found(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

fn is_not_executable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES)
            | Some(libc::EPERM)
            | Some(libc::ENOEXEC)
            | Some(libc::EISDIR)
            | Some(libc::ETXTBSY)
            | Some(libc::ELIBBAD)
    )
}

impl SpawnError {
    /// The protocol's view of this failure (the host maps NotFound to 127 and
    /// PermissionDenied to 126, as Docker does).
    pub fn code(&self) -> ErrorCode {
        match self {
            SpawnError::NotFound { .. } => ErrorCode::NotFound,
            SpawnError::NotExecutable { .. } => ErrorCode::PermissionDenied,
            SpawnError::Child {
                stage: Stage::Exec,
                source,
                ..
            } if is_not_found(source) => ErrorCode::NotFound,
            SpawnError::Child {
                stage: Stage::Exec,
                source,
                ..
            } if is_not_executable(source) => ErrorCode::PermissionDenied,
            SpawnError::Nul { .. } => ErrorCode::InvalidArgument,
            _ => ErrorCode::SpawnFailed,
        }
    }

    /// The exit status recorded for a process that never ran.
    pub fn exit_code(&self) -> i32 {
        match self.code() {
            ErrorCode::PermissionDenied => 126,
            _ => 127,
        }
    }

    /// The message with its cause, for the error reply.
    pub fn describe(&self) -> String {
        match std::error::Error::source(self) {
            Some(cause) => format!("{self}: {cause}"),
            None => self.to_string(),
        }
    }
}

/// Exit code of a child whose setup failed: what a shell would use.
fn child_exit_code(stage: Stage, errno: i32) -> i32 {
    match (stage, errno) {
        (Stage::Exec, libc::ENOENT | libc::ENOTDIR) => 127,
        (Stage::Exec, _) => 126,
        _ => 127,
    }
}

/// Finds `argv0` the way `execvp` does: as given if it contains a `/`, else in each `PATH`
/// directory in turn (relative entries are relative to `cwd`). A match that exists but is
/// not executable is remembered, so "permission denied" wins over "not found".
pub fn resolve_program(argv0: &str, env: &[String], cwd: &str) -> Result<PathBuf, SpawnError> {
    if argv0.contains('/') {
        return Ok(PathBuf::from(argv0));
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let mut denied = false;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = if dir.starts_with('/') {
            Path::new(dir).join(argv0)
        } else {
            Path::new(cwd).join(dir).join(argv0)
        };
        match std::fs::metadata(&candidate) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(candidate),
            Ok(_) => denied = true,
            Err(_) => {}
        }
    }
    let program = argv0.to_owned();
    Err(if denied {
        SpawnError::NotExecutable { program }
    } else {
        SpawnError::NotFound { program }
    })
}

fn rlimit_resource(r: RlimitResource) -> libc::c_int {
    // The constants' type differs between libcs; their values fit a c_int everywhere.
    (match r {
        RlimitResource::As => libc::RLIMIT_AS,
        RlimitResource::Core => libc::RLIMIT_CORE,
        RlimitResource::Cpu => libc::RLIMIT_CPU,
        RlimitResource::Data => libc::RLIMIT_DATA,
        RlimitResource::Fsize => libc::RLIMIT_FSIZE,
        RlimitResource::Locks => libc::RLIMIT_LOCKS,
        RlimitResource::Memlock => libc::RLIMIT_MEMLOCK,
        RlimitResource::Msgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitResource::Nice => libc::RLIMIT_NICE,
        RlimitResource::Nofile => libc::RLIMIT_NOFILE,
        RlimitResource::Nproc => libc::RLIMIT_NPROC,
        RlimitResource::Rss => libc::RLIMIT_RSS,
        RlimitResource::Rtprio => libc::RLIMIT_RTPRIO,
        RlimitResource::Rttime => libc::RLIMIT_RTTIME,
        RlimitResource::Sigpending => libc::RLIMIT_SIGPENDING,
        RlimitResource::Stack => libc::RLIMIT_STACK,
    }) as libc::c_int
}

struct Identity {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

/// Everything the child needs, allocated before `fork`.
pub struct Prepared {
    program: CString,
    /// The display name for errors.
    program_name: String,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const libc::c_char>,
    cwd: CString,
    identity: Option<Identity>,
    rlimits: Vec<(libc::c_int, libc::rlimit)>,
    tty: bool,
}

fn c_string(field: &'static str, s: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|source| SpawnError::Nul { field, source })
}

fn pointer_array(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

impl Prepared {
    pub fn new(spec: &ProcessSpec) -> Result<Self, SpawnError> {
        let argv0 = spec.argv.first().map(String::as_str).unwrap_or_default();
        let program = resolve_program(argv0, &spec.env, &spec.cwd)?;
        let program =
            CString::new(program.into_os_string().into_encoded_bytes()).map_err(|source| {
                SpawnError::Nul {
                    field: "program",
                    source,
                }
            })?;
        let argv = spec
            .argv
            .iter()
            .map(|a| c_string("argv", a))
            .collect::<Result<Vec<_>, _>>()?;
        let env = spec
            .env
            .iter()
            .map(|e| c_string("env", e))
            .collect::<Result<Vec<_>, _>>()?;
        // Only root can change identity. When the agent is not root (tests on the host) and
        // the spec asks for exactly who it already is, there is nothing to change.
        let (euid, egid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let unchanged =
            euid != 0 && spec.uid == euid && spec.gid == egid && spec.additional_gids.is_empty();
        let identity = (!unchanged).then(|| Identity {
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.additional_gids.clone(),
        });
        Ok(Prepared {
            program,
            program_name: argv0.to_owned(),
            argv_ptrs: pointer_array(&argv),
            _argv: argv,
            env_ptrs: pointer_array(&env),
            _env: env,
            cwd: c_string("cwd", &spec.cwd)?,
            identity,
            rlimits: spec
                .rlimits
                .iter()
                .map(|r| {
                    (
                        rlimit_resource(r.resource),
                        libc::rlimit {
                            rlim_cur: r.soft as libc::rlim_t,
                            rlim_max: r.hard as libc::rlim_t,
                        },
                    )
                })
                .collect(),
            tty: spec.tty,
        })
    }

    /// The name used in error messages.
    pub fn program_name(&self) -> &str {
        &self.program_name
    }
}

/// The read end of a started child's exec status pipe.
#[derive(Debug)]
pub struct ExecReport {
    fd: OwnedFd,
    program: String,
}

impl ExecReport {
    /// Blocks until the child has exec'd (`Ok`) or reported why it could not.
    pub fn wait(self) -> Result<(), SpawnError> {
        let mut buf = [0u8; 8];
        let mut got = 0;
        while got < buf.len() {
            match sys::read(self.fd.as_fd(), &mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(SpawnError::Report(e)),
            }
        }
        match got {
            0 => Ok(()),
            8 => {
                let stage = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
                let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
                let stage = Stage::from_u32(stage).unwrap_or(Stage::Exec);
                Err(SpawnError::Child {
                    program: self.program,
                    stage,
                    source: io::Error::from_raw_os_error(errno),
                })
            }
            got => Err(SpawnError::ReportTruncated { got }),
        }
    }
}

/// Forks a child that sets itself up per `p`, with `stdio` as its fds 0, 1 and 2, and execs.
///
/// The caller must hold whatever lock makes registering the returned pid atomic with
/// respect to the reaper, and must keep `stdio` open until this returns.
pub fn spawn(p: &Prepared, stdio: [BorrowedFd<'_>; 3]) -> Result<(i32, ExecReport), SpawnError> {
    let (report_r, report_w) = sys::pipe().map_err(SpawnError::Pipe)?;
    let raw_stdio = stdio.map(|fd| fd.as_raw_fd());
    // SAFETY: fork has no memory-safety preconditions of its own; the child branch below
    // only calls `child`, which restricts itself to async-signal-safe calls on memory that
    // was fully built before the fork.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(SpawnError::Fork(io::Error::last_os_error())),
        0 => {
            // SAFETY: we are the freshly forked child.
            unsafe { child(p, raw_stdio, report_w.as_raw_fd()) }
        }
        pid => {
            drop(report_w);
            Ok((
                pid,
                ExecReport {
                    fd: report_r,
                    program: p.program_name.clone(),
                },
            ))
        }
    }
}

/// The child side of [`spawn`]. Never returns.
///
/// # Safety
/// Must be called only in a child just forked from the agent, with `p` built before the
/// fork and `stdio`/`report` open descriptors. Only async-signal-safe functions are called:
/// no allocation, no locks, no std I/O.
unsafe fn child(p: &Prepared, stdio: [RawFd; 3], report: RawFd) -> ! {
    // SAFETY: every call below is an async-signal-safe libc function or raw syscall,
    // given pointers into `p` (alive and unmodified since before the fork) or to locals.
    unsafe {
        // Default dispositions while every signal is still blocked (inherited from the
        // agent): nothing the agent ignores, e.g. SIGPIPE, may stay ignored across exec.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                // glibc refuses its two internal signals; harmless.
                libc::sigaction(sig, &dfl, ptr::null_mut());
            }
        }
        if libc::setsid() < 0 {
            fail(report, Stage::Setsid);
        }
        if p.tty && libc::ioctl(stdio[0], libc::TIOCSCTTY, 0) < 0 {
            fail(report, Stage::ControllingTty);
        }
        // All sources are above 2 (the agent keeps 0-2 open), so dup2 never aliases and
        // always clears close-on-exec on the target.
        for (target, fd) in stdio.iter().enumerate() {
            if libc::dup2(*fd, target as libc::c_int) < 0 {
                fail(report, Stage::Stdio);
            }
        }
        for (resource, limit) in &p.rlimits {
            if libc::setrlimit(*resource as _, limit) < 0 {
                fail(report, Stage::Rlimit);
            }
        }
        // Raw syscalls: glibc's wrappers would try to broadcast the change to threads that
        // only exist in the parent. Order matters: groups and gid while still root.
        if let Some(id) = &p.identity {
            if libc::syscall(libc::SYS_setgroups, id.groups.len(), id.groups.as_ptr()) < 0 {
                fail(report, Stage::Groups);
            }
            if libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid) < 0 {
                fail(report, Stage::Gid);
            }
            if libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid) < 0 {
                fail(report, Stage::Uid);
            }
        }
        if libc::chdir(p.cwd.as_ptr()) < 0 {
            fail(report, Stage::Chdir);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut()) < 0 {
            fail(report, Stage::SignalMask);
        }
        libc::execve(
            p.program.as_ptr(),
            p.argv_ptrs.as_ptr(),
            p.env_ptrs.as_ptr(),
        );
        fail(report, Stage::Exec)
    }
}

/// Reports `stage` and the current errno to the parent and exits.
///
/// # Safety
/// Only in the forked child (see [`child`]).
unsafe fn fail(report: RawFd, stage: Stage) -> ! {
    // SAFETY: reading errno, write(2) of a local buffer and _exit are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
        msg[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(report, msg.as_ptr().cast(), msg.len());
        libc::_exit(child_exit_code(stage, errno))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(path: &str) -> Vec<String> {
        vec![format!("PATH={path}")]
    }

    #[test]
    fn path_lookup() {
        assert_eq!(
            resolve_program("sh", &env("/nonexistent:/bin"), "/").unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            resolve_program("./x", &env("/bin"), "/").unwrap(),
            PathBuf::from("./x")
        );
        assert!(matches!(
            resolve_program("no-such-program-berth", &env("/bin:/usr/bin"), "/"),
            Err(SpawnError::NotFound { .. })
        ));
        // Without PATH in the environment, the default applies.
        assert!(resolve_program("sh", &[], "/").is_ok());
    }

    #[test]
    fn path_lookup_relative_entries_and_denied() {
        let dir = std::env::temp_dir().join(format!("berth-spawn-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let plain = dir.join("bin/plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = resolve_program("plain", &env("bin"), dir.to_str().unwrap()).unwrap_err();
        assert!(matches!(e, SpawnError::NotExecutable { .. }));
        assert_eq!(e.code(), ErrorCode::PermissionDenied);
        assert_eq!(e.exit_code(), 126);
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = resolve_program("plain", &env("bin"), dir.to_str().unwrap()).unwrap();
        assert_eq!(p, dir.join("bin/plain"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn error_codes() {
        let child = |stage, errno| SpawnError::Child {
            program: "x".into(),
            stage,
            source: io::Error::from_raw_os_error(errno),
        };
        assert_eq!(child(Stage::Exec, libc::ENOENT).code(), ErrorCode::NotFound);
        assert_eq!(
            child(Stage::Exec, libc::EACCES).code(),
            ErrorCode::PermissionDenied
        );
        assert_eq!(
            child(Stage::Exec, libc::ENOEXEC).code(),
            ErrorCode::PermissionDenied
        );
        assert_eq!(
            child(Stage::Chdir, libc::ENOENT).code(),
            ErrorCode::SpawnFailed
        );
        assert_eq!(
            child(Stage::Exec, libc::E2BIG).code(),
            ErrorCode::SpawnFailed
        );
        assert!(child(Stage::Chdir, libc::ENOENT)
            .describe()
            .contains("working directory"));
        assert_eq!(child_exit_code(Stage::Exec, libc::ENOENT), 127);
        assert_eq!(child_exit_code(Stage::Exec, libc::EACCES), 126);
        for v in 1..=10 {
            assert_eq!(Stage::from_u32(v).map(|s| s as u32), Some(v));
        }
        assert_eq!(Stage::from_u32(0), None);
    }
}
