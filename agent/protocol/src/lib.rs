//! The wire protocol between the host (engine, `berth-vmm run`) and the guest agent, and its
//! version. Both sides depend on this crate and on nothing of each other.
//!
//! It owns the framing (a `u32` big-endian length, then a JSON body, capped at
//! [`MAX_FRAME_LEN`] before anything is allocated), the message types, and the validation
//! rules every received message must pass: the agent validates what the host sends, and the
//! host validates what the agent answers, because the guest is hostile. It does not own any
//! transport: callers hand it `std::io::Read`/`Write` values (vsock sockets in the guest, the
//! VM's hybrid-vsock Unix socket on the host, plain Unix sockets in tests).
//!
//! # Connections
//! Every connection to [`AGENT_PORT`] opens with one [`ConnectionHeader`] frame:
//! - [`ConnectionHeader::Hello`] makes it a control connection. The agent answers
//!   [`Response::Hello`] (or an error for an incompatible major version); after that the
//!   host sends [`Request`]s, one at a time, each answered by exactly one [`Response`].
//! - [`ConnectionHeader::Attach`] makes it a stream connection for one stdio stream of one
//!   process. The agent answers [`Response::Ok`] or [`Response::Error`]; then raw bytes flow
//!   one way until the connection is closed.
//!
//! The agent also connects once to the host on [`READY_PORT`] after it listens, sends one
//! [`Notification::Ready`] frame and closes.
//!
//! # Containers (1.1)
//! [`Request::CreateContainer`] sets a container up from a [`ContainerSpec`]: its root
//! filesystem ([`FsSource::Virtiofs`], the VM's share tagged `rootfs` by convention, or
//! [`FsSource::Directory`], a directory already in the VM), hostname, domain name, extra
//! `/etc/hosts` lines, DNS settings, `/dev/shm` size and read-only root. The agent mounts what
//! Docker mounts in a container (`/proc`, `/dev` with the standard nodes, `/dev/pts`,
//! `/dev/shm`, `/dev/mqueue`, `/sys` read-only, cgroup2), gives it its own mount, UTS, IPC
//! and cgroup namespaces, and bind-mounts generated `/etc/hostname`, `/etc/hosts` and
//! `/etc/resolv.conf` over the image's (which stay untouched). A [`ProcessSpec`] whose
//! `container` names it then runs inside: in its root (so `PATH` is looked up there), its
//! namespaces, and its PID namespace, of which the first process started is PID 1; once that
//! process has exited the container takes no more processes (`InvalidState`), as a stopped
//! Docker container. Its first process also creates its working directory if missing.
//!
//! Docker semantics the agent applies, so that the host maps Docker's `Config` directly:
//! `ProcessSpec::user` is Docker's `--user` string, resolved in the container's
//! `/etc/passwd` and `/etc/group` exactly as Docker resolves it (groups: the primary gid,
//! the user's memberships, then `group_add`), with Docker's error messages
//! (`InvalidArgument`, e.g. "unable to find user foo: no matching entries in passwd file");
//! `HOSTNAME` (the container's hostname) and `HOME` (the user's home from passwd, else `/`)
//! are added where the environment lacks them; `capabilities` (Docker's default set unless
//! given) bounds what the process may hold: root holds the set, other users nothing;
//! a program that cannot be found is `NotFound`
//! (`exec: "foo": executable file not found in $PATH`, exit 127), one that cannot be
//! executed `PermissionDenied` (exit 126). [`Request::DeleteContainer`] releases a container
//! none of whose processes runs. Setup failures answer `SetupFailed`, unknown containers
//! `UnknownContainer`.
//!
//! A 1.0 agent ignores the unknown fields of a [`ProcessSpec`] and would run such a process
//! outside any container: hosts check the agent's minor version (from `Hello`) first, as
//! `agent-client` does ([`CONTAINERS_MINOR`]). New fields are left out of the encoding when
//! unset, so a plain spec reads exactly as in 1.0.
//!
//! # Processes and figures (1.4)
//! [`Request::ListProcesses`] answers the processes of a running container (those in its
//! PID namespace; [`ProcessInfo`]): pids as seen inside the container, the user named by
//! the container's `/etc/passwd`, state, start time on the guest's clock, CPU time, memory,
//! terminal, command name and arguments (cut to [`MAX_PS_ARGS_LEN`]); at most
//! [`MAX_LISTED_PROCESSES`] of them. The host formats them as `ps` would (`docker top`).
//! [`Request::Stats`] answers [`GuestStats`]: the CPU time of the container's processes
//! (with that of the children they have reaped), the VM's total CPU time (uptime times
//! online CPUs), busy CPU time and online CPUs (`/proc/stat`), its memory (`/proc/meminfo`, `/proc/vmstat`), the number of
//! the container's processes, and the counters of the VM's interfaces but `lo`
//! (`/proc/net/dev`). Memory and network are the VM's (not the container's cgroup's, which
//! 1.8 added): the container is its only tenant besides the agent. Both are read
//! from `/proc` on the connection's thread, nothing kept between requests; a container
//! whose init has not started or has exited is `InvalidState`. Hosts check for
//! [`FIGURES_MINOR`] first, as `agent-client` does.
//!
//! # Resources (1.8)
//! Every container gets a cgroup of its own in the guest, and a cgroup namespace rooted at
//! it, as Docker gives one on cgroup v2: its processes (init and every exec) are moved into
//! it before they run, and its `/sys/fs/cgroup` shows that cgroup as the root.
//! [`ContainerSpec::resources`] sets its limits (`memory.max`, `memory.low`, `pids.max`,
//! `cpu.weight`, `cpu.max`, `cpuset.cpus`); [`ContainerSpec::sysctls`] are written under
//! `/proc/sys` as the container is created, in its IPC namespace (which sysctls a host
//! may ask for is the host's policy: the agent only checks that a name is a dotted sysctl
//! name). An agent without a cgroup tree (run on a host for tests) refuses a spec with
//! limits (`SetupFailed`). Hosts check for [`RESOURCES_MINOR`] first.
//!
//! # Compatibility
//! A minor version may add request types, optional fields (with serde defaults) and error
//! codes; it never changes the meaning of an existing field. Unknown fields are ignored,
//! unknown requests get an [`ErrorCode::Unsupported`] reply, unknown error codes decode as
//! [`ErrorCode::Unknown`]. A different major version is refused at `Hello`.

