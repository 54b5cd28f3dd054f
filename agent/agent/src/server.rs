//! The agent's server: accepts connections, tells control connections from stream
//! connections by their first frame, and turns requests into process-table calls. Protocol
//! errors meet the wire here and only here.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol::{
    parse_header, parse_request, read_frame_body, write_frame, ConnectionHeader, ErrorCode,
    FrameError, Notification, Request, Response, PROTOCOL_VERSION,
};
use nix::sys::signal::Signal;

use crate::process::{ProcessError, ProcessTable};
use crate::transport::{Conn, Listener, ReadyTarget, TransportError};

/// The agent's version, reported in `Hello` and `Ready`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long `Shutdown` waits after SIGTERM before SIGKILL, unless the request says.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

fn error_reply(e: &ProcessError) -> Response {
    Response::error_truncated(e.code(), e.describe())
}

/// The server state shared by all connection threads.
#[derive(Debug)]
pub struct Agent {
    table: Arc<ProcessTable>,
    /// PID 1 of a VM: shutdown ends the VM. Otherwise (tests) it ends this process.
    pid1: bool,
    shutting_down: AtomicBool,
}

/// What a control connection does after sending a reply.
enum After {
    Continue,
    Shutdown(Duration),
}

impl Agent {
    pub fn new(table: Arc<ProcessTable>, pid1: bool) -> Arc<Self> {
        Arc::new(Agent {
            table,
            pid1,
            shutting_down: AtomicBool::new(false),
        })
    }

