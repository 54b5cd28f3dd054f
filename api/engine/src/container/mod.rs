//! Containers: records, lifecycle, and the microVM each one runs in.
//!
//! Every container has a directory under `<data-root>/containers/<id>/` holding its record
//! (`config.json`, written atomically on every change), its json-file log, the overlay upper
//! and work dirs and the root filesystem mount point, and its guest console log. While it
//! runs, `<exec-root>/<id>/` holds the VM's sockets. Lifecycle operations on one container
//! are serialised by its record lock; the VM itself is driven from blocking threads.

pub mod archive;
pub mod exec;
pub mod health;
pub mod hostcg;
pub mod initlayer;
mod layer;
pub use layer::{CommitOptions, Export};
pub use volumes::Pruned;
pub mod logs;
pub mod mounts;
mod net;
mod pause;
pub mod ps;
pub mod record;
pub mod resources;
mod restart;
pub mod sandbox;
pub mod spec;
pub mod stats;
mod stdio;
pub mod template;
pub mod vm;
mod volumes;
mod watcher;
mod wire;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agent_client::{AgentClient, ProcessSpec, TtySize};
use bytes::Bytes;
use tokio::sync::{mpsc, watch, Mutex, RwLock};

use crate::fsutil::atomic_write_json;
use crate::image::{ImageStore, ImageUser, ImageUsers};
use crate::{ids, Counts, EngineConfig, EngineError, Result};
use logs::Stream;
use record::{Record, State, Status};

/// A chunk of container output for attached clients.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub stream: Stream,
    pub data: Bytes,
}

/// What waiters watch: how many times the container exited, with what, and whether it is
/// gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lifecycle {
    pub running: bool,
    pub exits: u64,
    pub exit_code: i32,
    pub removed: bool,
    /// Removals that failed: a client waiting for removal gets the error, as from dockerd.
    pub removal_failures: u64,
}

/// Docker's wait conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitCondition {
    NotRunning,
    NextExit,
    Removed,
}

/// The writing end of a running container's stdin.
pub type StdinSink = Arc<Mutex<Option<tokio::net::UnixStream>>>;

/// A running container's handles.
struct Runtime {
    control: Arc<std::sync::Mutex<AgentClient>>,
    vmm_pid: u32,
    /// Set when the engine killed the VMM itself (a guest that did not answer a kill): the
    /// end is then the engine's doing, not the guest's.
    vmm_killed: Arc<std::sync::atomic::AtomicBool>,
}

/// One container.
pub struct Container {
    pub id: String,
    dir: PathBuf,
    /// Held by lifecycle operations (start, the exit cleanup, removal) for their duration;
    /// the record lock is only ever held briefly.
    op: Arc<Mutex<()>>,
    /// Held by a start for its whole duration (taken before `op`): a stop or kill that
    /// comes during a start waits for it and then applies to the container it started,
    /// rather than finding it "not running" and letting the start win.
    starting: Arc<Mutex<()>>,
    record: Mutex<Record>,
    runtime: Mutex<Option<Runtime>>,
    lifecycle: watch::Sender<Lifecycle>,
    attachers: std::sync::Mutex<Vec<mpsc::Sender<Chunk>>>,
    stdin: watch::Sender<Option<StdinSink>>,
    log_written: watch::Sender<u64>,
    restart: std::sync::Mutex<restart::RestartState>,
    /// What `top` and `stats` show while the VM is paused: read just before it was, since
    /// a paused guest's agent cannot answer.
    frozen: std::sync::Mutex<Option<stats::Frozen>>,
}

impl Container {
    fn new(dir: PathBuf, record: Record) -> Arc<Container> {
        let lifecycle = Lifecycle {
            running: record.state.status == Status::Running,
            exits: 0,
            exit_code: record.state.exit_code,
            removed: false,
            removal_failures: 0,
        };
        Arc::new(Container {
            id: record.id.clone(),
            dir,
            op: Arc::new(Mutex::new(())),
            starting: Arc::new(Mutex::new(())),
            record: Mutex::new(record),
            runtime: Mutex::new(None),
            lifecycle: watch::channel(lifecycle).0,
            attachers: std::sync::Mutex::new(Vec::new()),
            stdin: watch::channel(None).0,
            log_written: watch::channel(0).0,
            restart: Default::default(),
            frozen: Default::default(),
        })
    }

    /// A copy of the record.
    pub async fn record(&self) -> Record {
        self.record.lock().await.clone()
    }

