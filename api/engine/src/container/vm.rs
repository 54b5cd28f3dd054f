//! One container's microVM: its root filesystem (an overlay of the image's layers and the
//! container's own upper dir, shared into the guest over virtio-fs), the `berth-vmm`
//! process, and the guest agent that runs the container's process.
//!
//! Everything here blocks (process spawning, the agent client): callers run it on a
//! blocking thread.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use agent_client::{AgentClient, ErrorCode, ProcessSpec, StdioStream};
use agent_protocol::{ContainerSpec, FsSource};
use vmm_launcher::template::Template;
use vmm_launcher::{BootSpec, Console, RestoreSpec, Share, VmmExit};

use crate::EngineConfig;

/// How long a guest may take to boot to its agent. Inside the emulated virtualization host
/// a boot takes seconds (median ~3 s); this bounds a hung one.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The first boot's bound: a boot that has not reached its agent by then is stalled, and is
/// tried once more with [`BOOT_TIMEOUT`]. Hundreds of times a boot on hardware; inside the
/// emulated host, on a CI machine running slow, a template boot beside three busy VMs was
/// seen past 45 s (the template then built in 54 to 92 s), so twice that.
pub const FIRST_BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// The longest the engine waits for the agent to answer one request (a signal, a resize,
/// setting the container up). Inside the emulated virtualization host with several VMs
/// busy, answers take well under a second.
pub const AGENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The virtio-fs tag of the container's root filesystem.
pub const ROOTFS_TAG: &str = "rootfs";
/// The agent's id for the container's main process.
pub const INIT_PROCESS: &str = "init";
/// The agent's id for the container (one per VM).
pub const CONTAINER: &str = "container";

/// Why a VM could not run the container's process.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The process could not be executed: Docker's 127 (`not_found`) or 126.
    #[error("{message}")]
    Exec { not_found: bool, message: String },
    /// Anything else: the VM did not boot, the agent failed.
    #[error("{0}")]
    Failed(String),
    /// The guest reset itself (nobody asked it to) or triple-faulted before its agent was
    /// ready, or its agent did not come up within the boot timeout, or a clone's agent did
    /// not answer, or went silent while setting the container up (before any of its
    /// processes ran): a start that died or stalled without a word.
    /// Nothing of the container ran; `--boot-retries` boots again. The VMM is gone.
    #[error("{0}")]
    SilentBootFailure(String),
}

/// What to boot and run.
pub struct LaunchSpec {
    pub vcpus: u8,
    pub mem_mib: u64,
    /// The mounted root filesystem to share with the guest.
    pub rootfs: PathBuf,
    /// exec-root/<id>: sockets.
    pub run_dir: PathBuf,
    /// The guest kernel's console.
    pub console_log: PathBuf,
    /// The container around the process (root filesystem, hostname, ...).
    pub container: ContainerSpec,
    /// The container's main process (its `container` and `user` already set).
    pub process: ProcessSpec,
    /// Its network device's host side, if it has one (`--network none` has not).
    pub net: Option<NetLaunch>,
    /// `--read-only`: the root share read-only in the VMM, whatever the guest does.
    pub readonly_rootfs: bool,
    /// Its bind mounts' host directories and whether each is read-only, shared in this
    /// order under [`super::mounts::bind_tag`]s.
    pub binds: Vec<(PathBuf, bool)>,
}

/// A VM's network device: the tap its VMM serves it on (inherited by the VMM process), the
/// MAC the VMM lets it send from, and what the agent sets on the guest's `eth0`.
pub struct NetLaunch {
    pub tap: std::os::fd::OwnedFd,
    pub mac: [u8; 6],
    pub interface: agent_protocol::InterfaceConfig,
}

impl LaunchSpec {
    /// The container spec for a root filesystem shared as [`ROOTFS_TAG`].
    pub fn container_spec(hostname: &str) -> ContainerSpec {
        ContainerSpec::new(
            FsSource::Virtiofs {
                tag: ROOTFS_TAG.to_string(),
            },
            hostname,
        )
    }
}

