//! The process table: every process the host created, its state, its stdio, and the one
//! place exits are recorded.
//!
//! One mutex guards the table. It is held across fork and registration of the new pid, and
//! the reaper takes it before calling `waitpid`, so an exit is never reaped before its pid
//! is known, and a pid cannot be reaped (and reused) while a signal is being sent to it.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agent_protocol::{ErrorCode, ExitStatus, ProcessSpec, StdioStream};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use agent_protocol::{ContainerSpec, GuestStats, ProcessList};

use crate::container::{Container, ContainerError};
use crate::figures::{self, NsId};
use crate::spawn::{self, PidNs, Prepared, SpawnError};
use crate::stdio::{self, Attached, InputKind, Plan};
use crate::sys::{self, Latch};
use crate::transport::Conn;

/// Most processes the table holds (exited ones count until deleted).
pub const MAX_PROCESSES: usize = 1024;
/// Most containers one agent holds (a pod's worth, with room to spare).
pub const MAX_CONTAINERS: usize = 64;
/// Where the agent keeps its state (containers' generated files) unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/berth";

/// Why a process operation failed. Mapped to the wire in [`ProcessError::code`].
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no process with id {id:?}")]
    Unknown { id: String },
    #[error("a process with id {id:?} already exists")]
    Exists { id: String },
    #[error("the process table is full ({MAX_PROCESSES} processes)")]
    TableFull,
    #[error("process {id:?} is {state}, cannot {action}")]
    WrongState {
        id: String,
        state: &'static str,
        action: &'static str,
    },
    #[error("{stream} of process {id:?} is already attached")]
    AlreadyAttached { id: String, stream: StdioStream },
    #[error("process {id:?} {reason}")]
    NotAttachable { id: String, reason: &'static str },
    #[error("cannot start process {id:?}")]
    Spawn {
        id: String,
        #[source]
        source: SpawnError,
    },
    #[error("cannot {action} process {id:?}")]
    Sys {
        id: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no container with id {id:?}")]
    UnknownContainer { id: String },
    #[error("a container with id {id:?} already exists")]
    ContainerExists { id: String },
    #[error("the agent holds {MAX_CONTAINERS} containers already")]
    TooManyContainers,
    #[error("container {id:?} {reason}")]
    ContainerBusy { id: String, reason: &'static str },
    #[error("cannot set up container {id:?}")]
    Setup {
        id: String,
        #[source]
        source: ContainerError,
    },
    #[error("cannot refresh the VM's identity")]
    Refresh(#[source] crate::identity::RefreshError),
    #[error("cannot configure the VM's network")]
    Network(#[source] crate::net::NetError),
    #[error("container {id:?} is not running")]
    ContainerNotRunning { id: String },
    #[error("cannot read the figures of container {id:?}")]
    Figures {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    VmFigures(#[from] crate::figures::FiguresError),
}

impl ProcessError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ProcessError::Unknown { .. } => ErrorCode::UnknownProcess,
            ProcessError::Exists { .. } | ProcessError::AlreadyAttached { .. } => {
                ErrorCode::AlreadyExists
            }
            ProcessError::TableFull => ErrorCode::ResourceExhausted,
            ProcessError::WrongState { .. } => ErrorCode::InvalidState,
            ProcessError::NotAttachable { .. } => ErrorCode::InvalidArgument,
            ProcessError::Spawn { source, .. } => source.code(),
            ProcessError::Sys { .. } => ErrorCode::Internal,
            ProcessError::UnknownContainer { .. } => ErrorCode::UnknownContainer,
            ProcessError::ContainerExists { .. } => ErrorCode::AlreadyExists,
            ProcessError::TooManyContainers => ErrorCode::ResourceExhausted,
            ProcessError::ContainerBusy { .. } => ErrorCode::InvalidState,
            ProcessError::Setup { source, .. } => source.code(),
            ProcessError::Refresh(_) | ProcessError::Network(_) => ErrorCode::Internal,
            ProcessError::ContainerNotRunning { .. } => ErrorCode::InvalidState,
            ProcessError::Figures { .. } | ProcessError::VmFigures(_) => ErrorCode::Internal,
        }
    }

    /// The message with its causes, for the error reply. A user that does not resolve is
    /// reported in Docker's words alone, as Docker reports it.
    pub fn describe(&self) -> String {
        match self {
            ProcessError::Spawn {
                source: source @ SpawnError::User(_),
                ..
            } => source.describe(),
            ProcessError::Spawn { source, .. } => format!("{self}: {}", source.describe()),
            ProcessError::Sys { source, .. } => format!("{self}: {source}"),
            ProcessError::Setup { source, .. } => {
                format!("{self}: {source}: {}", crate::source_chain(source))
            }
            ProcessError::Refresh(source) => {
                format!("{self}: {source}: {}", crate::source_chain(source))
            }
            ProcessError::Figures { source, .. } => format!("{self}: {source}"),
            _ => self.to_string(),
        }
    }
}

/// A process's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Registered; streams may attach.
    Created,
    Running {
        pid: i32,
    },
    /// Ended (or never ran: a failed start records the status a shell would give).
    Exited {
        status: ExitStatus,
    },
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running { .. } => "running",
            State::Exited { .. } => "exited",
        }
    }
}

