//! Where connections come from: a vsock listener in the VM, or a Unix socket when the agent
//! runs on the host for tests. Above this module every connection is a [`Conn`], a socket fd
//! with blocking `Read`/`Write`.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use crate::sys;

/// The host's CID: only connections from it are served.
const HOST_CID: u32 = libc::VMADDR_CID_HOST;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on vsock port {port}")]
    VsockListen {
        port: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {path}")]
    UnixListen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("accepting a connection failed")]
    Accept(#[source] io::Error),
    #[error("refused a connection from CID {cid}: only the host (CID {HOST_CID}) may connect")]
    ForeignPeer { cid: u32 },
    #[error("cannot read the peer address of a connection")]
    PeerAddress(#[source] io::Error),
}

/// One connection: a connected stream socket.
#[derive(Debug)]
pub struct Conn(OwnedFd);

impl Conn {
    pub fn from_fd(fd: OwnedFd) -> Self {
        Conn(fd)
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::read(self.0.as_fd(), buf)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sys::write(self.0.as_fd(), buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the agent accepts connections.
#[derive(Debug)]
pub enum Listener {
    /// AF_VSOCK, any local CID; only the host's CID is served.
    Vsock { fd: OwnedFd, port: u32 },
    /// A Unix socket (tests on the host).
    Unix(UnixListener),
}

impl Listener {
    pub fn vsock(port: u32) -> Result<Self, TransportError> {
        let fd = sys::vsock_listen(port)
            .map_err(|source| TransportError::VsockListen { port, source })?;
        Ok(Listener::Vsock { fd, port })
    }

    /// Listens on `path`, replacing a stale socket file left there.
    pub fn unix(path: PathBuf) -> Result<Self, TransportError> {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(TransportError::UnixListen { path, source }),
        }
        UnixListener::bind(&path)
            .map(Listener::Unix)
            .map_err(|source| TransportError::UnixListen { path, source })
    }

    /// Waits for the next connection. A refused or failed one is an error; the caller logs
    /// it and accepts again.
    pub fn accept(&self) -> Result<Conn, TransportError> {
        match self {
            Listener::Vsock { fd, .. } => {
                let conn = sys::accept(fd.as_fd()).map_err(TransportError::Accept)?;
                // A process inside the VM must not reach the agent over vsock loopback:
                // the agent starts processes as any user.
                let cid = sys::vsock_peer_cid(conn.as_fd()).map_err(TransportError::PeerAddress)?;
                if cid != HOST_CID {
                    return Err(TransportError::ForeignPeer { cid });
                }
                Ok(Conn(conn))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().map_err(TransportError::Accept)?;
                Ok(Conn(OwnedFd::from(s)))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Listener::Vsock { port, .. } => format!("vsock port {port}"),
            Listener::Unix(l) => match l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            {
                Some(p) => format!("unix socket {p}"),
                None => "unix socket".to_owned(),
            },
        }
    }
}

/// Where the agent announces that it is ready.
#[derive(Debug, Clone)]
pub enum ReadyTarget {
    Vsock { cid: u32, port: u32 },
    Unix(PathBuf),
    None,
}

impl ReadyTarget {
    /// Opens the connection the Ready frame goes on; `Ok(None)` when there is no target.
    /// A vsock connect unanswered for `timeout` fails with ETIMEDOUT.
    pub fn connect(&self, timeout: std::time::Duration) -> io::Result<Option<Conn>> {
        match self {
            ReadyTarget::Vsock { cid, port } => {
                sys::vsock_connect(*cid, *port, timeout).map(|fd| Some(Conn(fd)))
            }
            ReadyTarget::Unix(path) => {
                UnixStream::connect(path).map(|s| Some(Conn(OwnedFd::from(s))))
            }
            ReadyTarget::None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_listener_replaces_stale_socket_and_accepts() {
        let dir =
            std::env::temp_dir().join(format!("berth-agent-transport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.sock");
        drop(UnixListener::bind(&path).unwrap());
        let l = Listener::unix(path.clone()).unwrap();
        assert!(l.describe().contains("a.sock"));
        let mut client = UnixStream::connect(&path).unwrap();
        let mut conn = l.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        conn.write_all(b"pong").unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ready_target_none_connects_nowhere() {
        assert!(ReadyTarget::None
            .connect(std::time::Duration::from_secs(1))
            .unwrap()
            .is_none());
    }
}
