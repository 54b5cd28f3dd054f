//! The message types. Every enum is internally tagged by a `"type"` field in snake case, so a
//! frame reads like `{"type":"start_process","id":"c1"}`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::figures::{GuestStats, ProcessList};

/// A protocol version. Peers with the same major version can talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl ProtocolVersion {
    /// Whether a peer speaking `other` can talk to one speaking `self`.
    pub fn is_compatible_with(self, other: ProtocolVersion) -> bool {
        self.major == other.major
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The first frame of every connection to the agent: it says what the connection is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConnectionHeader {
    /// A control connection: request/response pairs follow.
    Hello { protocol_version: ProtocolVersion },
    /// A stream connection carrying one stdio stream of a created, not yet started process.
    Attach {
        process_id: String,
        stream: StdioStream,
    },
}

impl ConnectionHeader {
    /// The `"type"` tags of every header this version knows.
    pub const TYPES: &'static [&'static str] = &["hello", "attach"];
}

/// One of a process's standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdioStream {
    /// Host → process. The host closing the connection is end-of-input.
    Stdin,
    /// Process → host. The agent closes the connection at end of output.
    Stdout,
    /// Process → host; not available for a process with a tty (its output is all stdout).
    Stderr,
}

impl fmt::Display for StdioStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StdioStream::Stdin => "stdin",
            StdioStream::Stdout => "stdout",
            StdioStream::Stderr => "stderr",
        })
    }
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// A resource limit kind, as `setrlimit(2)` names them (without the `RLIMIT_` prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RlimitResource {
    As,
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Rttime,
    Sigpending,
    Stack,
}

/// One resource limit. `u64::MAX` means unlimited (`RLIM_INFINITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: RlimitResource,
    pub soft: u64,
    pub hard: u64,
}

/// Everything needed to start one process. Fields added by later minor versions will have
/// defaults, so older hosts keep working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// The program and its arguments. A program name without `/` is looked up in `PATH`
    /// (taken from `env`, or a default).
    pub argv: Vec<String>,
    /// The whole environment, as `KEY=value` strings; nothing is inherited from the agent.
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute working directory.
    #[serde(default = "default_cwd")]
    pub cwd: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Supplementary groups; an empty list clears them.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Give the process a new pseudo-terminal as its controlling tty and stdio.
    #[serde(default)]
    pub tty: bool,
    /// The terminal's size at start (only with `tty`).
    #[serde(default)]
    pub tty_size: Option<TtySize>,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// The host will attach stdin. Without it, stdin is `/dev/null` and attaching it is refused.
    #[serde(default)]
    pub stdin: bool,
    /// (1.1) Run inside this container (see [`Request::CreateContainer`]): in its root, its
    /// namespaces, with `PATH` looked up and `user` resolved in its files. Without it the
    /// process runs in the agent's own root, as in 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// (1.1) Docker's `--user` string (`name`, `uid`, `name:group`, `uid:gid`, `:group`,
    /// or empty for the image default, root), resolved against the root's `/etc/passwd` and
    /// `/etc/group` as Docker resolves it. When set, `uid`, `gid` and `additional_gids` must
    /// be left at their defaults: the resolution replaces them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// (1.1) Docker's `--group-add`: more supplementary groups, by name or number,
    /// resolved against the root's `/etc/group`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_add: Vec<String>,
    /// (1.1) The capabilities the process may hold (`CAP_CHOWN`, ...): Docker's
    /// `CapAdd`/`CapDrop`/`--privileged` applied to its defaults. Root gets exactly these,
    /// other users none but these as their bounding set, as under Docker. Unset: Docker's
    /// default set in a container, everything outside one (as in 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// (1.5) Docker's `--security-opt no-new-privileges`: the process, and whatever it
    /// runs, cannot gain privileges through setuid bits or file capabilities.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
    /// (1.6) Docker's `--init`: the program runs as the child of a minimal init that is
    /// the container's PID 1, reaps every orphan and passes the signals it gets on to the
    /// program; the init exits with the program's status. Only for a container's first
    /// process.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
}

