//! berth's guest agent: PID 1 of every microVM. It mounts the kernel filesystems, listens on
//! vsock for the host, and starts, feeds, watches, signals and reaps the processes the host
//! asks for, speaking the `agent-protocol` wire protocol.
//!
//! It owns everything inside the VM that the host cannot do from outside: process
//! lifecycle, stdio plumbing, containers (root filesystems, namespaces, Docker's mounts and
//! user semantics: see [`container`] and [`user`]), PID-1 duties (moving its root off the
//! initramfs, reaping orphans, ending the VM on purpose). It
//! does not own the host side of the protocol (`agent-client`) or the transport below vsock
//! (the VMM's device). The same server runs on the host as a normal process over a Unix
//! socket for tests; only [`init`] is PID-1 specific.

pub mod caps;
pub mod cgroup;
pub mod container;
pub mod figures;
pub mod identity;
pub mod init;
pub mod logger;
pub mod net;
pub mod process;
pub mod reaper;
pub mod server;
pub mod spawn;
pub mod stdio;
pub mod sys;
pub mod transport;
pub mod user;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use crate::process::ProcessTable;
use crate::server::Agent;
use crate::transport::{Listener, ReadyTarget, TransportError};

/// Where the agent listens and announces itself.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenOn,
    pub ready: ReadyTarget,
    /// Where containers' generated files live (a tmpfs in the VM).
    pub state_dir: PathBuf,
    /// The cgroup2 tree containers' cgroups go in (the VM's, mounted at boot); `None`
    /// for none: containers then share the agent's cgroup and take no limits.
    pub cgroup_root: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum ListenOn {
    Vsock { port: u32 },
    Unix(PathBuf),
}

impl Default for Config {
    /// The VM setup: vsock port [`agent_protocol::AGENT_PORT`], ready on the host's
    /// [`agent_protocol::READY_PORT`].
    fn default() -> Self {
        Config {
            listen: ListenOn::Vsock {
                port: agent_protocol::AGENT_PORT,
            },
            ready: ReadyTarget::Vsock {
                cid: libc::VMADDR_CID_HOST,
                port: agent_protocol::READY_PORT,
            },
            state_dir: PathBuf::from(process::DEFAULT_STATE_DIR),
            cgroup_root: Some(PathBuf::from(init::CGROUP_ROOT)),
        }
    }
}

/// Why the agent could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot block signals")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the signal thread")]
    SignalThread(#[source] std::io::Error),
    #[error("cannot listen for the host")]
    Listen(#[source] TransportError),
}

/// True when this process is the VM's init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Sets up and serves forever. Returns only on a setup failure, which PID 1 must turn into
/// [`init::end_vm`].
pub fn run(config: Config) -> Result<Infallible, AgentError> {
    // Before any thread exists, so that every thread inherits the mask and only the signal
    // loop ever takes a signal.
    sys::block_all_signals().map_err(AgentError::Signals)?;
    let inherited = sys::cloexec_inherited_fds();
    let pid1 = is_pid1();
    if pid1 {
        let started = std::time::Instant::now();
        let boot = init::boot();
        logger::init();
        log::debug!(
            "boot steps took {:?}, moving the root {:?}",
            started.elapsed(),
            boot.relocation
        );
        for e in boot.errors {
            log::warn!("boot: {e}: {}", source_chain(&e));
        }
        // Every container has `lo`, `--network none` included.
        if let Err(e) = net::loopback_up() {
            log::warn!("boot: {e}: {}", source_chain(&e));
        }
    } else {
        logger::init();
        if let Err(e) = sys::ensure_stdio_open("/dev/null") {
            log::warn!("cannot open stdio: {e}");
        }
    }
    if let Err(e) = inherited {
        log::warn!("cannot mark inherited descriptors close-on-exec: {e}");
    }
    // Orphans of our processes come to us (PID 1 gets them anyway), so they get reaped.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log::warn!("cannot become a child subreaper: {e}");
    }

    let table = Arc::new(
        ProcessTable::with_state_dir(config.state_dir.clone())
            .with_cgroup_root(config.cgroup_root.clone()),
    );
    let t2 = Arc::clone(&table);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || reaper::run(t2, pid1))
        .map_err(AgentError::SignalThread)?;

    let listener = match &config.listen {
        ListenOn::Vsock { port } => Listener::vsock(*port),
        ListenOn::Unix(path) => Listener::unix(path.clone()),
    }
    .map_err(AgentError::Listen)?;
    log::info!(
        "agent {} (protocol {}) listening on {}",
        server::AGENT_VERSION,
        agent_protocol::PROTOCOL_VERSION,
        listener.describe()
    );

    // Its own thread: a vsock connect to a host that does not answer can take seconds.
    let ready = config.ready.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("ready".into())
        .spawn(move || server::announce_ready(&ready))
    {
        log::warn!("cannot start the ready thread: {e}");
    }

    Agent::new(table, pid1).serve(&listener)
}

/// The causes of an error, joined with ": ".
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        parts.push(c.to_string());
        cur = c.source();
    }
    parts.join(": ")
}
