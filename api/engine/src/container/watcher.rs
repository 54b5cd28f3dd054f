//! A running container's exit watcher: waits for its main process (without a thread: the
//! one reply to `wait_process` is read asynchronously), drains its output, records the
//! exit, then powers the VM off and releases the root filesystem; removes the container
//! after when it was run with `--rm`.

use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::SystemTime;

use agent_client::AgentClient;
use tokio::sync::RwLock;

use super::record::Status;
use super::{lock_std, remove_stopped, vm, Container, Registry};
use crate::image::ImageStore;

/// What the watcher of one running container holds.
pub(super) struct Watch {
    pub container: Arc<Container>,
    pub registry: Arc<RwLock<Registry>>,
    pub images: Arc<ImageStore>,
    /// The VM's run directory (its sockets and VMM log), removed at the end.
    pub run_dir: PathBuf,
    /// A connection to the agent for the wait alone.
    pub control: AgentClient,
    pub vmm: Child,
    pub vmm_pid: u32,
    /// Set when `docker kill` had to kill the VMM of a guest that did not answer.
    pub vmm_killed: Arc<AtomicBool>,
    /// The output pumps, drained before the exit is recorded.
    pub pumps: Vec<tokio::task::JoinHandle<()>>,
    /// The VM's vsock socket, for the shutdown.
    pub uds: PathBuf,
    /// Its network, left once the VM is off.
    pub networks: Arc<crate::network::Networks>,
    /// For its restart policy.
    pub containers: super::Containers,
}

/// Starts the watcher.
pub(super) fn spawn(w: Watch) {
    let Watch {
        container: c,
        registry,
        images,
        run_dir,
        control,
        mut vmm,
        vmm_pid,
        vmm_killed,
        pumps,
        uds,
        networks,
        containers,
    } = w;
    let console = c.console_path();
    let scanned = console.clone();
    tokio::spawn(async move {
        // Waited for asynchronously: a running container holds no thread (tokio's
        // blocking pool is bounded; one thread per container would stall every launch
        // past its size).
        let status = wait_exit(control, vm::INIT_PROCESS).await;
        // The agent's connection broke: the VM ended, or stopped answering. How the VMM
        // ended says which (a blocking wait of seconds at most, on this rare path).
        let (ended, mut vmm) = if status.is_err() {
            let vm_dir = run_dir.clone();
            match tokio::task::spawn_blocking(move || {
                let ended = vm::how_it_ended(&mut vmm, &console, &vm_dir);
                (ended, vmm)
            })
            .await
            {
                Ok((ended, vmm)) => (Some(ended), Some(vmm)),
                Err(e) => {
                    // The thread is gone, and the VMM handle with it: kill the VMM by its
                    // pid, so the container does not stay running.
                    log::error!("container {}: the exit watcher failed: {e}", c.id);
                    // SAFETY: kill(2) on the pid of our own VMM child, recorded at its
                    // start.
                    unsafe { libc::kill(vmm_pid as i32, libc::SIGKILL) };
                    (
                        Some((format!("the exit watcher failed: {e}"), String::new())),
                        None,
                    )
                }
            }
        } else {
            (None, Some(vmm))
        };
        log::debug!("container {}: its process exited: {status:?}", c.id);
        for p in pumps {
            let _ = p.await;
        }
        log::debug!("container {}: its output is drained", c.id);
        let (exit_code, error) = match (status, ended) {
            (Ok(s), _) => (s.code, String::new()),
            // `docker kill` of a guest that did not answer: the engine's SIGKILL.
            (Err(_), _) if vmm_killed.load(std::sync::atomic::Ordering::SeqCst) => (
                137,
                "the guest did not answer a kill; its VM was killed".to_string(),
            ),
            (Err(e), ended) => {
                let (ended, vmm_log) = ended.unwrap_or_default();
                log::warn!("container {}: {ended} ({e}); its VMM said: {vmm_log}", c.id);
                // As dockerd reports a container whose runtime vanished.
                (255, ended)
            }
        };
        let oom_killed = tokio::task::spawn_blocking(move || vm::oom_killed(&scanned))
            .await
            .unwrap_or(false);
        let op = c.op.clone().lock_owned().await;
        *c.runtime.lock().await = None;
        c.stdin.send_replace(None);
        lock_std(&c.attachers).clear();
        let (auto_remove, restart_in) = {
            let mut r = c.record.lock().await;
            r.state.status = Status::Exited;
            r.state.pid = 0;
            r.state.paused = false;
            r.state.exit_code = exit_code;
            r.state.error = error;
            r.state.oom_killed = oom_killed;
            r.state.finished_at = Some(SystemTime::now());
            super::clear_network_runtime(&mut r);
            let restart_in = containers.decide_restart(&c, &mut r, exit_code);
            if let Err(e) = c.save(&r).await {
                log::error!("container {}: {e}", c.id);
            }
            (r.host_config.auto_remove, restart_in)
        };
        c.lifecycle.send_modify(|l| {
            l.running = false;
            l.exits += 1;
            l.exit_code = exit_code;
        });
        if oom_killed {
            // As dockerd: the oom event comes before the die.
            containers.event(&c.record().await, "oom", &[]);
        }
        containers.event(
            &c.record().await,
            "die",
            &[("exitCode", exit_code.to_string())],
        );
        let rootfs = c.rootfs();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(vmm) = vmm.as_mut() {
                vm::shutdown(vmm, &uds);
            }
            vm::unmount_rootfs(&rootfs);
            vm::remove_run_dir(&run_dir);
        })
        .await;
        // Only now is its address free for another container: its VM no longer has it.
        networks.detach(&c.id);
        log::debug!("container {}: its VM is off", c.id);
        drop(op);
        if auto_remove {
            if let Err(e) = remove_stopped(
                &registry,
                &images,
                &containers.events,
                &c,
                Some(&containers),
            )
            .await
            {
                log::warn!("container {}: cannot remove it after exit: {e}", c.id);
            }
        } else if let Some(delay) = restart_in {
            containers.schedule_restart(&c, delay);
        }
    });
}

/// Waits, without a thread, for process `id` of the guest to exit: the `wait_process`
/// request is sent on `control`, and its one reply frame read asynchronously.
pub(super) async fn wait_exit(
    control: AgentClient,
    id: &str,
) -> std::result::Result<agent_client::ExitStatus, String> {
    use tokio::io::AsyncReadExt as _;
    let stream = control.send_wait(id).map_err(|e| e.to_string())?;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut stream = tokio::net::UnixStream::from_std(stream).map_err(|e| e.to_string())?;
    let mut header = [0u8; 4];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| format!("the agent connection broke: {e}"))?;
    let len = u32::from_be_bytes(header) as usize;
    if len > agent_protocol::MAX_FRAME_LEN {
        return Err(format!("the agent sent a {len}-byte frame"));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("the agent connection broke: {e}"))?;
    AgentClient::wait_reply(&body).map_err(|e| e.to_string())
}
