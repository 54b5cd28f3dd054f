#![recursion_limit = "256"]

//! berth's engine: images, containers, and the microVMs that run them.
//!
//! One engine, two front doors: berthd (the Docker Engine API) and, later, the containerd
//! shim call the same operations here; neither duplicates lifecycle logic. The engine owns
//! berthd's data root (image store, container records, logs) and exec root (per-VM sockets
//! and runtime state), and supervises one `berth-vmm` process per running container.
//!
//! It knows nothing of HTTP: errors carry a kind ([`EngineError`]) that each front door maps
//! to its own wire format in one place.

pub mod build;
pub mod container;
pub mod error;
pub mod events;
pub mod fsutil;
pub mod ids;
pub mod image;
pub mod layerfs;
pub mod network;
pub mod time;
pub mod volume;

pub use error::{EngineError, Result};

use std::path::{Path, PathBuf};

/// Where the engine keeps things and what it runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Persistent state: images, container records, logs (dockerd's --data-root).
    pub data_root: PathBuf,
    /// Runtime state: sockets, per-VM directories (dockerd's --exec-root).
    pub exec_root: PathBuf,
    /// The VMM binary.
    pub vmm: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initramfs (the agent).
    pub initrd: PathBuf,
    /// How many times a boot that dies or stalls before its agent is ready is tried again
    /// (0: never; each retry is logged). For test hosts whose emulation loses boots.
    pub boot_retries: u32,
    /// How containers' VMs start unless a container says otherwise.
    pub start: StartPath,
    /// Build the template of berth's default VM size when the daemon starts, not on the
    /// first container's start.
    pub prebuild_template: bool,
    /// A network namespace to hold berth's bridges and taps (`--netns`); `None`: one of
    /// berthd's own, at `<exec-root>/netns`, removed when it stops.
    pub netns: Option<PathBuf>,
    /// The default `bridge` network's subnet (`--bridge-subnet`); `None`: Docker's
    /// 172.17.0.0/16.
    pub bridge_subnet: Option<network::ipam::Subnet>,
    /// Where registries are reached, and how (dockerd's registry flags, and berth's).
    pub registries: image::registry::RegistryOptions,
}

/// How a container's VM starts: restored from a template (a VM booted once and
/// snapshotted), or booted from its kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPath {
    #[default]
    Clone,
    Cold,
}

impl StartPath {
    /// The name berthd's `--start` and the `io.berth.start` annotation take.
    pub fn as_str(self) -> &'static str {
        match self {
            StartPath::Clone => "clone",
            StartPath::Cold => "cold",
        }
    }
}

impl std::str::FromStr for StartPath {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "clone" => Ok(StartPath::Clone),
            "cold" => Ok(StartPath::Cold),
            other => Err(format!("{other:?}: \"clone\" or \"cold\" expected")),
        }
    }
}

/// What the engine runs containers with, for `docker version` and `docker info`.
#[derive(Clone, Debug)]
pub struct RuntimeInfo {
    pub vmm_path: String,
    pub vmm_version: String,
    pub kernel_path: String,
    pub guest_kernel: String,
    /// Why this host cannot run containers directly, when it cannot.
    pub host_warning: Option<String>,
}

/// Object counts for `docker info`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub containers: usize,
    pub running: usize,
    pub paused: usize,
    pub stopped: usize,
    pub images: usize,
}

/// The engine.
pub struct Engine {
    config: EngineConfig,
    id: String,
    runtime: RuntimeInfo,
    pub images: std::sync::Arc<image::ImageStore>,
    pub containers: container::Containers,
    pub networks: std::sync::Arc<network::Networks>,
    /// What happened, for `docker events`.
    pub events: std::sync::Arc<events::Events>,
}

impl Engine {
    /// The classic builder over this engine's images and containers (`docker build`).
    pub fn builder(&self) -> build::Builder {
        build::Builder::new(self.images.clone(), self.containers.clone())
    }