#[derive(Debug)]
struct Process {
    /// Distinguishes this process from a later one with the same id.
    serial: u64,
    spec: ProcessSpec,
    state: State,
    attached: Attached,
    /// Output pumps still copying; `Wait` answers once this is 0 after exit.
    pending_outputs: usize,
    /// Set at exit; wakes this process's pumps.
    exited: Arc<Latch>,
    pty_master: Option<OwnedFd>,
}

/// A container and the state of its PID namespace.
#[derive(Debug)]
struct ContainerEntry {
    handles: Arc<Container>,
    /// Its PID namespace, once its init (first process) has been started.
    pidns: Option<OwnedFd>,
    /// The init's pid.
    init: Option<i32>,
    /// The init has exited: the namespace takes no more processes.
    init_exited: bool,
}

#[derive(Debug, Default)]
struct Inner {
    procs: HashMap<String, Process>,
    by_pid: HashMap<i32, String>,
    containers: HashMap<String, ContainerEntry>,
    /// Ids of containers being set up (outside the lock).
    creating: HashSet<String>,
    next_serial: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct ProcessTable {
    inner: Mutex<Inner>,
    changed: Condvar,
    state_dir: PathBuf,
    /// The cgroup2 tree containers' cgroups go in; `None`: none (tests on a host).
    cgroup_root: Option<PathBuf>,
}

impl Default for ProcessTable {
    fn default() -> Self {
        Self::with_state_dir(PathBuf::from(DEFAULT_STATE_DIR))
    }
}

fn exit_status(code: i32, signal: Option<i32>) -> ExitStatus {
    ExitStatus { code, signal }
}

impl ProcessTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// A table keeping container state under `state_dir`.
    pub fn with_state_dir(state_dir: PathBuf) -> Self {
        ProcessTable {
            inner: Mutex::default(),
            changed: Condvar::new(),
            state_dir,
            cgroup_root: None,
        }
    }

    /// Containers get their cgroups under `root` (a cgroup2 mount).
    pub fn with_cgroup_root(mut self, root: Option<PathBuf>) -> Self {
        self.cgroup_root = root;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock aborts the agent (panic = abort), so a poisoned
        // lock only happens in tests; the data is still consistent enough to go on.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn create(&self, id: &str, spec: ProcessSpec) -> Result<(), ProcessError> {
        let exited = Latch::new().map_err(|source| ProcessError::Sys {
            id: id.to_owned(),
            action: "create",
            source,
        })?;
        let mut inner = self.lock();
        if inner.procs.contains_key(id) {
            return Err(ProcessError::Exists { id: id.to_owned() });
        }
        if let Some(c) = &spec.container {
            if !inner.containers.contains_key(c) {
                return Err(ProcessError::UnknownContainer { id: c.clone() });
            }
        }
        if inner.procs.len() >= MAX_PROCESSES {
            return Err(ProcessError::TableFull);
        }
        inner.next_serial += 1;
        let serial = inner.next_serial;
        inner.procs.insert(
            id.to_owned(),
            Process {
                serial,
                spec,
                state: State::Created,
                attached: Attached::default(),
                pending_outputs: 0,
                exited: Arc::new(exited),
                pty_master: None,
            },
        );
        Ok(())
    }

