//! The host side of virtio-vsock: guest connections mapped onto Unix sockets.
//!
//! Hybrid vsock, the convention Firecracker established: a host process connects to the VM's
//! Unix socket and writes `CONNECT <port>\n`; once the guest accepts, the muxer answers
//! `OK <host port>\n` and the Unix stream carries the connection. A guest connection to host
//! port P is forwarded to the Unix socket `<uds path>_P`.
//!
//! The muxer holds no guest memory: it consumes decoded packets from the guest
//! ([`Muxer::handle_guest_packet`]) and produces packets for it ([`Muxer::next_rx_packet`]).
//! It never buffers host→guest data: it reads from a host stream only when the guest has an
//! RX buffer and credit for it. Guest→host data is buffered only up to the credit we
//! advertised; a guest that overruns it is reset. Everything is bounded: connections,
//! pending control packets, unanswered host connects.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::EventSet;

use super::packet::{op, shutdown, Header, HOST_CID, MAX_PAYLOAD, TYPE_STREAM};

/// Credit we give the guest per connection: guest→host bytes we are willing to hold.
pub const BUF_ALLOC: u32 = 256 << 10;
/// Connections per VM, host- and guest-initiated together.
pub const MAX_CONNECTIONS: usize = 256;
/// Host connections that have not yet sent their `CONNECT` line.
const MAX_PENDING_HOST: usize = 64;
/// Control packets waiting for RX buffers; past this, the guest is not reading its queue.
const MAX_CONTROL_BACKLOG: usize = 4 * MAX_CONNECTIONS;
/// How long a host connection may take to send `CONNECT <port>\n`.
const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the guest may take to answer a connection request once it has it: a guest that
/// does not listen answers at once (a reset); a busy one, or one in an emulated host, can
/// take seconds.
const GUEST_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// First port the host side uses for its own end of host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// epoll tokens below this are the device's own; connection tokens start here.
pub const FIRST_CONN_TOKEN: u32 = 16;
/// The listener's token.
pub const LISTENER_TOKEN: u32 = 3;

/// How the muxer asks the event loop to watch its sockets.
pub trait Watcher {
    fn add(&mut self, fd: RawFd, token: u32, events: EventSet);
    fn modify(&mut self, fd: RawFd, token: u32, events: EventSet);
    fn remove(&mut self, fd: RawFd, token: u32);
}

impl Watcher for event_manager::EventOps<'_> {
    fn add(&mut self, fd: RawFd, token: u32, events: EventSet) {
        if let Err(e) = event_manager::EventOps::add(
            self,
            event_manager::Events::with_data_raw(fd, token, events),
        ) {
            log::error!("vsock: cannot watch fd {fd}: {e}");
        }
    }
    fn modify(&mut self, fd: RawFd, token: u32, events: EventSet) {
        if let Err(e) = event_manager::EventOps::modify(
            self,
            event_manager::Events::with_data_raw(fd, token, events),
        ) {
            log::error!("vsock: cannot change the watch on fd {fd}: {e}");
        }
    }
    fn remove(&mut self, fd: RawFd, token: u32) {
        if let Err(e) = event_manager::EventOps::remove(
            self,
            event_manager::Events::with_data_raw(fd, token, EventSet::empty()),
        ) {
            log::error!("vsock: cannot unwatch fd {fd}: {e}");
        }
    }
}

/// Errors setting the muxer up.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// The VM's Unix socket cannot be created.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A connection key: (host-side port, guest-side port).
type Key = (u32, u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated; REQUEST queued or sent, waiting for the guest's RESPONSE.
    LocalInit,
    /// Both sides connected.
    Established,
}

struct Connection {
    stream: UnixStream,
    token: u32,
    state: State,
    /// Interest currently registered with the event loop (None: not watched).
    watched: Option<EventSet>,
    /// Guest→host bytes not yet written to the stream.
    to_host: VecDeque<u8>,
    /// Guest→host bytes written to the stream (the credit counter we report).
    fwd_cnt: Wrapping<u32>,
    /// The fwd_cnt the guest last heard from us.
    fwd_cnt_sent: Wrapping<u32>,
    /// Host→guest bytes sent.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// The guest will send no more (SHUTDOWN SEND).
    guest_done_sending: bool,
    /// The guest will receive no more (SHUTDOWN RCV).
    guest_done_receiving: bool,
    /// The host stream reached EOF; the guest was told with SHUTDOWN SEND.
    host_eof: bool,
    /// The guest reset the connection after its SHUTDOWN SEND, with data of its still
    /// buffered here: that data is delivered, and the guest hears nothing more.
    guest_reset: bool,
    /// We already asked the guest for credit and are waiting.
    credit_requested: bool,
    /// Set while waiting for the guest's RESPONSE after it got our REQUEST.
    deadline: Option<Instant>,
    /// Bytes the host sent after its CONNECT line, before the guest accepted.
    early_data: Vec<u8>,
}