fn default_cwd() -> String {
    "/".to_owned()
}

impl ProcessSpec {
    /// A spec running `argv` as root in `/`, with an empty environment and no tty or stdin.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ProcessSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: default_cwd(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            tty: false,
            tty_size: None,
            rlimits: Vec::new(),
            stdin: false,
            container: None,
            user: None,
            group_add: Vec::new(),
            capabilities: None,
            no_new_privileges: false,
            init: false,
        }
    }
}

/// (1.1) Where a filesystem comes from: a container's root filesystem now, volumes later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FsSource {
    /// A virtio-fs share of the VM, by tag (the container's root is tagged `rootfs` by
    /// convention): `mount -t virtiofs <tag>`.
    Virtiofs { tag: String },
    /// A directory already inside the VM, bind-mounted (tests, and shares mounted by hand).
    Directory { path: String },
    /// (1.7) A tmpfs of the guest's memory (Docker's `--tmpfs`, `--mount type=tmpfs`):
    /// `options` are mount(8)'s, each a flag (`noexec`, `nosuid`, `nodev`, their opposites,
    /// `ro`, `rw`, the atime flags, `sync`, `dirsync`) or one of `size=`, `mode=` (octal),
    /// `uid=`, `gid=`, `nr_inodes=`; anything else is refused. The guest's kernel enforces
    /// the size.
    Tmpfs {
        #[serde(default)]
        options: Vec<String>,
    },
}

/// (1.1) A filesystem mounted into a container: a volume or bind mount (`docker run -v`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub source: FsSource,
    /// Where it appears in the container (absolute, not `/`); created if missing, as a
    /// directory or, for a single-file source, a file.
    pub destination: String,
    /// Mounted read-only (`:ro`), recursively.
    #[serde(default)]
    pub readonly: bool,
    /// (1.8) A bind of one file: the entry of the share (a [`FsSource::Virtiofs`] one) that
    /// is mounted, on a file made at `destination` if missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// (1.1) One line of the container's `/etc/hosts`: an address and its names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostsEntry {
    pub address: String,
    pub names: Vec<String>,
}

/// (1.1) The container's `/etc/resolv.conf`, as Docker's `--dns`, `--dns-search` and
/// `--dns-option` make it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// (1.1) Everything needed to set up a container: its root filesystem and what Docker
/// puts around it. Processes then run in it through [`ProcessSpec::container`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub rootfs: FsSource,
    /// Docker's `--read-only`: the root is mounted read-only (`/dev`, `/dev/shm` and the
    /// generated `/etc` files stay writable, as in Docker).
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// The container's hostname (its UTS namespace, `/etc/hostname`, `HOSTNAME`).
    pub hostname: String,
    /// Docker's `--domainname` (the UTS domain name); empty for none.
    #[serde(default)]
    pub domainname: String,
    /// Lines appended to Docker's default `/etc/hosts` (loopback names): the container's
    /// own address and `--add-host` entries, in this order.
    #[serde(default)]
    pub hosts: Vec<HostsEntry>,
    /// The generated `/etc/resolv.conf`. Without it the image's own file is left alone,
    /// and an empty one is provided where the image has none.
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    /// Size of `/dev/shm` in bytes (Docker's `--shm-size`; default 64 MiB).
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// Volumes and bind mounts, mounted parents first (by destination depth), after
    /// Docker's own mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    /// (1.6) Docker's `--privileged`, bounded by the VM: the guest's devices in `/dev`,
    /// `/sys` and the cgroup tree writable, `/proc` unmasked. The processes' capabilities
    /// are their own ([`ProcessSpec::capabilities`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// (1.8) Limits on the container's cgroup in the guest (Docker's resource options).
    #[serde(default, skip_serializing_if = "Resources::is_unlimited")]
    pub resources: Resources,
    /// (1.8) Docker's `--sysctl`: `(name, value)` with dotted names (`kernel.msgmax`), set
    /// as the container is created, in its IPC namespace; the rest are the VM's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<(String, String)>,
}

