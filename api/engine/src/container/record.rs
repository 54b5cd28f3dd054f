//! What berth remembers about a container: its configuration (the user's request merged
//! with the image's defaults) and its state. Records are written atomically on every
//! change, so a restarted berthd finds every container as it was.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::logs::{LogConfig, LogConfigError};

/// A container's lifecycle state, as Docker names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
    Removing,
    Dead,
}

impl Status {
    /// Docker's lowercase name (`docker ps --filter status=`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Removing => "removing",
            Status::Dead => "dead",
        }
    }

    /// Whether a start request may proceed.
    pub fn can_start(self) -> bool {
        matches!(self, Status::Created | Status::Exited)
    }

    /// Whether signals can be delivered.
    pub fn can_kill(self) -> bool {
        self == Status::Running
    }
}

/// The container's configuration after merging the image's defaults (Docker's `Config`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub hostname: String,
    pub domainname: String,
    pub user: String,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub image: String,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<i64>,
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    /// Its own check merged with its image's (`None`: neither has one).
    #[serde(default)]
    pub healthcheck: Option<super::health::Healthcheck>,
    /// Docker's `Config.Volumes`: its own (`-v /path`) and its image's `VOLUME`s.
    #[serde(default)]
    pub volumes: BTreeMap<String, serde_json::Value>,
}

impl ContainerConfig {
    /// The process to run: entrypoint then cmd.
    pub fn argv(&self) -> Vec<String> {
        let mut argv: Vec<String> = self
            .entrypoint
            .iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        argv.extend(self.cmd.iter().flatten().cloned());
        argv
    }
}

/// One `--ulimit` (Docker's `{Name, Soft, Hard}`; -1 is unlimited).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// The part of Docker's `HostConfig` berth honours.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConfig {
    pub auto_remove: bool,
    pub network_mode: String,
    /// Bytes of guest memory (Docker's `Memory`); 0 = berth's default.
    pub memory: i64,
    /// Billionths of CPUs (Docker's `NanoCpus`); 0 = berth's default.
    pub nano_cpus: i64,
    pub privileged: bool,
    pub init: Option<bool>,
    pub console_size: [u32; 2],
    /// `no`, `always`, `unless-stopped` or `on-failure`.
    pub restart_policy: String,
    /// `on-failure:N`'s N; 0: no limit.
    #[serde(default)]
    pub restart_max_retries: i64,
    pub log_type: String,
    /// `--log-opt`, as given (checked against `log_type` at create).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub log_options: BTreeMap<String, String>,
    /// `--group-add`: group names or ids, resolved in the guest against the image's
    /// `/etc/group`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_add: Vec<String>,
    /// `--ulimit`s, for every process of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
    /// `--security-opt`, as given (only `no-new-privileges` is accepted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    /// `-p`: by container port (`80/tcp`), the host addresses and ports asked for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_bindings: BTreeMap<String, Vec<PortBindingSpec>>,
    /// `-P`: every exposed port on an ephemeral host port.
    #[serde(default)]
    pub publish_all_ports: bool,
    /// `--dns`, `--dns-search`, `--dns-option`, `--add-host` (`name:address`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_options: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// `--cap-add`, `--cap-drop`: `CAP_` names or `ALL`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// `-v` binds, `--mount`s and `--tmpfs`, as given (inspect shows them so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_requests: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tmpfs: BTreeMap<String, String>,
    /// All of them, read at create (binds, then `--mount`s, then `--tmpfs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<super::mounts::MountPoint>,
    /// `--read-only`: the root share read-only in the VMM and in the guest.
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// `--shm-size` in bytes; 0: Docker's 64 MiB.
    #[serde(default)]
    pub shm_size: i64,
    /// How its VM starts (the `io.berth.start` annotation); `None`: the daemon's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<crate::StartPath>,
    /// The resource options applied to its cgroup in the guest.
    #[serde(default)]
    pub limits: super::resources::Limits,
}

/// One host side of a published port, as asked (`HostIp`, `HostPort`; empty: any).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBindingSpec {
    pub host_ip: String,
    pub host_port: String,
}

/// A container's settings on one network: what it asked for (aliases, `--ip`) and, while
/// it runs, what it got.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSettings {
    pub network_id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `--ip`.
    #[serde(default)]
    pub ipv4_address: Option<String>,
    #[serde(default)]
    pub endpoint_id: String,
    #[serde(default)]
    pub ip_address: String,
    #[serde(default)]
    pub ip_prefix_len: u8,
    #[serde(default)]
    pub gateway: String,
    #[serde(default)]
    pub mac_address: String,
}

/// A published port as bound while the container runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// `80/tcp`.
    pub port: String,
    pub host_ip: String,
    pub host_port: u16,
}

/// Guest sizes when the container asks for none.
pub const DEFAULT_VCPUS: u8 = 1;
/// MiB.
pub const DEFAULT_MEM_MIB: u64 = 256;
/// The smallest guest berth's kernel boots comfortably in.
pub const MIN_MEM_MIB: u64 = 64;

/// Docker's restart policies.
pub mod restart {
    pub const NO: &str = "no";
    pub const ALWAYS: &str = "always";
    pub const UNLESS_STOPPED: &str = "unless-stopped";
    pub const ON_FAILURE: &str = "on-failure";
}