impl Connection {
    fn new(stream: UnixStream, token: u32, state: State) -> Self {
        Connection {
            stream,
            token,
            state,
            watched: None,
            to_host: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            guest_done_sending: false,
            guest_done_receiving: false,
            host_eof: false,
            guest_reset: false,
            credit_requested: false,
            deadline: None,
            early_data: Vec::new(),
        }
    }

    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether host data may flow to the guest now.
    fn may_read_host(&self) -> bool {
        self.state == State::Established && !self.host_eof && !self.guest_done_receiving
    }

    /// Whether the connection has nothing left to do in either direction.
    fn finished(&self) -> bool {
        let guest_to_host_done = self.guest_done_sending && self.to_host.is_empty();
        let host_to_guest_done = self.host_eof || self.guest_done_receiving;
        guest_to_host_done && host_to_guest_done
    }

    /// The guest's view of how much more it may send; low means it may block on us.
    fn guest_visible_free(&self) -> u32 {
        let unreported = (self.fwd_cnt - self.fwd_cnt_sent).0;
        BUF_ALLOC
            .saturating_sub(self.to_host.len() as u32)
            .saturating_sub(unreported)
    }

    fn desired_interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.state == State::Established {
            if self.may_read_host() && !self.credit_requested {
                set |= EventSet::IN;
            }
            if !self.to_host.is_empty() {
                set |= EventSet::OUT;
            }
        }
        set
    }
}

/// A host connection that has not sent its `CONNECT <port>\n` line yet.
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// The connection table and the host sockets behind it.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    pending_host: HashMap<u32, PendingHost>,
    conns: HashMap<Key, Connection>,
    tokens: HashMap<u32, Key>,
    /// Control packets for the guest, in order.
    control: VecDeque<Header>,
    /// Connections that may have host data for the guest.
    rx_ready: VecDeque<Key>,
    next_local_port: u32,
    next_token: u32,
}