/// A running VM and the agent connection that controls it.
pub struct Vm {
    pub vmm: Child,
    pub uds: PathBuf,
    pub control: AgentClient,
}

/// The process's stdio, one vsock connection each.
pub struct Streams {
    pub stdin: Option<UnixStream>,
    pub stdout: UnixStream,
    pub stderr: Option<UnixStream>,
}

/// The longest mount options string the kernel takes (one page, with its NUL).
const MOUNT_OPTIONS_MAX: usize = 4096;

/// Mounts the overlay root filesystem: `layers` lowest first.
pub fn mount_rootfs(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    empty_lower: &Path,
) -> Result<(), String> {
    for dir in [upper, work, target, empty_lower] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    // overlayfs lists lower dirs topmost first and needs at least one.
    let lower: Vec<String> = if layers.is_empty() {
        vec![empty_lower.display().to_string()]
    } else {
        layers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect()
    };
    for l in &lower {
        if l.contains([',', ':']) {
            return Err(format!(
                "layer path {l} cannot be named in overlayfs options"
            ));
        }
    }
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    // Mount options must fit one page. Deep images (Docker allows 125 layers) with long
    // layer paths do not: name each layer by a descriptor this process holds open instead
    // (`/proc/self/fd/N` resolves to the directory itself while the mount is made).
    let _held: Vec<std::fs::File>;
    if options.len() >= MOUNT_OPTIONS_MAX {
        let opened = layers
            .iter()
            .rev()
            .map(|p| {
                std::fs::File::open(p)
                    .map_err(|e| format!("cannot open layer {}: {e}", p.display()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let by_fd: Vec<String> = opened
            .iter()
            .map(|f| format!("/proc/self/fd/{}", f.as_raw_fd()))
            .collect();
        options = format!(
            "lowerdir={},upperdir={},workdir={}",
            by_fd.join(":"),
            upper.display(),
            work.display()
        );
        if options.len() >= MOUNT_OPTIONS_MAX {
            return Err(format!(
                "the image has too many layers ({}) for one overlayfs mount",
                layers.len()
            ));
        }
        _held = opened;
    }
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| {
        format!(
            "cannot mount the container's root filesystem at {}: {e} (an overlayfs upper dir cannot live on overlayfs, 9p or virtio-fs: put --data-root on a local filesystem or tmpfs)",
            target.display()
        )
    })
}

/// Unmounts the root filesystem (lazily: a straggling reference must not wedge removal).
pub fn unmount_rootfs(target: &Path) {
    if is_mountpoint(target) {
        if let Err(e) = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
            log::warn!("cannot unmount {}: {e}", target.display());
        }
    }
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(parent)) = (std::fs::metadata(path), path.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != me.dev())
}

/// Characters of a container id in its VM's run directory name: the vsock sockets live
/// there, and a Unix socket path has at most 107 bytes. 64 random bits stay unique.
const RUN_DIR_ID_LEN: usize = 16;
/// The longest socket name in a run directory (`/vsock.sock_` and a port).
const LONGEST_SOCKET_NAME: usize = "/vsock.sock_4294967295".len();

/// Where a running container's VM keeps its sockets and VMM log.
pub fn run_dir(exec_root: &Path, id: &str) -> PathBuf {
    exec_root.join(id.get(..RUN_DIR_ID_LEN).unwrap_or(id))
}

/// Two samples of a running VM's metrics a second apart: each vCPU's exits in that second,
/// then the second sample whole (each virtio queue's position and counters).
fn vm_activity(run_dir: &Path) -> String {
    let socket = control_socket(run_dir);
    let sample = || vmm_launcher::control::metrics(&socket, Duration::from_secs(2));
    let exits = |m: &serde_json::Value| -> Vec<u64> {
        m["vcpus"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|c| {
                        ["io_exits", "mmio_exits", "interrupted"]
                            .iter()
                            .filter_map(|k| c[*k].as_u64())
                            .sum()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = match sample() {
        Ok(m) => m,
        Err(e) => return format!("its VMM's metrics could not be read: {e}"),
    };
    std::thread::sleep(Duration::from_secs(1));
    match sample() {
        Ok(second) => {
            let deltas: Vec<u64> = exits(&second)
                .iter()
                .zip(exits(&first))
                .map(|(b, a)| b.saturating_sub(a))
                .collect();
            format!("its vCPUs' exits in a second: {deltas:?}; its VMM's metrics: {second}")
        }
        Err(e) => format!("its VMM's metrics could not be read: {e}"),
    }
}

/// Removes what a VM left on the host once its VMM has ended: its run directory and its
/// host cgroup.
pub fn remove_run_dir(run_dir: &Path) {
    let _ = crate::fsutil::remove_tree(run_dir);
    if let Some(name) = run_dir.file_name().and_then(|n| n.to_str()) {
        super::hostcg::global().remove(name);
    }
}

/// The VMM control socket of the VM whose run directory is `run_dir`.
pub fn control_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("control.sock")
}

/// The longest exec root whose VM sockets fit a Unix socket address.
pub const MAX_EXEC_ROOT_LEN: usize = 107 - 1 - RUN_DIR_ID_LEN - LONGEST_SOCKET_NAME;

/// The VM a container gets: its size, the engine's kernel and initramfs, its console, its
/// vsock socket in its run directory, and its root filesystem as the one share. A template's
/// key is taken from the same spec (vmm_launcher's host sides aside), so a clone always has
/// the devices its template was built with.
pub fn boot_spec(cfg: &EngineConfig, spec: &LaunchSpec) -> BootSpec {
    let mut boot = vm_shape(cfg, spec.vcpus, spec.mem_mib, spec.net.is_some());
    boot.console = Console::File(spec.console_log.clone());
    boot.vsock_uds = Some(spec.run_dir.join("vsock.sock"));
    // The VMM's control socket: `docker pause` parks the VM's vCPUs through it.
    boot.control = Some(control_socket(&spec.run_dir));
    boot.shares[0].dir = spec.rootfs.clone();
    boot.shares[0].read_only = spec.readonly_rootfs;
    // Each bind is a share of its own, confined by the VMM like the root; a read-only one
    // is refused writes by the VMM, not only by the guest's mount flags.
    for (i, (dir, read_only)) in spec.binds.iter().enumerate() {
        boot.shares.push(Share {
            tag: super::mounts::bind_tag(i),
            dir: dir.clone(),
            read_only: *read_only,
            nosuid: false,
        });
    }
    if let (Some(net), Some(device)) = (&spec.net, boot.net.as_mut()) {
        device.mac = net.mac;
        device.tap_fd = Some(net.tap.as_raw_fd());
    }
    boot
}

/// The MAC a template's net device is booted with: every clone gets its own at start.
const TEMPLATE_MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0, 0x01];

/// A container VM of `vcpus` and `mem_mib`, its host sides left unset: what a template's
/// key is made of (the template builder gives it host sides of its own).
pub fn vm_shape(cfg: &EngineConfig, vcpus: u8, mem_mib: u64, net: bool) -> BootSpec {
    let mut boot = BootSpec::new(&cfg.kernel, vcpus, mem_mib);
    boot.net = net.then_some(vmm_launcher::NetSpec {
        mac: TEMPLATE_MAC,
        tap_fd: None,
    });
    boot.initrd = Some(cfg.initrd.clone());
    boot.vsock_uds = Some(PathBuf::new());
    boot.shares.push(Share {
        tag: ROOTFS_TAG.to_string(),
        dir: PathBuf::new(),
        read_only: false,
        nosuid: false,
    });
    boot
}

/// How a container's VM comes to be.
pub enum Start<'a> {
    /// Booted from the kernel.
    Boot,
    /// Restored from a template, then made its own ([`AgentClient::refresh`]).
    Clone(&'a Template),
}

/// Starts the VM (booted or cloned), sets the container up in it and starts its process.
pub fn launch(
    cfg: &EngineConfig,
    spec: &LaunchSpec,
    boot_timeout: Duration,
    start: Start<'_>,
) -> Result<(Vm, Streams, u32), LaunchError> {
    let failed =
        |what: &str, e: &dyn std::fmt::Display| LaunchError::Failed(format!("{what}: {e}"));
    std::fs::create_dir_all(&spec.run_dir)
        .map_err(|e| failed("cannot create the VM's run directory", &e))?;
    // Named as the run directory: one per VM, removed with it (remove_run_dir).
    let host_cgroup = match spec.run_dir.file_name().and_then(|n| n.to_str()) {
        Some(name) => super::hostcg::global()
            .create(name, spec.vcpus, spec.mem_mib)
            .map_err(|e| failed("cannot make the VM's host cgroup", &vmm_launcher::chain(&e)))?,
        None => None,
    };
    let boot = boot_spec(cfg, spec);
    let uds = spec.run_dir.join("vsock.sock");
    let _ = std::fs::remove_file(&uds);
    let vmm_log = std::fs::File::create(spec.run_dir.join("vmm.log"))
        .map_err(|e| failed("cannot create the VMM log", &e))?;
    let mut cmd = match start {
        Start::Boot => boot.command(&cfg.vmm),
        Start::Clone(template) => {
            RestoreSpec::of(&boot, template.state(), template.memory()).command(&cfg.vmm)
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(vmm_log);
    // Its own process group: a Ctrl-C aimed at berthd in a terminal must not reach VMs.
    cmd.process_group(0);
    if let Some(cg) = &host_cgroup {
        cg.enter_on_spawn(&mut cmd);
    }
    let vmm_said = || {
        let log = std::fs::read_to_string(spec.run_dir.join("vmm.log")).unwrap_or_default();
        let log = log.trim();
        if log.is_empty() {
            String::new()
        } else {
            format!(": {log}")
        }
    };
    let launched = match start {
        Start::Boot => vmm_launcher::launch(&mut cmd, &uds, boot_timeout),
        Start::Clone(template) => match vmm_launcher::launch_restored(&mut cmd, &uds, boot_timeout)
        {
            Ok(vmm) => Ok(vmm),
            Err(e) => {
                let tail = vmm_launcher::console_tail(&spec.console_log, 5).join(" | ");
                return Err(LaunchError::Failed(format!(
                    "the clone of the VM template {} did not start: {}{}; its console ended: {tail}",
                    template.dir.display(),
                    vmm_launcher::chain(&e),
                    vmm_said()
                )));
            }
        },
    };
    let mut vmm = match launched {
        Ok(vmm) => vmm,
        Err(vmm_launcher::LaunchError::Exited(VmmExit::GuestShutdown)) => {
            return Err(LaunchError::SilentBootFailure(
                "the guest reset itself before its agent was ready (nobody asked it to)"
                    .to_string(),
            ))
        }
        Err(
            e @ (vmm_launcher::LaunchError::Stalled(_)
            | vmm_launcher::LaunchError::Exited(VmmExit::GuestCrash)),
        ) => return Err(LaunchError::SilentBootFailure(e.to_string())),
        Err(e) => {
            let tail = vmm_launcher::console_tail(&spec.console_log, 5).join(" | ");
            return Err(LaunchError::Failed(format!(
                "{}{}; its console ended: {tail}",
                vmm_launcher::chain(&e),
                vmm_said()
            )));
        }
    };
    let vm_failed = |vmm: &mut Child, message: String| -> LaunchError {
        let threads = vmm_launcher::dump_and_kill(vmm);
        if !threads.is_empty() {
            log::warn!(
                "VMM {}: its threads when it was killed: {threads}",
                vmm.id()
            );
        }
        let tail = vmm_launcher::console_tail(&spec.console_log, 5).join(" | ");
        LaunchError::Failed(format!(
            "{message}{}; its console ended: {tail}",
            vmm_said()
        ))
    };

    let mut control = match connect_agent(&mut vmm, &uds, Duration::from_secs(30)) {
        Ok(c) => c,
        Err(AgentWait::VmmEnded(exit)) => {
            // Said at once, not after the connection's timeout: a VMM that refused what it
            // was given (its stderr says what) fails the same way every time.
            let message = format!("the VMM ended before the guest agent answered: {exit}");
            return Err(match exit {
                VmmExit::GuestShutdown | VmmExit::GuestCrash => {
                    LaunchError::SilentBootFailure(message)
                }
                _ => vm_failed(&mut vmm, message),
            });
        }
        Err(AgentWait::Failed(e)) => {
            let failure = vm_failed(&mut vmm, format!("cannot reach the guest agent: {e}"));
            // A clone whose agent never answers has failed without a word before anything
            // of the container ran, as a boot that stalls before its ready call has: the
            // same silent failure, which `--boot-retries` may retry (logged and counted).
            return Err(match (start, failure) {
                (Start::Clone(_), LaunchError::Failed(why)) => LaunchError::SilentBootFailure(
                    format!("the clone's agent did not answer: {why}"),
                ),
                (_, failure) => failure,
            });
        }
    };
    // A guest that stops answering must not hold a `docker stop`, `kill` or `start` forever:
    // every request on this connection is bounded (the exit watcher's wait is not).
    control.set_request_timeout(Some(AGENT_REQUEST_TIMEOUT));
    if matches!(start, Start::Clone(_)) {
        // Before anything of the container runs: its own random state, clock and name.
        if let Err(e) = control.refresh(Some(&spec.container.hostname)) {
            return Err(vm_failed(
                &mut vmm,
                format!("cannot make the clone its own: {}", vmm_launcher::chain(&e)),
            ));
        }
    }
    if let Some(net) = &spec.net {
        if let Err(e) = control.configure_network(std::slice::from_ref(&net.interface)) {
            return Err(vm_failed(
                &mut vmm,
                format!(
                    "cannot configure the guest's network: {}",
                    vmm_launcher::chain(&e)
                ),
            ));
        }
    }
    let started = setup_and_start(&mut control, spec);
    match started {
        Ok((streams, pid)) => Ok((Vm { vmm, uds, control }, streams, pid)),
        Err(Setup {
            error,
            lost: true,
            before_process,
        }) => {
            // The connection broke or went silent: the guest may have died under the
            // request. What ended it (or what it was doing) is the report, not the socket's
            // error alone.
            let message = match vmm_launcher::wait_exit(&mut vmm, Duration::from_secs(2)) {
                Some(exit) => {
                    let tail = vmm_launcher::console_tail(&spec.console_log, CONSOLE_TAIL_LINES)
                        .join(" | ");
                    format!(
                        "{error}; the VM ended: {exit}{}; its console ended: {tail}",
                        vmm_said()
                    )
                }
                None => {
                    // Alive but silent: what its vCPUs and devices did over a second says
                    // whether the guest runs at all (a vCPU without exits is stuck or idle).
                    let activity = vm_activity(&spec.run_dir);
                    let failed = vm_failed(&mut vmm, format!("{error}; {activity}"));
                    // A clone that went silent before any process of the container ran
                    // failed as a clone whose agent never answered does: silently, with
                    // nothing of the container run. Every clone of its template has been
                    // seen to fail so (sandbox::start_vm discards the template).
                    return Err(match (&start, before_process, failed) {
                        (Start::Clone(_), true, LaunchError::Failed(why)) => {
                            LaunchError::SilentBootFailure(format!(
                                "the clone went silent while its container was set up: {why}"
                            ))
                        }
                        (_, _, failed) => failed,
                    });
                }
            };
            Err(LaunchError::Failed(message))
        }
        Err(Setup {
            error, lost: false, ..
        }) => {
            let _ = control.shutdown(Some(Duration::from_millis(100)));
            if vmm_launcher::wait_exit(&mut vmm, Duration::from_secs(10)).is_none() {
                let _ = vmm.kill();
                let _ = vmm.wait();
            }
            Err(error)
        }
    }
}

/// Why a container could not be set up and started in its VM.
struct Setup {
    error: LaunchError,
    /// The connection to the agent broke or timed out (rather than the agent refusing).
    lost: bool,
    /// Nothing of the container had run yet: no process was created.
    before_process: bool,
}

impl From<LaunchError> for Setup {
    fn from(error: LaunchError) -> Self {
        Setup {
            error,
            lost: false,
            before_process: false,
        }
    }
}

fn setup_and_start(control: &mut AgentClient, spec: &LaunchSpec) -> Result<(Streams, u32), Setup> {
    let agent = |what: &str, e: agent_client::ClientError| Setup {
        lost: matches!(
            e,
            agent_client::ClientError::Frame(_) | agent_client::ClientError::Timeout { .. }
        ),
        error: LaunchError::Failed(format!("{what}: {}", vmm_launcher::chain(&e))),
        before_process: false,
    };
    control
        .create_container(CONTAINER, &spec.container)
        .map_err(|e| Setup {
            before_process: true,
            ..agent("cannot set the container up in the guest", e)
        })?;
    control
        .create_process(INIT_PROCESS, &spec.process)
        .map_err(|e| agent("the guest agent refused the process", e))?;
    let stdin = if spec.process.stdin {
        Some(
            control
                .attach(INIT_PROCESS, StdioStream::Stdin)
                .map_err(|e| agent("cannot attach stdin", e))?,
        )
    } else {
        None
    };
    let stdout = control
        .attach(INIT_PROCESS, StdioStream::Stdout)
        .map_err(|e| agent("cannot attach stdout", e))?;
    let stderr = if spec.process.tty {
        None
    } else {
        Some(
            control
                .attach(INIT_PROCESS, StdioStream::Stderr)
                .map_err(|e| agent("cannot attach stderr", e))?,
        )
    };
    let argv0 = spec.process.argv.first().cloned().unwrap_or_default();
    match control.start_process(INIT_PROCESS) {
        Ok(pid) => Ok((
            Streams {
                stdin,
                stdout,
                stderr,
            },
            pid,
        )),
        Err(e) => Err(match e.code() {
            // Worded so the Docker CLI picks its exit codes (127, 126) from the message.
            Some(ErrorCode::NotFound) => LaunchError::Exec {
                not_found: true,
                message: format!("exec: \"{argv0}\": executable file not found in $PATH: {e}"),
            }
            .into(),
            Some(ErrorCode::PermissionDenied) => LaunchError::Exec {
                not_found: false,
                message: format!("exec: \"{argv0}\": permission denied: {e}"),
            }
            .into(),
            _ => agent("cannot start the container's process", e),
        }),
    }
}

/// Powers the VM off through the agent, killing the VMM if it does not exit in time. A VM
/// that does not end in order is logged by what ended it.
pub fn shutdown(vmm: &mut Child, uds: &Path) {
    if let Ok(Some(_)) = vmm.try_wait() {
        return;
    }
    if let Ok(c) = AgentClient::connect(uds, Duration::from_secs(2)) {
        let _ = c.shutdown(Some(Duration::from_millis(500)));
    }
    match vmm_launcher::wait_exit(vmm, Duration::from_secs(10)) {
        Some(VmmExit::GuestShutdown) => {}
        Some(other) => log::warn!(
            "VMM {}: the VM did not shut down in order: {other}",
            vmm.id()
        ),
        None => {
            log::warn!("VMM {} did not exit after shutdown; killing it", vmm.id());
            let _ = vmm.kill();
            let _ = vmm.wait();
        }
    }
}

/// Lines of the guest console kept in a VM's failure report.
const CONSOLE_TAIL_LINES: usize = 8;

/// How much of a console is searched for the OOM killer's report: a guest that floods its
/// console costs the search no more than this.
const OOM_SCAN_LIMIT: u64 = 16 << 20;

/// Why the agent of a starting VM could not be reached.
enum AgentWait {
    /// The VMM ended first.
    VmmEnded(VmmExit),
    /// The connection failed or timed out.
    Failed(String),
}

/// Connects to the agent of `vmm`'s guest within `timeout`, giving up as soon as the VMM
/// ends (the connection is tried on a thread of its own, which ends by its own timeout).
fn connect_agent(
    vmm: &mut Child,
    uds: &Path,
    timeout: Duration,
) -> std::result::Result<AgentClient, AgentWait> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = uds.to_path_buf();
    std::thread::Builder::new()
        .name("agent-connect".into())
        .spawn(move || {
            let _ = tx.send(AgentClient::connect(&path, timeout).map_err(|e| e.to_string()));
        })
        .map_err(|e| AgentWait::Failed(format!("cannot start a thread: {e}")))?;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => return Err(AgentWait::Failed(e)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = vmm.try_wait() {
                    return Err(AgentWait::VmmEnded(VmmExit::from_status(status)));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(AgentWait::Failed("the connecting thread ended".into()))
            }
        }
    }
}

/// Whether the guest kernel's OOM killer killed a process during this run of the VM: its
/// report ("Out of memory: Killed process N (name)", printed at KERN_ERR, which the quiet
/// console still shows) is in the console, which the VMM starts afresh at every boot. The
/// VM runs one container, so a kill in it is the container's (Docker's OOMKilled: any
/// process of the container's cgroup, not only its first). A container could print such a
/// line only to fool its own record.
pub fn oom_killed(console: &Path) -> bool {
    use std::io::{BufRead, Read};
    let Ok(file) = std::fs::File::open(console) else {
        return false;
    };
    let mut reader = std::io::BufReader::new(file.take(OOM_SCAN_LIMIT));
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {
                if line.windows(OOM_MARK.len()).any(|w| w == OOM_MARK) {
                    return true;
                }
            }
        }
    }
}