    /// Attaches a stream connection to a created process. `confirm` runs under the table
    /// lock once the attach is known to succeed: it sends the `Ok` reply, so that reply
    /// always precedes any output on the connection. On failure the connection is handed
    /// back with the error, to carry the error reply.
    pub fn attach(
        &self,
        id: &str,
        stream: StdioStream,
        mut conn: Conn,
        confirm: impl FnOnce(&mut Conn) -> std::io::Result<()>,
    ) -> Result<(), (ProcessError, Conn)> {
        let mut inner = self.lock();
        match Self::attach_slot(&mut inner, id, stream) {
            Err(e) => Err((e, conn)),
            Ok(slot) => {
                if let Err(source) = confirm(&mut conn) {
                    let e = ProcessError::Sys {
                        id: id.to_owned(),
                        action: "confirm the attach of",
                        source,
                    };
                    return Err((e, conn));
                }
                *slot = Some(conn);
                Ok(())
            }
        }
    }

    /// The empty slot `stream` of process `id` would attach to, or why there is none.
    fn attach_slot<'a>(
        inner: &'a mut Inner,
        id: &str,
        stream: StdioStream,
    ) -> Result<&'a mut Option<Conn>, ProcessError> {
        let p = inner
            .procs
            .get_mut(id)
            .ok_or_else(|| ProcessError::Unknown { id: id.to_owned() })?;
        if p.state != State::Created {
            return Err(ProcessError::WrongState {
                id: id.to_owned(),
                state: p.state.name(),
                action: "attach a stream (streams attach before start)",
            });
        }
        let not_attachable = |reason| ProcessError::NotAttachable {
            id: id.to_owned(),
            reason,
        };
        if stream == StdioStream::Stderr && p.spec.tty {
            return Err(not_attachable("has a tty: all its output is on stdout"));
        }
        if stream == StdioStream::Stdin && !p.spec.stdin {
            return Err(not_attachable("was created without stdin"));
        }
        let slot = match stream {
            StdioStream::Stdin => &mut p.attached.stdin,
            StdioStream::Stdout => &mut p.attached.stdout,
            StdioStream::Stderr => &mut p.attached.stderr,
        };
        if slot.is_some() {
            return Err(ProcessError::AlreadyAttached {
                id: id.to_owned(),
                stream,
            });
        }
        Ok(slot)
    }

    /// Starts a created process; returns its pid once it has exec'd.
    pub fn start(self: &Arc<Self>, id: &str) -> Result<u32, ProcessError> {
        let unknown = || ProcessError::Unknown { id: id.to_owned() };
        // What the process needs, under the lock...
        let (spec, container) = {
            let inner = self.lock();
            let p = inner.procs.get(id).ok_or_else(unknown)?;
            if p.state != State::Created {
                return Err(ProcessError::WrongState {
                    id: id.to_owned(),
                    state: p.state.name(),
                    action: "start",
                });
            }
            let container = match &p.spec.container {
                None => None,
                Some(c) => Some(
                    inner
                        .containers
                        .get(c)
                        .map(|e| Arc::clone(&e.handles))
                        .ok_or_else(|| ProcessError::UnknownContainer { id: c.clone() })?,
                ),
            };
            (p.spec.clone(), container)
        };
        // ...prepared without it: resolving the user reads the root's files, which may be
        // a slow share...
        let prepared = Prepared::new(&spec, container.as_deref().map(Container::context));
        // ...and started under it again, the process's state checked anew.
        let (pid, report, new_init) = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let p = inner.procs.get_mut(id).ok_or_else(unknown)?;
            if p.state != State::Created {
                return Err(ProcessError::WrongState {
                    id: id.to_owned(),
                    state: p.state.name(),
                    action: "start",
                });
            }
            let entry = match (&spec.container, &container) {
                (Some(c), Some(handles)) => match inner.containers.get_mut(c) {
                    Some(e) if Arc::ptr_eq(&e.handles, handles) => Some(e),
                    _ => return Err(ProcessError::UnknownContainer { id: c.clone() }),
                },
                _ => None,
            };
            let spawned = prepared.and_then(|prep| {
                let devpts = container.as_deref().map(Container::devpts);
                let plan = Plan::new(&p.spec, &p.attached, devpts).map_err(SpawnError::Stdio)?;
                let (join, pidns) = match &entry {
                    None => (None, PidNs::Inherit),
                    Some(e) if e.init_exited => return Err(SpawnError::ContainerStopped),
                    Some(e) if e.pidns.is_some() && p.spec.init => {
                        return Err(SpawnError::InitNotFirst)
                    }
                    Some(e) => match &e.pidns {
                        None => (Some(e.handles.join(true)), PidNs::New),
                        Some(ns) => (Some(e.handles.join(false)), PidNs::Join(ns.as_fd())),
                    },
                };
                let spawned = spawn::spawn_in(&prep, plan.child_fds(), join.as_ref(), pidns)?;
                Ok((spawned, plan))
            });
            let (spawned, plan) = match spawned {
                Ok(s) => s,
                Err(e) => {
                    // It never ran: record the status a shell would report, close its
                    // streams, and let waiters see it.
                    p.state = State::Exited {
                        status: exit_status(e.exit_code(), None),
                    };
                    p.attached = Attached::default();
                    p.exited.set();
                    self.changed.notify_all();
                    return Err(ProcessError::Spawn {
                        id: id.to_owned(),
                        source: e,
                    });
                }
            };
            let pid = spawned.pid;
            let new_init = match (entry, spawned.new_pidns) {
                (Some(e), Some(ns)) => {
                    e.pidns = Some(ns);
                    e.init = Some(pid);
                    e.init_exited = false;
                    spec.container.clone()
                }
                _ => None,
            };
            p.state = State::Running { pid };
            inner.by_pid.insert(pid, id.to_owned());
            self.start_pumps(id, p, pid, plan);
            (pid, spawned.report, new_init)
        };
        // Unlocked: an exec failure means the child exits at once, and the reaper needs the
        // lock to record that.
        match report.wait() {
            Ok(()) => u32::try_from(pid).map_err(|_| ProcessError::Sys {
                id: id.to_owned(),
                action: "start",
                source: std::io::Error::other("fork returned a negative pid"),
            }),
            Err(source) => {
                if let Some(c) = new_init {
                    // An init that never ran leaves a dead PID namespace: the container's
                    // next process starts a new one.
                    let mut inner = self.lock();
                    if let Some(e) = inner.containers.get_mut(&c) {
                        if e.init == Some(pid) {
                            e.pidns = None;
                            e.init = None;
                            e.init_exited = false;
                        }
                    }
                }
                Err(ProcessError::Spawn {
                    id: id.to_owned(),
                    source,
                })
            }
        }
    }

    /// Sets up container `id` (see [`crate::container`]). The setup runs without the
    /// table lock; the id is reserved meanwhile.
    pub fn create_container(&self, id: &str, spec: &ContainerSpec) -> Result<(), ProcessError> {
        {
            let mut inner = self.lock();
            if inner.containers.contains_key(id) || inner.creating.contains(id) {
                return Err(ProcessError::ContainerExists { id: id.to_owned() });
            }
            if inner.containers.len() + inner.creating.len() >= MAX_CONTAINERS {
                return Err(ProcessError::TooManyContainers);
            }
            inner.creating.insert(id.to_owned());
        }
        let created = Container::create(id, spec, &self.state_dir, self.cgroup_root.as_deref());
        let mut inner = self.lock();
        inner.creating.remove(id);
        let handles = created.map_err(|source| ProcessError::Setup {
            id: id.to_owned(),
            source,
        })?;
        inner.containers.insert(
            id.to_owned(),
            ContainerEntry {
                handles: Arc::new(handles),
                pidns: None,
                init: None,
                init_exited: false,
            },
        );
        Ok(())
    }

    /// Tears container `id` down: refused while any of its processes runs.
    pub fn delete_container(&self, id: &str) -> Result<(), ProcessError> {
        let mut inner = self.lock();
        if !inner.containers.contains_key(id) {
            return Err(ProcessError::UnknownContainer { id: id.to_owned() });
        }
        let running = inner.procs.values().any(|p| {
            p.spec.container.as_deref() == Some(id) && matches!(p.state, State::Running { .. })
        });
        if running {
            return Err(ProcessError::ContainerBusy {
                id: id.to_owned(),
                reason: "has running processes",
            });
        }
        inner.containers.remove(id);
        Ok(())
    }

    /// The PID namespace and handles of running container `id`, for reading its figures
    /// without the lock.
    fn running_container(&self, id: &str) -> Result<(NsId, Arc<Container>), ProcessError> {
        let inner = self.lock();
        let e = inner
            .containers
            .get(id)
            .ok_or_else(|| ProcessError::UnknownContainer { id: id.to_owned() })?;
        match &e.pidns {
            Some(ns) if !e.init_exited => {
                let ns = NsId::of(ns.as_fd()).map_err(|source| ProcessError::Figures {
                    id: id.to_owned(),
                    source,
                })?;
                Ok((ns, Arc::clone(&e.handles)))
            }
            _ => Err(ProcessError::ContainerNotRunning { id: id.to_owned() }),
        }
    }

    /// The processes of running container `id` (see [`crate::figures`]).
    pub fn list_processes(&self, id: &str) -> Result<ProcessList, ProcessError> {
        let (ns, container) = self.running_container(id)?;
        Ok(figures::list_processes(ns, Some(container.root())))
    }

    /// The CPU time of running container `id`'s processes and the VM's figures.
    pub fn stats(&self, id: &str) -> Result<GuestStats, ProcessError> {
        let (ns, _) = self.running_container(id)?;
        Ok(figures::stats(ns)?)
    }

    fn start_pumps(self: &Arc<Self>, id: &str, p: &mut Process, pid: i32, plan: Plan) {
        let Plan {
            child,
            stdin,
            outputs,
            pty_master,
        } = plan;
        drop(child);
        p.pty_master = pty_master;
        let attached = std::mem::take(&mut p.attached);
        let kind = if p.spec.tty {
            InputKind::Tty
        } else {
            InputKind::Pipe
        };
        if let (Some(conn), Some(dst)) = (attached.stdin, stdin) {
            let exited = p.exited.clone();
            let r = std::thread::Builder::new()
                .name(format!("stdin-{id}"))
                .spawn(move || stdio::pump_input(conn, dst, kind, &exited));
            if let Err(e) = r {
                log::error!("process {id}: cannot start its stdin thread: {e}");
            }
        }
        let (mut stdout, mut stderr) = (attached.stdout, attached.stderr);
        for (src, is_stdout) in outputs {
            let sink = if is_stdout {
                stdout.take()
            } else {
                stderr.take()
            };
            let exited = p.exited.clone();
            let table = Arc::clone(self);
            let (id2, serial) = (id.to_owned(), p.serial);
            let r = std::thread::Builder::new()
                .name(format!("out-{id}"))
                .spawn(move || {
                    stdio::pump_output(src, sink, &exited);
                    table.output_done(&id2, serial);
                });
            match r {
                Ok(_) => p.pending_outputs += 1,
                Err(e) => {
                    // Without a pump the process would block on full output: stop it.
                    log::error!("process {id}: cannot start an output thread ({e}); killing it");
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }

    fn output_done(&self, id: &str, serial: u64) {
        let mut inner = self.lock();
        if let Some(p) = inner.procs.get_mut(id) {
            if p.serial == serial {
                p.pending_outputs = p.pending_outputs.saturating_sub(1);
            }
        }
        self.changed.notify_all();
    }

    /// Blocks until the process has exited and its output has been drained.
    pub fn wait(&self, id: &str) -> Result<ExitStatus, ProcessError> {
        let mut inner = self.lock();
        loop {
            let p = inner
                .procs
                .get(id)
                .ok_or_else(|| ProcessError::Unknown { id: id.to_owned() })?;
            if let State::Exited { status } = p.state {
                if p.pending_outputs == 0 {
                    return Ok(status);
                }
            }
            inner = self.changed.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn signal(&self, id: &str, signal: i32) -> Result<(), ProcessError> {
        let inner = self.lock();
        let p = inner
            .procs
            .get(id)
            .ok_or_else(|| ProcessError::Unknown { id: id.to_owned() })?;
        let State::Running { pid } = p.state else {
            return Err(ProcessError::WrongState {
                id: id.to_owned(),
                state: p.state.name(),
                action: "signal it",
            });
        };
        // The pid is ours until the reaper records the exit, which needs this lock. Raw
        // kill(2): nix's Signal type cannot name every real-time signal.
        // SAFETY: kill(2) has no memory-safety preconditions.
        let r = Errno::result(unsafe { libc::kill(pid, signal) });
        r.map(drop).map_err(|e| ProcessError::Sys {
            id: id.to_owned(),
            action: "signal",
            source: std::io::Error::from_raw_os_error(e as i32),
        })
    }

    pub fn resize(&self, id: &str, rows: u16, cols: u16) -> Result<(), ProcessError> {
        let inner = self.lock();
        let p = inner
            .procs
            .get(id)
            .ok_or_else(|| ProcessError::Unknown { id: id.to_owned() })?;
        if !p.spec.tty {
            return Err(ProcessError::NotAttachable {
                id: id.to_owned(),
                reason: "has no tty",
            });
        }
        let Some(master) = &p.pty_master else {
            return Err(ProcessError::WrongState {
                id: id.to_owned(),
                state: p.state.name(),
                action: "resize its tty",
            });
        };
        sys::set_window_size(master.as_fd(), rows, cols).map_err(|source| ProcessError::Sys {
            id: id.to_owned(),
            action: "resize the tty of",
            source,
        })
    }

    /// Forgets a process that is not running and whose output is drained.
    pub fn delete(&self, id: &str) -> Result<(), ProcessError> {
        let mut inner = self.lock();
        let p = inner
            .procs
            .get(id)
            .ok_or_else(|| ProcessError::Unknown { id: id.to_owned() })?;
        let busy = match p.state {
            State::Running { .. } => true,
            State::Exited { .. } => p.pending_outputs > 0,
            State::Created => false,
        };
        if busy {
            return Err(ProcessError::WrongState {
                id: id.to_owned(),
                state: p.state.name(),
                action: "delete it",
            });
        }
        inner.procs.remove(id);
        Ok(())
    }

    /// Reaps every child that has exited: records the status of ours, discards orphans
    /// that were reparented to the agent. Called by the signal loop on SIGCHLD.
    pub fn reap(&self) {
        let mut inner = self.lock();
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), exit_status(code, None)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    let sig = sig as i32;
                    (pid.as_raw(), exit_status(128 + sig, Some(sig)))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid failed: {e}");
                    break;
                }
            };
            let Some(id) = inner.by_pid.remove(&pid) else {
                log::debug!("reaped orphan {pid} ({status:?})");
                continue;
            };
            if let Some(p) = inner.procs.get_mut(&id) {
                log::debug!("process {id} (pid {pid}) exited: {status:?}");
                p.state = State::Exited { status };
                p.pty_master = None;
                p.exited.set();
            }
            for (cid, c) in inner.containers.iter_mut() {
                if c.init == Some(pid) {
                    log::debug!("container {cid}: its init (pid {pid}) exited");
                    c.init_exited = true;
                }
            }
        }
        self.changed.notify_all();
    }

    /// Sends `signal` to every running process (under the lock, so no pid is stale).
    pub fn signal_all(&self, signal: Signal) {
        let inner = self.lock();
        for &pid in inner.by_pid.keys() {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Waits until no process is running or `timeout` passes; true if none is.
    pub fn wait_all_exited(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if inner.by_pid.is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            inner = self
                .changed
                .wait_timeout(inner, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    #[cfg(test)]
    fn state(&self, id: &str) -> Option<State> {
        self.lock().procs.get(id).map(|p| p.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn conn() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Conn::from_fd(OwnedFd::from(a)), b)
    }

    #[test]
    fn create_rules() {
        let t = ProcessTable::new();
        t.create("a", ProcessSpec::new(["true"])).unwrap();
        let e = t.create("a", ProcessSpec::new(["true"])).unwrap_err();
        assert_eq!(e.code(), ErrorCode::AlreadyExists);
        assert_eq!(t.state("a"), Some(State::Created));
        assert_eq!(
            t.signal("a", 15).unwrap_err().code(),
            ErrorCode::InvalidState
        );
        assert_eq!(
            t.resize("a", 1, 1).unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            t.wait("nope").unwrap_err().code(),
            ErrorCode::UnknownProcess
        );
        t.delete("a").unwrap();
        assert_eq!(t.delete("a").unwrap_err().code(), ErrorCode::UnknownProcess);
    }

    #[test]
    fn table_is_bounded() {
        let t = ProcessTable::new();
        for i in 0..MAX_PROCESSES {
            t.create(&format!("p{i}"), ProcessSpec::new(["true"]))
                .unwrap();
        }
        let e = t
            .create("one-more", ProcessSpec::new(["true"]))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::ResourceExhausted);
    }

    #[test]
    fn attach_rules() {
        let t = ProcessTable::new();
        let mut tty = ProcessSpec::new(["sh"]);
        tty.tty = true;
        t.create("t", tty).unwrap();
        t.create("p", ProcessSpec::new(["sh"])).unwrap();
        let ok = |_: &mut Conn| Ok(());
        let e = t
            .attach("t", StdioStream::Stderr, conn().0, ok)
            .unwrap_err()
            .0;
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        let e = t
            .attach("p", StdioStream::Stdin, conn().0, ok)
            .unwrap_err()
            .0;
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        t.attach("p", StdioStream::Stdout, conn().0, ok).unwrap();
        let e = t
            .attach("p", StdioStream::Stdout, conn().0, ok)
            .unwrap_err()
            .0;
        assert_eq!(e.code(), ErrorCode::AlreadyExists);
        let e = t
            .attach("x", StdioStream::Stdout, conn().0, ok)
            .unwrap_err()
            .0;
        assert_eq!(e.code(), ErrorCode::UnknownProcess);
        // A failed confirmation leaves the slot free.
        let failing = |_: &mut Conn| Err(std::io::Error::other("gone"));
        assert!(t
            .attach("p", StdioStream::Stderr, conn().0, failing)
            .is_err());
        t.attach("p", StdioStream::Stderr, conn().0, ok).unwrap();
    }

    #[test]
    fn failed_start_is_recorded_as_exited() {
        let t = Arc::new(ProcessTable::new());
        let mut spec = ProcessSpec::new(["no-such-program-berth"]);
        spec.env = vec!["PATH=/nonexistent".into()];
        t.create("x", spec).unwrap();
        let (c, mut host) = conn();
        t.attach("x", StdioStream::Stdout, c, |_| Ok(())).unwrap();
        let e = t.start("x").unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
        assert!(
            e.describe().contains("executable file not found in $PATH"),
            "{}",
            e.describe()
        );
        // The lookup failed in the child, which exited; no signal loop runs here to reap it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(t.state("x"), Some(State::Exited { .. })) {
            assert!(
                Instant::now() < deadline,
                "the failed child was never reaped"
            );
            t.reap();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            t.wait("x").unwrap(),
            ExitStatus {
                code: 127,
                signal: None
            }
        );
        // The attached stream was closed.
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut host, &mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(t.start("x").unwrap_err().code(), ErrorCode::InvalidState);
        t.delete("x").unwrap();
    }
}