/// (1.8) What the container's cgroup in the guest is limited to. Every container gets a
/// cgroup of its own (and a cgroup namespace rooted at it); these set its controllers'
/// files, and `None` leaves a file at the kernel's default (no limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// `memory.max` in bytes (Docker's `--memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// `memory.low` in bytes (Docker's `--memory-reservation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_low: Option<u64>,
    /// `pids.max` (Docker's `--pids-limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
    /// `cpu.weight`, 1 to 10000 (Docker's `--cpu-shares`, converted as runc converts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u64>,
    /// `cpu.max`: a quota of CPU time per period, both in microseconds (Docker's
    /// `--cpus`, `--cpu-quota`, `--cpu-period`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<CpuMax>,
    /// `cpuset.cpus`: a list such as `0-2,4` (Docker's `--cpuset-cpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset_cpus: Option<String>,
}

/// A CPU bandwidth limit: `quota_us` of CPU time every `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuMax {
    pub quota_us: u64,
    pub period_us: u64,
}

impl Resources {
    /// Whether no limit is set.
    pub fn is_unlimited(&self) -> bool {
        *self == Resources::default()
    }
}

impl ContainerSpec {
    /// A spec with a root from `rootfs`, the given hostname and Docker's defaults otherwise.
    pub fn new(rootfs: FsSource, hostname: impl Into<String>) -> Self {
        ContainerSpec {
            rootfs,
            readonly_rootfs: false,
            hostname: hostname.into(),
            domainname: String::new(),
            hosts: Vec::new(),
            dns: None,
            shm_size: None,
            mounts: Vec::new(),
            privileged: false,
            resources: Resources::default(),
            sysctls: Vec::new(),
        }
    }
}

/// (1.3) One network interface of the VM, as the host set up its other end: the guest's
/// `eth<index>` gets this MAC address, IPv4 address and MTU and is brought up; the first
/// interface with a gateway gets the default route through it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceConfig {
    /// `eth<index>`: the VM's net devices in their order.
    pub index: u8,
    /// `02:42:ac:11:00:02`: a unicast MAC, the one the VMM lets this VM send from.
    pub mac: String,
    /// Dotted IPv4.
    pub address: String,
    pub prefix_len: u8,
    /// Dotted IPv4 inside the interface's subnet, or none (no default route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    pub mtu: u32,
}