impl Muxer {
    /// A muxer for the guest `guest_cid`, listening on `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        let listener = UnixListener::bind(uds_path)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| MuxerError::Listen {
                path: uds_path.to_path_buf(),
                source,
            })?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            pending_host: HashMap::new(),
            conns: HashMap::new(),
            tokens: HashMap::new(),
            control: VecDeque::new(),
            rx_ready: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            next_token: FIRST_CONN_TOKEN,
        })
    }

    /// The Unix socket host processes connect to.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Starts watching the listener.
    pub fn init(&mut self, w: &mut dyn Watcher) {
        w.add(self.listener.as_raw_fd(), LISTENER_TOKEN, EventSet::IN);
    }

    /// Whether the guest has packets waiting for RX buffers.
    pub fn has_rx_work(&self) -> bool {
        !self.control.is_empty() || !self.rx_ready.is_empty()
    }

    /// Number of live connections (for tests and metrics).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Drops every connection: the guest's driver reset, so its sockets are gone.
    pub fn reset(&mut self, w: &mut dyn Watcher) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key, w);
        }
        self.control.clear();
        self.rx_ready.clear();
    }

    fn alloc_token(&mut self) -> u32 {
        loop {
            let token = self.next_token;
            self.next_token = self.next_token.checked_add(1).unwrap_or(FIRST_CONN_TOKEN);
            if !self.tokens.contains_key(&token) && !self.pending_host.contains_key(&token) {
                return token;
            }
        }
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|&(local, _)| local == port) {
                return port;
            }
        }
    }

    fn header(&self, key: Key, op: u16) -> Header {
        let fwd_cnt = self.conns.get(&key).map_or(0, |c| c.fwd_cnt.0);
        make_header(self.guest_cid, key, fwd_cnt, op)
    }

    fn push_control(&mut self, h: Header) {
        if self.control.len() >= MAX_CONTROL_BACKLOG {
            crate::warn_limited!(
                "vsock: guest is not draining its RX queue; control packet dropped"
            );
            return;
        }
        if let Some(conn) = self.conns.get_mut(&(h.src_port, h.dst_port)) {
            conn.fwd_cnt_sent = Wrapping(h.fwd_cnt);
        }
        self.control.push_back(h);
    }

    fn send_rst(&mut self, key: Key) {
        let h = self.header(key, op::RST);
        self.push_control(h);
    }

    /// Refuses a guest packet for which we have no connection.
    fn rst_reply(&mut self, pkt: &Header) {
        if pkt.op == op::RST {
            return;
        }
        let mut h = self.header((pkt.dst_port, pkt.src_port), op::RST);
        h.fwd_cnt = 0;
        self.push_control(h);
    }

    fn update_watch(&mut self, key: Key, w: &mut dyn Watcher) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let want = conn.desired_interest();
        let fd = conn.stream.as_raw_fd();
        match (conn.watched, want.is_empty()) {
            (None, true) => {}
            (None, false) => {
                w.add(fd, conn.token, want);
                conn.watched = Some(want);
            }
            (Some(_), true) => {
                // An empty set would still report hang-ups, over and over: stop watching.
                w.remove(fd, conn.token);
                conn.watched = None;
            }
            (Some(current), false) if current != want => {
                w.modify(fd, conn.token, want);
                conn.watched = Some(want);
            }
            _ => {}
        }
    }

    fn remove(&mut self, key: Key, w: &mut dyn Watcher) {
        if let Some(conn) = self.conns.remove(&key) {
            if conn.watched.is_some() {
                w.remove(conn.stream.as_raw_fd(), conn.token);
            }
            self.tokens.remove(&conn.token);
        }
        self.rx_ready.retain(|k| *k != key);
    }

    /// Resets a connection: RST to the guest, the host stream closed.
    fn kill(&mut self, key: Key, w: &mut dyn Watcher) {
        self.send_rst(key);
        self.remove(key, w);
    }

    fn finish_if_done(&mut self, key: Key, w: &mut dyn Watcher) {
        if self
            .conns
            .get(&key)
            .is_some_and(|c| c.finished() && c.guest_reset)
        {
            self.remove(key, w);
        } else if self.conns.get(&key).is_some_and(Connection::finished) {
            // Both directions are over; a RST frees the guest's socket without its linger.
            self.kill(key, w);
        } else {
            self.update_watch(key, w);
        }
    }

    /// Handles readiness of one of the muxer's sockets.
    pub fn handle_event(&mut self, token: u32, events: EventSet, w: &mut dyn Watcher) {
        if token == LISTENER_TOKEN {
            self.accept_all(w);
        } else if self.pending_host.contains_key(&token) {
            self.read_connect_line(token, w);
        } else if let Some(&key) = self.tokens.get(&token) {
            self.conn_event(key, events, w);
        }
        self.sweep(Instant::now(), w);
    }

    fn accept_all(&mut self, w: &mut dyn Watcher) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending_host.len() >= MAX_PENDING_HOST
                        || self.conns.len() >= MAX_CONNECTIONS
                    {
                        log::warn!("vsock: too many host connections; refusing one");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        log::warn!("vsock: cannot make a host connection non-blocking: {e}");
                        continue;
                    }
                    let token = self.alloc_token();
                    w.add(stream.as_raw_fd(), token, EventSet::IN);
                    self.pending_host.insert(
                        token,
                        PendingHost {
                            stream,
                            line: Vec::new(),
                            deadline: Instant::now() + CONNECT_LINE_TIMEOUT,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("vsock: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn read_connect_line(&mut self, token: u32, w: &mut dyn Watcher) {
        let Some(pending) = self.pending_host.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 64];
        let outcome = match pending.stream.read(&mut buf) {
            Ok(0) => Err("closed before its CONNECT line".to_string()),
            Ok(n) => {
                pending.line.extend_from_slice(&buf[..n]);
                match pending.line.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        let rest = pending.line.split_off(end + 1);
                        parse_connect_line(&pending.line[..end]).map(|port| Some((port, rest)))
                    }
                    None if pending.line.len() > 32 => Err("CONNECT line too long".to_string()),
                    None => Ok(None),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(format!("read failed: {e}")),
        };
        match outcome {
            Ok(None) => {}
            Ok(Some((port, early_data))) => {
                let Some(pending) = self.pending_host.remove(&token) else {
                    return;
                };
                w.remove(pending.stream.as_raw_fd(), token);
                if self.conns.len() >= MAX_CONNECTIONS {
                    log::warn!("vsock: connection limit reached; refusing CONNECT {port}");
                    return;
                }
                let local = self.alloc_local_port();
                let key = (local, port);
                let mut conn = Connection::new(pending.stream, token, State::LocalInit);
                conn.early_data = early_data;
                self.conns.insert(key, conn);
                self.tokens.insert(token, key);
                let h = self.header(key, op::REQUEST);
                self.push_control(h);
            }
            Err(reason) => {
                if let Some(pending) = self.pending_host.remove(&token) {
                    w.remove(pending.stream.as_raw_fd(), token);
                }
                log::debug!("vsock: host connection dropped: {reason}");
            }
        }
    }

    fn conn_event(&mut self, key: Key, events: EventSet, w: &mut dyn Watcher) {
        if events.contains(EventSet::OUT) && self.flush_to_host(key).is_err() {
            self.kill(key, w);
            return;
        }
        if events
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
        {
            // Reading happens when the guest has buffers for it; until then, stop watching.
            if let Some(conn) = self.conns.get(&key) {
                if conn.may_read_host() && !self.rx_ready.contains(&key) {
                    self.rx_ready.push_back(key);
                }
            }
            if let Some(conn) = self.conns.get_mut(&key) {
                if conn.watched.is_some() {
                    w.remove(conn.stream.as_raw_fd(), conn.token);
                    conn.watched = None;
                }
            }
            if events.contains(EventSet::OUT) {
                self.update_watch(key, w);
            }
            return;
        }
        self.finish_if_done(key, w);
    }

    /// Writes buffered guest data to the host stream; Err means the host side is gone.
    fn flush_to_host(&mut self, key: Key) -> Result<(), ()> {
        let Some(conn) = self.conns.get_mut(&key) else {
            return Ok(());
        };
        while !conn.to_host.is_empty() {
            let (front, _) = conn.to_host.as_slices();
            match conn.stream.write(front) {
                Ok(0) => return Err(()),
                Ok(n) => {
                    log::trace!("vsock: {n} bytes to the host on port {}", key.0);
                    conn.to_host.drain(..n);
                    conn.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!(
                        "vsock: host side of port {} failed: errno {:?} kind {:?}",
                        key.0,
                        e.raw_os_error(),
                        e.kind()
                    );
                    return Err(());
                }
            }
        }
        if conn.to_host.is_empty() && conn.guest_done_sending {
            // Pass the guest's half-close on, so the host reader sees EOF.
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
        if conn.fwd_cnt != conn.fwd_cnt_sent
            && conn.guest_visible_free() < BUF_ALLOC / 2
            && !conn.guest_done_sending
        {
            let h = self.header(key, op::CREDIT_UPDATE);
            self.push_control(h);
        }
        Ok(())
    }

    /// Handles one packet from the guest's TX queue (already validated by the device).
    pub fn handle_guest_packet(&mut self, pkt: &Header, payload: &[u8], w: &mut dyn Watcher) {
        log::trace!(
            "vsock: guest packet {pkt:?} payload {:02x?}",
            &payload[..payload.len().min(96)]
        );
        if pkt.type_ != TYPE_STREAM || pkt.dst_cid != HOST_CID {
            crate::warn_limited!(
                "vsock: guest packet of type {} to CID {}; refused",
                pkt.type_,
                pkt.dst_cid
            );
            self.rst_reply(pkt);
            return;
        }
        let key = (pkt.dst_port, pkt.src_port);
        if pkt.op == op::REQUEST {
            self.guest_connect(pkt, w);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.rst_reply(pkt);
            return;
        };
        conn.peer_buf_alloc = pkt.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(pkt.fwd_cnt);
        if conn.credit_requested && conn.peer_credit() > 0 {
            conn.credit_requested = false;
            if conn.may_read_host() && !self.rx_ready.contains(&key) {
                self.rx_ready.push_back(key);
            }
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        match (pkt.op, conn.state) {
            (op::RESPONSE, State::LocalInit) => {
                conn.state = State::Established;
                conn.deadline = None;
                let reply = format!("OK {}\n", key.0);
                // A few bytes into a fresh socket: a short write means the host is gone.
                if !matches!(conn.stream.write(reply.as_bytes()), Ok(n) if n == reply.len()) {
                    self.kill(key, w);
                    return;
                }
                if !conn.early_data.is_empty() {
                    // Bytes the host sent ahead of time are delivered like any others.
                    self.rx_ready.push_back(key);
                } else {
                    self.update_watch(key, w);
                }
            }
            (op::RST, State::Established)
                if conn.guest_done_sending && !conn.to_host.is_empty() =>
            {
                // Linux resets a socket closed after its SHUTDOWN once its close timeout
                // passes (8 s): a host reader slower than that must still get every byte
                // the guest sent before it shut down.
                conn.guest_reset = true;
                conn.guest_done_receiving = true;
                self.rx_ready.retain(|k| *k != key);
                self.update_watch(key, w);
            }
            (op::RST, _) => self.remove(key, w),
            (op::RW, State::Established) => {
                if conn.guest_done_sending {
                    crate::warn_limited!("vsock: guest sent data after its SHUTDOWN; reset");
                    self.kill(key, w);
                    return;
                }
                if conn.to_host.len() + payload.len() > BUF_ALLOC as usize {
                    crate::warn_limited!("vsock: guest overran its credit; reset");
                    self.kill(key, w);
                    return;
                }
                conn.to_host.extend(payload);
                if self.flush_to_host(key).is_err() {
                    self.kill(key, w);
                    return;
                }
                self.update_watch(key, w);
            }
            (op::CREDIT_UPDATE, State::Established) => self.update_watch(key, w),
            (op::CREDIT_REQUEST, State::Established) => {
                let h = self.header(key, op::CREDIT_UPDATE);
                self.push_control(h);
            }
            (op::SHUTDOWN, State::Established) => {
                if pkt.flags & shutdown::SEND != 0 {
                    conn.guest_done_sending = true;
                    if conn.to_host.is_empty() {
                        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                    }
                }
                if pkt.flags & shutdown::RCV != 0 {
                    conn.guest_done_receiving = true;
                    self.rx_ready.retain(|k| *k != key);
                }
                self.finish_if_done(key, w);
            }
            (op, state) => {
                crate::warn_limited!("vsock: operation {op} in state {state:?}; reset");
                self.kill(key, w);
            }
        }
    }

    fn guest_connect(&mut self, pkt: &Header, w: &mut dyn Watcher) {
        let key = (pkt.dst_port, pkt.src_port);
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            self.rst_reply(pkt);
            return;
        }
        let path = format!("{}_{}", self.uds_path.display(), pkt.dst_port);
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => stream,
            Err(e) => {
                log::debug!(
                    "vsock: guest connection to host port {} refused: {e}",
                    pkt.dst_port
                );
                self.rst_reply(pkt);
                return;
            }
        };
        let token = self.alloc_token();
        let mut conn = Connection::new(stream, token, State::Established);
        conn.peer_buf_alloc = pkt.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(pkt.fwd_cnt);
        self.conns.insert(key, conn);
        self.tokens.insert(token, key);
        let h = self.header(key, op::RESPONSE);
        self.push_control(h);
        self.update_watch(key, w);
    }

    /// Produces the next packet for the guest, with up to `max_payload` bytes of data in
    /// `payload`. Returns None when there is nothing to send.
    pub fn next_rx_packet(
        &mut self,
        max_payload: usize,
        payload: &mut Vec<u8>,
        w: &mut dyn Watcher,
    ) -> Option<Header> {
        payload.clear();
        if let Some(h) = self.control.pop_front() {
            log::trace!("vsock: control packet to the guest {h:?}");
            if h.op == op::REQUEST {
                if let Some(conn) = self.conns.get_mut(&(h.src_port, h.dst_port)) {
                    conn.deadline = Some(Instant::now() + GUEST_RESPONSE_TIMEOUT);
                }
            }
            return Some(h);
        }
        while let Some(key) = self.rx_ready.pop_front() {
            if let Some(h) = self.read_host_data(key, max_payload, payload, w) {
                return Some(h);
            }
        }
        None
    }

    /// Reads host data for one connection. Returns a packet, or None when the connection
    /// has nothing to send now (it is then watched again).
    fn read_host_data(
        &mut self,
        key: Key,
        max_payload: usize,
        payload: &mut Vec<u8>,
        w: &mut dyn Watcher,
    ) -> Option<Header> {
        let guest_cid = self.guest_cid;
        let conn = self.conns.get_mut(&key)?;
        if !conn.may_read_host() {
            self.finish_if_done(key, w);
            return None;
        }
        let credit = conn.peer_credit() as usize;
        if credit == 0 {
            if conn.credit_requested {
                self.update_watch(key, w);
                return None;
            }
            conn.credit_requested = true;
            let h = make_header(guest_cid, key, conn.fwd_cnt.0, op::CREDIT_REQUEST);
            self.update_watch(key, w);
            return Some(h);
        }
        let want = max_payload.min(credit).min(MAX_PAYLOAD);
        if !conn.early_data.is_empty() {
            let n = want.min(conn.early_data.len());
            payload.extend(conn.early_data.drain(..n));
            conn.rx_cnt += Wrapping(n as u32);
            conn.fwd_cnt_sent = conn.fwd_cnt;
            let mut h = make_header(guest_cid, key, conn.fwd_cnt.0, op::RW);
            h.len = n as u32;
            self.rx_ready.push_back(key);
            return Some(h);
        }
        payload.resize(want, 0);
        let read = loop {
            match conn.stream.read(payload) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match read {
            Ok(0) => {
                payload.clear();
                conn.host_eof = true;
                if conn.finished() {
                    // Nothing more either way: a RST closes it outright.
                    let h = make_header(guest_cid, key, conn.fwd_cnt.0, op::RST);
                    self.remove(key, w);
                    return Some(h);
                }
                let mut h = make_header(guest_cid, key, conn.fwd_cnt.0, op::SHUTDOWN);
                h.flags = shutdown::SEND;
                conn.fwd_cnt_sent = conn.fwd_cnt;
                self.update_watch(key, w);
                Some(h)
            }
            Ok(n) => {
                payload.truncate(n);
                conn.rx_cnt += Wrapping(n as u32);
                conn.fwd_cnt_sent = conn.fwd_cnt;
                let mut h = make_header(guest_cid, key, conn.fwd_cnt.0, op::RW);
                h.len = n as u32;
                // There may be more: keep the connection in line.
                self.rx_ready.push_back(key);
                Some(h)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                payload.clear();
                self.update_watch(key, w);
                None
            }
            Err(_) => {
                payload.clear();
                let h = make_header(guest_cid, key, conn.fwd_cnt.0, op::RST);
                self.remove(key, w);
                Some(h)
            }
        }
    }

    /// Expires host connections that never sent their CONNECT line and requests the guest
    /// never answered. Returns whether anything is still waiting on a deadline.
    pub fn sweep(&mut self, now: Instant, w: &mut dyn Watcher) -> bool {
        let stale: Vec<u32> = self
            .pending_host
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for token in stale {
            if let Some(p) = self.pending_host.remove(&token) {
                w.remove(p.stream.as_raw_fd(), token);
            }
        }
        let expired: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&k, _)| k)
            .collect();
        for key in expired {
            log::debug!("vsock: guest did not answer a connection to port {}", key.1);
            self.kill(key, w);
        }
        !self.pending_host.is_empty() || self.conns.values().any(|c| c.deadline.is_some())
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // The socket file is ours: leave nothing behind.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

fn make_header(guest_cid: u64, key: Key, fwd_cnt: u32, op: u16) -> Header {
    Header {
        src_cid: HOST_CID,
        dst_cid: guest_cid,
        src_port: key.0,
        dst_port: key.1,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: BUF_ALLOC,
        fwd_cnt,
    }
}

fn parse_connect_line(line: &[u8]) -> Result<u32, String> {
    let text = std::str::from_utf8(line).map_err(|_| "CONNECT line is not text".to_string())?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text
        .strip_prefix("CONNECT ")
        .ok_or_else(|| format!("expected `CONNECT <port>`, got {text:?}"))?;
    port.trim()
        .parse::<u32>()
        .map_err(|_| format!("bad port in {text:?}"))
}

/// Connects to a Unix socket without blocking the event loop on a full backlog.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un that outlives the call and `len` does not
    // exceed its size; `fd` is a valid socket.
    let rc = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
    if rc < 0 {
        // Unix sockets connect at once or fail (EAGAIN: the listener's backlog is full).
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[derive(Default)]
    struct Recorder {
        watched: HashMap<RawFd, (u32, EventSet)>,
    }

    impl Watcher for Recorder {
        fn add(&mut self, fd: RawFd, token: u32, events: EventSet) {
            assert!(
                self.watched.insert(fd, (token, events)).is_none(),
                "fd {fd} added twice"
            );
        }
        fn modify(&mut self, fd: RawFd, token: u32, events: EventSet) {
            assert!(
                self.watched.insert(fd, (token, events)).is_some(),
                "fd {fd} not watched"
            );
        }
        fn remove(&mut self, fd: RawFd, _token: u32) {
            assert!(self.watched.remove(&fd).is_some(), "fd {fd} not watched");
        }
    }

    const GUEST: u64 = 3;

    struct Fixture {
        dir: PathBuf,
        mux: Muxer,
        w: Recorder,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("berth-vsock-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut mux = Muxer::new(GUEST, &dir.join("v.sock")).unwrap();
            let mut w = Recorder::default();
            mux.init(&mut w);
            Fixture { dir, mux, w }
        }

        fn pump_fds(&mut self) {
            // Deliver readiness for every watched fd, as the event loop would.
            for _ in 0..4 {
                let ready: Vec<(u32, EventSet)> = self.w.watched.values().copied().collect();
                for (token, set) in ready {
                    self.mux.handle_event(token, set, &mut self.w);
                }
            }
        }

        fn rx(&mut self) -> Vec<(Header, Vec<u8>)> {
            let mut out = vec![];
            let mut buf = vec![];
            while let Some(h) = self.mux.next_rx_packet(4096, &mut buf, &mut self.w) {
                out.push((h, buf.clone()));
            }
            out
        }

        fn guest(&mut self, op: u16, src_port: u32, dst_port: u32, payload: &[u8]) {
            let h = Header {
                src_cid: GUEST,
                dst_cid: HOST_CID,
                src_port,
                dst_port,
                len: payload.len() as u32,
                type_: TYPE_STREAM,
                op,
                flags: 0,
                buf_alloc: 64 << 10,
                fwd_cnt: 0,
            };
            self.mux.handle_guest_packet(&h, payload, &mut self.w);
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn host_initiated_connection_roundtrip() {
        let mut f = Fixture::new("host");
        let mut host = UnixStream::connect(f.mux.uds_path()).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        f.pump_fds();
        let pkts = f.rx();
        assert_eq!(pkts.len(), 1);
        let req = pkts[0].0;
        assert_eq!(
            (req.op, req.dst_port, req.dst_cid),
            (op::REQUEST, 1024, GUEST)
        );
        let local = req.src_port;
        f.guest(op::RESPONSE, 1024, local, &[]);
        let mut line = [0u8; 64];
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = host.read(&mut line).unwrap();
        assert_eq!(
            std::str::from_utf8(&line[..n]).unwrap(),
            format!("OK {local}\n")
        );

        // guest -> host
        f.guest(op::RW, 1024, local, b"hello host");
        let mut got = [0u8; 10];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello host");

        // host -> guest
        host.write_all(b"hello guest").unwrap();
        f.pump_fds();
        let pkts = f.rx();
        assert_eq!(pkts[0].0.op, op::RW);
        assert_eq!(pkts[0].1, b"hello guest");
        assert_eq!(pkts[0].0.fwd_cnt, 10, "the guest learns what we forwarded");

        // host closes: the guest hears SHUTDOWN(SEND); the guest then shuts down too.
        drop(host);
        f.pump_fds();
        let pkts = f.rx();
        assert_eq!(pkts.last().unwrap().0.op, op::SHUTDOWN);
        assert_eq!(pkts.last().unwrap().0.flags, shutdown::SEND);
        let mut h = Header {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: local,
            type_: TYPE_STREAM,
            op: op::SHUTDOWN,
            flags: shutdown::SEND | shutdown::RCV,
            ..Default::default()
        };
        f.mux.handle_guest_packet(&h, &[], &mut f.w);
        assert_eq!(f.mux.connection_count(), 0);
        assert_eq!(f.rx().last().unwrap().0.op, op::RST);
        h.op = op::RW;
        h.len = 1;
        f.mux.handle_guest_packet(&h, b"x", &mut f.w);
        assert_eq!(
            f.rx()[0].0.op,
            op::RST,
            "data for a closed connection is refused"
        );
        assert_eq!(f.w.watched.len(), 1, "only the listener is left");
    }

    #[test]
    fn guest_initiated_connection_to_a_host_listener() {
        let mut f = Fixture::new("guest");
        let listener = UnixListener::bind(format!("{}_1025", f.mux.uds_path().display())).unwrap();
        f.guest(op::REQUEST, 5000, 1025, &[]);
        let pkts = f.rx();
        assert_eq!(pkts[0].0.op, op::RESPONSE);
        let (mut host, _) = listener.accept().unwrap();
        f.guest(op::RW, 5000, 1025, b"ready");
        let mut got = [0u8; 5];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ready");
        // No listener on 1026: refused.
        f.guest(op::REQUEST, 5001, 1026, &[]);
        assert_eq!(f.rx()[0].0.op, op::RST);
    }

    #[test]
    fn garbage_connect_lines_and_overruns_are_contained() {
        let mut f = Fixture::new("garbage");
        let mut bad = UnixStream::connect(f.mux.uds_path()).unwrap();
        bad.write_all(b"HELLO THERE\n").unwrap();
        let mut long = UnixStream::connect(f.mux.uds_path()).unwrap();
        long.write_all(&[b'A'; 100]).unwrap();
        f.pump_fds();
        assert!(f.rx().is_empty());
        assert_eq!(
            f.w.watched.len(),
            1,
            "both dropped; only the listener is watched"
        );

        // A guest overrunning its credit is reset.
        let _listener = UnixListener::bind(format!("{}_7", f.mux.uds_path().display())).unwrap();
        f.guest(op::REQUEST, 9, 7, &[]);
        f.rx();
        let chunk = vec![0u8; MAX_PAYLOAD];
        for _ in 0..(BUF_ALLOC as usize / MAX_PAYLOAD) + 8 {
            f.guest(op::RW, 9, 7, &chunk);
        }
        assert_eq!(f.mux.connection_count(), 0);
        assert!(f.rx().iter().any(|(h, _)| h.op == op::RST));

        // Unknown operations, wrong types and stray packets get RSTs, no panic.
        f.guest(99, 1, 2, &[]);
        f.guest(op::CREDIT_UPDATE, 1, 2, &[]);
        f.guest(op::RST, 1, 2, &[]);
        let pkts = f.rx();
        assert_eq!(pkts.len(), 2, "no RST in reply to a RST");
    }

    #[test]
    fn the_guest_gets_no_more_than_its_credit() {
        let mut f = Fixture::new("credit");
        let listener = UnixListener::bind(format!("{}_8", f.mux.uds_path().display())).unwrap();
        let mut h = Header {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port: 10,
            dst_port: 8,
            type_: TYPE_STREAM,
            op: op::REQUEST,
            buf_alloc: 100,
            ..Default::default()
        };
        f.mux.handle_guest_packet(&h, &[], &mut f.w);
        f.rx();
        let (mut host, _) = listener.accept().unwrap();
        host.write_all(&[7u8; 300]).unwrap();
        f.pump_fds();
        let pkts = f.rx();
        let data: usize = pkts
            .iter()
            .filter(|(h, _)| h.op == op::RW)
            .map(|(_, p)| p.len())
            .sum();
        assert_eq!(data, 100);
        assert_eq!(pkts.last().unwrap().0.op, op::CREDIT_REQUEST);
        // The guest consumed everything: 200 more may flow.
        h.op = op::CREDIT_UPDATE;
        h.buf_alloc = 200;
        h.fwd_cnt = 100;
        f.mux.handle_guest_packet(&h, &[], &mut f.w);
        f.pump_fds();
        let data: usize = f
            .rx()
            .iter()
            .filter(|(h, _)| h.op == op::RW)
            .map(|(_, p)| p.len())
            .sum();
        assert_eq!(data, 200);
    }

    #[test]
    fn data_buffered_for_a_slow_host_survives_the_guests_reset() {
        let mut f = Fixture::new("slowreader");
        let listener = UnixListener::bind(format!("{}_1025", f.mux.uds_path().display())).unwrap();
        f.guest(op::REQUEST, 5000, 1025, &[]);
        assert_eq!(f.rx()[0].0.op, op::RESPONSE);
        let (mut host, _) = listener.accept().unwrap();
        // More than a Unix socket buffers, so some stays in the muxer until the host reads.
        let chunk: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        let mut sent = Vec::new();
        for _ in 0..4 {
            f.guest(op::RW, 5000, 1025, &chunk);
            sent.extend_from_slice(&chunk);
        }
        let key = *f.mux.conns.keys().next().unwrap();
        assert!(
            !f.mux.conns[&key].to_host.is_empty(),
            "the test needs data held back"
        );
        let mut h = Header {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port: 5000,
            dst_port: 1025,
            type_: TYPE_STREAM,
            op: op::SHUTDOWN,
            flags: shutdown::SEND | shutdown::RCV,
            ..Default::default()
        };
        f.mux.handle_guest_packet(&h, &[], &mut f.w);
        h.op = op::RST;
        h.flags = 0;
        f.mux.handle_guest_packet(&h, &[], &mut f.w);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            host.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            host.read_to_end(&mut got).map(|_| got)
        });
        for _ in 0..1000 {
            if f.mux.connection_count() == 0 {
                break;
            }
            f.pump_fds();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(f.mux.connection_count(), 0, "closed once delivered");
        let got = reader.join().unwrap().unwrap();
        assert!(got == sent, "{} of {} bytes arrived", got.len(), sent.len());
        assert!(
            f.rx().iter().all(|(h, _)| h.op != op::RST),
            "no reset answers the guest's reset"
        );
    }

    #[test]
    fn unanswered_requests_time_out() {
        let mut f = Fixture::new("timeout");
        let mut host = UnixStream::connect(f.mux.uds_path()).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        f.pump_fds();
        assert_eq!(f.rx()[0].0.op, op::REQUEST);
        assert!(f.mux.sweep(Instant::now(), &mut f.w));
        f.mux
            .sweep(Instant::now() + GUEST_RESPONSE_TIMEOUT * 2, &mut f.w);
        assert_eq!(f.mux.connection_count(), 0);
        let mut buf = [0u8; 8];
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            host.read(&mut buf).unwrap(),
            0,
            "the host sees the refusal as EOF"
        );
    }

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect_line(b"CONNECT 1024"), Ok(1024));
        assert_eq!(parse_connect_line(b"CONNECT 5\r"), Ok(5));
        assert!(parse_connect_line(b"CONNECT -1").is_err());
        assert!(parse_connect_line(b"CONNECT 99999999999").is_err());
        assert!(parse_connect_line(b"connect 1").is_err());
        assert!(parse_connect_line(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn data_then_shutdown_reaches_a_host_that_accepted_first() {
        let dir = std::env::temp_dir().join(format!("berth-vsock-rl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut mux = Muxer::new(3, &dir.join("v.sock")).unwrap();
        struct W;
        impl Watcher for W {
            fn add(&mut self, _: RawFd, _: u32, _: EventSet) {}
            fn modify(&mut self, _: RawFd, _: u32, _: EventSet) {}
            fn remove(&mut self, _: RawFd, _: u32) {}
        }
        let listener = UnixListener::bind(dir.join("v.sock_1025")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let h = |op, len, flags| Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 77,
            dst_port: 1025,
            len,
            type_: 1,
            op,
            flags,
            buf_alloc: 262144,
            fwd_cnt: 0,
        };
        mux.handle_guest_packet(&h(op::REQUEST, 0, 0), &[], &mut W);
        let (mut s, _) = listener.accept().unwrap();
        mux.handle_guest_packet(&h(op::RW, 5, 0), b"hello", &mut W);
        mux.handle_guest_packet(&h(op::SHUTDOWN, 0, 3), &[], &mut W);
        mux.handle_guest_packet(&h(op::RST, 0, 0), &[], &mut W);
        s.set_nonblocking(false).unwrap();
        let mut got = vec![];
        s.read_to_end(&mut got).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got, b"hello");
    }
}