mod figures;
mod frame;
mod messages;
mod parse;
mod validate;

pub mod caps;

pub use figures::{
    CpuFigures, GuestStats, InterfaceCounters, MemoryFigures, ProcessInfo, ProcessList,
};
pub use frame::{decode, encode, read_frame, read_frame_body, write_frame, FrameError};
pub use messages::{
    ConnectionHeader, ContainerSpec, CpuMax, DnsConfig, ErrorCode, ExitStatus, FsSource,
    HostsEntry, InterfaceConfig, MountSpec, Notification, ProcessSpec, ProtocolVersion, Request,
    Resources, Response, Rlimit, RlimitResource, StdioStream, TtySize,
};
pub use parse::{parse_header, parse_request, ParseError};
pub use validate::{
    check_tmpfs_option, validate_container_id, validate_process_id, ValidationError,
    MAX_ADDITIONAL_GIDS, MAX_ARGS, MAX_ARG_LEN, MAX_CAPABILITIES, MAX_DNS_ENTRIES,
    MAX_DNS_NAME_LEN, MAX_ENV, MAX_GROUP_ADD, MAX_HOSTNAME_LEN, MAX_HOSTS_ENTRIES, MAX_INTERFACES,
    MAX_LISTED_INTERFACES, MAX_LISTED_PROCESSES, MAX_MESSAGE_LEN, MAX_MOUNTS, MAX_NAMES_PER_HOST,
    MAX_PATH_LEN, MAX_PROCESS_ID_LEN, MAX_PS_ARGS_LEN, MAX_PS_COMM_LEN, MAX_PS_USER_LEN,
    MAX_REFRESH_ENTROPY, MAX_SHUTDOWN_GRACE_MS, MAX_SYSCTLS, MAX_SYSCTL_NAME_LEN,
    MAX_SYSCTL_VALUE_LEN, MAX_TMPFS_OPTIONS, MAX_USER_LEN, MAX_VERSION_STRING_LEN,
    MAX_VIRTIOFS_TAG_LEN, MIN_REFRESH_ENTROPY, TMPFS_FLAGS,
};

/// The vsock port the agent listens on (guest side).
pub const AGENT_PORT: u32 = 1024;

/// The host vsock port the agent connects to once, to say it is ready. With hybrid vsock the
/// connection arrives on the host at `<vm socket path>_1025`.
pub const READY_PORT: u32 = 1025;

/// The largest frame body either side accepts or sends, in bytes.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 8 };

/// The first minor version (of major 1) with containers: [`Request::CreateContainer`],
/// [`Request::DeleteContainer`] and the container fields of [`ProcessSpec`].
pub const CONTAINERS_MINOR: u16 = 1;

/// The first minor version (of major 1) with [`Request::Refresh`], which clones need.
pub const REFRESH_MINOR: u16 = 2;

/// The first minor version (of major 1) with [`Request::ConfigureNetwork`].
pub const NETWORK_MINOR: u16 = 3;

/// The first minor version (of major 1) with [`Request::ListProcesses`] and
/// [`Request::Stats`].
pub const FIGURES_MINOR: u16 = 4;

/// The first minor version (of major 1) with [`ProcessSpec::no_new_privileges`]: an older
/// agent would ignore the field, so hosts check first.
pub const NO_NEW_PRIVILEGES_MINOR: u16 = 5;

/// The first minor version (of major 1) with [`ProcessSpec::init`] and
/// [`ContainerSpec::privileged`]: an older agent would ignore both, so hosts check first.
pub const INIT_PRIVILEGED_MINOR: u16 = 6;

/// The first minor version (of major 1) with [`FsSource::Tmpfs`] mounts: an older agent
/// would refuse the spec it cannot read, so hosts check first and say why.
pub const TMPFS_MINOR: u16 = 7;

/// The first minor version (of major 1) with [`ContainerSpec::resources`],
/// [`ContainerSpec::sysctls`] and [`MountSpec::file`]: an older agent would ignore them, so
/// hosts check first.
pub const RESOURCES_MINOR: u16 = 8;