/// A request on a control connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Register a process under a host-chosen id; nothing runs yet. Answer: `Ok`.
    CreateProcess { id: String, spec: ProcessSpec },
    /// Run a created process. Answer: `Started`, or an error (`NotFound` for a missing
    /// program, `PermissionDenied` for one that cannot be executed).
    StartProcess { id: String },
    /// Block until the process has exited and its stdout/stderr connections have been
    /// drained and closed. Answer: `Exited`.
    WaitProcess { id: String },
    /// Send a signal to a running process. Answer: `Ok`.
    Signal { id: String, signal: i32 },
    /// Set the size of the process's terminal. Answer: `Ok`.
    ResizeTty { id: String, rows: u16, cols: u16 },
    /// Forget a process that has exited or never started. Answer: `Ok`.
    DeleteProcess { id: String },
    /// Answer `Ok`, then stop every process (SIGTERM, `grace_ms` to exit, SIGKILL), sync
    /// and reboot the VM.
    Shutdown {
        #[serde(default)]
        grace_ms: Option<u32>,
    },
    /// (1.1) Set up a container under a host-chosen id: mount its root filesystem and what
    /// Docker mounts in it, give it its own mount, UTS, IPC, cgroup (and, with its first
    /// process, PID) namespaces, and write its `/etc/hostname`, `/etc/hosts` and
    /// `/etc/resolv.conf`. Nothing runs yet. Answer: `Ok`, or `SetupFailed`.
    CreateContainer { id: String, spec: ContainerSpec },
    /// (1.1) Tear a container down once none of its processes runs. Answer: `Ok`.
    DeleteContainer { id: String },
    /// (1.2) Make a VM restored from a snapshot its own, before anything runs in it: mix
    /// `entropy` (random bytes from the host) into the kernel's pool and force its CRNG to
    /// reseed, so that clones of one snapshot never share random numbers; set the wall
    /// clock to `realtime_ns` (nanoseconds since the Unix epoch); set the VM's hostname
    /// when one is given. Answer: `Ok`.
    Refresh {
        entropy: Vec<u8>,
        realtime_ns: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
    },
    /// (1.3) Configure the VM's network interfaces (see [`InterfaceConfig`]). The VM's
    /// processes, containers included, share the VM's network namespace, as a Docker
    /// container's processes share theirs. Answer: `Ok`, or an error naming the step.
    ConfigureNetwork { interfaces: Vec<InterfaceConfig> },
    /// (1.4) List the processes of a running container (those in its PID namespace), with
    /// what `ps` shows of them. Answer: `Processes`, `UnknownContainer`, or `InvalidState`
    /// when its init has not started or has exited.
    ListProcesses { container: String },
    /// (1.4) The figures `docker stats` shows: the CPU time of a running container's
    /// processes, and the VM's CPU time, memory and network counters. Answer: `Stats`,
    /// `UnknownContainer`, or `InvalidState`.
    Stats { container: String },
}

impl Request {
    /// The `"type"` tags of every request this version knows.
    pub const TYPES: &'static [&'static str] = &[
        "create_process",
        "start_process",
        "wait_process",
        "signal",
        "resize_tty",
        "delete_process",
        "shutdown",
        "create_container",
        "delete_container",
        "refresh",
        "configure_network",
        "list_processes",
        "stats",
    ];

    /// This request's `"type"` tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            Request::CreateProcess { .. } => "create_process",
            Request::StartProcess { .. } => "start_process",
            Request::WaitProcess { .. } => "wait_process",
            Request::Signal { .. } => "signal",
            Request::ResizeTty { .. } => "resize_tty",
            Request::DeleteProcess { .. } => "delete_process",
            Request::Shutdown { .. } => "shutdown",
            Request::CreateContainer { .. } => "create_container",
            Request::DeleteContainer { .. } => "delete_container",
            Request::Refresh { .. } => "refresh",
            Request::ConfigureNetwork { .. } => "configure_network",
            Request::ListProcesses { .. } => "list_processes",
            Request::Stats { .. } => "stats",
        }
    }
}

/// How a process ended, as Docker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, or 128 + the signal number if a signal killed it (SIGKILL → 137).
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

/// The agent's answer to a [`ConnectionHeader`] or a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The answer to `Hello`.
    Hello {
        protocol_version: ProtocolVersion,
        agent_version: String,
    },
    Ok,
    Started {
        pid: u32,
    },
    Exited {
        code: i32,
        signal: Option<i32>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// (1.4) The answer to `ListProcesses`.
    Processes {
        list: ProcessList,
    },
    /// (1.4) The answer to `Stats`.
    Stats {
        stats: GuestStats,
    },
}

impl Response {
    /// This response's `"type"` tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            Response::Hello { .. } => "hello",
            Response::Ok => "ok",
            Response::Started { .. } => "started",
            Response::Exited { .. } => "exited",
            Response::Error { .. } => "error",
            Response::Processes { .. } => "processes",
            Response::Stats { .. } => "stats",
        }
    }

    /// An error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