    /// The json-file log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}-json.log", self.id))
    }

    /// The json-file log to read, or why there is none to read (the `none` driver), in
    /// dockerd's words.
    pub async fn readable_log(&self) -> Result<PathBuf> {
        match self.record.lock().await.host_config.log_config() {
            Ok(logs::LogConfig::None) => Err(EngineError::NotImplemented(
                "configured logging driver does not support reading".into(),
            )),
            _ => Ok(self.log_path()),
        }
    }

    /// The log path `docker inspect` shows: dockerd shows it for json-file only.
    pub async fn shown_log_path(&self) -> PathBuf {
        if self.record.lock().await.host_config.log_type == "json-file" {
            self.log_path()
        } else {
            PathBuf::new()
        }
    }

    /// The guest's console log.
    pub fn console_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Watches the container's lifecycle.
    pub fn lifecycle(&self) -> watch::Receiver<Lifecycle> {
        self.lifecycle.subscribe()
    }

    /// Watches the log's growth (for `logs --follow`).
    pub fn log_growth(&self) -> watch::Receiver<u64> {
        self.log_written.subscribe()
    }

    /// Registers a client for the container's output until it stops.
    pub fn attach_output(&self, capacity: usize) -> mpsc::Receiver<Chunk> {
        let (tx, rx) = mpsc::channel(capacity);
        lock_std(&self.attachers).push(tx);
        rx
    }

    /// Watches for the container's stdin to become writable (it is once running with
    /// OpenStdin).
    pub fn stdin(&self) -> watch::Receiver<Option<StdinSink>> {
        self.stdin.subscribe()
    }

    async fn save(&self, record: &Record) -> Result<()> {
        let path = self.record_path();
        let record = record.clone();
        tokio::task::spawn_blocking(move || atomic_write_json(&path, &record))
            .await
            .map_err(|e| EngineError::internal("record writer", e))?
            .map_err(|e| EngineError::internal("cannot write the container record", e))
    }

    async fn agent<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut AgentClient) -> std::result::Result<T, agent_client::ClientError>
            + Send
            + 'static,
    ) -> Option<std::result::Result<T, agent_client::ClientError>> {
        let control = self
            .runtime
            .lock()
            .await
            .as_ref()
            .map(|r| r.control.clone())?;
        tokio::task::spawn_blocking(move || f(&mut lock_std(&control)))
            .await
            .ok()
    }
}

fn lock_std<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

struct Registry {
    by_id: HashMap<String, Arc<Container>>,
    names: HashMap<String, String>,
}

/// Every container this engine knows (a handle: clones share everything).
#[derive(Clone)]
pub struct Containers {
    config: EngineConfig,
    templates: Arc<template::Templates>,
    images: Arc<ImageStore>,
    root: PathBuf,
    registry: Arc<RwLock<Registry>>,
    networks: Arc<crate::network::Networks>,
    execs: exec::ExecTable,
    events: Arc<crate::events::Events>,
    volumes: Arc<crate::volume::Volumes>,
    /// Set when berthd stops: the exits that follow are not for restart policies.
    shutting_down: Arc<std::sync::atomic::AtomicBool>,
}

/// Options of `docker create` that are not part of the config.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    pub name: Option<String>,
}

fn no_such(name: &str) -> EngineError {
    EngineError::NotFound(format!("No such container: {name}"))
}

