//! `docker top` and `docker stats`: a running container's processes and figures, read by
//! its agent (protocol 1.4) over the container's shared control connection, and its VMM's
//! own cost, read from this host's `/proc`.
//!
//! What the figures mean in a VM: the container's CPU time is that of its processes in the
//! guest (children they reaped included); the system's CPU time, online CPUs, memory and
//! network counters are the VM's, of which the container is the only tenant besides the
//! agent. The memory limit is the VM's size (`--memory`; a smaller `-m` caps the container's cgroup in it). None of it counts what the VM
//! costs this host: the VMM process's private memory and CPU time are given apart
//! ([`VmmFigures`]), never mixed into the guest's figures.

use std::time::{Duration, SystemTime};

use agent_client::{ClientError, ErrorCode, ProcessList};
pub use agent_client::{CpuFigures, GuestStats, InterfaceCounters, MemoryFigures};

use super::ps::{local_time, PsFormat};
use super::record::Status;
use super::{lock_std, vm, Container, Containers};
use crate::{EngineError, Result};

/// `docker top`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Top {
    pub titles: Vec<String>,
    pub processes: Vec<Vec<String>>,
}

/// The VMM process's cost to this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmFigures {
    pub pid: u32,
    /// Pages only this VMM holds (`Private_Clean` + `Private_Dirty` of `smaps_rollup`):
    /// the guest RAM it touched and the VMM's own heap.
    pub private_memory_bytes: u64,
    /// Its proportional set size: private pages plus its share of shared ones.
    pub pss_bytes: u64,
    /// Its user and system CPU time, all its threads (vCPUs included).
    pub cpu_time_ns: u64,
}

/// One reading of a running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSample {
    /// When berth read it (this host's clock).
    pub read: SystemTime,
    pub guest: GuestStats,
    /// What the container's memory is held to: the VM's size, or `-m` below it.
    pub memory_limit_bytes: u64,
    /// `None` when its `/proc` entries could not be read (it is ending).
    pub vmm: Option<VmmFigures>,
}

/// The readings taken as a container is paused, which `top` and `stats` show until it
/// resumes: its guest's clock, processes and counters do not move meanwhile.
#[derive(Debug, Clone, Default)]
pub struct Frozen {
    processes: Option<ProcessList>,
    stats: Option<GuestStats>,
}

/// How long the readings before a pause may take; a guest too busy to answer in that time
/// is paused without them, and `top` then says so.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

fn paused_without(id: &str, what: &str) -> EngineError {
    EngineError::Conflict(format!(
        "Container {id} is paused and its {what} could not be read before it was: unpause the container first"
    ))
}

fn not_running(id: &str) -> EngineError {
    EngineError::Conflict(format!("container {id} is not running"))
}

/// An agent's answer turned into the engine's error: a container whose init has ended
/// (the exit not yet seen by the engine) is not running.
fn agent_error(id: &str, what: &str, e: ClientError) -> EngineError {
    match e.code() {
        Some(ErrorCode::InvalidState | ErrorCode::UnknownContainer) => not_running(id),
        _ => EngineError::Internal(format!("cannot read {what} of container {id}: {e}")),
    }
}

impl Containers {
    /// The container's processes as `ps ps_args` shows them (see [`super::ps`]).
    pub async fn top(&self, name_or_id: &str, ps_args: &str) -> Result<Top> {
        let format = PsFormat::parse(ps_args).map_err(EngineError::InvalidArgument)?;
        let c = self.get(name_or_id).await?;
        let paused = {
            let r = c.record.lock().await;
            if r.state.status != Status::Running {
                return Err(not_running(&c.id));
            }
            r.state.paused
        };
        let list = if paused {
            lock_std(&c.frozen)
                .as_ref()
                .and_then(|f| f.processes.clone())
                .ok_or_else(|| paused_without(&c.id, "processes"))?
        } else {
            self.list_processes(&c).await?
        };
        if list.truncated {
            log::info!(
                "container {}: more processes than the agent lists; top shows the first {}",
                c.id,
                list.processes.len()
            );
        }
        Ok(Top {
            titles: format.titles(),
            processes: format.rows(&list, &local_time),
        })
    }

    async fn list_processes(&self, c: &Container) -> Result<ProcessList> {
        match c.agent(|a| a.list_processes(vm::CONTAINER)).await {
            None => Err(not_running(&c.id)),
            Some(Err(e)) => Err(agent_error(&c.id, "the processes", e)),
            Some(Ok(list)) => Ok(list),
        }
    }