/// What went wrong, for the host to act on (the message is for humans).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The program (or something else the request names) does not exist. Docker: exit 127.
    NotFound,
    /// The program exists but cannot be executed. Docker: exit 126.
    PermissionDenied,
    /// The request failed validation.
    InvalidArgument,
    /// No process has that id.
    UnknownProcess,
    /// (1.1) No container has that id.
    UnknownContainer,
    /// A process with that id exists, or the stream is already attached.
    AlreadyExists,
    /// The request does not fit the process's state (e.g. starting it twice).
    InvalidState,
    /// The request type is not known to this agent.
    Unsupported,
    /// The host's major protocol version differs from the agent's.
    IncompatibleVersion,
    /// The frame was not a valid message.
    MalformedFrame,
    /// A limit was reached (too many processes).
    ResourceExhausted,
    /// Setting up the process failed for another reason.
    SpawnFailed,
    /// (1.1) Setting up the container failed (a mount, a namespace, its files).
    SetupFailed,
    /// The agent failed.
    Internal,
    /// A code from a newer agent.
    #[serde(other)]
    Unknown,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorCode::NotFound => "not found",
            ErrorCode::PermissionDenied => "permission denied",
            ErrorCode::InvalidArgument => "invalid argument",
            ErrorCode::UnknownProcess => "unknown process",
            ErrorCode::UnknownContainer => "unknown container",
            ErrorCode::AlreadyExists => "already exists",
            ErrorCode::InvalidState => "invalid state",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::IncompatibleVersion => "incompatible version",
            ErrorCode::MalformedFrame => "malformed frame",
            ErrorCode::ResourceExhausted => "resource exhausted",
            ErrorCode::SpawnFailed => "spawn failed",
            ErrorCode::SetupFailed => "container setup failed",
            ErrorCode::Internal => "internal error",
            ErrorCode::Unknown => "unknown error",
        };
        f.write_str(s)
    }
}

