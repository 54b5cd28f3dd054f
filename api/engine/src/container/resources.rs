//! Docker's resource options beyond the VM's size: what they ask of the container's cgroup
//! in its guest, checked with dockerd's rules and words.
//!
//! A container's VM is sized by `--cpus` and `-m` (see [`super::record::HostConfig`]);
//! inside it the agent gives the container a cgroup of its own, and these options set its
//! files: `-m` → `memory.max`, `--memory-reservation` → `memory.low`, `--pids-limit` →
//! `pids.max`, `--cpu-shares` → `cpu.weight` (runc's conversion), `--cpus` or
//! `--cpu-quota`/`--cpu-period` → `cpu.max`, `--cpuset-cpus` → `cpuset.cpus` (the VM gets
//! enough vCPUs for the highest one). `--memory-swap` is accepted with dockerd's checks and
//! means nothing more: the guest has no swap, as a host without any. `--sysctl` takes the
//! IPC sysctls Docker allows (set in the container's IPC namespace) and `net.*`, `vm.*` and
//! `fs.*`, which in a VM of its own are the container's alone.

use std::collections::BTreeMap;

use agent_protocol::{CpuMax, Resources};
use serde::{Deserialize, Serialize};

use crate::{EngineError, Result};

/// dockerd's smallest memory limit and reservation (`linuxMinMemory`).
const MIN_MEMORY: i64 = 6 << 20;
/// The CFS period when only a quota is given (the kernel's default).
const DEFAULT_CPU_PERIOD: i64 = 100_000;
/// Most vCPUs a VM gets; CPU numbers run from 0 to this less one.
pub const MAX_VCPUS: u32 = 64;
/// The IPC sysctls Docker allows (moby's `oci/namespaces`); `fs.mqueue.*` too.
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// The resource options a container was created with (Docker's names, Docker's zero for
/// unset).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default)]
    pub memory_reservation: i64,
    #[serde(default)]
    pub memory_swap: i64,
    #[serde(default)]
    pub cpu_shares: i64,
    #[serde(default)]
    pub cpu_period: i64,
    #[serde(default)]
    pub cpu_quota: i64,
    #[serde(default)]
    pub cpuset_cpus: String,
    /// `None`: unset; 0 or less: unlimited (dockerd's reading).
    #[serde(default)]
    pub pids_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
}

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument(msg.into())
}

impl Limits {
    /// Checks the options as dockerd does, given the container's `Memory` and `NanoCpus`.
    pub fn check(&self, memory: i64, nano_cpus: i64) -> Result<()> {
        if memory > 0 && memory < MIN_MEMORY {
            return Err(invalid("Minimum memory limit allowed is 6MB"));
        }
        if self.memory_reservation < 0 {
            return Err(invalid("invalid memory reservation: negative"));
        }
        if self.memory_reservation > 0 && self.memory_reservation < MIN_MEMORY {
            return Err(invalid("Minimum memory reservation allowed is 6MB"));
        }
        if memory > 0 && self.memory_reservation > memory {
            return Err(invalid(
                "Minimum memory limit can not be less than memory reservation limit, see usage",
            ));
        }
        if self.memory_swap < -1 {
            return Err(invalid(
                "invalid memory swap: it is -1 (unlimited) or a size",
            ));
        }
        if memory == 0 && self.memory_swap > 0 {
            return Err(invalid(
                "You should always set the Memory limit when using Memoryswap limit, see usage",
            ));
        }
        if memory > 0 && self.memory_swap > 0 && self.memory_swap < memory {
            return Err(invalid(
                "Minimum memoryswap limit should be larger than memory limit, see usage",
            ));
        }
        if self.cpu_shares < 0 {
            return Err(invalid("invalid CPU shares: negative"));
        }
        if nano_cpus > 0 && self.cpu_period > 0 {
            return Err(invalid(
                "Conflicting options: Nano CPUs and CPU Period cannot both be set",
            ));
        }
        if nano_cpus > 0 && self.cpu_quota > 0 {
            return Err(invalid(
                "Conflicting options: Nano CPUs and CPU Quota cannot both be set",
            ));
        }
        if self.cpu_period != 0 && !(1_000..=1_000_000).contains(&self.cpu_period) {
            return Err(invalid(
                "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)",
            ));
        }
        if self.cpu_quota > 0 && self.cpu_quota < 1_000 {
            return Err(invalid(
                "CPU cfs quota can not be less than 1ms (i.e. 1000)",
            ));
        }
        if self.cpu_quota > 0 && self.quota_vcpus() > MAX_VCPUS {
            return Err(invalid(format!(
                "CPU cfs quota asks for more than {MAX_VCPUS} CPUs, the most a VM has"
            )));
        }
        if !self.cpuset_cpus.is_empty() {
            let highest = highest_cpu(&self.cpuset_cpus).ok_or_else(|| {
                invalid(format!(
                    "Invalid value {} for cpuset cpus",
                    self.cpuset_cpus
                ))
            })?;
            if highest >= MAX_VCPUS {
                return Err(invalid(format!(
                    "Requested CPUs are not available - requested {}, available: 0-{}",
                    self.cpuset_cpus,
                    MAX_VCPUS - 1
                )));
            }
        }
        for (name, value) in &self.sysctls {
            check_sysctl(name, value)?;
        }
        Ok(())
    }