impl HostConfig {
    /// Whether its restart policy starts it again after an exit with `exit_code`, its
    /// `restart_count` restarts so far, and whether a client stopped it. The same rule
    /// decides at berthd's start (`always` then comes back even after a `docker stop`, as
    /// under dockerd).
    pub fn should_restart(
        &self,
        exit_code: i32,
        restart_count: u32,
        manually_stopped: bool,
    ) -> bool {
        match self.restart_policy.as_str() {
            restart::ALWAYS => true,
            restart::UNLESS_STOPPED => !manually_stopped,
            restart::ON_FAILURE => {
                exit_code != 0
                    && (self.restart_max_retries <= 0
                        || i64::from(restart_count) < self.restart_max_retries)
            }
            _ => false,
        }
    }

    /// vCPUs for the VM: `--cpus` rounded up, or what `--cpuset-cpus` and `--cpu-quota`
    /// need, whichever is more.
    pub fn vcpus(&self) -> u8 {
        let whole = (self.nano_cpus.max(0) + 999_999_999) / 1_000_000_000;
        let need = u32::try_from(whole)
            .unwrap_or(u32::MAX)
            .max(self.limits.vcpus());
        if need == 0 {
            return DEFAULT_VCPUS;
        }
        need.clamp(1, super::resources::MAX_VCPUS) as u8
    }

    /// How its output is kept. Checked at create; a record that no longer reads (written
    /// by a berth that accepted more) says why at start.
    pub fn log_config(&self) -> Result<LogConfig, LogConfigError> {
        LogConfig::parse(&self.log_type, &self.log_options)
    }

    /// What the container's memory is held to, in bytes: its VM's size, or `-m` where
    /// that is below the smallest VM (its cgroup in the VM is capped there).
    pub fn memory_limit_bytes(&self) -> u64 {
        let vm = self.mem_mib().saturating_mul(1 << 20);
        match u64::try_from(self.memory) {
            Ok(m) if m > 0 => m.min(vm),
            _ => vm,
        }
    }

    /// Guest memory in MiB: `--memory`.
    pub fn mem_mib(&self) -> u64 {
        if self.memory <= 0 {
            return DEFAULT_MEM_MIB;
        }
        ((self.memory as u64) >> 20).max(MIN_MEM_MIB)
    }
}

/// Runtime state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    /// The VMM's pid while running (the container's "pid" on this host).
    pub pid: u32,
    pub exit_code: i32,
    pub error: String,
    pub oom_killed: bool,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// Its VM's vCPUs are parked (`docker pause`); only while running.
    #[serde(default)]
    pub paused: bool,
    /// Exited, and waiting out the backoff before its restart policy starts it again.
    #[serde(default)]
    pub restarting: bool,
    /// Docker's HasBeenManuallyStopped: stopped or killed by a client, which an
    /// `unless-stopped` policy remembers across berthd restarts. A start clears it.
    #[serde(default)]
    pub manually_stopped: bool,
    /// Docker's `State.Health`: only for a container with a health check.
    #[serde(default)]
    pub health: Option<super::health::Health>,
}

impl State {
    /// Docker's `State.Status`: `paused` for a running container whose VM is paused.
    pub fn docker_status(&self) -> &'static str {
        if self.status == Status::Running && self.paused {
            "paused"
        } else if self.restarting {
            "restarting"
        } else {
            self.status.as_str()
        }
    }
}

impl Default for State {
    fn default() -> Self {
        State {
            status: Status::Created,
            pid: 0,
            exit_code: 0,
            error: String::new(),
            oom_killed: false,
            started_at: None,
            finished_at: None,
            paused: false,
            restarting: false,
            manually_stopped: false,
            health: None,
        }
    }
}

/// Everything persisted about one container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    pub created: SystemTime,
    /// The image as the user named it.
    pub image: String,
    /// `sha256:...`.
    pub image_id: String,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    pub state: State,
    pub restart_count: u32,
    /// By network name: the one network it is on (none for `--network none`).
    #[serde(default)]
    pub networks: BTreeMap<String, EndpointSettings>,
    /// Its published ports while it runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PublishedPort>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_argv() {
        let mut h = HostConfig::default();
        assert_eq!((h.vcpus(), h.mem_mib()), (DEFAULT_VCPUS, DEFAULT_MEM_MIB));
        h.nano_cpus = 1_500_000_000;
        h.memory = 512 << 20;
        assert_eq!((h.vcpus(), h.mem_mib()), (2, 512));
        h.memory = 1 << 20;
        assert_eq!(h.mem_mib(), MIN_MEM_MIB);
        let c = ContainerConfig {
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec!["echo hi".into()]),
            ..Default::default()
        };
        assert_eq!(c.argv(), vec!["/bin/sh", "-c", "echo hi"]);
        let c = ContainerConfig {
            entrypoint: Some(vec!["".into()]),
            cmd: Some(vec!["true".into()]),
            ..Default::default()
        };
        assert_eq!(c.argv(), vec!["true"]);
        assert!(Status::Exited.can_start());
        assert!(!Status::Running.can_start());
    }
}