    /// Opens (creating if needed) the data and exec roots and loads every record.
    pub async fn open(config: EngineConfig) -> Result<Engine> {
        let exec_root_len = config.exec_root.as_os_str().len();
        if exec_root_len > container::vm::MAX_EXEC_ROOT_LEN {
            return Err(EngineError::InvalidArgument(format!(
                "exec root {} is {exec_root_len} bytes long: VM sockets under it would not fit \
                 a Unix socket address; use one of at most {} bytes",
                config.exec_root.display(),
                container::vm::MAX_EXEC_ROOT_LEN
            )));
        }
        for dir in [&config.data_root, &config.exec_root] {
            std::fs::create_dir_all(dir).map_err(|e| {
                EngineError::internal(format!("cannot create {}", dir.display()), e)
            })?;
            restrict(dir)?;
        }
        let id = daemon_id(&config.data_root)?;
        let runtime = runtime_info(&config);
        let events = std::sync::Arc::new(events::Events::default());
        let images = std::sync::Arc::new(
            image::ImageStore::open(&config.data_root.join("image"))?
                .with_events(events.clone())
                .with_registries(
                    image::registry::Registries::new(&config.registries)
                        .map_err(|e| EngineError::InvalidArgument(e.to_string()))?,
                ),
        );
        let networks = std::sync::Arc::new(
            network::Networks::open(
                &config.data_root,
                &config.exec_root,
                config.netns.as_deref(),
                config.bridge_subnet,
            )
            .await?,
        );
        let volumes = std::sync::Arc::new(volume::Volumes::open(&config.data_root)?);
        let containers = container::Containers::open(
            &config,
            images.clone(),
            networks.clone(),
            events.clone(),
            volumes,
        )
        .await?;
        // Images hidden by `rmi -f` whose last container went away while berthd was down.
        images.release_unused(&containers.images_in_use().await)?;
        // Containers whose restart policy says so come back, as when dockerd starts.
        containers.restart_by_policy().await;
        Ok(Engine {
            config,
            id,
            runtime,
            images,
            containers,
            networks,
            events,
        })
    }

    /// The configuration the engine was opened with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// This daemon's persistent identifier.
    pub fn daemon_id(&self) -> &str {
        &self.id
    }

    /// The VMM and guest kernel in use.
    pub fn runtime_info(&self) -> &RuntimeInfo {
        &self.runtime
    }

    /// Container and image counts.
    pub async fn counts(&self) -> Counts {
        let mut counts = self.containers.counts().await;
        counts.images = self.images.count();
        counts
    }

    /// Stops every running container (as dockerd does without live restore), then takes
    /// berth's networks down: no tap, bridge or namespace of berth's is left.
    pub async fn shutdown(&self) {
        self.containers.shutdown().await;
        self.networks.close().await;
    }
}

fn restrict(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| EngineError::internal(format!("cannot restrict {}", dir.display()), e))
}

fn daemon_id(data_root: &Path) -> Result<String> {
    let path = data_root.join("engine-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if ids::is_hex_prefix(id.trim()) && id.trim().len() == 64 => {
            Ok(id.trim().to_string())
        }
        _ => {
            let id = ids::new_id();
            fsutil::atomic_write(&path, id.as_bytes())
                .map_err(|e| EngineError::internal("cannot record the engine id", e))?;
            Ok(id)
        }
    }
}

/// Finds the "Linux version ..." banner in a vmlinux.
fn guest_kernel_version(kernel: &Path) -> Option<String> {
    let bytes = std::fs::read(kernel).ok()?;
    let needle = b"Linux version ";
    let start = bytes.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let end = bytes[start..].iter().position(|&b| b == b' ' || b == 0)?;
    Some(String::from_utf8_lossy(&bytes[start..start + end]).into_owned())
}

fn runtime_info(config: &EngineConfig) -> RuntimeInfo {
    let host_warning = match std::process::Command::new(&config.vmm)
        .arg("check")
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Err(e) => Some(format!("cannot run {}: {e}", config.vmm.display())),
    };
    RuntimeInfo {
        vmm_path: config.vmm.display().to_string(),
        vmm_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_path: config.kernel.display().to_string(),
        guest_kernel: guest_kernel_version(&config.kernel).unwrap_or_else(|| "unknown".to_string()),
        host_warning,
    }
}