    /// The vCPUs these options need (0: no need): the highest CPU of `--cpuset-cpus`, and
    /// `--cpu-quota` over `--cpu-period` rounded up.
    pub fn vcpus(&self) -> u32 {
        let cpuset = if self.cpuset_cpus.is_empty() {
            0
        } else {
            highest_cpu(&self.cpuset_cpus).map_or(0, |c| c + 1)
        };
        cpuset.max(self.quota_vcpus())
    }

    fn period(&self) -> i64 {
        if self.cpu_period > 0 {
            self.cpu_period
        } else {
            DEFAULT_CPU_PERIOD
        }
    }

    fn quota_vcpus(&self) -> u32 {
        if self.cpu_quota <= 0 {
            return 0;
        }
        let n = (self.cpu_quota + self.period() - 1) / self.period();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// What the agent sets on the container's cgroup, with the container's `Memory` and
    /// `NanoCpus`.
    pub fn agent_resources(&self, memory: i64, nano_cpus: i64) -> Resources {
        let positive = |v: i64| u64::try_from(v).ok().filter(|v| *v > 0);
        let cpu_max = if nano_cpus > 0 {
            Some(CpuMax {
                quota_us: (nano_cpus as u64 * DEFAULT_CPU_PERIOD as u64) / 1_000_000_000,
                period_us: DEFAULT_CPU_PERIOD as u64,
            })
        } else {
            positive(self.cpu_quota).map(|quota_us| CpuMax {
                quota_us,
                period_us: self.period() as u64,
            })
        };
        Resources {
            memory_max: positive(memory),
            memory_low: positive(self.memory_reservation),
            pids_max: self.pids_limit.and_then(positive),
            cpu_weight: positive(self.cpu_shares).map(cpu_weight),
            cpu_max,
            cpuset_cpus: (!self.cpuset_cpus.is_empty()).then(|| self.cpuset_cpus.clone()),
        }
    }

    /// The sysctls as the agent takes them.
    pub fn agent_sysctls(&self) -> Vec<(String, String)> {
        self.sysctls
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// runc's conversion of cgroup v1 CPU shares (2 to 262144, clamped as dockerd clamps) to a
/// cgroup v2 weight (1 to 10000).
fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9_999) / 262_142
}

/// The highest CPU of a cpuset list (`0-2,4`), or `None` if it is not one.
fn highest_cpu(list: &str) -> Option<u32> {
    let mut highest = None;
    for item in list.split(',') {
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => (a, b),
            None => (item, item),
        };
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(lo) || !digits(hi) {
            return None;
        }
        let (lo, hi): (u32, u32) = (lo.parse().ok()?, hi.parse().ok()?);
        if lo > hi {
            return None;
        }
        highest = Some(highest.map_or(hi, |h: u32| h.max(hi)));
    }
    highest
}

