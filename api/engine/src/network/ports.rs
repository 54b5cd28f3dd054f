//! Published ports: a userland proxy in berthd. The host side listens where `-p` asked, in
//! the host's namespace; each TCP connection it accepts gets a connection of its own to the
//! container's address, from a socket made inside berth's namespace ([`NetNs::run`]), and
//! the two are spliced. UDP datagrams are relayed per client address, with a socket of
//! berth's namespace for each client and an idle timeout.
//!
//! Every listening socket is bound before the container's VM starts, so a host port in use
//! fails the start before anything of the container runs.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::netns::NetNs;

/// A transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One published port as bound: the host's address and port, and the container's port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub proto: Proto,
    pub container_port: u16,
    pub host_ip: Ipv4Addr,
    /// 0 before binding: an ephemeral port.
    pub host_port: u16,
}

/// Why a port could not be published (Docker's wording: the CLI shows it as is).
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("Bind for {addr} failed: port is already allocated")]
    InUse { addr: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// How long a UDP client may stay silent before its relay socket is closed (the kernel's
/// conntrack UDP stream timeout is 120 s, Docker's proxy uses 90 s).
const UDP_IDLE: Duration = Duration::from_secs(90);
/// UDP clients relayed at once per published port: beyond it, the oldest is dropped.
const MAX_UDP_FLOWS: usize = 1024;
/// Bytes a TCP proxy moves per read, each way.
const COPY_BUF: usize = 64 << 10;
/// TCP connections proxied at once per published port.
const MAX_TCP_CONNS: usize = 4096;

/// Sockets bound for a container, not yet serving.
pub struct Bound {
    pub bindings: Vec<Binding>,
    tcp: Vec<(std::net::TcpListener, u16)>,
    udp: Vec<(std::net::UdpSocket, u16)>,
}

/// Binds every requested port (all or none).
pub fn bind(requests: &[Binding]) -> Result<Bound, PortError> {
    let mut bound = Bound {
        bindings: vec![],
        tcp: vec![],
        udp: vec![],
    };
    for r in requests {
        let addr = SocketAddrV4::new(r.host_ip, r.host_port);
        let shown = format!("{}:{}", r.host_ip, r.host_port);
        let fail = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                PortError::InUse {
                    addr: shown.clone(),
                }
            } else {
                PortError::Listen {
                    addr: shown.clone(),
                    source,
                }
            }
        };
        let port = match r.proto {
            Proto::Tcp => {
                let l = std::net::TcpListener::bind(addr).map_err(fail)?;
                l.set_nonblocking(true).map_err(fail)?;
                let port = l.local_addr().map_err(fail)?.port();
                bound.tcp.push((l, r.container_port));
                port
            }
            Proto::Udp => {
                let s = std::net::UdpSocket::bind(addr).map_err(fail)?;
                s.set_nonblocking(true).map_err(fail)?;
                let port = s.local_addr().map_err(fail)?.port();
                bound.udp.push((s, r.container_port));
                port
            }
        };
        bound.bindings.push(Binding {
            host_port: port,
            ..r.clone()
        });
    }
    Ok(bound)
}

/// Serves the bound ports, forwarding to `target`; the tasks end when aborted.
pub fn serve(bound: Bound, netns: Arc<NetNs>, target: Ipv4Addr) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![];
    for (listener, port) in bound.tcp {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            continue;
        };
        let to = SocketAddr::V4(SocketAddrV4::new(target, port));
        tasks.push(tokio::spawn(serve_tcp(listener, netns.clone(), to)));
    }
    for (socket, port) in bound.udp {
        let Ok(socket) = tokio::net::UdpSocket::from_std(socket) else {
            continue;
        };
        let to = SocketAddr::V4(SocketAddrV4::new(target, port));
        tasks.push(tokio::spawn(serve_udp(socket, netns.clone(), to)));
    }
    tasks
}

/// A socket of berth's namespace (`kind`: SOCK_STREAM or SOCK_DGRAM), non-blocking.
async fn inner_socket(netns: &NetNs, kind: libc::c_int) -> std::io::Result<std::os::fd::OwnedFd> {
    netns
        .run_async(move || {
            // SAFETY: socket(2) with constant arguments; the result is checked.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET,
                    kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    0,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
            Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        })
        .await
        .map_err(std::io::Error::other)?
}

async fn serve_tcp(listener: tokio::net::TcpListener, netns: Arc<NetNs>, to: SocketAddr) {
    let conns = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNS));
    loop {
        let Ok(permit) = conns.clone().acquire_owned().await else {
            return;
        };
        let (mut client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::debug!("published port {to}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let netns = netns.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let fd = match inner_socket(&netns, libc::SOCK_STREAM).await {
                Ok(fd) => fd,
                Err(e) => {
                    log::warn!("published port {to}: {e}");
                    return;
                }
            };
            let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
            let mut upstream =
                match tokio::time::timeout(Duration::from_secs(30), socket.connect(to)).await {
                    Ok(Ok(s)) => s,
                    _ => return,
                };
            // 64 KiB at a time each way (tokio's default is 8 KiB): fewer, larger writes into
            // the namespace, which the tap and the guest take as larger segments.
            let _ = tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut upstream,
                COPY_BUF,
                COPY_BUF,
            )
            .await;
        });
    }
}

async fn serve_udp(socket: tokio::net::UdpSocket, netns: Arc<NetNs>, to: SocketAddr) {
    let socket = Arc::new(socket);
    // Client address -> the relay socket's task and its sender.
    let mut flows: HashMap<SocketAddr, (Arc<tokio::net::UdpSocket>, JoinHandle<()>)> =
        HashMap::new();
    let mut order: std::collections::VecDeque<SocketAddr> = Default::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        flows.retain(|_, (_, task)| !task.is_finished());
        order.retain(|c| flows.contains_key(c));
        let relay = match flows.get(&client) {
            Some((relay, _)) => relay.clone(),
            None => {
                if flows.len() >= MAX_UDP_FLOWS {
                    if let Some(oldest) = order.pop_front() {
                        if let Some((_, task)) = flows.remove(&oldest) {
                            task.abort();
                        }
                    }
                }
                let Ok(fd) = inner_socket(&netns, libc::SOCK_DGRAM).await else {
                    continue;
                };
                let Ok(relay) = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))
                else {
                    continue;
                };
                if relay.connect(to).await.is_err() {
                    continue;
                }
                let relay = Arc::new(relay);
                let back = socket.clone();
                let answers = relay.clone();
                let task = tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(UDP_IDLE, answers.recv(&mut buf)).await
                    {
                        let _ = back.send_to(&buf[..n], client).await;
                    }
                });
                flows.insert(client, (relay.clone(), task));
                order.push_back(client);
                relay
            }
        };
        let _ = relay.send(&buf[..n]).await;
    }
}