/// What the kernel's `oom_kill_process` prints: "Out of memory: Killed process N (name)",
/// or "Memory cgroup out of memory: ..." inside a memory cgroup.
const OOM_MARK: &[u8] = b"of memory: Killed process ";

/// What ended a VM whose agent connection broke while its process ran: how the VMM exited
/// (waited for a little: the connection's end and the VMM's race) and the guest console's
/// last lines, for the container's record; and the VMM's own last words (its log), for the
/// daemon's. A VMM that still runs has a guest that stopped answering: it writes its
/// devices' state to its log (SIGUSR1) and is killed.
pub fn how_it_ended(vmm: &mut Child, console: &Path, run_dir: &Path) -> (String, String) {
    let what = match vmm_launcher::wait_exit(vmm, Duration::from_secs(5)) {
        Some(VmmExit::GuestShutdown) => {
            "the guest reset itself while the container ran (nobody asked it to)".to_string()
        }
        Some(exit) => format!("the container's VM stopped: {exit}"),
        None => {
            let threads = vmm_launcher::dump_and_kill(vmm);
            log::warn!(
                "VMM {}: its threads when it was killed: {threads}",
                vmm.id()
            );
            "the guest stopped answering (its agent connection broke); its VM was killed"
                .to_string()
        }
    };
    let tail = vmm_launcher::console_tail(console, CONSOLE_TAIL_LINES);
    let what = if tail.is_empty() {
        what
    } else {
        format!("{what}; its console ended: {}", tail.join(" | "))
    };
    let vmm_log = vmm_launcher::console_tail(&run_dir.join("vmm.log"), 20).join("\n");
    (what, vmm_log)
}

