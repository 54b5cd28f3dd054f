//! Starting a process: our own fork/exec.
//!
//! Not `std::process::Command`: the agent reaps every child with `waitpid(-1)` from one
//! thread, and std's spawn waits on its own child after an exec failure, which would race
//! with (and assert against) that reaper.
//!
//! Everything that allocates happens before `fork` ([`Prepared::new`]): the user is
//! resolved, every string becomes a `CString`, the `PATH` candidates and pointer arrays are
//! built. The child then makes only async-signal-safe calls and reports a failure as
//! (stage, errno) through a close-on-exec pipe that reads empty once `execve` succeeds.
//!
//! A container process additionally joins the container's namespaces in the child (mount
//! last: it makes the container's root the child's root), and its PID namespace through the
//! thread that forks it ([`spawn_in`]). The `PATH` lookup happens in the child, after it has
//! entered the container's root and taken the target user's identity, the way runc looks
//! a program up: a candidate counts only if it is not a directory and that user may
//! execute it (Go's `exec.LookPath`), so "not found" means what Docker means by it.

use std::ffi::{CStr, CString, NulError};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr;

use agent_protocol::{ErrorCode, ProcessSpec, RlimitResource};

use crate::sys;
use crate::user::{self, Databases, UserError};

/// `PATH` for programs whose environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's masked `/proc` paths (moby `oci/defaults.go`, Docker 28): a file is covered by
/// `/dev/null`, a directory by an empty read-only tmpfs. The `/sys` ones are done at
/// container setup.
const MASKED_PROC: &[&CStr] = &[
    c"/proc/asound",
    c"/proc/acpi",
    c"/proc/interrupts",
    c"/proc/kcore",
    c"/proc/keys",
    c"/proc/latency_stats",
    c"/proc/timer_list",
    c"/proc/timer_stats",
    c"/proc/sched_debug",
    c"/proc/scsi",
];

/// Docker's read-only `/proc` paths.
const READONLY_PROC: &[&CStr] = &[
    c"/proc/bus",
    c"/proc/fs",
    c"/proc/irq",
    c"/proc/sys",
    c"/proc/sysrq-trigger",
];

const PROC_FLAGS: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

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
    Namespaces = 11,
    Proc = 12,
    Workdir = 13,
    ReadonlyRoot = 14,
    Console = 15,
    Lookup = 16,
    TtyOwner = 17,
    Capabilities = 18,
    NoNewPrivileges = 19,
    Init = 20,
    Cgroup = 21,
}

impl Stage {
    const ALL: [Stage; 21] = [
        Stage::Setsid,
        Stage::ControllingTty,
        Stage::Stdio,
        Stage::Rlimit,
        Stage::Groups,
        Stage::Gid,
        Stage::Uid,
        Stage::Chdir,
        Stage::SignalMask,
        Stage::Exec,
        Stage::Namespaces,
        Stage::Proc,
        Stage::Workdir,
        Stage::ReadonlyRoot,
        Stage::Console,
        Stage::Lookup,
        Stage::TtyOwner,
        Stage::Capabilities,
        Stage::NoNewPrivileges,
        Stage::Init,
        Stage::Cgroup,
    ];

