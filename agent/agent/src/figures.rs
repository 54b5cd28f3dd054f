//! (1.4) A container's processes and the VM's figures, read from `/proc` for `docker top`
//! and `docker stats`.
//!
//! A container is told by its PID namespace: a process belongs to it when
//! `/proc/PID/ns/pid` is the namespace its init was started in (device and inode of the
//! nsfs file). Pids are translated into the container's namespace with the `NSpid` line of
//! `/proc/PID/status`, so they are those `ps` shows inside the container. The figures are
//! read from `/proc`, not from the container's cgroup: CPU time is the sum over the container's processes
//! (with `cutime`/`cstime`, the time of the children they reaped), memory, CPU capacity
//! (uptime times online CPUs: see [`boottime_ns`]) and network counters are the VM's.
//!
//! Everything is read on the calling (connection) thread, in bounded reads, and parsed
//! without trusting the format: a process that exits while it is read, or a line that does
//! not parse, is left out, never a failure of the request or of the agent.

use std::io::Read;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::time::{SystemTime, UNIX_EPOCH};

use agent_protocol::{
    CpuFigures, GuestStats, InterfaceCounters, MemoryFigures, ProcessInfo, ProcessList,
    MAX_LISTED_INTERFACES, MAX_LISTED_PROCESSES, MAX_PS_ARGS_LEN, MAX_PS_COMM_LEN, MAX_PS_USER_LEN,
};

/// Longest `/proc` file read whole (`/proc/stat` of a 1024-CPU VM stays below).
const MAX_PROC_FILE: usize = 256 << 10;
/// Longest `/etc/passwd` read for user names; a larger one leaves processes unnamed.
const MAX_PASSWD: usize = 1 << 20;

/// A PID namespace: the device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