/// A message the agent sends on its own, on a connection it opens to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Notification {
    /// Sent once on [`crate::READY_PORT`], after the agent listens on [`crate::AGENT_PORT`].
    Ready {
        protocol_version: ProtocolVersion,
        agent_version: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode, PROTOCOL_VERSION};

    fn round_trip<T>(msg: &T) -> T
    where
        T: Serialize + serde::de::DeserializeOwned,
    {
        let frame = encode(msg).unwrap();
        decode(&frame[4..]).unwrap()
    }

    fn full_spec() -> ProcessSpec {
        ProcessSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/bin".into(), "X=a=b".into()],
            cwd: "/tmp".into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![4, 27],
            tty: true,
            tty_size: Some(TtySize { rows: 24, cols: 80 }),
            rlimits: vec![Rlimit {
                resource: RlimitResource::Nofile,
                soft: 1024,
                hard: u64::MAX,
            }],
            stdin: true,
            container: Some("c1".into()),
            user: Some("app:staff".into()),
            group_add: vec!["audio".into(), "44".into()],
            capabilities: Some(vec!["CAP_CHOWN".into(), "CAP_KILL".into()]),
            no_new_privileges: true,
            init: true,
        }
    }

    fn full_container() -> ContainerSpec {
        ContainerSpec {
            rootfs: FsSource::Virtiofs {
                tag: "rootfs".into(),
            },
            readonly_rootfs: true,
            hostname: "c0ffee".into(),
            domainname: "example.org".into(),
            hosts: vec![HostsEntry {
                address: "10.0.0.2".into(),
                names: vec!["c0ffee".into()],
            }],
            dns: Some(DnsConfig {
                nameservers: vec!["10.0.0.1".into()],
                search: vec!["example.org".into()],
                options: vec!["ndots:2".into()],
            }),
            shm_size: Some(1 << 20),
            mounts: vec![MountSpec {
                source: FsSource::Virtiofs { tag: "vol1".into() },
                destination: "/data".into(),
                readonly: true,
                file: None,
            }],
            privileged: true,
            resources: Resources {
                memory_max: Some(64 << 20),
                memory_low: Some(32 << 20),
                pids_max: Some(100),
                cpu_weight: Some(39),
                cpu_max: Some(CpuMax {
                    quota_us: 50_000,
                    period_us: 100_000,
                }),
                cpuset_cpus: Some("0-1".into()),
            },
            sysctls: vec![("kernel.msgmax".into(), "65536".into())],
        }
    }

    #[test]
    fn requests_round_trip() {
        let all = vec![
            Request::CreateProcess {
                id: "c1".into(),
                spec: full_spec(),
            },
            Request::StartProcess { id: "c1".into() },
            Request::WaitProcess { id: "c1".into() },
            Request::Signal {
                id: "c1".into(),
                signal: 9,
            },
            Request::ResizeTty {
                id: "c1".into(),
                rows: 50,
                cols: 132,
            },
            Request::DeleteProcess { id: "c1".into() },
            Request::Shutdown { grace_ms: Some(10) },
            Request::Shutdown { grace_ms: None },
            Request::CreateContainer {
                id: "c1".into(),
                spec: full_container(),
            },
            Request::CreateContainer {
                id: "c1".into(),
                spec: ContainerSpec::new(
                    FsSource::Directory {
                        path: "/tmp/root".into(),
                    },
                    "h",
                ),
            },
            Request::DeleteContainer { id: "c1".into() },
            Request::Refresh {
                entropy: vec![7; 32],
                realtime_ns: 1_700_000_000_000_000_000,
                hostname: Some("c1".into()),
            },
            Request::Refresh {
                entropy: vec![0; 64],
                realtime_ns: 0,
                hostname: None,
            },
            Request::ListProcesses {
                container: "c1".into(),
            },
            Request::Stats {
                container: "c1".into(),
            },
        ];
        for r in &all {
            assert_eq!(&round_trip(r), r);
            assert!(Request::TYPES.contains(&r.type_name()));
        }
    }

    #[test]
    fn responses_headers_and_notifications_round_trip() {
        for r in [
            Response::Hello {
                protocol_version: PROTOCOL_VERSION,
                agent_version: "0.1.0".into(),
            },
            Response::Ok,
            Response::Started { pid: 42 },
            Response::Exited {
                code: 137,
                signal: Some(9),
            },
            Response::error(ErrorCode::NotFound, "no such file"),
            Response::Processes {
                list: crate::ProcessList {
                    now_ns: 5,
                    mem_total_bytes: 6,
                    processes: vec![crate::ProcessInfo {
                        pid: 1,
                        ppid: 0,
                        uid: 1000,
                        user: Some("app".into()),
                        state: "R".into(),
                        nice: -5,
                        threads: 3,
                        session_leader: true,
                        foreground: true,
                        tty_nr: 34816,
                        start_time_ns: 1_700_000_000_000_000_000,
                        cpu_time_ns: 12_000_000,
                        rss_bytes: 1 << 20,
                        vsz_bytes: 4 << 20,
                        comm: "sh".into(),
                        args: "sh -c while :; do :; done".into(),
                    }],
                    truncated: true,
                },
            },
            Response::Stats {
                stats: crate::GuestStats {
                    cpu: crate::CpuFigures {
                        container_user_ns: 1,
                        container_system_ns: 2,
                        vm_total_ns: 30,
                        vm_busy_ns: 4,
                        online_cpus: 2,
                    },
                    memory: crate::MemoryFigures {
                        total: 256 << 20,
                        free: 200 << 20,
                        inactive_file: 3,
                        pgmajfault: 9,
                        ..Default::default()
                    },
                    pids: 3,
                    networks: vec![crate::InterfaceCounters {
                        name: "eth0".into(),
                        rx_bytes: 1,
                        rx_packets: 2,
                        rx_errors: 3,
                        rx_dropped: 4,
                        tx_bytes: 5,
                        tx_packets: 6,
                        tx_errors: 7,
                        tx_dropped: 8,
                    }],
                },
            },
        ] {
            assert_eq!(round_trip(&r), r);
        }
        for h in [
            ConnectionHeader::Hello {
                protocol_version: PROTOCOL_VERSION,
            },
            ConnectionHeader::Attach {
                process_id: "c1".into(),
                stream: StdioStream::Stderr,
            },
        ] {
            assert_eq!(round_trip(&h), h);
        }
        let n = Notification::Ready {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
        };
        assert_eq!(round_trip(&n), n);
    }

    #[test]
    fn wire_format_is_stable() {
        let json = serde_json::to_string(&Request::StartProcess { id: "c1".into() }).unwrap();
        assert_eq!(json, r#"{"type":"start_process","id":"c1"}"#);
        let json = serde_json::to_string(&ConnectionHeader::Attach {
            process_id: "c1".into(),
            stream: StdioStream::Stdin,
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"type":"attach","process_id":"c1","stream":"stdin"}"#
        );
        let json = serde_json::to_string(&Request::ListProcesses {
            container: "c1".into(),
        })
        .unwrap();
        assert_eq!(json, r#"{"type":"list_processes","container":"c1"}"#);
        let json = serde_json::to_string(&Response::error(ErrorCode::NotFound, "x")).unwrap();
        assert_eq!(json, r#"{"type":"error","code":"not_found","message":"x"}"#);
    }

    #[test]
    fn optional_fields_default_and_unknown_fields_are_ignored() {
        let r: Request = serde_json::from_str(
            r#"{"type":"create_process","id":"a","spec":{"argv":["true"],"future":1},"x":2}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::CreateProcess {
                id: "a".into(),
                spec: ProcessSpec::new(["true"]),
            }
        );
        let r: Request = serde_json::from_str(r#"{"type":"shutdown"}"#).unwrap();
        assert_eq!(r, Request::Shutdown { grace_ms: None });
    }

    #[test]
    fn container_wire_format() {
        let json = serde_json::to_string(&FsSource::Virtiofs {
            tag: "rootfs".into(),
        })
        .unwrap();
        assert_eq!(json, r#"{"type":"virtiofs","tag":"rootfs"}"#);
        let r: Request = serde_json::from_str(
            r#"{"type":"create_container","id":"c1","spec":{"hostname":"h",
                "rootfs":{"type":"directory","path":"/r"}}}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::CreateContainer {
                id: "c1".into(),
                spec: ContainerSpec::new(FsSource::Directory { path: "/r".into() }, "h"),
            }
        );
        assert!(serde_json::from_str::<FsSource>(r#"{"type":"nfs","path":"/r"}"#).is_err());
    }

    #[test]
    fn a_plain_spec_encodes_as_in_1_0() {
        // A 1.1 host running a non-container process sends exactly what 1.0 sent, so a 1.0
        // agent sees nothing it would silently ignore.
        let json = serde_json::to_string(&ProcessSpec::new(["true"])).unwrap();
        assert!(
            !json.contains("container") && !json.contains("user"),
            "{json}"
        );
        assert!(!json.contains("group_add"), "{json}");
    }

    #[test]
    fn unknown_error_codes_decode_as_unknown() {
        let r: Response =
            serde_json::from_str(r#"{"type":"error","code":"quota_exceeded","message":"m"}"#)
                .unwrap();
        assert_eq!(r, Response::error(ErrorCode::Unknown, "m"));
    }

    #[test]
    fn unknown_variants_fail_to_decode() {
        assert!(serde_json::from_str::<Request>(r#"{"type":"set_hostname","name":"x"}"#).is_err());
        assert!(serde_json::from_str::<Response>(r#"{"type":"maybe"}"#).is_err());
        assert!(serde_json::from_str::<ConnectionHeader>(r#"{"type":"exec"}"#).is_err());
        assert!(serde_json::from_str::<StdioStream>(r#""stdfoo""#).is_err());
    }

    #[test]
    fn version_compatibility_is_by_major() {
        let v = |major, minor| ProtocolVersion { major, minor };
        assert!(v(1, 0).is_compatible_with(v(1, 7)));
        assert!(!v(1, 0).is_compatible_with(v(2, 0)));
        assert_eq!(v(1, 2).to_string(), "1.2");
    }
}
