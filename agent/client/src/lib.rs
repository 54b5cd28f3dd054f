//! The host side of the agent protocol: a blocking client (no async runtime) used by
//! `berth-vmm run` and the engine.
//!
//! It owns dialing the agent (hybrid vsock through the VM's Unix socket, see [`dial`]),
//! the request/response exchange on control connections, opening stream connections, and
//! the "agent ready" notification ([`ReadyListener`]). Everything the agent sends is
//! untrusted: every reply is size-capped, decoded, validated and checked to be the expected
//! variant; a misbehaving agent yields an error, never a panic. It does not own the wire
//! format (`agent-protocol`) nor anything about VMs beyond their socket path.
//!
//! Typical use:
//! ```no_run
//! # use std::time::Duration;
//! # use agent_client::*;
//! # fn main() -> Result<(), ClientError> {
//! let ready = ReadyListener::bind("/run/vm1/vsock.sock".as_ref())?; // before the VM starts
//! // ... start the VM ...
//! ready.wait(Duration::from_secs(30))?;
//! let mut agent = AgentClient::connect("/run/vm1/vsock.sock".as_ref(), Duration::from_secs(5))?;
//! agent.create_process("c1", &ProcessSpec::new(["/bin/echo", "hi"]))?;
//! let mut out = agent.attach("c1", StdioStream::Stdout)?;
//! agent.start_process("c1")?;
//! std::io::copy(&mut out, &mut std::io::stdout()).ok();
//! let status = agent.wait_process("c1")?;
//! # Ok(()) }
//! ```

mod dial;
mod ready;
#[cfg(test)]
mod test_util;

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use agent_protocol::{
    read_frame, write_frame, ConnectionHeader, FrameError, Request, Response, ValidationError,
    PROTOCOL_VERSION,
};
pub use agent_protocol::{
    ContainerSpec, CpuFigures, CpuMax, DnsConfig, ErrorCode, ExitStatus, FsSource, GuestStats,
    HostsEntry, InterfaceCounters, MemoryFigures, MountSpec, ProcessInfo, ProcessList, ProcessSpec,
    ProtocolVersion, Resources, Rlimit, RlimitResource, StdioStream, TtySize,
};
pub use dial::{dial_hybrid_vsock, DialError, Endpoint};
pub use ready::{ready_socket_path, ReadyListener};

/// Longest agent error message kept, in characters.
const MAX_SHOWN_MESSAGE: usize = 1024;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent")]
    Dial(#[from] DialError),
    #[error("the agent did not answer within {timeout:?}")]
    Timeout {
        timeout: Duration,
        #[source]
        last: Option<Box<ClientError>>,
    },
    #[error("exchange with the agent failed")]
    Frame(#[source] FrameError),
    #[error("the agent refused {request}: {code}: {message}")]
    Agent {
        request: &'static str,
        code: ErrorCode,
        /// The agent's message, control characters replaced.
        message: String,
    },
    #[error("the agent answered {request} with {got}")]
    UnexpectedReply {
        request: &'static str,
        got: &'static str,
    },
    #[error("the agent sent an invalid reply to {request}")]
    InvalidReply {
        request: &'static str,
        #[source]
        source: ValidationError,
    },
    #[error("refusing to send an invalid {request} request")]
    InvalidRequest {
        request: &'static str,
        #[source]
        source: ValidationError,
    },
    #[error("the agent speaks protocol {agent}, this host speaks {ours}")]
    IncompatibleVersion {
        agent: String,
        ours: ProtocolVersion,
    },
    #[error("the agent speaks protocol {agent}, {request} needs {needed} or later")]
    AgentTooOld {
        request: &'static str,
        agent: ProtocolVersion,
        needed: ProtocolVersion,
    },
    #[error("this control connection is unusable after an earlier failure")]
    Broken,
    #[error("{context}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
}

impl ClientError {
    /// The agent's error code, if the agent refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Agent { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when retrying the connection later may succeed (the agent is still starting).
    fn is_transient(&self) -> bool {
        match self {
            ClientError::Dial(e) => e.is_transient(),
            ClientError::Frame(FrameError::Closed) => true,
            ClientError::Frame(e @ FrameError::Io(io)) => {
                e.is_timeout()
                    || matches!(
                        io.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    )
            }
            _ => false,
        }
    }

    fn agent(request: &'static str, code: ErrorCode, message: &str) -> Self {
        ClientError::Agent {
            request,
            code,
            message: dial::sanitize(message.as_bytes(), MAX_SHOWN_MESSAGE),
        }
    }
}

/// Who answered: from the agent's `Hello` or `Ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub protocol_version: ProtocolVersion,
    /// Already validated: short, no control characters.
    pub agent_version: String,
}