impl NsId {
    /// The namespace an open nsfs descriptor stands for.
    pub fn of(fd: BorrowedFd<'_>) -> std::io::Result<NsId> {
        let st = nix::sys::stat::fstat(fd).map_err(std::io::Error::from)?;
        Ok(NsId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// The PID namespace of process `pid`, if it still exists and may be looked at.
    fn of_pid(pid: u32) -> Option<NsId> {
        let m = std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok()?;
        Some(NsId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// The units `/proc` counts in.
#[derive(Debug, Clone, Copy)]
pub struct Units {
    /// Clock ticks per second (`USER_HZ`).
    pub hz: u64,
    pub page_size: u64,
}

impl Units {
    pub fn of_this_kernel() -> Units {
        // SAFETY: sysconf reads a constant of the C library; no memory is passed.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Units {
            hz: u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100),
            page_size: u64::try_from(page).ok().filter(|&p| p > 0).unwrap_or(4096),
        }
    }

    fn ticks_to_ns(self, ticks: u64) -> u64 {
        let ns = u128::from(ticks) * 1_000_000_000 / u128::from(self.hz);
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

/// The fields of `/proc/PID/stat` the figures need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    pub pgrp: i64,
    pub session: i64,
    pub tty_nr: u32,
    pub tpgid: i64,
    pub utime: u64,
    pub stime: u64,
    pub cutime: u64,
    pub cstime: u64,
    pub nice: i32,
    pub threads: u32,
    pub starttime: u64,
    pub vsize: u64,
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat`. The command name is between the first `(` and the last `)`:
/// it may hold spaces and parentheses of its own.
pub fn parse_stat(s: &str) -> Option<Stat> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = s[..open].trim().parse().ok()?;
    let comm = s[open + 1..close].to_owned();
    let rest: Vec<&str> = s[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let field = |n: usize| rest.get(n - 3).copied();
    let num = |n: usize| field(n).and_then(|f| f.parse::<u64>().ok());
    let int = |n: usize| field(n).and_then(|f| f.parse::<i64>().ok());
    let mut state = field(3)?.chars();
    let st = state.next()?;
    Some(Stat {
        pid,
        comm,
        state: st,
        ppid: u32::try_from(num(4)?).ok()?,
        pgrp: int(5)?,
        session: int(6)?,
        // A signed int in the kernel; the encoding is in its low 32 bits.
        tty_nr: int(7)? as u32,
        tpgid: int(8)?,
        utime: num(14)?,
        stime: num(15)?,
        // Signed in the format, never negative in practice.
        cutime: u64::try_from(int(16)?).unwrap_or(0),
        cstime: u64::try_from(int(17)?).unwrap_or(0),
        nice: i32::try_from(int(19)?).ok()?.clamp(-20, 19),
        threads: u32::try_from(int(20)?).unwrap_or(1),
        starttime: num(22)?,
        vsize: num(23)?,
        rss_pages: u64::try_from(int(24)?).unwrap_or(0),
    })
}

/// The effective uid (`Uid:` line, second field) and the pid in the innermost namespace
/// (`NSpid:` line, last field) of `/proc/PID/status`.
pub fn parse_status(s: &str) -> (Option<u32>, Option<u32>) {
    let mut euid = None;
    let mut nspid = None;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("Uid:") {
            euid = v.split_whitespace().nth(1).and_then(|u| u.parse().ok());
        } else if let Some(v) = line.strip_prefix("NSpid:") {
            nspid = v.split_whitespace().last().and_then(|p| p.parse().ok());
        }
    }
    (euid, nspid)
}

/// `/proc/PID/cmdline` as `ps` shows it: arguments joined by spaces, control characters as
/// `?`, cut to `max` bytes on a character boundary.
pub fn format_args(cmdline: &[u8], max: usize) -> String {
    let trimmed = cmdline.strip_suffix(&[0]).unwrap_or(cmdline);
    let text = String::from_utf8_lossy(trimmed);
    printable(&text.replace('\0', " "), max)
}

/// `s` with control characters as `?`, cut to `max` bytes on a character boundary.
fn printable(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// The name `/etc/passwd` gives `uid`, if it is one `ps` can show in a column.
pub fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        let showable = !name.is_empty()
            && name.len() <= MAX_PS_USER_LEN
            && !name.chars().any(|c| c.is_control() || c.is_whitespace());
        (id == uid && showable).then(|| name.to_owned())
    })
}

/// The figures of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// user + nice + system + idle + iowait + irq + softirq (as Docker's `system_cpu_usage`).
    pub total: u64,
    /// `total` less idle and iowait.
    pub busy: u64,
    pub online: u32,
    /// Boot time, seconds since the epoch.
    pub btime: u64,
}

pub fn parse_proc_stat(s: &str) -> Option<CpuTicks> {
    let mut t = CpuTicks::default();
    let mut seen_total = false;
    for line in s.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("cpu") => {
                let v: Vec<u64> = f.take(7).map(|x| x.parse().unwrap_or(0)).collect();
                if v.len() < 7 {
                    return None;
                }
                t.total = v.iter().fold(0u64, |a, &b| a.saturating_add(b));
                t.busy = t.total.saturating_sub(v[3].saturating_add(v[4]));
                seen_total = true;
            }
            Some(c) if c.starts_with("cpu") && c[3..].bytes().all(|b| b.is_ascii_digit()) => {
                t.online += 1;
            }
            Some("btime") => t.btime = f.next().and_then(|b| b.parse().ok()).unwrap_or(0),
            _ => {}
        }
    }
    (seen_total && t.online > 0).then_some(t)
}

/// `/proc/meminfo` (kB figures) into bytes.
pub fn parse_meminfo(s: &str, m: &mut MemoryFigures) {
    for line in s.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let Some(kb) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        let bytes = kb.saturating_mul(1024);
        let slot = match key {
            "MemTotal" => &mut m.total,
            "MemFree" => &mut m.free,
            "MemAvailable" => &mut m.available,
            "Buffers" => &mut m.buffers,
            "Cached" => &mut m.cached,
            "Active(anon)" => &mut m.active_anon,
            "Inactive(anon)" => &mut m.inactive_anon,
            "Active(file)" => &mut m.active_file,
            "Inactive(file)" => &mut m.inactive_file,
            "AnonPages" => &mut m.anon,
            "Mapped" => &mut m.mapped,
            "Shmem" => &mut m.shmem,
            "SReclaimable" => &mut m.slab_reclaimable,
            "SUnreclaim" => &mut m.slab_unreclaimable,
            "KernelStack" => &mut m.kernel_stack,
            "PageTables" => &mut m.page_tables,
            _ => continue,
        };
        *slot = bytes;
    }
    // What validation demands of any answer, whatever the kernel printed.
    m.free = m.free.min(m.total);
    m.available = m.available.min(m.total);
}

/// The fault counters of `/proc/vmstat`.
pub fn parse_vmstat(s: &str, m: &mut MemoryFigures) {
    for line in s.lines() {
        let mut f = line.split_whitespace();
        let slot = match f.next() {
            Some("pgfault") => &mut m.pgfault,
            Some("pgmajfault") => &mut m.pgmajfault,
            _ => continue,
        };
        *slot = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    }
}

/// `/proc/net/dev`, every interface but `lo`.
pub fn parse_net_dev(s: &str) -> Vec<InterfaceCounters> {
    let mut out: Vec<InterfaceCounters> = Vec::new();
    for line in s.lines() {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let valid_name = !name.is_empty()
            && name.len() <= 15
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'));
        if name == "lo" || !valid_name || out.iter().any(|o| o.name == name) {
            continue;
        }
        let v: Vec<u64> = counters
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if v.len() < 12 {
            continue;
        }
        out.push(InterfaceCounters {
            name: name.to_owned(),
            rx_bytes: v[0],
            rx_packets: v[1],
            rx_errors: v[2],
            rx_dropped: v[3],
            tx_bytes: v[8],
            tx_packets: v[9],
            tx_errors: v[10],
            tx_dropped: v[11],
        });
        if out.len() == MAX_LISTED_INTERFACES {
            break;
        }
    }
    out
}

/// Reads at most `max` bytes of a file; `None` when it cannot be read (a process gone).
fn read_bounded(path: &str, max: usize) -> Option<Vec<u8>> {
    let f = std::fs::File::open(path).ok()?;
    let mut data = Vec::new();
    f.take(max as u64).read_to_end(&mut data).ok()?;
    Some(data)
}

fn read_text(path: &str) -> Option<String> {
    read_bounded(path, MAX_PROC_FILE).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The pids (in the VM's namespace) of the processes in namespace `ns`, in `/proc`'s order.
fn pids_in(ns: NsId) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| NsId::of_pid(pid) == Some(ns))
        .collect()
}

/// The time since the VM booted (`CLOCK_BOOTTIME`), in nanoseconds.
///
/// The VM's CPU capacity is this times its CPUs, rather than `/proc/stat`'s sum: that sum
/// counts timer ticks, which a slow or overcommitted host loses (inside the emulated host it
/// fell short enough that a busy loop on one vCPU read as 117 % of it), while the
/// processes' times are precise.
fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, a live local of the right type.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if r != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The processes of the container whose PID namespace is `ns`, named by the `/etc/passwd`
/// of its root `root`.
pub fn list_processes(ns: NsId, root: Option<BorrowedFd<'_>>) -> ProcessList {
    let units = Units::of_this_kernel();
    let cpu = read_text("/proc/stat").and_then(|s| parse_proc_stat(&s));
    let btime_ns = cpu.map_or(0, |c| c.btime.saturating_mul(1_000_000_000));
    let mut memory = MemoryFigures::default();
    if let Some(s) = read_text("/proc/meminfo") {
        parse_meminfo(&s, &mut memory);
    }
    let passwd = root
        .and_then(|r| crate::sys::read_file_in_root(Some(r), "/etc/passwd", MAX_PASSWD).ok())
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned());

    let mut read = Vec::new();
    let mut truncated = false;
    for pid in pids_in(ns) {
        if read.len() == MAX_LISTED_PROCESSES {
            truncated = true;
            break;
        }
        let Some(stat) = read_text(&format!("/proc/{pid}/stat"))
            .and_then(|s| parse_stat(&s))
            .filter(|st| st.state.is_ascii_alphabetic())
        else {
            continue;
        };
        let status = read_text(&format!("/proc/{pid}/status")).unwrap_or_default();
        let (euid, nspid) = parse_status(&status);
        let Some(nspid) = nspid.filter(|&p| p > 0) else {
            continue;
        };
        let args = read_bounded(&format!("/proc/{pid}/cmdline"), MAX_PS_ARGS_LEN * 4)
            .map(|c| format_args(&c, MAX_PS_ARGS_LEN))
            .unwrap_or_default();
        read.push((pid, nspid, euid.unwrap_or(0), stat, args));
    }
    let ns_pid_of = |vm_pid: u32| {
        read.iter()
            .find(|(pid, ..)| *pid == vm_pid)
            .map_or(0, |(_, nspid, ..)| *nspid)
    };
    let processes = read
        .iter()
        .map(|(pid, nspid, uid, st, args)| ProcessInfo {
            pid: *nspid,
            ppid: ns_pid_of(st.ppid),
            uid: *uid,
            user: passwd.as_deref().and_then(|p| user_name(p, *uid)),
            state: st.state.to_string(),
            nice: st.nice,
            threads: st.threads,
            session_leader: st.session == i64::from(*pid),
            foreground: st.tpgid > 0 && st.tpgid == st.pgrp,
            tty_nr: st.tty_nr,
            start_time_ns: btime_ns.saturating_add(units.ticks_to_ns(st.starttime)),
            cpu_time_ns: units.ticks_to_ns(st.utime.saturating_add(st.stime)),
            rss_bytes: st.rss_pages.saturating_mul(units.page_size),
            vsz_bytes: st.vsize,
            comm: printable(&st.comm, MAX_PS_COMM_LEN),
            args: args.clone(),
        })
        .collect();
    ProcessList {
        now_ns: now_ns(),
        mem_total_bytes: memory.total,
        processes,
        truncated,
    }
}

/// Why the VM's figures could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FiguresError {
    #[error("cannot read the VM's CPU figures from /proc/stat")]
    ProcStat,
    #[error("cannot read the VM's memory figures from /proc/meminfo")]
    Meminfo,
}

/// The container's CPU time and process count, and the VM's figures.
pub fn stats(ns: NsId) -> Result<GuestStats, FiguresError> {
    let units = Units::of_this_kernel();
    let cpu = read_text("/proc/stat")
        .and_then(|s| parse_proc_stat(&s))
        .ok_or(FiguresError::ProcStat)?;
    let mut memory = MemoryFigures::default();
    if let Some(s) = read_text("/proc/meminfo") {
        parse_meminfo(&s, &mut memory);
    }
    if memory.total == 0 {
        return Err(FiguresError::Meminfo);
    }
    if let Some(s) = read_text("/proc/vmstat") {
        parse_vmstat(&s, &mut memory);
    }
    let (mut user, mut system, mut pids) = (0u64, 0u64, 0u32);
    for pid in pids_in(ns) {
        let Some(st) = read_text(&format!("/proc/{pid}/stat")).and_then(|s| parse_stat(&s)) else {
            continue;
        };
        user = user.saturating_add(st.utime.saturating_add(st.cutime));
        system = system.saturating_add(st.stime.saturating_add(st.cstime));
        pids = pids.saturating_add(1);
    }
    // Read right after the processes, so that both figures of a sample are of one moment.
    let vm_total_ns = boottime_ns().saturating_mul(u64::from(cpu.online));
    let networks = read_text("/proc/net/dev")
        .map(|s| parse_net_dev(&s))
        .unwrap_or_default();
    Ok(GuestStats {
        cpu: CpuFigures {
            container_user_ns: units.ticks_to_ns(user),
            container_system_ns: units.ticks_to_ns(system),
            vm_total_ns,
            vm_busy_ns: units.ticks_to_ns(cpu.busy).min(vm_total_ns),
            online_cpus: cpu.online,
        },
        memory,
        pids,
        networks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names() {
        let line = "312 (a) b (c)) S 1 312 312 34816 312 4194560 120 0 0 0 7 3 11 5 20 -5 2 0 \
                    4242 4300800 230 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let st = parse_stat(line).unwrap();
        assert_eq!(st.pid, 312);
        assert_eq!(st.comm, "a) b (c)");
        assert_eq!(st.state, 'S');
        assert_eq!((st.ppid, st.pgrp, st.session), (1, 312, 312));
        assert_eq!((st.tty_nr, st.tpgid), (34816, 312));
        assert_eq!((st.utime, st.stime, st.cutime, st.cstime), (7, 3, 11, 5));
        assert_eq!((st.nice, st.threads, st.starttime), (-5, 2, 4242));
        assert_eq!((st.vsize, st.rss_pages), (4300800, 230));
        // No terminal: tty_nr 0, tpgid -1.
        let line = "9 (sleep) S 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 1000 10";
        let st = parse_stat(line).unwrap();
        assert_eq!((st.tty_nr, st.tpgid), (0, -1));
    }

    #[test]
    fn odd_stat_lines_are_refused_not_trusted() {
        for bad in [
            "",
            "garbage",
            "12 (x",
            "12 x) S 1",
            ")( S 1 2 3",
            "12 (x) S 1 2 3",
            "12 (x) S -1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 1000 10",
            "12 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 99999999999 1 0 100 1000 10",
        ] {
            assert_eq!(parse_stat(bad), None, "{bad:?}");
        }
        let huge_nice = "12 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 40 1 0 100 1000 10";
        assert_eq!(parse_stat(huge_nice).unwrap().nice, 19);
    }

    #[test]
    fn status_gives_the_effective_uid_and_the_innermost_pid() {
        let s = "Name:\tsh\nUid:\t1000\t33\t33\t33\nGid:\t0\t0\t0\t0\nNSpid:\t312\t1\n";
        assert_eq!(parse_status(s), (Some(33), Some(1)));
        assert_eq!(parse_status("NSpid:\t7\n"), (None, Some(7)));
        assert_eq!(parse_status("Uid: x\nNSpid:\n"), (None, None));
    }

    #[test]
    fn arguments_as_ps_shows_them() {
        assert_eq!(
            format_args(b"sh\0-c\0sleep 1000\0", 100),
            "sh -c sleep 1000"
        );
        assert_eq!(format_args(b"", 100), "");
        assert_eq!(format_args(b"a\nb\x1b[2J\0", 100), "a?b?[2J");
        assert_eq!(format_args(b"\xff\xfe", 100), "\u{fffd}\u{fffd}");
        // Cut on a character boundary.
        assert_eq!(format_args("ééé".as_bytes(), 5), "éé");
        assert_eq!(format_args(&[b'x'; 1000], 512).len(), 512);
    }

    #[test]
    fn user_names_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nbad line\nwww-data:x:33:33::/:/bin/false\n\
                      odd name:x:5:5::/:/bin/sh\n";
        assert_eq!(user_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_name(passwd, 33).as_deref(), Some("www-data"));
        assert_eq!(user_name(passwd, 5), None);
        assert_eq!(user_name(passwd, 1000), None);
    }

    const PROC_STAT: &str = "cpu  100 5 50 1000 20 3 2 7 0 0\n\
        cpu0 50 5 25 500 10 3 2 7 0 0\n\
        cpu1 50 0 25 500 10 0 0 0 0 0\n\
        intr 12345 0 0\n\
        ctxt 999\n\
        btime 1700000000\n\
        processes 40\n";

    #[test]
    fn proc_stat_totals_as_docker_counts_them() {
        let t = parse_proc_stat(PROC_STAT).unwrap();
        // user nice system idle iowait irq softirq; steal (7) is not Docker's.
        assert_eq!(t.total, 100 + 5 + 50 + 1000 + 20 + 3 + 2);
        assert_eq!(t.busy, 100 + 5 + 50 + 3 + 2);
        assert_eq!(t.online, 2);
        assert_eq!(t.btime, 1_700_000_000);
        assert_eq!(parse_proc_stat("cpu 1 2 3\ncpu0 1 2 3\n"), None);
        assert_eq!(parse_proc_stat("intr 1\n"), None);
        assert_eq!(
            parse_proc_stat("cpu  1 1 1 1 1 1 1\n"),
            None,
            "no CPU online"
        );
    }

    #[test]
    fn meminfo_and_vmstat() {
        let meminfo = "MemTotal:         246060 kB\nMemFree:          200000 kB\n\
            MemAvailable:     220000 kB\nBuffers:            100 kB\nCached:            9000 kB\n\
            Active(anon):       500 kB\nInactive(anon):     600 kB\nActive(file):      1000 kB\n\
            Inactive(file):    2000 kB\nAnonPages:         1100 kB\nShmem:              50 kB\n\
            HugePages_Total:       0\nGarbage\nSUnreclaim: x kB\n";
        let mut m = MemoryFigures::default();
        parse_meminfo(meminfo, &mut m);
        assert_eq!(m.total, 246_060 * 1024);
        assert_eq!(m.free, 200_000 * 1024);
        assert_eq!(m.available, 220_000 * 1024);
        assert_eq!(m.inactive_file, 2000 * 1024);
        assert_eq!(m.anon, 1100 * 1024);
        assert_eq!(m.slab_unreclaimable, 0);
        parse_vmstat("nr_free_pages 5\npgfault 1234\npgmajfault 7\n", &mut m);
        assert_eq!((m.pgfault, m.pgmajfault), (1234, 7));
        // Nonsense is clamped to what an answer may say.
        let mut m = MemoryFigures::default();
        parse_meminfo("MemTotal: 10 kB\nMemFree: 20 kB\n", &mut m);
        assert_eq!(m.free, m.total);
    }

    #[test]
    fn net_dev_without_lo() {
        let s = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
            lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
            eth0:  123456     100    1    2    0     0          0         0    65432      50    3    4    0     0       0          0\n  \
            bad name: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n  \
            eth1: 1 2 3\n";
        let n = parse_net_dev(s);
        assert_eq!(n.len(), 1, "{n:?}");
        let e = &n[0];
        assert_eq!(e.name, "eth0");
        assert_eq!(
            (e.rx_bytes, e.rx_packets, e.rx_errors, e.rx_dropped),
            (123456, 100, 1, 2)
        );
        assert_eq!(
            (e.tx_bytes, e.tx_packets, e.tx_errors, e.tx_dropped),
            (65432, 50, 3, 4)
        );
    }

    #[test]
    fn this_process_is_listed_in_its_own_namespace() {
        let ns = NsId::of_pid(std::process::id()).expect("own namespace");
        let list = list_processes(ns, None);
        let me = std::process::id();
        let own_ns_pid = parse_status(&read_text("/proc/self/status").unwrap())
            .1
            .unwrap();
        assert_eq!(own_ns_pid, me, "the test runs in the namespace it lists");
        let p = list
            .processes
            .iter()
            .find(|p| p.pid == me)
            .unwrap_or_else(|| panic!("{me} not in {:?}", list.processes.len()));
        assert!(p.threads >= 1);
        assert!(p.rss_bytes > 0 && p.vsz_bytes >= p.rss_bytes);
        assert!(p.start_time_ns <= list.now_ns);
        assert!(!p.args.is_empty());
        assert!(list.mem_total_bytes > 0);
        let stats = stats(ns).unwrap();
        assert!(stats.pids >= 1);
        assert!(stats.cpu.container_user_ns + stats.cpu.container_system_ns > 0);
        assert!(stats.cpu.vm_total_ns >= stats.cpu.vm_busy_ns);
        assert!(stats.memory.total >= stats.memory.free);
    }
}
