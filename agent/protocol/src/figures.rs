//! (1.4) What the agent reads from its VM's `/proc` for `docker top` and `docker stats`:
//! the figures as the guest kernel counts them, in plain units (bytes, nanoseconds), with
//! no formatting. The host turns them into `ps` columns and Docker's stats shape.
//!
//! Everything here comes from a hostile guest: the host validates it
//! ([`crate::Response::validate`]) and must still treat every number as arbitrary (its
//! arithmetic saturates).

use serde::{Deserialize, Serialize};

/// One process of a container, as `ps` needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its pid in the container's PID namespace (what `ps` shows inside the container).
    pub pid: u32,
    /// Its parent's pid in the container's PID namespace; 0 for the container's init, whose
    /// parent (the agent) is outside it.
    pub ppid: u32,
    /// Its effective uid.
    pub uid: u32,
    /// That uid's name in the container's `/etc/passwd`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The kernel's one-letter state (`R`, `S`, `D`, `Z`, `T`, `I`, ...).
    pub state: String,
    /// Nice value, -20 to 19.
    pub nice: i32,
    pub threads: u32,
    /// It leads its session (`ps`'s `s` flag).
    #[serde(default)]
    pub session_leader: bool,
    /// It is in its terminal's foreground process group (`ps`'s `+` flag).
    #[serde(default)]
    pub foreground: bool,
    /// Its controlling terminal's device number as the kernel encodes it (`tty_nr` of
    /// `/proc/PID/stat`), 0 for none.
    pub tty_nr: u32,
    /// When it started, in nanoseconds since the Unix epoch on the guest's clock.
    pub start_time_ns: u64,
    /// CPU time it used (user and system), in nanoseconds.
    pub cpu_time_ns: u64,
    pub rss_bytes: u64,
    pub vsz_bytes: u64,
    /// Its command name (`/proc/PID/comm`, at most 15 bytes in Linux).
    pub comm: String,
    /// Its arguments joined by spaces, control characters replaced by `?` and cut to
    /// [`crate::MAX_PS_ARGS_LEN`] bytes; empty for a zombie or a kernel thread.
    pub args: String,
}

/// The answer to [`crate::Request::ListProcesses`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessList {
    /// The guest's clock when it listed them (nanoseconds since the Unix epoch): the
    /// processes' ages are measured against it, not against the host's clock.
    pub now_ns: u64,
    /// The VM's `MemTotal`, for `%MEM`.
    pub mem_total_bytes: u64,
    pub processes: Vec<ProcessInfo>,
    /// The container had more than [`crate::MAX_LISTED_PROCESSES`]; the rest are left out.
    #[serde(default)]
    pub truncated: bool,
}

/// CPU time, in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuFigures {
    /// User time of the container's processes, those they have waited for included.
    pub container_user_ns: u64,
    /// System time of the container's processes, those they have waited for included.
    pub container_system_ns: u64,
    /// All the VM's CPU time, idle included: its uptime (`CLOCK_BOOTTIME`) times its online
    /// CPUs, what `/proc/stat`'s user to softirq would sum to if no timer tick were lost.
    /// Docker's `system_cpu_usage`.
    pub vm_total_ns: u64,
    /// The part of `vm_total_ns` that was not idle or waiting for I/O (`/proc/stat`, in
    /// ticks).
    pub vm_busy_ns: u64,
    /// The VM's online CPUs.
    pub online_cpus: u32,
}

/// The VM's memory, from `/proc/meminfo` and `/proc/vmstat`, in bytes (counts for the
/// fault counters).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryFigures {
    pub total: u64,
    pub free: u64,
    pub available: u64,
    pub buffers: u64,
    pub cached: u64,
    pub active_anon: u64,
    pub inactive_anon: u64,
    pub active_file: u64,
    pub inactive_file: u64,
    pub anon: u64,
    pub mapped: u64,
    pub shmem: u64,
    pub slab_reclaimable: u64,
    pub slab_unreclaimable: u64,
    pub kernel_stack: u64,
    pub page_tables: u64,
    pub pgfault: u64,
    pub pgmajfault: u64,
}

/// One network interface's counters (`/proc/net/dev`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The answer to [`crate::Request::Stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    pub cpu: CpuFigures,
    pub memory: MemoryFigures,
    /// The container's processes now.
    pub pids: u32,
    /// The VM's interfaces but `lo` (a container's processes share the VM's network).
    pub networks: Vec<InterfaceCounters>,
}