impl Containers {
    /// Loads every container record under the data root. Containers that were running when
    /// berthd last stopped lost their VM with it: they are recorded as exited.
    pub async fn open(
        config: &EngineConfig,
        images: Arc<ImageStore>,
        networks: Arc<crate::network::Networks>,
        events: Arc<crate::events::Events>,
        volumes: Arc<crate::volume::Volumes>,
    ) -> Result<Containers> {
        let root = config.data_root.join("containers");
        std::fs::create_dir_all(&root)
            .map_err(|e| EngineError::internal(format!("cannot create {}", root.display()), e))?;
        let mut registry = Registry {
            by_id: HashMap::new(),
            names: HashMap::new(),
        };
        for entry in std::fs::read_dir(&root)?.flatten() {
            let dir = entry.path();
            let path = dir.join("config.json");
            let record: Record = match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(r) => r,
                None => {
                    log::warn!("skipping {}: no readable container record", dir.display());
                    continue;
                }
            };
            let container = Container::new(dir.clone(), record);
            {
                let mut r = container.record.lock().await;
                if matches!(r.state.status, Status::Running | Status::Removing) {
                    recover_stale(config, &dir, &mut r);
                    clear_network_runtime(&mut r);
                    container.save(&r).await?;
                }
                registry.names.insert(r.name.clone(), r.id.clone());
            }
            registry.by_id.insert(container.id.clone(), container);
        }
        let templates = Arc::new(template::Templates::new(config.data_root.join("templates")));
        sandbox::collect_templates(config.clone(), templates.clone());
        if config.prebuild_template && config.start == crate::StartPath::Clone {
            sandbox::prebuild_template(config.clone(), templates.clone());
        }
        Ok(Containers {
            config: config.clone(),
            templates,
            images,
            root,
            registry: Arc::new(RwLock::new(registry)),
            networks,
            execs: Default::default(),
            events,
            volumes,
            shutting_down: Default::default(),
        })
    }

    /// Finds a container by full id, name, or unique id prefix (Docker's order).
    pub async fn get(&self, name_or_id: &str) -> Result<Arc<Container>> {
        let reg = self.registry.read().await;
        if let Some(c) = reg.by_id.get(name_or_id) {
            return Ok(c.clone());
        }
        let name = name_or_id.strip_prefix('/').unwrap_or(name_or_id);
        if let Some(id) = reg.names.get(name) {
            if let Some(c) = reg.by_id.get(id) {
                return Ok(c.clone());
            }
        }
        if ids::is_hex_prefix(name_or_id) {
            let mut matches = reg
                .by_id
                .iter()
                .filter(|(id, _)| id.starts_with(name_or_id));
            if let Some((_, c)) = matches.next() {
                if matches.next().is_some() {
                    return Err(EngineError::InvalidArgument(format!(
                        "multiple IDs found with provided prefix: {name_or_id}"
                    )));
                }
                return Ok(c.clone());
            }
        }
        Err(no_such(name_or_id))
    }

    /// Every container.
    pub async fn all(&self) -> Vec<Arc<Container>> {
        self.registry.read().await.by_id.values().cloned().collect()
    }

    /// Container counts by state.
    pub async fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for c in self.all().await {
            counts.containers += 1;
            match c.record.lock().await.state.status {
                Status::Running => counts.running += 1,
                _ => counts.stopped += 1,
            }
        }
        counts
    }

    /// Image ids that containers (of any state) use: those images may not be removed.
    pub async fn images_in_use(&self) -> HashSet<String> {
        let mut ids = HashSet::new();
        for c in self.all().await {
            ids.insert(c.record.lock().await.image_id.clone());
        }
        ids
    }

    /// Which containers use which images, for `docker rmi`.
    pub async fn image_users(&self) -> ImageUsers {
        let mut users = ImageUsers::new();
        for c in self.all().await {
            let r = c.record.lock().await;
            users
                .entry(r.image_id.clone())
                .or_default()
                .push(ImageUser {
                    container_id: r.id.clone(),
                    running: r.state.status == Status::Running,
                });
        }
        users
    }

    /// Creates a container from a `docker create` request.
    pub async fn create(
        &self,
        body: &serde_json::Value,
        opts: CreateOptions,
    ) -> Result<(String, Vec<String>)> {
        let mut request = spec::parse(body)?;
        let image = self.images.resolve(&request.image)?;
        spec::merge(&mut request.config, &image.config);
        if request.config.argv().is_empty() {
            return Err(EngineError::InvalidArgument("No command specified".into()));
        }
        // The image's `VOLUME`s too.
        mounts::add_anonymous_volumes(
            &mut request.host_config.mounts,
            request.config.volumes.keys().map(String::as_str),
        )?;
        // Taken before the registry's lock, as a volume's removal takes them.
        let _volumes_guard = if request
            .host_config
            .mounts
            .iter()
            .any(|m| matches!(m, mounts::MountPoint::Volume { .. }))
        {
            Some(self.volumes.guard().await)
        } else {
            None
        };
        let networks = self.endpoint_settings(&request)?;
        let id = ids::new_id();
        if request.config.hostname.is_empty() {
            request.config.hostname = ids::short(&id).to_string();
        }
        let mut reg = self.registry.write().await;
        let name = match opts.name.filter(|n| !n.is_empty()) {
            Some(n) => {
                let n = n.strip_prefix('/').unwrap_or(&n).to_string();
                if !ids::valid_name(&n) {
                    return Err(EngineError::InvalidArgument(format!(
                        "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                if let Some(other) = reg.names.get(&n) {
                    return Err(EngineError::Conflict(format!(
                        "Conflict. The container name \"/{n}\" is already in use by container \"{other}\". You have to remove (or rename) that container to be able to reuse that name."
                    )));
                }
                n
            }
            None => loop {
                let n = ids::random_name();
                if !reg.names.contains_key(&n) {
                    break n;
                }
            },
        };
        let made_volumes = self.resolve_volumes(&mut request.host_config.mounts)?;
        let dir = self.root.join(&id);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            self.forget_volumes(&made_volumes);
            return Err(EngineError::internal(
                "cannot create the container directory",
                e,
            ));
        }
        let record = Record {
            id: id.clone(),
            name: name.clone(),
            created: SystemTime::now(),
            image: request.image.clone(),
            image_id: image.id.clone(),
            config: request.config,
            host_config: request.host_config,
            state: State::default(),
            restart_count: 0,
            networks,
            ports: Vec::new(),
        };
        let container = Container::new(dir.clone(), record.clone());
        if let Err(e) = container.save(&record).await {
            self.forget_volumes(&made_volumes);
            let _ = crate::fsutil::remove_tree(&dir);
            return Err(e);
        }
        reg.names.insert(name, id.clone());
        reg.by_id.insert(id.clone(), container);
        self.event(&record, "create", &[]);
        Ok((id, Vec::new()))
    }

    /// Starts a created or exited container, in named steps: its sandbox (the root
    /// filesystem mounted, the VM cloned or booted, the process started: `sandbox`), a
    /// failed start recorded (`record_failed_start`), the running state recorded, its
    /// stdio connected (`stdio`), and its exit watcher (`watcher`).
    pub async fn start(&self, name_or_id: &str) -> Result<()> {
        self.start_as(name_or_id, false).await
    }

    /// A start by the container's restart policy: its restart count and what a client
    /// said before stay; one that a client cancelled meanwhile does not happen.
    async fn start_by_policy(&self, name_or_id: &str) -> Result<()> {
        self.start_as(name_or_id, true).await
    }

    async fn start_as(&self, name_or_id: &str, by_policy: bool) -> Result<()> {
        let container = self.get(name_or_id).await?;
        let _starting = container.starting.clone().lock_owned().await;
        // Serialises with other lifecycle operations, including the previous run's cleanup.
        let op = container.op.clone().lock_owned().await;
        {
            let mut r = container.record.lock().await;
            if by_policy && !r.state.restarting {
                return Ok(());
            }
            if !by_policy && r.state.status != Status::Running {
                // A client's start: the policy's count and the remembered stop start over,
                // and a pending policy restart is this one.
                r.restart_count = 0;
                r.state.manually_stopped = false;
                lock_std(&container.restart).exit_on_next = false;
            }
            r.state.restarting = false;
        }
        let record = container.record().await;
        match record.state.status {
            Status::Running => {
                return Err(EngineError::NotModified("container already started".into()))
            }
            Status::Removing | Status::Dead => {
                return Err(EngineError::Conflict(format!(
                    "container {} is marked for removal and cannot be started",
                    record.id
                )))
            }
            _ => {}
        }
        let image = self.images.resolve_for_container(&record.image_id)?;
        let log_config = record.host_config.log_config().map_err(|e| {
            EngineError::InvalidArgument(format!("cannot start container {}: {e}", record.id))
        })?;
        let rootfs = container.rootfs();
        let run_dir = vm::run_dir(&self.config.exec_root, &record.id);
        let mut container_spec = vm::LaunchSpec::container_spec(&record.config.hostname);
        container_spec.domainname = record.config.domainname.clone();
        container_spec.privileged = record.host_config.privileged;
        container_spec.readonly_rootfs = record.host_config.readonly_rootfs;
        if record.host_config.shm_size > 0 {
            container_spec.shm_size = Some(record.host_config.shm_size as u64);
        }
        container_spec.mounts = mounts::agent_mounts(&record.host_config.mounts);
        let hc = &record.host_config;
        container_spec.resources = hc.limits.agent_resources(hc.memory, hc.nano_cpus);
        container_spec.sysctls = hc.limits.agent_sysctls();
        let binds = mounts::shares(&record.host_config.mounts);
        // Its network: an address and a tap on the bridge, its ports bound (a port in use
        // fails here, before anything of the container runs).
        let net = self.join_network(&record).await?;
        let (net_launch, bound) = match net {
            Some((attachment, bound)) => {
                net::fill_container_spec(&mut container_spec, &record, &attachment)?;
                (Some(attachment), Some(bound))
            }
            None => {
                net::fill_without_network(&mut container_spec, &record)?;
                (None, None)
            }
        };
        let attached = net_launch.as_ref().map(|a| {
            (
                a.network.name.clone(),
                a.endpoint.clone(),
                a.prefix,
                a.gateway,
            )
        });
        let launch_spec = vm::LaunchSpec {
            vcpus: record.host_config.vcpus(),
            mem_mib: record.host_config.mem_mib(),
            rootfs: rootfs.clone(),
            run_dir: run_dir.clone(),
            console_log: container.console_path(),
            container: container_spec,
            process: process_spec(&record),
            net: net_launch.map(net::launch_net),
            readonly_rootfs: record.host_config.readonly_rootfs,
            binds,
        };
        let sandbox = sandbox::SandboxSpec {
            layers: image.layers.clone(),
            dir: container.dir.clone(),
            launch: launch_spec,
            start: record.host_config.start.unwrap_or(self.config.start),
            fill: volumes::to_fill(&record.host_config.mounts),
        };
        let cfg = self.config.clone();
        let templates = self.templates.clone();
        let launched =
            tokio::task::spawn_blocking(move || sandbox::create(&cfg, &templates, &sandbox))
                .await
                .map_err(|e| EngineError::internal("VM launcher", e))?;

        if launched.is_err() {
            // Clients attached before start (docker run) see their streams end, as dockerd
            // closes a container's streams when its start fails.
            lock_std(&container.attachers).clear();
            self.networks.detach(&container.id);
        }
        let (vm, streams, _guest_pid) = match launched {
            Ok(ok) => ok,
            Err(failure) => {
                let error = record_failed_start(&container, failure).await?;
                drop(op);
                // As dockerd: a --rm container that cannot start is removed (docker run
                // waits for that before it exits).
                if record.host_config.auto_remove {
                    if let Err(e) = remove_stopped(
                        &self.registry,
                        &self.images,
                        &self.events,
                        &container,
                        Some(self),
                    )
                    .await
                    {
                        log::warn!("container {}: cannot remove it: {e}", container.id);
                    }
                }
                return Err(error);
            }
        };

        // The exit watcher's connection waits for the process as long as it runs.
        let wait_control = vm
            .control
            .open_control()
            .map(|mut c| {
                c.set_request_timeout(None);
                c
            })
            .map_err(|e| {
                EngineError::Internal(format!("cannot open a second agent connection: {e}"))
            });
        let vmm_pid = vm.vmm.id();
        let mut vmm = vm.vmm;
        let uds = vm.uds;
        let wait_control = match wait_control {
            Ok(c) => c,
            Err(e) => {
                lock_std(&container.attachers).clear();
                let rootfs = container.rootfs();
                let run_dir = run_dir.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    vm::shutdown(&mut vmm, &uds);
                    vm::unmount_rootfs(&rootfs);
                    vm::remove_run_dir(&run_dir);
                })
                .await;
                self.networks.detach(&container.id);
                return Err(e);
            }
        };
        {
            let mut r = container.record.lock().await;
            r.state = State {
                status: Status::Running,
                pid: vmm_pid,
                exit_code: 0,
                error: String::new(),
                oom_killed: false,
                started_at: Some(SystemTime::now()),
                finished_at: r.state.finished_at,
                paused: false,
                restarting: false,
                manually_stopped: r.state.manually_stopped,
                health: None,
            };
            if let Some((name, endpoint, prefix, gateway)) = &attached {
                if let Some(settings) = r.networks.get_mut(name) {
                    settings.endpoint_id = endpoint.endpoint_id.clone();
                    settings.ip_address = endpoint.ip.to_string();
                    settings.ip_prefix_len = *prefix;
                    settings.gateway = gateway.to_string();
                    settings.mac_address = crate::network::ipam::format_mac(&endpoint.mac);
                }
            }
            if let Some(bound) = &bound {
                r.ports = net::published(bound);
            }
            container.save(&r).await?;
        }
        if let (Some(bound), Some((_, endpoint, _, _))) = (bound, &attached) {
            self.networks.serve_ports(&container.id, bound, endpoint.ip);
        }
        let vmm_killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        *container.runtime.lock().await = Some(Runtime {
            control: Arc::new(std::sync::Mutex::new(vm.control)),
            vmm_pid,
            vmm_killed: vmm_killed.clone(),
        });
        container.lifecycle.send_modify(|l| l.running = true);
        log::debug!("container {}: running in VM {vmm_pid}", container.id);
        self.event(&container.record().await, "start", &[]);
        self.start_health_monitor(&container).await;

        let pumps = stdio::connect(&container, streams, log_config)?;
        drop(op);

        watcher::spawn(watcher::Watch {
            container: container.clone(),
            registry: self.registry.clone(),
            images: self.images.clone(),
            run_dir,
            control: wait_control,
            vmm,
            vmm_pid,
            vmm_killed,
            pumps,
            uds,
            networks: self.networks.clone(),
            containers: self.clone(),
        });
        Ok(())
    }

    /// Stops every running container.
    pub async fn shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // All at once: each may take its stop timeout.
        let mut stops = tokio::task::JoinSet::new();
        for c in self.all().await {
            if c.runtime.lock().await.is_some() {
                let this = self.clone();
                stops.spawn(async move {
                    let _ = this.stop(&c.id, Some(10)).await;
                });
            }
        }
        while stops.join_next().await.is_some() {}
    }

    /// Stops a container: its stop signal, then SIGKILL after `timeout` seconds (its own
    /// StopTimeout, else 10, when not given).
    pub async fn stop(&self, name_or_id: &str, timeout: Option<i64>) -> Result<()> {
        let c = self.get(name_or_id).await?;
        // A start under way (its policy's, or a client's) ends first; this stop then
        // applies to what it started. Held only until the stop is on record.
        let starting = c.starting.lock().await;
        // A container waiting to be restarted by its policy stays stopped.
        if self.cancel_restart(&c).await? {
            self.stopped_by_client(&c, false).await;
            return Ok(());
        }
        let (signal, default_timeout) = {
            let r = c.record.lock().await;
            if r.state.status != Status::Running {
                return Err(EngineError::NotModified("container already stopped".into()));
            }
            let signal = r
                .config
                .stop_signal
                .as_deref()
                .and_then(spec::parse_signal)
                .unwrap_or(libc::SIGTERM);
            (signal, r.config.stop_timeout.unwrap_or(10))
        };
        let timeout = timeout.unwrap_or(default_timeout);
        self.stopped_by_client(&c, true).await;
        drop(starting);
        // A paused guest hears no signal: resumed first, as dockerd does.
        if let Err(e) = self.resume_if_paused(&c).await {
            log::warn!("container {}: {e}; it will be killed", c.id);
        }
        let mut lifecycle = c.lifecycle();
        let exits = lifecycle.borrow().exits;
        if timeout != 0 {
            self.event(&c.record().await, "kill", &[("signal", signal.to_string())]);
            // A guest that does not answer the stop signal is killed after the timeout.
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                c.agent(move |a| a.signal(vm::INIT_PROCESS, signal)),
            )
            .await;
        }
        // Docker's -1: wait for the process however long it takes.
        let limit = u64::try_from(timeout).map_or(Duration::MAX, Duration::from_secs);
        if !wait_exit_change(&mut lifecycle, exits, limit).await {
            self.kill_hard(&c, &mut lifecycle, exits).await?;
        }
        self.event(&c.record().await, "stop", &[]);
        Ok(())
    }

    /// SIGKILL through the agent; failing that, the VMM itself.
    async fn kill_hard(
        &self,
        c: &Arc<Container>,
        lifecycle: &mut watch::Receiver<Lifecycle>,
        exits: u64,
    ) -> Result<()> {
        if let Err(e) = self.resume_if_paused(c).await {
            log::warn!("container {}: {e}", c.id);
        }
        self.event(
            &c.record().await,
            "kill",
            &[("signal", libc::SIGKILL.to_string())],
        );
        // A guest that does not answer is not waited for: its VMM is killed below.
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            c.agent(|a| a.signal(vm::INIT_PROCESS, libc::SIGKILL)),
        )
        .await;
        if wait_exit_change(lifecycle, exits, Duration::from_secs(5)).await {
            return Ok(());
        }
        if let Some(rt) = c.runtime.lock().await.as_ref() {
            let pid = rt.vmm_pid;
            rt.vmm_killed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            log::warn!(
                "container {}: the guest did not answer a kill; killing its VMM",
                c.id
            );
            // SAFETY: kill(2) on the pid of our own child VMM, which we have not reaped (its
            // exit watcher holds it).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if wait_exit_change(lifecycle, exits, Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(EngineError::Internal(format!(
                "container {} did not stop",
                c.id
            )))
        }
    }

    /// Sends a signal to the container's process.
    pub async fn kill(&self, name_or_id: &str, signal: Option<&str>) -> Result<()> {
        let c = self.get(name_or_id).await?;
        let signo = match signal.filter(|s| !s.is_empty()) {
            None => libc::SIGKILL,
            Some(s) => spec::parse_signal(s)
                .ok_or_else(|| EngineError::InvalidArgument(format!("Invalid signal: {s}")))?,
        };
        // As stop: a start under way ends first.
        let starting = c.starting.lock().await;
        let stop_signal = c
            .record
            .lock()
            .await
            .config
            .stop_signal
            .as_deref()
            .and_then(spec::parse_signal)
            .unwrap_or(libc::SIGTERM);
        // As dockerd: a kill by SIGKILL or the stop signal ends the container for good,
        // and one that its policy is about to restart is not restarted.
        let ends_it = signo == libc::SIGKILL || signo == stop_signal;
        if ends_it && self.cancel_restart(&c).await? {
            self.stopped_by_client(&c, false).await;
            return Ok(());
        }
        if c.record.lock().await.state.status != Status::Running {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                c.id
            )));
        }
        self.stopped_by_client(&c, ends_it).await;
        drop(starting);
        self.resume_if_paused(&c).await?;
        let mut lifecycle = c.lifecycle();
        let exits = lifecycle.borrow().exits;
        if signo == libc::SIGKILL {
            return self.kill_hard(&c, &mut lifecycle, exits).await;
        }
        self.event(&c.record().await, "kill", &[("signal", signo.to_string())]);
        match c.agent(move |a| a.signal(vm::INIT_PROCESS, signo)).await {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(EngineError::Internal(format!(
                "cannot kill container {}: {e}",
                c.id
            ))),
            None => Err(EngineError::Conflict(format!(
                "Container {} is not running",
                c.id
            ))),
        }
    }

    /// Resizes the container's terminal.
    pub async fn resize(&self, name_or_id: &str, rows: u16, cols: u16) -> Result<()> {
        let c = self.get(name_or_id).await?;
        match c
            .agent(move |a| a.resize_tty(vm::INIT_PROCESS, rows, cols))
            .await
        {
            Some(Ok(())) | None => Ok(()),
            Some(Err(e)) => Err(EngineError::Internal(format!(
                "cannot resize container {}: {e}",
                c.id
            ))),
        }
    }

    /// Docker's SizeRw and SizeRootFs: the bytes in the container's writable layer, and
    /// those plus its image's.
    pub async fn sizes(&self, name_or_id: &str) -> Result<(u64, u64)> {
        let c = self.get(name_or_id).await?;
        let image_id = c.record.lock().await.image_id.clone();
        let upper = c.dir.join("upper");
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || {
            let rw = crate::fsutil::tree_size(&upper);
            // An image hidden by `rmi -f` is still this container's: measure its layers.
            let image = match images.inspect(&image_id) {
                Ok(details) => details.size,
                Err(_) => images
                    .resolve_for_container(&image_id)
                    .map(|r| r.layers.iter().map(|l| crate::fsutil::tree_size(l)).sum())
                    .unwrap_or(0),
            };
            (rw, rw.saturating_add(image))
        })
        .await
        .map_err(|e| EngineError::internal("size", e))
    }

    /// Waits for a condition; returns the exit code.
    pub async fn wait(&self, name_or_id: &str, condition: WaitCondition) -> Result<i32> {
        let c = self.get(name_or_id).await?;
        let mut lifecycle = c.lifecycle();
        let start = *lifecycle.borrow();
        loop {
            let now = *lifecycle.borrow_and_update();
            if condition == WaitCondition::Removed
                && now.removal_failures > start.removal_failures
                && !now.removed
            {
                // Without this a `docker run --rm` whose removal failed would wait forever.
                return Err(EngineError::Internal(format!(
                    "error removing container {}: see the daemon's log; `docker rm` retries",
                    c.id
                )));
            }
            let done = match condition {
                WaitCondition::NotRunning => !now.running || now.exits > start.exits,
                WaitCondition::NextExit => now.exits > start.exits,
                WaitCondition::Removed => now.removed,
            };
            if done || now.removed {
                return Ok(now.exit_code);
            }
            if lifecycle.changed().await.is_err() {
                return Ok(now.exit_code);
            }
        }
    }

    /// Removes a container (killing it first with `force`), and with `volumes` its
    /// anonymous volumes that no other container uses (`docker rm -v`).
    pub async fn remove(&self, name_or_id: &str, force: bool, volumes: bool) -> Result<()> {
        let c = self.get(name_or_id).await?;
        let mounts = c.record.lock().await.host_config.mounts.clone();
        self.remove_container(&c, force).await?;
        if volumes {
            self.remove_anonymous_volumes(&mounts).await;
        }
        Ok(())
    }

    async fn remove_container(&self, c: &Arc<Container>, force: bool) -> Result<()> {
        // A start may be under way as `rm -f` comes (a restart policy's, or a client's):
        // once it is done the container is running, and forcing means killing it again.
        let mut attempts = 0;
        loop {
            match self.remove_once(c, force).await {
                Err(EngineError::Conflict(_))
                    if force
                        && attempts < 5
                        && c.record.lock().await.state.status == Status::Running =>
                {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    async fn remove_once(&self, c: &Arc<Container>, force: bool) -> Result<()> {
        let c = c.clone();
        if c.record.lock().await.state.restarting {
            if !force {
                return Err(EngineError::Conflict(format!(
                    "You cannot remove a restarting container {}. Stop the container before attempting removal or force remove",
                    c.id
                )));
            }
            self.cancel_restart(&c).await?;
        }
        if c.record.lock().await.state.status == Status::Running {
            if !force {
                return Err(EngineError::Conflict(format!(
                    "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                    c.id
                )));
            }
            self.stopped_by_client(&c, true).await;
            let mut lifecycle = c.lifecycle();
            let exits = lifecycle.borrow().exits;
            self.kill_hard(&c, &mut lifecycle, exits).await?;
        }
        // The exit watcher may be removing it already (--rm).
        if c.lifecycle.borrow().removed {
            return Ok(());
        }
        remove_stopped(&self.registry, &self.images, &self.events, &c, None).await
    }

    /// Renames a container.
    pub async fn rename(&self, name_or_id: &str, new_name: &str) -> Result<()> {
        let c = self.get(name_or_id).await?;
        let new_name = new_name.strip_prefix('/').unwrap_or(new_name).to_string();
        if !ids::valid_name(&new_name) {
            return Err(EngineError::InvalidArgument(format!(
                "Invalid container name ({new_name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        let mut reg = self.registry.write().await;
        let mut r = c.record.lock().await;
        if r.name == new_name {
            return Err(EngineError::Conflict(
                "Renaming a container with the same name as its current name".to_string(),
            ));
        }
        if let Some(other) = reg.names.get(&new_name) {
            return Err(EngineError::Conflict(format!(
                "Conflict. The container name \"/{new_name}\" is already in use by container \"{other}\". You have to remove (or rename) that container to be able to reuse that name."
            )));
        }
        reg.names.remove(&r.name);
        reg.names.insert(new_name.clone(), r.id.clone());
        self.networks.rename(&r.id, &new_name);
        let old = std::mem::replace(&mut r.name, new_name);
        c.save(&r).await?;
        self.event(&r, "rename", &[("oldName", format!("/{old}"))]);
        Ok(())
    }
}

impl Containers {
    /// Records a container event, with Docker's attributes (name, image, labels, `extra`).
    fn event(&self, r: &Record, action: &str, extra: &[(&str, String)]) {
        self.events.emit(
            crate::events::Kind::Container,
            action,
            r.id.clone(),
            crate::events::container_attributes(&r.name, &r.image, &r.config.labels, extra),
        );
    }
}

/// Waits until the container has exited more times than `exits`, up to `timeout`.
async fn wait_exit_change(
    lifecycle: &mut watch::Receiver<Lifecycle>,
    exits: u64,
    timeout: Duration,
) -> bool {
    let changed = async {
        loop {
            if lifecycle.borrow_and_update().exits > exits {
                return true;
            }
            if lifecycle.changed().await.is_err() {
                return false;
            }
        }
    };
    tokio::time::timeout(timeout, changed)
        .await
        .unwrap_or(false)
}

/// Deletes a stopped container's files and forgets it.
async fn remove_stopped(
    registry: &Arc<RwLock<Registry>>,
    images: &Arc<ImageStore>,
    events: &crate::events::Events,
    c: &Arc<Container>,
    anonymous_volumes_of: Option<&Containers>,
) -> Result<()> {
    let _op = c.op.clone().lock_owned().await;
    if c.lifecycle.borrow().removed {
        return Ok(());
    }
    let name = {
        let mut r = c.record.lock().await;
        if r.state.status == Status::Running {
            return Err(EngineError::Conflict(format!(
                "container {} is running",
                c.id
            )));
        }
        r.state.status = Status::Removing;
        r.name.clone()
    };
    let dir = c.dir.clone();
    let deleted = tokio::task::spawn_blocking(move || {
        vm::unmount_rootfs(&dir.join("rootfs"));
        match crate::fsutil::remove_tree(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    })
    .await
    .map_err(|e| EngineError::internal("remover", e))
    .and_then(|r| {
        r.map_err(|e| EngineError::internal(format!("cannot remove container {}", c.id), e))
    });
    if let Err(e) = deleted {
        // As dockerd: the container stays, marked dead, for `docker rm` to retry; waiters
        // for its removal hear of the failure.
        log::error!("{e}");
        {
            let mut r = c.record.lock().await;
            r.state.status = Status::Dead;
            if let Err(e) = c.save(&r).await {
                log::warn!("container {}: {e}", c.id);
            }
        }
        c.lifecycle.send_modify(|l| l.removal_failures += 1);
        return Err(e);
    }
    {
        let mut reg = registry.write().await;
        reg.by_id.remove(&c.id);
        if reg.names.get(&name) == Some(&c.id) {
            reg.names.remove(&name);
        }
    }
    // `--rm` takes the container's anonymous volumes with it, before whoever waits for the
    // removal hears of it.
    if let Some(containers) = anonymous_volumes_of {
        let mounts = c.record.lock().await.host_config.mounts.clone();
        containers.remove_anonymous_volumes(&mounts).await;
    }
    c.lifecycle.send_modify(|l| l.removed = true);
    {
        let r = c.record.lock().await;
        events.emit(
            crate::events::Kind::Container,
            "destroy",
            r.id.clone(),
            crate::events::container_attributes(&r.name, &r.image, &r.config.labels, &[]),
        );
    }
    log::debug!("container {}: removed", c.id);
    // An image hidden by `rmi -f` may have lost its last container.
    let in_use: HashSet<String> = {
        let reg = registry.read().await;
        let mut ids = HashSet::new();
        for other in reg.by_id.values() {
            ids.insert(other.record.lock().await.image_id.clone());
        }
        ids
    };
    let images = images.clone();
    tokio::task::spawn_blocking(move || images.release_unused(&in_use))
        .await
        .map_err(|e| EngineError::internal("image release", e))??;
    Ok(())
}

/// Forgets what a container had on its network while it ran (address, published ports);
/// what it asked for stays.
pub(crate) fn clear_network_runtime(r: &mut Record) {
    for settings in r.networks.values_mut() {
        settings.endpoint_id.clear();
        settings.ip_address.clear();
        settings.ip_prefix_len = 0;
        settings.gateway.clear();
        settings.mac_address.clear();
    }
    r.ports.clear();
}

/// The process a container runs, for the agent.
fn process_spec(record: &Record) -> ProcessSpec {
    let mut spec = ProcessSpec::new(record.config.argv());
    spec.env = record.config.env.clone();
    if !spec.env.iter().any(|e| e.starts_with("PATH=")) {
        spec.env
            .push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string());
    }
    if record.config.tty && !spec.env.iter().any(|e| e.starts_with("TERM=")) {
        spec.env.push("TERM=xterm".to_string());
    }
    if !record.config.working_dir.is_empty() {
        spec.cwd = record.config.working_dir.clone();
    }
    spec.tty = record.config.tty;
    let [h, w] = record.host_config.console_size;
    spec.tty_size = (record.config.tty && h > 0 && w > 0).then_some(TtySize {
        rows: h.min(u32::from(u16::MAX)) as u16,
        cols: w.min(u32::from(u16::MAX)) as u16,
    });
    spec.stdin = record.config.open_stdin;
    spec.container = Some(vm::CONTAINER.to_string());
    spec.user = (!record.config.user.is_empty()).then(|| record.config.user.clone());
    spec.group_add = record.host_config.group_add.clone();
    // Checked at create.
    spec.no_new_privileges =
        spec::no_new_privileges(&record.host_config.security_opt).unwrap_or(true);
    spec.rlimits = record
        .host_config
        .ulimits
        .iter()
        .filter_map(|u| {
            let limit = |n: i64| if n < 0 { u64::MAX } else { n as u64 };
            Some(agent_protocol::Rlimit {
                resource: spec::rlimit_resource(&u.name)?,
                soft: limit(u.soft),
                hard: limit(u.hard),
            })
        })
        .collect();
    // Docker's --privileged: every capability, whatever --cap-add and --cap-drop say.
    spec.capabilities = if record.host_config.privileged {
        Some(
            agent_protocol::caps::NAMES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
    } else {
        spec::capabilities(&record.host_config.cap_add, &record.host_config.cap_drop)
    };
    spec.init = record.host_config.init == Some(true);
    spec
}

/// Records why a start failed in the container's state, and returns the API's error.
async fn record_failed_start(
    container: &Container,
    failure: vm::LaunchError,
) -> Result<EngineError> {
    let mut r = container.record.lock().await;
    let error = match failure {
        vm::LaunchError::Exec { not_found, message } => {
            r.state.exit_code = if not_found { 127 } else { 126 };
            r.state.error = message.clone();
            EngineError::InvalidArgument(format!("failed to create task for container: {message}"))
        }
        vm::LaunchError::Failed(message) | vm::LaunchError::SilentBootFailure(message) => {
            r.state.error = message.clone();
            EngineError::Internal(format!("cannot start container {}: {message}", r.id))
        }
    };
    container.save(&r).await?;
    Ok(error)
}

/// A record left `running` by a berthd that died: its VMM, if still alive, is killed, its
/// root filesystem unmounted, and it is recorded as exited.
fn recover_stale(config: &EngineConfig, dir: &Path, r: &mut Record) {
    if r.state.pid != 0 && is_our_vmm(r.state.pid, &config.vmm) {
        // SAFETY: kill(2) on a pid we recorded and just checked is a berth-vmm process.
        unsafe { libc::kill(r.state.pid as i32, libc::SIGKILL) };
    }
    vm::unmount_rootfs(&dir.join("rootfs"));
    vm::remove_run_dir(&vm::run_dir(&config.exec_root, &r.id));
    r.state.status = Status::Exited;
    r.state.pid = 0;
    r.state.paused = false;
    r.state.exit_code = 255;
    r.state.error = "berthd stopped while the container was running".into();
    r.state.finished_at = Some(SystemTime::now());
}

fn is_our_vmm(pid: u32, vmm: &Path) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let name = vmm.file_name();
    exe.as_deref().and_then(Path::file_name) == name && name.is_some()
}