fn set_timeouts(s: &UnixStream, t: Option<Duration>) -> Result<(), ClientError> {
    let t = t.map(|t| t.max(Duration::from_millis(1)));
    s.set_read_timeout(t)
        .and_then(|()| s.set_write_timeout(t))
        .map_err(|source| ClientError::Io {
            context: "cannot set socket timeouts",
            source,
        })
}

/// Reads one reply and validates it.
fn read_reply(s: &mut UnixStream, request: &'static str) -> Result<Response, ClientError> {
    let reply: Response = read_frame(s).map_err(ClientError::Frame)?;
    reply
        .validate()
        .map_err(|source| ClientError::InvalidReply { request, source })?;
    Ok(reply)
}

/// A control connection to the agent. Requests are answered one at a time; use
/// [`AgentClient::open_control`] for a second connection (e.g. to signal a process while
/// another connection blocks in [`AgentClient::wait_process`]).
#[derive(Debug)]
pub struct AgentClient {
    endpoint: Endpoint,
    conn: UnixStream,
    info: AgentInfo,
    /// Bounds dialing and handshakes of new connections.
    connect_timeout: Duration,
    /// Bounds every request except `wait_process`.
    request_timeout: Option<Duration>,
    broken: bool,
}

impl AgentClient {
    /// Connects to the agent of the VM whose hybrid-vsock socket is `uds`, retrying until
    /// the agent answers `Hello` or `timeout` passes.
    pub fn connect(uds: &Path, timeout: Duration) -> Result<Self, ClientError> {
        Self::connect_endpoint(Endpoint::vm(uds), timeout)
    }

