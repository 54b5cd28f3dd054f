//! The "agent ready" moment. Before starting the VM, the host listens on
//! `<vm socket>_1025` (hybrid vsock delivers guest connections to host port P on
//! `<vm socket>_P`); the agent connects there once, right after it starts listening,
//! and sends one `Ready` frame. No polling.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_protocol::{read_frame, FrameError, Notification, READY_PORT};

use crate::{AgentInfo, ClientError};

/// `<vm_uds>_1025`: where the agent's ready connection arrives.
pub fn ready_socket_path(vm_uds: &Path) -> PathBuf {
    let mut p = OsString::from(vm_uds.as_os_str());
    p.push(format!("_{READY_PORT}"));
    PathBuf::from(p)
}

/// A listener for the agent's ready notification; removes its socket file when dropped.
#[derive(Debug)]
pub struct ReadyListener {
    listener: UnixListener,
    path: PathBuf,
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> ClientError {
    move |source| ClientError::Io { context, source }
}

impl ReadyListener {
    /// Listens at [`ready_socket_path`] of the VM socket `vm_uds`. Call before the VM starts.
    pub fn bind(vm_uds: &Path) -> Result<Self, ClientError> {
        Self::bind_path(ready_socket_path(vm_uds))
    }

    /// Listens at exactly `path`, replacing a stale socket file.
    pub fn bind_path(path: PathBuf) -> Result<Self, ClientError> {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove the stale ready socket")(e)),
        }
        let listener =
            UnixListener::bind(&path).map_err(io_err("cannot listen for the agent's ready"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("cannot make the ready listener non-blocking"))?;
        Ok(ReadyListener { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the agent's `Ready` frame. A connection that closes before its frame is
    /// not the answer: the agent gives up on a connect the VMM answered too late (its end
    /// is then reset) and connects again.
    pub fn wait(&self, timeout: Duration) -> Result<AgentInfo, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut last: Option<ClientError> = None;
        let n: Notification = loop {
            let mut stream = self.accept(deadline).map_err(|e| match e {
                ClientError::Timeout {
                    timeout: _,
                    last: None,
                } => ClientError::Timeout {
                    timeout,
                    last: last.take().map(Box::new),
                },
                e => e,
            })?;
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            stream
                .set_nonblocking(false)
                .and_then(|()| stream.set_read_timeout(Some(remaining)))
                .map_err(io_err("cannot configure the ready connection"))?;
            match read_frame(&mut stream) {
                Ok(n) => break n,
                Err(e @ (FrameError::Closed | FrameError::Truncated { .. })) => {
                    last = Some(ClientError::Frame(e));
                }
                Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                    last = Some(ClientError::Frame(FrameError::Io(e)));
                }
                Err(e) => return Err(ClientError::Frame(e)),
            }
        };
        n.validate().map_err(|source| ClientError::InvalidReply {
            request: "ready",
            source,
        })?;
        let Notification::Ready {
            protocol_version,
            agent_version,
        } = n;
        if !agent_protocol::PROTOCOL_VERSION.is_compatible_with(protocol_version) {
            return Err(ClientError::IncompatibleVersion {
                agent: protocol_version.to_string(),
                ours: agent_protocol::PROTOCOL_VERSION,
            });
        }
        Ok(AgentInfo {
            protocol_version,
            agent_version,
        })
    }

    /// Accepts the next connection, or times out (with no `last`) at `deadline`.
    fn accept(&self, deadline: Instant) -> Result<UnixStream, ClientError> {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => return Ok(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("accepting the agent's ready connection failed")(e)),
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ClientError::Timeout {
                    timeout: Duration::ZERO,
                    last: None,
                });
            }
            let ms =
                libc::c_int::try_from(remaining.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            let mut pfd = libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call. Its result is not
            // needed: the accept above tells what happened.
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
    }
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