    /// Accepts connections forever, one thread each.
    pub fn serve(self: &Arc<Self>, listener: &Listener) -> ! {
        let mut warn = RateLimitedWarning::new();
        loop {
            match listener.accept() {
                Ok(conn) => {
                    let agent = Arc::clone(self);
                    let r = std::thread::Builder::new()
                        .name("conn".into())
                        .spawn(move || agent.handle_connection(conn));
                    if let Err(e) = r {
                        warn.warn(format_args!("cannot start a connection thread: {e}"));
                    }
                }
                Err(e @ TransportError::ForeignPeer { .. }) => log::debug!("{e}"),
                Err(e) => {
                    warn.warn(format_args!("{e}: {}", error_chain(&e)));
                    // Out of fds or memory: give the system a moment.
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn handle_connection(self: &Arc<Self>, mut conn: Conn) {
        let body = match read_frame_body(&mut conn) {
            Ok(b) => b,
            Err(e) => {
                reply_to_bad_frame(&mut conn, &e);
                return;
            }
        };
        match parse_header(&body) {
            Err(e) => {
                log::debug!("bad connection header: {}", e.describe());
                let _ = write_frame(
                    &mut conn,
                    &Response::error_truncated(e.code(), e.describe()),
                );
            }
            Ok(ConnectionHeader::Hello { protocol_version }) => {
                if !PROTOCOL_VERSION.is_compatible_with(protocol_version) {
                    let msg = format!(
                        "host speaks protocol {protocol_version}, agent speaks {PROTOCOL_VERSION}"
                    );
                    let _ = write_frame(
                        &mut conn,
                        &Response::error(ErrorCode::IncompatibleVersion, msg),
                    );
                    return;
                }
                let hello = Response::Hello {
                    protocol_version: PROTOCOL_VERSION,
                    agent_version: AGENT_VERSION.to_owned(),
                };
                if write_frame(&mut conn, &hello).is_ok() {
                    self.control_loop(conn);
                }
            }
            Ok(ConnectionHeader::Attach { process_id, stream }) => {
                let r = self.table.attach(&process_id, stream, conn, |c| {
                    write_frame(c, &Response::Ok).map_err(frame_to_io)
                });
                // On success the connection now belongs to the process.
                if let Err((e, mut conn)) = r {
                    log::debug!("attach refused: {}", e.describe());
                    let _ = write_frame(&mut conn, &error_reply(&e));
                }
            }
        }
    }

    fn control_loop(self: &Arc<Self>, mut conn: Conn) {
        loop {
            let body = match read_frame_body(&mut conn) {
                Ok(b) => b,
                Err(e) => {
                    reply_to_bad_frame(&mut conn, &e);
                    return;
                }
            };
            let (reply, after) = match parse_request(&body) {
                Err(e) => {
                    log::debug!("bad request: {}", e.describe());
                    (
                        Response::error_truncated(e.code(), e.describe()),
                        After::Continue,
                    )
                }
                Ok(req) => self.handle(req),
            };
            if let Err(e) = write_frame(&mut conn, &reply) {
                log::debug!("cannot send a reply: {e}");
                if let After::Shutdown(grace) = after {
                    self.shutdown(grace);
                }
                return;
            }
            if let After::Shutdown(grace) = after {
                drop(conn);
                self.shutdown(grace);
                return;
            }
        }
    }

    fn handle(self: &Arc<Self>, req: Request) -> (Response, After) {
        let t = &self.table;
        let reply = match req {
            Request::CreateProcess { id, spec } => t.create(&id, spec).map(|()| Response::Ok),
            Request::StartProcess { id } => t.start(&id).map(|pid| Response::Started { pid }),
            Request::WaitProcess { id } => t.wait(&id).map(|s| Response::Exited {
                code: s.code,
                signal: s.signal,
            }),
            Request::Signal { id, signal } => t.signal(&id, signal).map(|()| Response::Ok),
            Request::ResizeTty { id, rows, cols } => {
                t.resize(&id, rows, cols).map(|()| Response::Ok)
            }
            Request::DeleteProcess { id } => t.delete(&id).map(|()| Response::Ok),
            Request::CreateContainer { id, spec } => {
                t.create_container(&id, &spec).map(|()| Response::Ok)
            }
            Request::DeleteContainer { id } => t.delete_container(&id).map(|()| Response::Ok),
            Request::Refresh {
                entropy,
                realtime_ns,
                hostname,
            } => crate::identity::refresh(&entropy, realtime_ns, hostname.as_deref())
                .map(|()| Response::Ok)
                .map_err(ProcessError::Refresh),
            Request::ConfigureNetwork { interfaces } => crate::net::configure(&interfaces)
                .map(|()| Response::Ok)
                .map_err(ProcessError::Network),
            Request::ListProcesses { container } => t
                .list_processes(&container)
                .map(|list| Response::Processes { list }),
            Request::Stats { container } => {
                t.stats(&container).map(|stats| Response::Stats { stats })
            }
            Request::Shutdown { grace_ms } => {
                let grace = grace_ms
                    .map(|ms| Duration::from_millis(u64::from(ms)))
                    .unwrap_or(DEFAULT_SHUTDOWN_GRACE);
                return (Response::Ok, After::Shutdown(grace));
            }
        };
        match reply {
            Ok(r) => (r, After::Continue),
            Err(e) => {
                log::debug!("request failed: {}", e.describe());
                (error_reply(&e), After::Continue)
            }
        }
    }

    /// Stops every process (SIGTERM, `grace`, SIGKILL), then ends the VM, or this process
    /// when not PID 1. Only the first caller does it; others return.
    fn shutdown(&self, grace: Duration) {
        if self.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        log::info!("shutting down (grace {grace:?})");
        self.kill_everything(Signal::SIGTERM);
        if !self.table.wait_all_exited(grace) {
            log::info!("processes still running after {grace:?}; killing them");
        }
        self.kill_everything(Signal::SIGKILL);
        self.table.wait_all_exited(Duration::from_secs(1));
        nix::unistd::sync();
        if self.pid1 {
            crate::init::end_vm();
        }
        std::process::exit(0);
    }

    fn kill_everything(&self, signal: Signal) {
        self.table.signal_all(signal);
        if self.pid1 {
            // As PID 1, -1 reaches every process but ourselves, orphans included.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), signal);
        }
    }
}

fn frame_to_io(e: FrameError) -> io::Error {
    match e {
        FrameError::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// Answers a frame that could not be read, when the connection can still carry an answer.
fn reply_to_bad_frame(conn: &mut Conn, e: &FrameError) {
    match e {
        FrameError::Closed => {}
        FrameError::TooLarge { .. } => {
            // The stream cannot be resynchronised after an oversized frame: say why, close.
            log::debug!("{e}");
            let _ = write_frame(
                conn,
                &Response::error(ErrorCode::MalformedFrame, e.to_string()),
            );
        }
        other => log::debug!("connection dropped: {other}"),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = String::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// At most one warning per second, with a count of the ones held back.
struct RateLimitedWarning {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedWarning {
    fn new() -> Self {
        RateLimitedWarning {
            last: None,
            suppressed: 0,
        }
    }

    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log::warn!("{msg} ({} similar warnings suppressed)", self.suppressed);
        } else {
            log::warn!("{msg}");
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// How long one connect to the host's ready port may go unanswered, and how many times an
/// unanswered one is tried. The host answers at once when nobody listens (a reset); only a
/// host too busy to answer in time makes it wait.
const READY_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const READY_CONNECT_ATTEMPTS: u32 = 3;

/// Connects to the host and says the agent is ready. Nobody listening is normal. A connect
/// the host did not answer in time is tried again: the host may have completed it late and
/// then seen it reset, and waits for another.
pub fn announce_ready(target: &ReadyTarget) {
    let mut attempt = 1;
    let mut conn = loop {
        match target.connect(READY_CONNECT_TIMEOUT) {
            Ok(Some(c)) => break c,
            Ok(None) => return,
            Err(e)
                if e.raw_os_error() == Some(libc::ETIMEDOUT)
                    && attempt < READY_CONNECT_ATTEMPTS =>
            {
                log::info!("the host did not answer the ready connection ({e}); trying again");
                attempt += 1;
            }
            Err(e) => {
                log::info!("no host listening for the ready notification ({e})");
                return;
            }
        }
    };
    let ready = Notification::Ready {
        protocol_version: PROTOCOL_VERSION,
        agent_version: AGENT_VERSION.to_owned(),
    };
    match write_frame(&mut conn, &ready) {
        Ok(()) => log::debug!("ready notification sent"),
        Err(e) => log::info!("ready notification not delivered: {e}"),
    }
}