    /// [`AgentClient::connect`] for any [`Endpoint`].
    pub fn connect_endpoint(endpoint: Endpoint, timeout: Duration) -> Result<Self, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(5);
        let mut last = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ClientError::Timeout {
                    timeout,
                    last: last.map(Box::new),
                });
            }
            match Self::try_connect(&endpoint, remaining) {
                Ok((conn, info)) => {
                    return Ok(AgentClient {
                        endpoint,
                        conn,
                        info,
                        connect_timeout: timeout,
                        request_timeout: None,
                        broken: false,
                    })
                }
                Err(e) if e.is_transient() => {
                    last = Some(e);
                    sleep(delay.min(deadline.saturating_duration_since(Instant::now())));
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn try_connect(
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<(UnixStream, AgentInfo), ClientError> {
        let mut conn = endpoint.dial(timeout)?;
        set_timeouts(&conn, Some(timeout))?;
        let hello = ConnectionHeader::Hello {
            protocol_version: PROTOCOL_VERSION,
        };
        write_frame(&mut conn, &hello).map_err(ClientError::Frame)?;
        let info = match read_reply(&mut conn, "hello")? {
            Response::Hello {
                protocol_version,
                agent_version,
            } => {
                if !PROTOCOL_VERSION.is_compatible_with(protocol_version) {
                    return Err(ClientError::IncompatibleVersion {
                        agent: protocol_version.to_string(),
                        ours: PROTOCOL_VERSION,
                    });
                }
                AgentInfo {
                    protocol_version,
                    agent_version,
                }
            }
            Response::Error {
                code: ErrorCode::IncompatibleVersion,
                message,
            } => {
                return Err(ClientError::IncompatibleVersion {
                    agent: dial::sanitize(message.as_bytes(), MAX_SHOWN_MESSAGE),
                    ours: PROTOCOL_VERSION,
                })
            }
            Response::Error { code, message } => {
                return Err(ClientError::agent("hello", code, &message))
            }
            other => {
                return Err(ClientError::UnexpectedReply {
                    request: "hello",
                    got: other.type_name(),
                })
            }
        };
        set_timeouts(&conn, None)?;
        Ok((conn, info))
    }

    /// A second, independent control connection to the same agent.
    pub fn open_control(&self) -> Result<AgentClient, ClientError> {
        let mut c = Self::connect_endpoint(self.endpoint.clone(), self.connect_timeout)?;
        c.request_timeout = self.request_timeout;
        Ok(c)
    }

    /// The agent's version, from its `Hello`.
    pub fn agent_info(&self) -> &AgentInfo {
        &self.info
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Bounds every later request except [`AgentClient::wait_process`] (default: none).
    /// A request that times out leaves the connection unusable ([`ClientError::Broken`]).
    pub fn set_request_timeout(&mut self, timeout: Option<Duration>) {
        self.request_timeout = timeout;
    }

    /// Sends `req` and returns the validated reply. Any failure marks the connection
    /// broken: a reply may still be in flight, so later replies could not be matched.
    fn call(&mut self, req: &Request, timeout: Option<Duration>) -> Result<Response, ClientError> {
        let name = req.type_name();
        req.validate()
            .map_err(|source| ClientError::InvalidRequest {
                request: name,
                source,
            })?;
        if self.broken {
            return Err(ClientError::Broken);
        }
        let r = set_timeouts(&self.conn, timeout)
            .and_then(|()| write_frame(&mut self.conn, req).map_err(ClientError::Frame))
            .and_then(|()| read_reply(&mut self.conn, name));
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// Sends `req` and expects `Ok`.
    fn call_ok(&mut self, req: &Request) -> Result<(), ClientError> {
        let name = req.type_name();
        match self.call(req, self.request_timeout)? {
            Response::Ok => Ok(()),
            other => Err(self.unexpected(name, other)),
        }
    }

    /// Turns a reply of the wrong kind into an error; an error reply keeps the connection
    /// usable, anything else breaks it.
    fn unexpected(&mut self, request: &'static str, reply: Response) -> ClientError {
        match reply {
            Response::Error { code, message } => ClientError::agent(request, code, &message),
            other => {
                self.broken = true;
                ClientError::UnexpectedReply {
                    request,
                    got: other.type_name(),
                }
            }
        }
    }

    /// Refuses, before sending, what an agent older than 1.1 would not understand: it
    /// would ignore a spec's container fields and run the process outside the container.
    fn require_containers(&self, request: &'static str) -> Result<(), ClientError> {
        self.require_minor(request, agent_protocol::CONTAINERS_MINOR)
    }

    /// Refuses, before sending, a request that agents older than 1.`minor` do not know.
    fn require_minor(&self, request: &'static str, minor: u16) -> Result<(), ClientError> {
        let agent = self.info.protocol_version;
        let needed = ProtocolVersion {
            major: PROTOCOL_VERSION.major,
            minor,
        };
        if agent.minor < needed.minor {
            return Err(ClientError::AgentTooOld {
                request,
                agent,
                needed,
            });
        }
        Ok(())
    }

    /// Registers process `id`; nothing runs until [`AgentClient::start_process`].
    pub fn create_process(&mut self, id: &str, spec: &ProcessSpec) -> Result<(), ClientError> {
        if spec.container.is_some()
            || spec.user.is_some()
            || !spec.group_add.is_empty()
            || spec.capabilities.is_some()
        {
            self.require_containers("create_process")?;
        }
        if spec.no_new_privileges {
            self.require_minor("create_process", agent_protocol::NO_NEW_PRIVILEGES_MINOR)?;
        }
        if spec.init {
            self.require_minor("create_process", agent_protocol::INIT_PRIVILEGED_MINOR)?;
        }
        self.call_ok(&Request::CreateProcess {
            id: id.to_owned(),
            spec: spec.clone(),
        })
    }

    /// Opens a stream connection for one stdio stream of a created process (before it
    /// starts). Stdout/stderr: read until EOF. Stdin: write, then drop the stream (or shut
    /// down its write side) for end-of-input.
    pub fn attach(&self, id: &str, stream: StdioStream) -> Result<UnixStream, ClientError> {
        let header = ConnectionHeader::Attach {
            process_id: id.to_owned(),
            stream,
        };
        header
            .validate()
            .map_err(|source| ClientError::InvalidRequest {
                request: "attach",
                source,
            })?;
        let mut s = self.endpoint.dial(self.connect_timeout)?;
        set_timeouts(&s, Some(self.connect_timeout))?;
        write_frame(&mut s, &header).map_err(ClientError::Frame)?;
        match read_reply(&mut s, "attach")? {
            Response::Ok => {
                set_timeouts(&s, None)?;
                Ok(s)
            }
            Response::Error { code, message } => Err(ClientError::agent("attach", code, &message)),
            other => Err(ClientError::UnexpectedReply {
                request: "attach",
                got: other.type_name(),
            }),
        }
    }

    /// Starts a created process; returns its pid in the guest. A missing program is an
    /// [`ErrorCode::NotFound`] refusal (Docker: 127), a non-executable one
    /// [`ErrorCode::PermissionDenied`] (126).
    pub fn start_process(&mut self, id: &str) -> Result<u32, ClientError> {
        let req = Request::StartProcess { id: id.to_owned() };
        match self.call(&req, self.request_timeout)? {
            Response::Started { pid } => Ok(pid),
            other => Err(self.unexpected("start_process", other)),
        }
    }

    /// Blocks until the process has exited and its output streams have been drained and
    /// closed by the agent.
    pub fn wait_process(&mut self, id: &str) -> Result<ExitStatus, ClientError> {
        let req = Request::WaitProcess { id: id.to_owned() };
        match self.call(&req, None)? {
            Response::Exited { code, signal } => Ok(ExitStatus { code, signal }),
            other => Err(self.unexpected("wait_process", other)),
        }
    }

    /// Sends `wait_process` and hands back the connection, for the caller to read the one
    /// reply frame however it waits (an async runtime, without a thread per process), then
    /// to check it with [`AgentClient::wait_reply`].
    pub fn send_wait(mut self, id: &str) -> Result<UnixStream, ClientError> {
        let req = Request::WaitProcess { id: id.to_owned() };
        req.validate()
            .map_err(|source| ClientError::InvalidRequest {
                request: "wait_process",
                source,
            })?;
        if self.broken {
            return Err(ClientError::Broken);
        }
        set_timeouts(&self.conn, None)?;
        write_frame(&mut self.conn, &req).map_err(ClientError::Frame)?;
        Ok(self.conn)
    }

    /// The exit status in the body of the frame that answered [`AgentClient::send_wait`].
    pub fn wait_reply(body: &[u8]) -> Result<ExitStatus, ClientError> {
        let reply: Response = agent_protocol::decode(body).map_err(ClientError::Frame)?;
        reply
            .validate()
            .map_err(|source| ClientError::InvalidReply {
                request: "wait_process",
                source,
            })?;
        match reply {
            Response::Exited { code, signal } => Ok(ExitStatus { code, signal }),
            Response::Error { code, message } => {
                Err(ClientError::agent("wait_process", code, &message))
            }
            other => Err(ClientError::UnexpectedReply {
                request: "wait_process",
                got: other.type_name(),
            }),
        }
    }

    pub fn signal(&mut self, id: &str, signal: i32) -> Result<(), ClientError> {
        self.call_ok(&Request::Signal {
            id: id.to_owned(),
            signal,
        })
    }

    pub fn resize_tty(&mut self, id: &str, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.call_ok(&Request::ResizeTty {
            id: id.to_owned(),
            rows,
            cols,
        })
    }

    /// Forgets a process that has exited (and been waited for) or never started.
    pub fn delete_process(&mut self, id: &str) -> Result<(), ClientError> {
        self.call_ok(&Request::DeleteProcess { id: id.to_owned() })
    }

    /// Sets up container `id` (1.1): its root filesystem, mounts, namespaces and `/etc`
    /// files. Processes run in it through [`ProcessSpec::container`].
    pub fn create_container(&mut self, id: &str, spec: &ContainerSpec) -> Result<(), ClientError> {
        self.require_containers("create_container")?;
        if spec.privileged {
            self.require_minor("create_container", agent_protocol::INIT_PRIVILEGED_MINOR)?;
        }
        if spec
            .mounts
            .iter()
            .any(|m| matches!(m.source, agent_protocol::FsSource::Tmpfs { .. }))
        {
            self.require_minor("create_container", agent_protocol::TMPFS_MINOR)?;
        }
        if !spec.resources.is_unlimited()
            || !spec.sysctls.is_empty()
            || spec.mounts.iter().any(|m| m.file.is_some())
        {
            self.require_minor("create_container", agent_protocol::RESOURCES_MINOR)?;
        }
        self.call_ok(&Request::CreateContainer {
            id: id.to_owned(),
            spec: spec.clone(),
        })
    }

    /// Tears container `id` down (1.1); refused while one of its processes runs.
    pub fn delete_container(&mut self, id: &str) -> Result<(), ClientError> {
        self.require_containers("delete_container")?;
        self.call_ok(&Request::DeleteContainer { id: id.to_owned() })
    }

    /// Asks the agent to stop all processes (SIGTERM, `grace`, SIGKILL) and end the VM.
    /// The connection closing instead of an answer counts as success: the VM may be gone
    /// before its answer leaves.
    /// Makes a VM restored from a snapshot its own before anything runs in it
    /// ([`Request::Refresh`]): 64 fresh random bytes of this host for its kernel's pool,
    /// this host's wall clock, and `hostname` when given.
    pub fn refresh(&mut self, hostname: Option<&str>) -> Result<(), ClientError> {
        self.require_minor("refresh", agent_protocol::REFRESH_MINOR)?;
        let mut entropy = vec![0u8; 64];
        getrandom(&mut entropy)?;
        let realtime_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.call_ok(&Request::Refresh {
            entropy,
            realtime_ns,
            hostname: hostname.map(str::to_owned),
        })
    }

    /// Configures the VM's network interfaces (`eth<index>`: MAC, address, MTU, up; the
    /// default route through the first gateway).
    pub fn configure_network(
        &mut self,
        interfaces: &[agent_protocol::InterfaceConfig],
    ) -> Result<(), ClientError> {
        self.require_minor("configure_network", agent_protocol::NETWORK_MINOR)?;
        self.call_ok(&Request::ConfigureNetwork {
            interfaces: interfaces.to_vec(),
        })
    }

    /// The processes of running container `container` (1.4), as `ps` needs them.
    pub fn list_processes(&mut self, container: &str) -> Result<ProcessList, ClientError> {
        self.require_minor("list_processes", agent_protocol::FIGURES_MINOR)?;
        let req = Request::ListProcesses {
            container: container.to_owned(),
        };
        match self.call(&req, self.request_timeout)? {
            Response::Processes { list } => Ok(list),
            other => Err(self.unexpected("list_processes", other)),
        }
    }

    /// The CPU time of running container `container`'s processes and its VM's figures
    /// (1.4), for `docker stats`.
    pub fn stats(&mut self, container: &str) -> Result<GuestStats, ClientError> {
        self.require_minor("stats", agent_protocol::FIGURES_MINOR)?;
        let req = Request::Stats {
            container: container.to_owned(),
        };
        match self.call(&req, self.request_timeout)? {
            Response::Stats { stats } => Ok(stats),
            other => Err(self.unexpected("stats", other)),
        }
    }

    pub fn shutdown(mut self, grace: Option<Duration>) -> Result<(), ClientError> {
        let grace_ms = grace.map(|g| u32::try_from(g.as_millis()).unwrap_or(u32::MAX));
        let req = Request::Shutdown { grace_ms };
        match self.call(&req, self.request_timeout) {
            Ok(Response::Ok) => Ok(()),
            Ok(other) => Err(self.unexpected("shutdown", other)),
            Err(ClientError::Frame(FrameError::Closed)) => Ok(()),
            Err(ClientError::Frame(FrameError::Io(e)))
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Fills `buf` from the host kernel's random generator.
fn getrandom(buf: &mut [u8]) -> Result<(), ClientError> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|source| ClientError::Io {
            context: "cannot read this host's random bytes",
            source,
        })
}

#[cfg(test)]
mod tests;
