//! Reaching the agent: hybrid vsock through the VM's Unix socket, or a plain Unix socket
//! (the agent run on the host, in tests).
//!
//! Hybrid vsock (Firecracker's convention, which berth's VMM follows): connect to the VM's
//! Unix socket, write `CONNECT <port>\n`, read `OK <host_port>\n`; from then on the Unix
//! stream is the vsock connection. Anything else, or EOF, means the guest did not accept.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest reply line accepted from the VMM, newline included.
const MAX_REPLY_LINE: usize = 64;

/// Why a connection to the agent could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot connect to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("hybrid vsock handshake on {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the guest refused the connection to vsock port {port} (nothing listening yet?)")]
    Refused { port: u32 },
    #[error("unexpected hybrid vsock reply {reply:?}")]
    BadReply { reply: String },
    #[error("hybrid vsock handshake timed out")]
    Timeout,
}

impl DialError {
    /// True when trying again later may succeed (the VM or the agent is still starting).
    pub fn is_transient(&self) -> bool {
        match self {
            DialError::Connect { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ),
            DialError::Refused { .. } | DialError::Timeout => true,
            DialError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            DialError::BadReply { .. } => false,
        }
    }
}

/// Printable, bounded form of bytes a peer sent, for error messages.
pub(crate) fn sanitize(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(max)])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Opens a vsock connection to guest `port` through the VM's hybrid-vsock Unix socket.
/// `timeout` bounds the handshake (not the Unix connect, which fails or succeeds at once).
/// The returned stream has no timeouts set.
pub fn dial_hybrid_vsock(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, DialError> {
    let mut s = UnixStream::connect(uds).map_err(|source| DialError::Connect {
        path: uds.to_owned(),
        source,
    })?;
    let io_err = |source: io::Error| {
        if is_timeout(&source) {
            DialError::Timeout
        } else {
            DialError::Io {
                path: uds.to_owned(),
                source,
            }
        }
    };
    let timeout = Some(timeout.max(Duration::from_millis(1)));
    s.set_read_timeout(timeout).map_err(io_err)?;
    s.set_write_timeout(timeout).map_err(io_err)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io_err)?;
    // Byte by byte: whatever follows the newline already belongs to the vsock stream.
    let mut line = Vec::with_capacity(16);
    loop {
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) if line.is_empty() => return Err(DialError::Refused { port }),
            Ok(0) => {
                return Err(DialError::BadReply {
                    reply: sanitize(&line, MAX_REPLY_LINE),
                })
            }
            Ok(_) => {
                if b[0] == b'\n' {
                    break;
                }
                line.push(b[0]);
                if line.len() >= MAX_REPLY_LINE {
                    return Err(DialError::BadReply {
                        reply: sanitize(&line, MAX_REPLY_LINE),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A VMM that resets the connection instead of closing it is refusing too.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(DialError::Refused { port })
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    let ok = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.strip_prefix("OK "))
        .is_some_and(|p| {
            !p.is_empty()
                && p.len() <= 10
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u32>().is_ok()
        });
    if !ok {
        return Err(DialError::BadReply {
            reply: sanitize(&line, MAX_REPLY_LINE),
        });
    }
    s.set_read_timeout(None).map_err(io_err)?;
    s.set_write_timeout(None).map_err(io_err)?;
    Ok(s)
}

/// Where the agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Guest vsock `port` behind the VM's hybrid-vsock Unix socket `uds`.
    HybridVsock { uds: PathBuf, port: u32 },
    /// A Unix socket the agent listens on directly (`berth-agent --listen-unix`).
    Unix(PathBuf),
}

impl Endpoint {
    /// The agent's port behind a VM's hybrid-vsock socket.
    pub fn vm(uds: impl Into<PathBuf>) -> Self {
        Endpoint::HybridVsock {
            uds: uds.into(),
            port: agent_protocol::AGENT_PORT,
        }
    }

    /// Opens one connection.
    pub fn dial(&self, timeout: Duration) -> Result<UnixStream, DialError> {
        match self {
            Endpoint::HybridVsock { uds, port } => dial_hybrid_vsock(uds, *port, timeout),
            Endpoint::Unix(path) => {
                UnixStream::connect(path).map_err(|source| DialError::Connect {
                    path: path.clone(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{temp_dir, FakeVmm};

    #[test]
    fn handshake_succeeds_and_keeps_following_bytes() {
        let dir = temp_dir("dial-ok");
        let uds = dir.join("vm.sock");
        let vmm = FakeVmm::start(&uds, |mut s, port| {
            assert_eq!(port, 1024);
            // Reply and the first stream bytes in one write.
            s.write_all(b"OK 1073741824\nhello").unwrap();
        });
        let mut s = dial_hybrid_vsock(&uds, 1024, Duration::from_secs(5)).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello");
        vmm.join();
    }

    #[test]
    fn refusal_is_transient() {
        let dir = temp_dir("dial-refused");
        let uds = dir.join("vm.sock");
        let vmm = FakeVmm::start(&uds, |s, _| drop(s));
        let e = dial_hybrid_vsock(&uds, 1024, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, DialError::Refused { port: 1024 }), "{e:?}");
        assert!(e.is_transient());
        vmm.join();
    }

    #[test]
    fn garbage_replies_are_errors() {
        let replies: &[&[u8]] = &[
            b"NOPE\n",
            b"OK\n",
            b"OK \n",
            b"OK 12x\n",
            b"OK 99999999999\n",
            b"ok 5\n",
            b"OK 5",
            b"\xff\xfe\n",
        ];
        for reply in replies {
            let dir = temp_dir("dial-garbage");
            let uds = dir.join("vm.sock");
            let r = reply.to_vec();
            let vmm = FakeVmm::start(&uds, move |mut s, _| {
                s.write_all(&r).unwrap();
            });
            let e = dial_hybrid_vsock(&uds, 1024, Duration::from_secs(5)).unwrap_err();
            assert!(matches!(e, DialError::BadReply { .. }), "{reply:?}: {e:?}");
            assert!(!e.is_transient());
            vmm.join();
        }
    }

    #[test]
    fn endless_reply_line_is_cut() {
        let dir = temp_dir("dial-long");
        let uds = dir.join("vm.sock");
        let vmm = FakeVmm::start(&uds, |mut s, _| {
            let _ = s.write_all(&[b'A'; 4096]);
        });
        match dial_hybrid_vsock(&uds, 1024, Duration::from_secs(5)).unwrap_err() {
            DialError::BadReply { reply } => assert_eq!(reply.len(), MAX_REPLY_LINE),
            other => panic!("{other:?}"),
        }
        vmm.join();
    }

    #[test]
    fn silent_vmm_times_out() {
        let dir = temp_dir("dial-silent");
        let uds = dir.join("vm.sock");
        let vmm = FakeVmm::start(&uds, |s, _| {
            std::thread::sleep(Duration::from_millis(500));
            drop(s);
        });
        let e = dial_hybrid_vsock(&uds, 1024, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, DialError::Timeout), "{e:?}");
        vmm.join();
    }

    #[test]
    fn missing_socket_is_transient() {
        let dir = temp_dir("dial-missing");
        let e =
            dial_hybrid_vsock(&dir.join("none.sock"), 1024, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, DialError::Connect { .. }));
        assert!(e.is_transient());
    }

    #[test]
    fn sanitize_strips_control_characters() {
        assert_eq!(sanitize(b"a\x1b[2Jb\n", 100), "a?[2Jb?");
        assert_eq!(sanitize(b"abcdef", 3), "abc");
    }
}