/// Whether berth sets sysctl `name` (see the module documentation), with dockerd's words
/// for the ones it does not.
fn check_sysctl(name: &str, value: &str) -> Result<()> {
    let word_ok = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    if !name.contains('.') || !name.split('.').all(word_ok) {
        return Err(invalid(format!(
            "invalid sysctl {name:?}: a dotted name such as net.core.somaxconn"
        )));
    }
    if value.contains(['\n', '\0']) || value.len() > 4096 {
        return Err(invalid(format!("invalid value for sysctl {name}")));
    }
    let allowed =
        IPC_SYSCTLS.contains(&name) || ["fs.", "net.", "vm."].iter().any(|p| name.starts_with(p));
    if !allowed {
        return Err(invalid(format!(
            "sysctl '{name}' is not allowed: berth sets the IPC sysctls Docker allows (kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*) and net.*, vm.* and fs.*, which belong to the container's own VM"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerds_rules_and_words() {
        let ok = Limits::default();
        assert!(ok.check(0, 0).is_ok());
        let err = |l: Limits, memory, nano| match l.check(memory, nano) {
            Err(EngineError::InvalidArgument(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            err(Limits::default(), 1 << 20, 0),
            "Minimum memory limit allowed is 6MB"
        );
        let r = Limits {
            memory_reservation: 64 << 20,
            ..Limits::default()
        };
        assert!(err(r.clone(), 32 << 20, 0).starts_with("Minimum memory limit can not be less"));
        assert!(r.check(128 << 20, 0).is_ok());
        let s = Limits {
            memory_swap: 64 << 20,
            ..Limits::default()
        };
        assert!(err(s.clone(), 0, 0).starts_with("You should always set the Memory limit"));
        assert!(err(s.clone(), 128 << 20, 0).starts_with("Minimum memoryswap limit"));
        assert!(s.check(32 << 20, 0).is_ok());
        let q = Limits {
            cpu_quota: 50_000,
            ..Limits::default()
        };
        assert!(err(q.clone(), 0, 1_000_000_000).starts_with("Conflicting options"));
        assert!(q.check(0, 0).is_ok());
        let p = Limits {
            cpu_period: 10,
            ..Limits::default()
        };
        assert!(err(p, 0, 0).starts_with("CPU cfs period"));
        let c = Limits {
            cpuset_cpus: "0-64".into(),
            ..Limits::default()
        };
        assert_eq!(
            err(c, 0, 0),
            "Requested CPUs are not available - requested 0-64, available: 0-63"
        );
        let c = Limits {
            cpuset_cpus: "2-1".into(),
            ..Limits::default()
        };
        assert_eq!(err(c, 0, 0), "Invalid value 2-1 for cpuset cpus");
        for bad in [
            "kernel.panic",
            "kernel.hostname",
            "net/ipv4/ip_forward",
            "vm..x",
            "x",
        ] {
            let l = Limits {
                sysctls: [(bad.to_string(), "1".to_string())].into(),
                ..Limits::default()
            };
            assert!(l.check(0, 0).is_err(), "{bad}");
        }
        for good in [
            "kernel.msgmax",
            "fs.mqueue.msg_max",
            "net.core.somaxconn",
            "vm.max_map_count",
        ] {
            let l = Limits {
                sysctls: [(good.to_string(), "1".to_string())].into(),
                ..Limits::default()
            };
            assert!(l.check(0, 0).is_ok(), "{good}");
        }
    }

    #[test]
    fn options_become_cgroup_limits_and_vcpus() {
        let l = Limits {
            memory_reservation: 32 << 20,
            cpu_shares: 512,
            cpuset_cpus: "1,3".into(),
            pids_limit: Some(20),
            ..Limits::default()
        };
        assert_eq!(l.vcpus(), 4);
        let r = l.agent_resources(64 << 20, 1_500_000_000);
        assert_eq!(r.memory_max, Some(64 << 20));
        assert_eq!(r.memory_low, Some(32 << 20));
        assert_eq!(r.pids_max, Some(20));
        assert_eq!(r.cpu_weight, Some(20));
        assert_eq!(
            r.cpu_max,
            Some(CpuMax {
                quota_us: 150_000,
                period_us: 100_000
            })
        );
        assert_eq!(r.cpuset_cpus.as_deref(), Some("1,3"));
        // Unlimited pids, a quota on its own period.
        let l = Limits {
            pids_limit: Some(-1),
            cpu_quota: 250_000,
            cpu_period: 50_000,
            ..Limits::default()
        };
        assert_eq!(l.vcpus(), 5);
        let r = l.agent_resources(0, 0);
        assert_eq!(r.pids_max, None);
        assert_eq!(
            r.cpu_max,
            Some(CpuMax {
                quota_us: 250_000,
                period_us: 50_000
            })
        );
        assert!(Limits::default().agent_resources(0, 0).is_unlimited());
        // runc's table: 1024 shares is weight 39; the ends clamp.
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1), 1);
        assert_eq!(cpu_weight(1 << 30), 10_000);
    }
}