#[cfg(test)]
mod tests {
    /// A VMM that ends before its agent answers is said at once, with how it ended, not
    /// after the connection's timeout.
    #[test]
    fn a_vmm_that_ends_is_not_waited_for() {
        let mut vmm = std::process::Command::new("sh")
            .args(["-c", "exit 1"])
            .spawn()
            .unwrap();
        let uds = std::env::temp_dir().join(format!("berth-no-agent-{}", std::process::id()));
        let started = std::time::Instant::now();
        let waited = super::connect_agent(&mut vmm, &uds, std::time::Duration::from_secs(30));
        assert!(
            matches!(
                waited,
                Err(super::AgentWait::VmmEnded(super::VmmExit::VmmError))
            ),
            "the VMM's end was not seen"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn the_oom_killers_report_is_found_in_the_console() {
        let dir = std::env::temp_dir().join(format!("berth-oom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let console = dir.join("console.log");
        assert!(!super::oom_killed(&console));
        std::fs::write(&console, "boot\n[ 3.1] tail invoked oom-killer\n").unwrap();
        assert!(!super::oom_killed(&console));
        std::fs::write(
            &console,
            "boot\n[    3.2] Out of memory: Killed process 12 (tail) total-vm:1kB\n",
        )
        .unwrap();
        assert!(super::oom_killed(&console));
        std::fs::write(
            &console,
            "[ 3.2] Memory cgroup out of memory: Killed process 12 (tail)\n",
        )
        .unwrap();
        assert!(super::oom_killed(&console));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use super::*;

    /// How a VM ended, for the container's record: every end named, none of them clean.
    #[test]
    fn a_vm_that_ends_under_a_running_container_is_named() {
        let dir = std::env::temp_dir().join(format!("berth-ended-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let console = dir.join("console.log");
        std::fs::write(&console, "line 1\nBUG: something\n").unwrap();
        std::fs::write(
            dir.join("vmm.log"),
            "berth-vmm: guest crashed: triple fault\n",
        )
        .unwrap();
        let ended = |script: &str| {
            let mut child = std::process::Command::new("sh")
                .args(["-c", script])
                .spawn()
                .unwrap();
            how_it_ended(&mut child, &console, &dir)
        };
        let (what, vmm_log) = ended("exit 5");
        assert_eq!(
            what,
            "the container's VM stopped: the guest crashed (triple fault); its console ended: line 1 | BUG: something"
        );
        assert_eq!(vmm_log, "berth-vmm: guest crashed: triple fault");
        let (what, _) = ended("exit 0");
        assert!(
            what.starts_with("the guest reset itself while the container ran (nobody asked it to)"),
            "{what}"
        );
        let (what, _) = ended("exit 3");
        assert!(
            what.starts_with("the container's VM stopped: the guest kernel panicked"),
            "{what}"
        );
        let started = std::time::Instant::now();
        let (what, _) = ended("sleep 600");
        assert!(what.starts_with("the guest stopped answering"), "{what}");
        assert!(started.elapsed() < Duration::from_secs(60));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// 125 layers (Docker's most) with long paths: more than one page of mount options.
    #[test]
    fn deep_images_mount_through_held_descriptors() {
        if !test_gate::require(test_gate::root(), "mounting overlayfs") {
            return;
        }
        let base = std::env::temp_dir().join(format!("berth-deep-{}", std::process::id()));
        let long = "l".repeat(60);
        let layers: Vec<PathBuf> = (0..125)
            .map(|i| {
                let dir = base.join(format!("{long}-{i:03}/diff"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(format!("f{i}")), format!("{i}")).unwrap();
                std::fs::write(dir.join("top"), format!("{i}")).unwrap();
                dir
            })
            .collect();
        let target = base.join("rootfs");
        let result = mount_rootfs(
            &layers,
            &base.join("upper"),
            &base.join("work"),
            &target,
            &base.join("empty"),
        );
        let seen = result.as_ref().ok().map(|()| {
            (
                std::fs::read_to_string(target.join("f0")).unwrap_or_default(),
                std::fs::read_to_string(target.join("f124")).unwrap_or_default(),
                std::fs::read_to_string(target.join("top")).unwrap_or_default(),
            )
        });
        unmount_rootfs(&target);
        let _ = std::fs::remove_dir_all(&base);
        result.unwrap();
        // Every layer is there, and the topmost (last) one wins.
        assert_eq!(seen.unwrap(), ("0".into(), "124".into(), "124".into()));
    }
}