    fn from_u32(v: u32) -> Option<Stage> {
        Self::ALL.into_iter().find(|s| *s as u32 == v)
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
            Stage::Namespaces => "entering the container's namespaces",
            Stage::Proc => "mounting the container's /proc",
            Stage::Workdir => "creating the working directory",
            Stage::ReadonlyRoot => "making the container's root read-only",
            Stage::Console => "binding the terminal to /dev/console",
            Stage::Lookup => "looking up the program in $PATH",
            Stage::TtyOwner => "giving the terminal to the user",
            Stage::Capabilities => "dropping capabilities",
            Stage::NoNewPrivileges => "setting no_new_privs",
            Stage::Init => "starting the program under the container's init",
            Stage::Cgroup => "entering the container's cgroup",
        })
    }
}

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{}", child_message(program, *stage))]
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
    /// Docker's own wording ("unable to find user foo: no matching entries in passwd file").
    #[error(transparent)]
    User(UserError),
    #[error(transparent)]
    Capability(crate::caps::UnknownCapability),
    #[error("cannot read {path}")]
    UserDatabase {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the process's stdio")]
    Stdio(#[source] io::Error),
    #[error("cannot create the exec status pipe")]
    Pipe(#[source] io::Error),
    #[error("cannot enter or create the container's PID namespace")]
    PidNamespace(#[source] io::Error),
    #[error("the container is not running: its init process has exited")]
    ContainerStopped,
    #[error("an init (--init) is for the container's first process only")]
    InitNotFirst,
    #[error("fork failed")]
    Fork(#[source] io::Error),
    #[error("cannot start the thread that starts the process")]
    ThreadStart(#[source] io::Error),
    #[error("the thread starting the process panicked")]
    ThreadPanic,
    #[error("cannot read the exec status of the new process")]
    Report(#[source] io::Error),
    #[error("the new process sent a truncated exec status ({got} bytes)")]
    ReportTruncated { got: usize },
}

fn child_message(program: &str, stage: Stage) -> String {
    match stage {
        // Docker's (Go's exec.LookPath) wording.
        Stage::Lookup => format!("exec: {program:?}: executable file not found in $PATH"),
        stage => format!("{program}: {stage} failed"),
    }
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
            SpawnError::Child {
                stage: Stage::Lookup,
                ..
            } => ErrorCode::NotFound,
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
            SpawnError::Nul { .. }
            | SpawnError::User(_)
            | SpawnError::Capability(_)
            | SpawnError::InitNotFirst => ErrorCode::InvalidArgument,
            SpawnError::ContainerStopped => ErrorCode::InvalidState,
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
        match (self, std::error::Error::source(self)) {
            (
                SpawnError::Child {
                    stage: Stage::Lookup,
                    ..
                },
                _,
            ) => self.to_string(),
            (_, Some(cause)) => format!("{self}: {cause}"),
            (_, None) => self.to_string(),
        }
    }
}

/// Exit code of a child whose setup failed: what a shell would use.
fn child_exit_code(stage: Stage, errno: i32) -> i32 {
    match (stage, errno) {
        (Stage::Lookup, _) | (Stage::Exec, libc::ENOENT | libc::ENOTDIR) => 127,
        (Stage::Exec, _) => 126,
        _ => 127,
    }
}

/// The programs `execve` tries for `argv0`: itself if it names a path, else `argv0` in each
/// `PATH` directory (an empty entry is the working directory). Returns (candidates,
/// whether this is a `PATH` search).
pub fn exec_candidates(argv0: &str, env: &[String]) -> (Vec<String>, bool) {
    if argv0.contains('/') {
        return (vec![argv0.to_owned()], false);
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let candidates = path_var
        .split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            format!("{}/{argv0}", dir.trim_end_matches('/'))
        })
        .collect();
    (candidates, true)
}

/// The directories `mkdir -p` would create for `cwd`, outermost first, after cleaning it as
/// Go's `filepath.Clean` does (Docker cleans `WorkingDir`).
pub fn cwd_prefixes(cwd: &str) -> Vec<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in cwd.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    (1..=parts.len())
        .map(|n| format!("/{}", parts[..n].join("/")))
        .collect()
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

/// What the process is started in: its container's root and name, for resolving the user
/// and filling in the environment.
#[derive(Debug, Clone, Copy)]
pub struct ContainerContext<'a> {
    /// An `O_PATH` descriptor of the container's `/`.
    pub root: BorrowedFd<'a>,
    pub hostname: &'a str,
}

/// Everything the child needs, allocated before `fork`.
pub struct Prepared {
    /// The display name for errors.
    program_name: String,
    candidates: Vec<CString>,
    /// `argv[0]` has no '/': look it up among `candidates` (see the module docs).
    search: bool,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const libc::c_char>,
    cwd: CString,
    /// `mkdir -p` of the working directory, for a container's init.
    cwd_prefixes: Vec<CString>,
    identity: Option<Identity>,
    /// The capability bounding set to keep (the rest is dropped before exec).
    bounding: Option<u64>,
    rlimits: Vec<(libc::c_int, libc::rlimit)>,
    tty: bool,
    /// Docker's `--security-opt no-new-privileges`: set before exec, so that neither the
    /// program nor anything it runs gains privileges (setuid bits, file capabilities).
    no_new_privileges: bool,
    /// Docker's `--init`: a container's first process forks the program and stays as its
    /// init (see [`become_init`]).
    init: bool,
}

// SAFETY: the raw pointers in `Prepared` point into the CStrings it owns, which are never
// modified or moved after construction; other threads only read them (the thread that
// forks into a PID namespace, while the owner waits for it).
unsafe impl Sync for Prepared {}

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

/// The value of `key` in `env` (first occurrence, as `getenv` finds it).
fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .find_map(|e| e.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

/// Reads the user databases from a container's root, or from the agent's own.
fn read_databases(root: Option<BorrowedFd<'_>>) -> Result<Databases, SpawnError> {
    let read = |path: &'static str| {
        sys::read_file_in_root(root, path, user::MAX_DB_FILE_LEN)
            .map_err(|source| SpawnError::UserDatabase { path, source })
    };
    Ok(Databases {
        passwd: read("/etc/passwd")?,
        group: read("/etc/group")?,
    })
}

impl Prepared {
    /// Prepares `spec`, resolving its user against `container`'s files (or the agent's
    /// own) and, for a container process, adding `HOSTNAME` and `HOME` where the
    /// environment lacks them, as Docker (the daemon) and runc do.
    pub fn new(
        spec: &ProcessSpec,
        container: Option<ContainerContext<'_>>,
    ) -> Result<Self, SpawnError> {
        let argv0 = spec.argv.first().map(String::as_str).unwrap_or_default();
        let home_missing = env_value(&spec.env, "HOME").is_none_or(str::is_empty);
        let needs_db = spec.user.is_some()
            || !spec.group_add.is_empty()
            || (container.is_some() && home_missing);
        let db = if needs_db {
            read_databases(container.map(|c| c.root))?
        } else {
            Databases::default()
        };
        let (uid, gid, mut groups) = match &spec.user {
            Some(u) => {
                let id = user::resolve_user(u, &db).map_err(SpawnError::User)?;
                (id.uid, id.gid, id.groups)
            }
            None => (spec.uid, spec.gid, spec.additional_gids.clone()),
        };
        if !spec.group_add.is_empty() {
            let extra = user::additional_groups(&spec.group_add, &db).map_err(SpawnError::User)?;
            groups.extend(extra);
            if groups.len() > agent_protocol::MAX_ADDITIONAL_GIDS {
                return Err(SpawnError::User(UserError::TooManyGroups));
            }
        }

        let mut env = spec.env.clone();
        if let Some(c) = container {
            if env_value(&env, "HOSTNAME").is_none() {
                env.push(format!("HOSTNAME={}", c.hostname));
            }
            if home_missing {
                let home = user::home_for_uid(uid, &db).map_err(SpawnError::User)?;
                env.retain(|e| e != "HOME=");
                env.push(format!("HOME={home}"));
            }
        }

        let (candidates, search) = exec_candidates(argv0, &env);
        let candidates = candidates
            .iter()
            .map(|c| c_string("program", c))
            .collect::<Result<Vec<_>, _>>()?;
        let argv = spec
            .argv
            .iter()
            .map(|a| c_string("argv", a))
            .collect::<Result<Vec<_>, _>>()?;
        let env = env
            .iter()
            .map(|e| c_string("env", e))
            .collect::<Result<Vec<_>, _>>()?;
        let cwd_prefixes = cwd_prefixes(&spec.cwd)
            .iter()
            .map(|d| c_string("cwd", d))
            .collect::<Result<Vec<_>, _>>()?;
        // Only root can change identity. When the agent is not root (tests on the host) and
        // the spec asks for exactly who it already is, there is nothing to change.
        let (euid, egid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let unchanged = euid != 0 && uid == euid && gid == egid && groups.iter().all(|&g| g == gid);
        let identity = (!unchanged).then_some(Identity { uid, gid, groups });
        // Docker's capabilities (moby oci.SetCapabilities): root holds exactly the set, other
        // users nothing but may not gain more. Both follow from the bounding set alone: exec
        // gives root its bounding set and a non-root user (its caps cleared by setuid) none.
        let bounding = match (&spec.capabilities, container.is_some()) {
            (Some(names), _) => Some(crate::caps::mask(names).map_err(SpawnError::Capability)?),
            (None, true) => Some(
                crate::caps::mask(crate::caps::DOCKER_DEFAULT).map_err(SpawnError::Capability)?,
            ),
            (None, false) => None,
        };
        Ok(Prepared {
            program_name: argv0.to_owned(),
            candidates,
            search,
            argv_ptrs: pointer_array(&argv),
            _argv: argv,
            env_ptrs: pointer_array(&env),
            _env: env,
            cwd: c_string("cwd", &spec.cwd)?,
            cwd_prefixes,
            identity,
            bounding,
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
            no_new_privileges: spec.no_new_privileges,
            init: spec.init,
        })
    }

    /// The name used in error messages.
    pub fn program_name(&self) -> &str {
        &self.program_name
    }
}

/// What a container's first process does before anything else, inside the container: it
/// is PID 1 of the container's fresh PID namespace, so it is the one to mount `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct InitSetup {
    /// Remount the container's root read-only once the working directory exists.
    pub readonly_root: bool,
    /// Docker's `--privileged`: `/proc` without Docker's masked and read-only paths.
    pub privileged: bool,
}

/// The namespaces a container process joins in the child.
#[derive(Debug, Clone, Copy)]
pub struct Join<'a> {
    pub ipc: BorrowedFd<'a>,
    pub uts: BorrowedFd<'a>,
    pub cgroup: BorrowedFd<'a>,
    /// The container's cgroup's `cgroup.procs`, which the child moves itself into first.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
    /// Last: entering it makes the container's root the child's root.
    pub mnt: BorrowedFd<'a>,
    /// Set for the container's first process.
    pub init: Option<InitSetup>,
}

/// The PID namespace a new process goes to.
#[derive(Debug, Clone, Copy)]
pub enum PidNs<'a> {
    /// The agent's own.
    Inherit,
    /// A fresh one, of which the process becomes PID 1.
    New,
    /// An existing one (a container's, whose init is running).
    Join(BorrowedFd<'a>),
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

/// A started child: its pid (in the agent's PID namespace), its exec report, and the PID
/// namespace it created, if it was asked to.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub report: ExecReport,
    pub new_pidns: Option<OwnedFd>,
}

/// [`spawn`] into a PID namespace. The namespace is set for the children of a short-lived
/// thread only (`unshare`/`setns` of `CLONE_NEWPID` act on the calling thread's
/// children), so no other thread of the agent is affected.
pub fn spawn_in(
    p: &Prepared,
    stdio: [BorrowedFd<'_>; 3],
    join: Option<&Join<'_>>,
    pidns: PidNs<'_>,
) -> Result<Spawned, SpawnError> {
    let in_thread = || -> Result<Spawned, SpawnError> {
        match pidns {
            PidNs::Inherit => {}
            PidNs::New => sys::unshare_pidns().map_err(SpawnError::PidNamespace)?,
            PidNs::Join(fd) => {
                sys::setns(fd, libc::CLONE_NEWPID).map_err(SpawnError::PidNamespace)?
            }
        }
        let joining = matches!(pidns, PidNs::Join(_));
        let (pid, report) = spawn(p, stdio, join).map_err(|e| match e {
            // A PID namespace whose init has exited takes no new processes.
            SpawnError::Fork(e) if joining && e.raw_os_error() == Some(libc::ENOMEM) => {
                SpawnError::ContainerStopped
            }
            e => e,
        })?;
        let new_pidns = match pidns {
            // Only now, with its init in it, can the new namespace be opened.
            PidNs::New => match sys::pidns_for_children() {
                Ok(fd) => Some(fd),
                Err(e) => {
                    // The container's next process then starts a namespace of its own.
                    log::warn!("cannot keep the new PID namespace of pid {pid}: {e}");
                    None
                }
            },
            _ => None,
        };
        Ok(Spawned {
            pid,
            report,
            new_pidns,
        })
    };
    match pidns {
        PidNs::Inherit => in_thread(),
        _ => std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("spawn".into())
                .spawn_scoped(s, in_thread)
                .map_err(SpawnError::ThreadStart)?
                .join()
                .map_err(|_| SpawnError::ThreadPanic)?
        }),
    }
}

/// Forks a child that sets itself up per `p` (joining `join`'s namespaces), with `stdio` as
/// its fds 0, 1 and 2, and execs.
///
/// The caller must hold whatever lock makes registering the returned pid atomic with
/// respect to the reaper, and must keep `stdio` open until this returns.
pub fn spawn(
    p: &Prepared,
    stdio: [BorrowedFd<'_>; 3],
    join: Option<&Join<'_>>,
) -> Result<(i32, ExecReport), SpawnError> {
    let (report_r, report_w) = sys::pipe().map_err(SpawnError::Pipe)?;
    let raw_stdio = stdio.map(|fd| fd.as_raw_fd());
    let raw_join = join.map(|j| RawJoin {
        ns: [
            (j.ipc.as_raw_fd(), libc::CLONE_NEWIPC),
            (j.uts.as_raw_fd(), libc::CLONE_NEWUTS),
            (j.cgroup.as_raw_fd(), libc::CLONE_NEWCGROUP),
            (j.mnt.as_raw_fd(), libc::CLONE_NEWNS),
        ],
        cgroup_procs: j.cgroup_procs.map(|fd| fd.as_raw_fd()),
        init: j.init,
    });
    // SAFETY: fork has no memory-safety preconditions of its own; the child branch below
    // only calls `child`, which restricts itself to async-signal-safe calls on memory that
    // was fully built before the fork.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(SpawnError::Fork(io::Error::last_os_error())),
        0 => {
            // SAFETY: we are the freshly forked child.
            unsafe { child(p, raw_stdio, raw_join.as_ref(), report_w.as_raw_fd()) }
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

/// [`Join`] as plain numbers, for the child.
struct RawJoin {
    ns: [(RawFd, libc::c_int); 4],
    cgroup_procs: Option<RawFd>,
    init: Option<InitSetup>,
}

/// The child side of [`spawn`]. Never returns.
///
/// # Safety
/// Must be called only in a child just forked from the agent, with `p` built before the
/// fork and `stdio`/`report`/the namespace fds open descriptors. Only async-signal-safe
/// functions are called: no allocation, no locks, no std I/O.
unsafe fn child(p: &Prepared, stdio: [RawFd; 3], join: Option<&RawJoin>, report: RawFd) -> ! {
    // SAFETY: every call below is an async-signal-safe libc function or raw syscall,
    // given pointers into `p` and the static strings (alive and unmodified since before
    // the fork) or to locals.
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
        if let Some(j) = join {
            // Into the container's cgroup before anything of it runs: its limits hold
            // from the first instruction on ("0" is the writer).
            if let Some(procs) = j.cgroup_procs {
                if libc::write(procs, c"0".as_ptr().cast(), 1) < 0 {
                    fail(report, Stage::Cgroup);
                }
            }
            for (fd, nstype) in j.ns {
                if libc::setns(fd, nstype) < 0 {
                    fail(report, Stage::Namespaces);
                }
            }
            if let Some(init) = &j.init {
                init_container(p, init, report);
                if p.init {
                    become_init(report);
                }
            }
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
        if p.tty && join.is_some_and(|j| j.init.is_some()) {
            // runc gives a container's terminal to /dev/console too.
            let console = c"/dev/console";
            let fd = libc::open(
                console.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_NOCTTY | libc::O_CLOEXEC,
                0o666,
            );
            if fd < 0 {
                fail(report, Stage::Console);
            }
            libc::close(fd);
            if libc::mount(
                c"/proc/self/fd/0".as_ptr(),
                console.as_ptr(),
                ptr::null(),
                libc::MS_BIND,
                ptr::null(),
            ) < 0
            {
                fail(report, Stage::Console);
            }
        }
        for (resource, limit) in &p.rlimits {
            if libc::setrlimit(*resource as _, limit) < 0 {
                fail(report, Stage::Rlimit);
            }
        }
        // While still root (CAP_SETPCAP). Numbers this kernel does not have are EINVAL.
        if let Some(keep) = p.bounding {
            for cap in 0..64 {
                if keep & (1 << cap) == 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0
                    && *libc::__errno_location() != libc::EINVAL
                {
                    fail(report, Stage::Capabilities);
                }
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
        }
        // Raw syscalls: glibc's wrappers would try to broadcast the change to threads that
        // only exist in the parent. Order matters: groups and gid while still root.
        if let Some(id) = &p.identity {
            // runc hands the terminal to the user it runs as (fixStdioPermissions), so that
            // the process can reopen /dev/tty or /proc/self/fd/0.
            if p.tty && libc::fchown(0, id.uid, libc::gid_t::MAX) < 0 {
                fail(report, Stage::TtyOwner);
            }
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
        if p.no_new_privileges && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            fail(report, Stage::NoNewPrivileges);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut()) < 0 {
            fail(report, Stage::SignalMask);
        }
        if !p.search {
            libc::execve(
                p.candidates[0].as_ptr(),
                p.argv_ptrs.as_ptr(),
                p.env_ptrs.as_ptr(),
            );
            fail(report, Stage::Exec)
        }
        for c in &p.candidates {
            if executable(c) {
                libc::execve(c.as_ptr(), p.argv_ptrs.as_ptr(), p.env_ptrs.as_ptr());
                fail(report, Stage::Exec);
            }
        }
        fail_with(report, Stage::Lookup, libc::ENOENT)
    }
}

/// Go's `exec.LookPath` test, as the current user: not a directory, and executable
/// (`faccessat2` with `AT_EACCESS`, falling back to the mode bits where it is missing).
///
/// # Safety
/// Only in the forked child (see [`child`]).
unsafe fn executable(path: &CStr) -> bool {
    // SAFETY: stat(2) into a local, faccessat2(2) on a valid C string.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::stat(path.as_ptr(), &mut st) < 0 || st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return false;
        }
        let r = libc::syscall(
            libc::SYS_faccessat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::X_OK,
            libc::AT_EACCESS,
        );
        if r == 0 {
            return true;
        }
        *libc::__errno_location() == libc::ENOSYS && st.st_mode & 0o111 != 0
    }
}

/// The container init's own setup, inside the container: `/proc` with Docker's masks, the
/// working directory, the read-only root.
///
/// # Safety
/// Only in the forked child (see [`child`]), after it entered the container's namespaces.
unsafe fn init_container(p: &Prepared, init: &InitSetup, report: RawFd) {
    // SAFETY: mount(2), umount2(2), mkdir(2) on static or pre-built C strings.
    unsafe {
        let proc_dir = c"/proc";
        // A previous init that never exec'd may have left its /proc: replace it.
        libc::umount2(proc_dir.as_ptr(), libc::MNT_DETACH);
        if libc::mount(
            c"proc".as_ptr(),
            proc_dir.as_ptr(),
            c"proc".as_ptr(),
            PROC_FLAGS,
            ptr::null(),
        ) < 0
        {
            fail(report, Stage::Proc);
        }
        // Docker leaves /proc whole for --privileged.
        let (masked, readonly) = if init.privileged {
            (&[][..], &[][..])
        } else {
            (MASKED_PROC, READONLY_PROC)
        };
        for path in masked {
            mask(path, report);
        }
        for path in readonly {
            let p = path.as_ptr();
            if libc::mount(p, p, ptr::null(), libc::MS_BIND | libc::MS_REC, ptr::null()) < 0 {
                if *libc::__errno_location() == libc::ENOENT {
                    continue;
                }
                fail(report, Stage::Proc);
            }
            let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | PROC_FLAGS;
            if libc::mount(p, p, ptr::null(), ro, ptr::null()) < 0 {
                fail(report, Stage::Proc);
            }
        }
        // Docker creates the working directory (root-owned, 0755) when the container
        // starts; later processes (docker exec) must find theirs.
        for dir in &p.cwd_prefixes {
            if libc::mkdir(dir.as_ptr(), 0o755) < 0 && *libc::__errno_location() != libc::EEXIST {
                fail(report, Stage::Workdir);
            }
        }
        if init.readonly_root {
            let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
            if libc::mount(ptr::null(), c"/".as_ptr(), ptr::null(), flags, ptr::null()) < 0 {
                fail(report, Stage::ReadonlyRoot);
            }
        }
    }
}

/// Docker's `--init` (tini as `docker-init`), done by the agent itself: this process, the
/// PID 1 of the container's namespace, forks the program's process and stays behind as a
/// minimal init. It reaps every child that ends (orphans of the namespace come to it),
/// passes every signal it is sent on to the program, and when the program ends it exits
/// with the program's status (128 + the signal for a killed one, as Docker reports it), at
/// which the kernel ends the rest of the namespace. Returns in the program's process only.
///
/// Why not exec a separate init binary: one would have to be mounted into every image, and
/// the agent already is a reaping PID 1; the fork costs no exec and holds no file open.
///
/// # Safety
/// Only in the forked child (see [`child`]), as the container's first process, after
/// [`init_container`], with every signal still blocked.
unsafe fn become_init(report: RawFd) {
    // SAFETY: fork(2), setsid(2), close_range(2), close(2), prctl(2), sigprocmask(2),
    // sigwaitinfo(2), waitpid(2), kill(2) and _exit(2) are async-signal-safe; every pointer
    // is to a local or a static C string.
    unsafe {
        let program = libc::fork();
        if program < 0 {
            fail(report, Stage::Init);
        }
        if program == 0 {
            // Its own session, so that it can take the terminal as its controlling one.
            if libc::setsid() < 0 {
                fail(report, Stage::Setsid);
            }
            return;
        }
        // Nothing of the agent's stays open here: a pipe end or connection held by the
        // init would keep another process's stream from ending. The exec report pipe goes
        // too, so the agent hears of the program's exec alone.
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) < 0 {
            for fd in 0..4096 {
                libc::close(fd);
            }
        }
        libc::prctl(libc::PR_SET_NAME, c"init".as_ptr(), 0, 0, 0);
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        // Blocked, every signal waits for sigwaitinfo below: a namespace's init has no
        // default action to fall to, and SIGKILL from the agent still ends it.
        libc::sigprocmask(libc::SIG_SETMASK, &all, ptr::null_mut());
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigwaitinfo(&all, &mut info);
            if sig < 0 {
                continue;
            }
            if sig != libc::SIGCHLD {
                libc::kill(program, sig);
                continue;
            }
            // One SIGCHLD may stand for many children.
            loop {
                let mut status = 0;
                let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if pid <= 0 {
                    break;
                }
                if pid != program {
                    continue;
                }
                if libc::WIFEXITED(status) {
                    libc::_exit(libc::WEXITSTATUS(status));
                }
                if libc::WIFSIGNALED(status) {
                    libc::_exit(128 + libc::WTERMSIG(status));
                }
            }
        }
    }
}

/// Covers `path` as runc does: a file with `/dev/null`, a directory with an empty
/// read-only tmpfs; a missing path is left alone.
///
/// # Safety
/// Only in the forked child (see [`child`]), with the container's /dev mounted.
unsafe fn mask(path: &CStr, report: RawFd) {
    // SAFETY: mount(2) on static C strings; errno read right after.
    unsafe {
        let p = path.as_ptr();
        if libc::mount(
            c"/dev/null".as_ptr(),
            p,
            ptr::null(),
            libc::MS_BIND,
            ptr::null(),
        ) == 0
        {
            return;
        }
        match *libc::__errno_location() {
            libc::ENOENT => {}
            libc::ENOTDIR => {
                if libc::mount(
                    c"tmpfs".as_ptr(),
                    p,
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY,
                    ptr::null(),
                ) < 0
                {
                    fail(report, Stage::Proc);
                }
            }
            _ => fail(report, Stage::Proc),
        }
    }
}

/// Reports `stage` and the current errno to the parent and exits.
///
/// # Safety
/// Only in the forked child (see [`child`]).
unsafe fn fail(report: RawFd, stage: Stage) -> ! {
    // SAFETY: reading errno is async-signal-safe.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: as for `fail`.
    unsafe { fail_with(report, stage, errno) }
}

/// Reports `stage` and `errno` to the parent and exits.
///
/// # Safety
/// Only in the forked child (see [`child`]).
unsafe fn fail_with(report: RawFd, stage: Stage, errno: i32) -> ! {
    // SAFETY: write(2) of a local buffer and _exit are async-signal-safe.
    unsafe {
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
    fn candidates() {
        assert_eq!(
            exec_candidates("sh", &env("/nonexistent:/bin/:")),
            (
                vec!["/nonexistent/sh".into(), "/bin/sh".into(), "./sh".into()],
                true
            )
        );
        assert_eq!(
            exec_candidates("./x", &env("/bin")),
            (vec!["./x".into()], false)
        );
        // Without PATH in the environment, Docker's default applies; the first PATH wins.
        let (c, _) = exec_candidates("ls", &[]);
        assert_eq!(c.len(), DEFAULT_PATH.split(':').count());
        let (c, _) = exec_candidates("ls", &["PATH=/a".into(), "PATH=/b".into()]);
        assert_eq!(c, vec!["/a/ls".to_owned()]);
    }

    #[test]
    fn workdir_prefixes_are_cleaned() {
        assert_eq!(cwd_prefixes("/"), Vec::<String>::new());
        assert_eq!(cwd_prefixes("/a/b"), vec!["/a", "/a/b"]);
        assert_eq!(cwd_prefixes("//a/./b/../c/"), vec!["/a", "/a/c"]);
        assert_eq!(cwd_prefixes("/../x"), vec!["/x"]);
    }

    #[test]
    fn home_and_hostname_are_added_for_containers_only() {
        let root = std::fs::File::open("/").unwrap();
        let ctx = ContainerContext {
            root: root.as_fd(),
            hostname: "c0ffee",
        };
        let mut spec = ProcessSpec::new(["true"]);
        spec.env = vec!["A=1".into(), "HOME=".into()];
        let p = Prepared::new(&spec, Some(ctx)).unwrap();
        let env: Vec<_> = p._env.iter().map(|e| e.to_str().unwrap()).collect();
        assert_eq!(env[0], "A=1");
        assert_eq!(env[1], "HOSTNAME=c0ffee");
        assert!(env[2].starts_with("HOME="), "{env:?}");
        assert_eq!(env.len(), 3);
        spec.env = vec!["HOSTNAME=mine".into(), "HOME=/h".into()];
        let p = Prepared::new(&spec, Some(ctx)).unwrap();
        let env: Vec<_> = p._env.iter().map(|e| e.to_str().unwrap()).collect();
        assert_eq!(env, ["HOSTNAME=mine", "HOME=/h"]);
        spec.env = vec![];
        let p = Prepared::new(&spec, None).unwrap();
        assert!(p._env.is_empty());
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
            child(Stage::Lookup, libc::ENOENT).code(),
            ErrorCode::NotFound
        );
        assert_eq!(
            child(Stage::Lookup, libc::ENOENT).describe(),
            "exec: \"x\": executable file not found in $PATH"
        );
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
        let e = SpawnError::User(UserError::NoSuchUser { user: "foo".into() });
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert_eq!(
            e.describe(),
            "unable to find user foo: no matching entries in passwd file"
        );
        assert_eq!(child_exit_code(Stage::Exec, libc::ENOENT), 127);
        assert_eq!(child_exit_code(Stage::Lookup, libc::ENOENT), 127);
        assert_eq!(child_exit_code(Stage::Exec, libc::EACCES), 126);
        for v in 1..=21 {
            assert_eq!(Stage::from_u32(v).map(|s| s as u32), Some(v));
        }
        assert_eq!(Stage::from_u32(0), None);
        assert_eq!(Stage::from_u32(22), None);
    }
}