    /// Reads what `top` and `stats` show while the container is paused; what cannot be
    /// read in time is left out.
    pub(super) async fn freeze_readings(&self, c: &Container) -> Frozen {
        let processes = tokio::time::timeout(FREEZE_TIMEOUT, self.list_processes(c))
            .await
            .ok()
            .and_then(|r| r.ok());
        let stats = tokio::time::timeout(FREEZE_TIMEOUT, self.guest_stats(c))
            .await
            .ok()
            .and_then(|r| r.ok().flatten());
        Frozen { processes, stats }
    }

    /// The guest's figures; `None` when its init has ended.
    async fn guest_stats(&self, c: &Container) -> Result<Option<GuestStats>> {
        match c.agent(|a| a.stats(vm::CONTAINER)).await {
            None => Ok(None),
            Some(Err(e)) => match agent_error(&c.id, "the figures", e) {
                EngineError::Conflict(_) => Ok(None),
                other => Err(other),
            },
            Some(Ok(g)) => Ok(Some(g)),
        }
    }

    /// One reading of a container's figures; `None` when it is not running (Docker then
    /// answers an empty sample).
    pub async fn stats(&self, c: &Container) -> Result<Option<StatsSample>> {
        let (status, paused, limit) = {
            let r = c.record.lock().await;
            (
                r.state.status,
                r.state.paused,
                r.host_config.memory_limit_bytes(),
            )
        };
        if status != Status::Running {
            return Ok(None);
        }
        let vmm_pid = c.runtime.lock().await.as_ref().map(|r| r.vmm_pid);
        let guest = if paused {
            // The guest's counters stand still while it is paused, as a frozen cgroup's do.
            match lock_std(&c.frozen).as_ref().and_then(|f| f.stats.clone()) {
                Some(g) => g,
                None => return Err(paused_without(&c.id, "figures")),
            }
        } else {
            match self.guest_stats(c).await? {
                Some(g) => g,
                None => return Ok(None),
            }
        };
        let vmm = match vmm_pid {
            Some(pid) => tokio::task::spawn_blocking(move || vmm_figures(pid))
                .await
                .ok()
                .flatten(),
            None => None,
        };
        Ok(Some(StatsSample {
            read: SystemTime::now(),
            guest,
            memory_limit_bytes: limit,
            vmm,
        }))
    }
}

/// Reads the VMM's cost from this host's `/proc`.
fn vmm_figures(pid: u32) -> Option<VmmFigures> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf reads a constant of the C library; no memory is passed.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
    let (private, pss) = parse_smaps_rollup(&rollup);
    Some(VmmFigures {
        pid,
        private_memory_bytes: private,
        pss_bytes: pss,
        cpu_time_ns: parse_stat_cpu_ticks(&stat)?.saturating_mul(1_000_000_000 / hz),
    })
}

/// `Private_Clean` + `Private_Dirty` and `Pss` of `smaps_rollup`, in bytes.
pub fn parse_smaps_rollup(s: &str) -> (u64, u64) {
    let (mut private, mut pss) = (0u64, 0u64);
    for line in s.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kb: u64 = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match key {
            "Private_Clean" | "Private_Dirty" => private = private.saturating_add(kb * 1024),
            "Pss" => pss = kb * 1024,
            _ => {}
        }
    }
    (private, pss)
}

/// utime + stime (fields 14 and 15) of `/proc/PID/stat`, in ticks.
pub fn parse_stat_cpu_ticks(s: &str) -> Option<u64> {
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_rollup_private_and_pss() {
        let s = "5589c0a00000-7ffd1d1f4000 ---p 00000000 00:00 0  [rollup]\n\
                 Rss:               40960 kB\nPss:               30000 kB\n\
                 Pss_Anon:          20000 kB\nShared_Clean:       8000 kB\n\
                 Private_Clean:      1000 kB\nPrivate_Dirty:     25000 kB\n";
        assert_eq!(parse_smaps_rollup(s), (26_000 * 1024, 30_000 * 1024));
        assert_eq!(parse_smaps_rollup(""), (0, 0));
    }

    #[test]
    fn vmm_cpu_ticks() {
        let s = "4242 (berth-vmm) S 1 4242 4242 0 -1 4194560 9 0 0 0 150 25 0 0 20 0 5 0 1 2 3";
        assert_eq!(parse_stat_cpu_ticks(s), Some(175));
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1"), None);
        assert_eq!(parse_stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn this_process_reads_as_a_vmm_would() {
        let me = vmm_figures(std::process::id()).expect("own /proc entries");
        assert!(me.private_memory_bytes > 0 && me.pss_bytes > 0, "{me:?}");
    }
}
