//! `docker top`'s table: the processes the agent lists, formatted as procps's `ps` formats
//! them for the options Docker users pass (`-ef`, Docker's default; `aux`; `-o` with
//! common columns). dockerd runs the host's `ps` and keeps the container's rows; berth's
//! processes are in a VM, so berth formats the agent's figures itself and refuses the
//! options it does not format, rather than ignoring them.
//!
//! Pids are those inside the container (its PID namespace); user names come from the
//! container's `/etc/passwd`; times are the guest's clock, shown in this host's time zone.

use agent_client::{ProcessInfo, ProcessList};

/// A `ps` column berth formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    /// The user's name, else the uid.
    User,
    /// The numeric uid.
    Uid,
    Pid,
    Ppid,
    /// CPU use over the process's life, whole percent, at most 99 (`-f`'s `C`).
    C,
    /// CPU use over the process's life, one decimal.
    Pcpu,
    /// Resident memory of the VM's memory, one decimal.
    Pmem,
    Vsz,
    Rss,
    Tty,
    Stat,
    State,
    /// Start time: `HH:MM` today, `MonDD` this year, else the year.
    Stime,
    /// CPU time `[DD-]HH:MM:SS`.
    Time,
    /// CPU time `M:SS` (BSD formats).
    BsdTime,
    /// Time since start `[[DD-]HH:]MM:SS`.
    Etime,
    Nice,
    Threads,
    Comm,
    /// The arguments, else `[comm]`.
    Args,
}

impl Column {
    /// procps's name for a `-o` column, with its default header.
    fn named(name: &str) -> Option<(Column, &'static str)> {
        Some(match name {
            "user" | "euser" | "uname" => (Column::User, "USER"),
            "uid" | "euid" => (Column::Uid, "UID"),
            "pid" => (Column::Pid, "PID"),
            "ppid" => (Column::Ppid, "PPID"),
            "c" => (Column::C, "C"),
            "pcpu" | "%cpu" => (Column::Pcpu, "%CPU"),
            "pmem" | "%mem" => (Column::Pmem, "%MEM"),
            "vsz" | "vsize" => (Column::Vsz, "VSZ"),
            "rss" | "rssize" | "rsz" => (Column::Rss, "RSS"),
            "tty" | "tt" | "tname" => (Column::Tty, "TT"),
            "stat" => (Column::Stat, "STAT"),
            "s" | "state" => (Column::State, "S"),
            "stime" | "start_time" => (Column::Stime, "STIME"),
            "time" | "cputime" => (Column::Time, "TIME"),
            "etime" => (Column::Etime, "ELAPSED"),
            "ni" | "nice" => (Column::Nice, "NI"),
            "nlwp" | "thcount" => (Column::Threads, "NLWP"),
            "comm" | "ucomm" | "ucmd" => (Column::Comm, "COMMAND"),
            "args" | "command" => (Column::Args, "COMMAND"),
            "cmd" => (Column::Args, "CMD"),
            _ => return None,
        })
    }
}

/// The `-o` columns berth knows, for the refusal of another.
const KNOWN_COLUMNS: &str = "user, uid, pid, ppid, c, pcpu, pmem, vsz, rss, tty, stat, s, \
                             stime, time, etime, ni, nlwp, comm, args, cmd";

/// A parsed `ps_args`: the columns and their headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsFormat {
    columns: Vec<(Column, String)>,
}

fn titled(columns: &[(Column, &str)]) -> Vec<(Column, String)> {
    columns.iter().map(|(c, t)| (*c, (*t).to_owned())).collect()
}

/// Why berth refuses a `ps_args`.
fn refuse(what: &str) -> String {
    format!(
        "berth formats docker top's table itself and does not support {what}: it takes -ef \
         (the default), -e, -f, aux, and -o with the columns {KNOWN_COLUMNS}"
    )
}

impl PsFormat {
    /// Parses Docker's `ps_args` (empty: `-ef`). Options that only choose which processes
    /// `ps` shows (`-e`, `-A`, `a`, `x`) change nothing: `docker top` shows every process
    /// of the container whatever they are.
    pub fn parse(ps_args: &str) -> Result<PsFormat, String> {
        let mut full = false;
        let mut user = false;
        let mut custom: Option<Vec<(Column, String)>> = None;
        let mut words = ps_args.split_ascii_whitespace().peekable();
        // procps reads `-aux` as BSD's `aux`, as people mean it.
        if words.peek().is_none() {
            full = true;
        }
        while let Some(word) = words.next() {
            let bsd = !word.starts_with('-') || word == "-aux";
            let flags = word.strip_prefix('-').unwrap_or(word);
            if word == "-" || flags.starts_with('-') {
                return Err(refuse(&format!("the option {word:?}")));
            }
            for (i, c) in flags.char_indices() {
                match c {
                    'e' | 'A' | 'a' | 'x' => {}
                    'f' => full = true,
                    'u' if bsd => user = true,
                    'o' => {
                        let rest = &flags[i + 1..];
                        let spec = if rest.is_empty() {
                            words
                                .next()
                                .ok_or_else(|| refuse("-o without a list of columns"))?
                        } else {
                            rest
                        };
                        let mut columns = custom.take().unwrap_or_default();
                        columns.extend(parse_columns(spec)?);
                        custom = Some(columns);
                        break;
                    }
                    other => return Err(refuse(&format!("the option {other:?} of {word:?}"))),
                }
            }
        }
        let columns = match custom {
            Some(c) => c,
            None if user => titled(&[
                (Column::User, "USER"),
                (Column::Pid, "PID"),
                (Column::Pcpu, "%CPU"),
                (Column::Pmem, "%MEM"),
                (Column::Vsz, "VSZ"),
                (Column::Rss, "RSS"),
                (Column::Tty, "TTY"),
                (Column::Stat, "STAT"),
                (Column::Stime, "START"),
                (Column::BsdTime, "TIME"),
                (Column::Args, "COMMAND"),
            ]),
            None if full => titled(&[
                (Column::User, "UID"),
                (Column::Pid, "PID"),
                (Column::Ppid, "PPID"),
                (Column::C, "C"),
                (Column::Stime, "STIME"),
                (Column::Tty, "TTY"),
                (Column::Time, "TIME"),
                (Column::Args, "CMD"),
            ]),
            None => titled(&[
                (Column::Pid, "PID"),
                (Column::Tty, "TTY"),
                (Column::Time, "TIME"),
                (Column::Comm, "CMD"),
            ]),
        };
        Ok(PsFormat { columns })
    }

    /// Docker's `Titles`.
    pub fn titles(&self) -> Vec<String> {
        self.columns.iter().map(|(_, t)| t.clone()).collect()
    }

    /// Docker's `Processes`: one row of strings per process, in the agent's order.
    pub fn rows(
        &self,
        list: &ProcessList,
        tz: &dyn Fn(u64) -> Option<LocalTime>,
    ) -> Vec<Vec<String>> {
        list.processes
            .iter()
            .map(|p| {
                self.columns
                    .iter()
                    .map(|(c, _)| cell(*c, p, list, tz))
                    .collect()
            })
            .collect()
    }
}

/// `pid,comm=NAME,...`: procps's column list (a header after `=`).
fn parse_columns(spec: &str) -> Result<Vec<(Column, String)>, String> {
    let mut out = Vec::new();
    for item in spec.split(',').filter(|i| !i.is_empty()) {
        let (name, header) = match item.split_once('=') {
            Some((n, h)) => (n, Some(h)),
            None => (item, None),
        };
        let (column, default) = Column::named(&name.to_ascii_lowercase())
            .ok_or_else(|| refuse(&format!("the column {name:?}")))?;
        out.push((column, header.unwrap_or(default).to_owned()));
    }
    if out.is_empty() {
        return Err(refuse("-o without a list of columns"));
    }
    Ok(out)
}

/// A time of day and date in this host's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    pub year: i32,
    /// 0 to 11.
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
}

/// `secs` since the epoch in this host's time zone (`localtime_r`).
pub fn local_time(secs: u64) -> Option<LocalTime> {
    let t = libc::time_t::try_from(secs).ok()?;
    // SAFETY: an all-zero `tm` is a valid value of the plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals of the right types; localtime_r writes only
    // `tm` and is thread-safe.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    if r.is_null() {
        return None;
    }
    Some(LocalTime {
        year: tm.tm_year.saturating_add(1900),
        month: u32::try_from(tm.tm_mon).ok()?,
        day: u32::try_from(tm.tm_mday).ok()?,
        hour: u32::try_from(tm.tm_hour).ok()?,
        minute: u32::try_from(tm.tm_min).ok()?,
    })
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

const NS: u64 = 1_000_000_000;

/// procps's start time: `HH:MM` within a day, `MonDD` within the year, else the year.
fn start_time(p: &ProcessInfo, now_ns: u64, tz: &dyn Fn(u64) -> Option<LocalTime>) -> String {
    let (Some(start), Some(now)) = (tz(p.start_time_ns / NS), tz(now_ns / NS)) else {
        return "?".into();
    };
    if now_ns.saturating_sub(p.start_time_ns) < 24 * 3600 * NS {
        format!("{:02}:{:02}", start.hour, start.minute)
    } else if start.year == now.year {
        let month = MONTHS.get(start.month as usize).copied().unwrap_or("???");
        format!("{month}{:02}", start.day)
    } else {
        start.year.to_string()
    }
}

/// procps's `TIME`: `[DD-]HH:MM:SS`.
pub fn cpu_time(ns: u64) -> String {
    let s = ns / NS;
    let (days, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// procps's `ELAPSED`: `[[DD-]HH:]MM:SS`.
fn elapsed(ns: u64) -> String {
    let s = ns / NS;
    let (days, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}-{h:02}:{m:02}:{s:02}")
    } else if h > 0 {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{m:02}:{s:02}")
    }
}

/// A terminal's name from the kernel's `tty_nr` encoding, `?` for none.
pub fn tty_name(tty_nr: u32) -> String {
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    match (major, minor) {
        (0, _) => "?".into(),
        (136..=143, m) => format!("pts/{}", (major - 136) * 256 + m),
        (4, m) if m < 64 => format!("tty{m}"),
        (4, m) => format!("ttyS{}", m - 64),
        (5, 0) => "tty".into(),
        (5, 1) => "console".into(),
        _ => "?".into(),
    }
}

/// procps's `STAT`: the state, then `<`/`N` (nice), `s` (session leader), `l` (threads),
/// `+` (foreground).
fn stat(p: &ProcessInfo) -> String {
    let mut s = p.state.clone();
    if p.nice < 0 {
        s.push('<');
    } else if p.nice > 0 {
        s.push('N');
    }
    if p.session_leader {
        s.push('s');
    }
    if p.threads > 1 {
        s.push('l');
    }
    if p.foreground {
        s.push('+');
    }
    s
}

/// Tenths of a percent of `part` in `whole`, as `x.y`.
fn tenths(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0.0".into();
    }
    let t = u128::from(part) * 1000 / u128::from(whole);
    format!("{}.{}", t / 10, t % 10)
}

fn cell(
    c: Column,
    p: &ProcessInfo,
    list: &ProcessList,
    tz: &dyn Fn(u64) -> Option<LocalTime>,
) -> String {
    let age = list.now_ns.saturating_sub(p.start_time_ns);
    match c {
        Column::User => p.user.clone().unwrap_or_else(|| p.uid.to_string()),
        Column::Uid => p.uid.to_string(),
        Column::Pid => p.pid.to_string(),
        Column::Ppid => p.ppid.to_string(),
        Column::C => {
            let pct = if age == 0 {
                0
            } else {
                u128::from(p.cpu_time_ns) * 100 / u128::from(age)
            };
            pct.min(99).to_string()
        }
        Column::Pcpu => tenths(p.cpu_time_ns, age),
        Column::Pmem => tenths(p.rss_bytes, list.mem_total_bytes),
        Column::Vsz => (p.vsz_bytes / 1024).to_string(),
        Column::Rss => (p.rss_bytes / 1024).to_string(),
        Column::Tty => tty_name(p.tty_nr),
        Column::Stat => stat(p),
        Column::State => p.state.clone(),
        Column::Stime => start_time(p, list.now_ns, tz),
        Column::Time => cpu_time(p.cpu_time_ns),
        Column::BsdTime => {
            let s = p.cpu_time_ns / NS;
            format!("{}:{:02}", s / 60, s % 60)
        }
        Column::Etime => elapsed(age),
        Column::Nice => p.nice.to_string(),
        Column::Threads => p.threads.to_string(),
        Column::Comm => p.comm.clone(),
        Column::Args if p.args.is_empty() => format!("[{}]", p.comm),
        Column::Args => p.args.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000 * NS;

    fn utc(secs: u64) -> Option<LocalTime> {
        let days = secs / 86400;
        // 2023-11-14 is day 19675; tests stay within 2023.
        let day_of_year = days - 19358; // 2023-01-01
        let (month, day) = if day_of_year >= 304 + 30 {
            (11, day_of_year - 334 + 1)
        } else if day_of_year >= 304 {
            (10, day_of_year - 304 + 1)
        } else {
            (0, day_of_year + 1)
        };
        Some(LocalTime {
            year: 2023,
            month: month as u32,
            day: day as u32,
            hour: (secs / 3600 % 24) as u32,
            minute: (secs / 60 % 60) as u32,
        })
    }

    fn process(pid: u32) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid: 0,
            uid: 0,
            user: Some("root".into()),
            state: "S".into(),
            nice: 0,
            threads: 1,
            session_leader: true,
            foreground: false,
            tty_nr: 0,
            start_time_ns: NOW - 100 * NS,
            cpu_time_ns: 5 * NS,
            rss_bytes: 2 << 20,
            vsz_bytes: 4 << 20,
            comm: "sh".into(),
            args: "sh -c sleep 1000 & while true; do sleep 1; done".into(),
        }
    }

    fn list(processes: Vec<ProcessInfo>) -> ProcessList {
        ProcessList {
            now_ns: NOW,
            mem_total_bytes: 256 << 20,
            processes,
            truncated: false,
        }
    }

    fn table(args: &str, l: &ProcessList) -> (Vec<String>, Vec<Vec<String>>) {
        let f = PsFormat::parse(args).unwrap();
        (f.titles(), f.rows(l, &utc))
    }

    #[test]
    fn ef_is_the_default_with_dockers_titles() {
        let mut child = process(7);
        child.ppid = 1;
        child.user = None;
        child.uid = 1000;
        child.session_leader = false;
        child.comm = "sleep".into();
        child.args = "sleep 1000".into();
        child.tty_nr = (136 << 8) | 3;
        child.cpu_time_ns = 3 * 86400 * NS + 61 * NS;
        let mut zombie = process(9);
        zombie.args = String::new();
        zombie.state = "Z".into();
        let l = list(vec![process(1), child, zombie]);
        for args in ["", "-ef", "  -e -f ", "-fe"] {
            let (titles, rows) = table(args, &l);
            assert_eq!(
                titles,
                ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
                "{args:?}"
            );
            assert_eq!(
                rows[0],
                [
                    "root",
                    "1",
                    "0",
                    "5",
                    "22:11",
                    "?",
                    "00:00:05",
                    "sh -c sleep 1000 & while true; do sleep 1; done"
                ]
            );
            assert_eq!(rows[1][0], "1000");
            assert_eq!(rows[1][2], "1");
            // More CPU time than age: capped at 99, as procps caps it.
            assert_eq!(rows[1][3], "99");
            assert_eq!(rows[1][5], "pts/3");
            assert_eq!(rows[1][6], "3-00:01:01");
            assert_eq!(rows[2][7], "[sh]");
        }
    }

    #[test]
    fn aux_has_bsd_columns() {
        let mut p = process(1);
        p.nice = -5;
        p.threads = 3;
        p.foreground = true;
        p.state = "R".into();
        p.start_time_ns = NOW - 3 * 86400 * NS;
        p.cpu_time_ns = 61 * NS;
        let l = list(vec![p]);
        for args in ["aux", "-aux", "ax u", "uax"] {
            let (titles, rows) = table(args, &l);
            assert_eq!(
                titles,
                [
                    "USER", "PID", "%CPU", "%MEM", "VSZ", "RSS", "TTY", "STAT", "START", "TIME",
                    "COMMAND"
                ],
                "{args:?}"
            );
            let row = &rows[0];
            assert_eq!(row[0], "root");
            // 61 s of CPU in 3 days.
            assert_eq!(row[2], "0.0");
            // 2 MiB of 256 MiB.
            assert_eq!(row[3], "0.7");
            assert_eq!((row[4].as_str(), row[5].as_str()), ("4096", "2048"));
            assert_eq!(row[7], "R<sl+");
            assert_eq!(row[8], "Nov11");
            assert_eq!(row[9], "1:01");
        }
    }

    #[test]
    fn custom_columns() {
        let mut p = process(42);
        p.start_time_ns = NOW - 3723 * NS;
        p.nice = 10;
        let l = list(vec![p]);
        let (titles, rows) = table("-o pid,comm,etime,stat,user=WHO", &l);
        assert_eq!(titles, ["PID", "COMMAND", "ELAPSED", "STAT", "WHO"]);
        assert_eq!(rows[0], ["42", "sh", "01:02:03", "SNs", "root"]);
        let (titles, rows) = table("-eo pid,args", &l);
        assert_eq!(titles, ["PID", "COMMAND"]);
        assert_eq!(rows[0][1], l.processes[0].args);
        let (titles, _) = table("-opid,ppid,%cpu,nlwp,cmd", &l);
        assert_eq!(titles, ["PID", "PPID", "%CPU", "NLWP", "CMD"]);
        let (titles, rows) = table("-e", &l);
        assert_eq!(titles, ["PID", "TTY", "TIME", "CMD"]);
        assert_eq!(rows[0][3], "sh");
    }

    #[test]
    fn other_options_are_refused_by_name() {
        for (args, names) in [
            ("-o", "-o without"),
            ("-o ,", "-o without"),
            ("-o pid,wchan", "\"wchan\""),
            ("-L", "'L'"),
            ("--forest", "--forest"),
            ("-ef --sort=pid", "--sort"),
            ("-u root", "'u'"),
            ("-p 1", "'p'"),
        ] {
            let e = PsFormat::parse(args).unwrap_err();
            assert!(e.contains(names), "{args:?}: {e}");
            assert!(e.contains("berth formats docker top"), "{e}");
        }
    }

    #[test]
    fn terminals_and_times() {
        assert_eq!(tty_name(0), "?");
        assert_eq!(tty_name(136 << 8), "pts/0");
        // pts/300: major 137, minor 44.
        assert_eq!(tty_name((137 << 8) | 44), "pts/300");
        assert_eq!(tty_name((4 << 8) | 1), "tty1");
        assert_eq!(tty_name((4 << 8) | 64), "ttyS0");
        assert_eq!(tty_name((5 << 8) | 1), "console");
        assert_eq!(cpu_time(0), "00:00:00");
        assert_eq!(cpu_time(3661 * NS + 999), "01:01:01");
        assert_eq!(elapsed(59 * NS), "00:59");
        assert_eq!(tenths(1, 3), "33.3");
        assert_eq!(tenths(5, 0), "0.0");
        assert_eq!(
            tenths(u64::MAX, 1),
            format!("{}.0", u128::from(u64::MAX) * 100)
        );
        // Another year shows the year.
        let mut p = process(1);
        p.start_time_ns = 1_600_000_000 * NS;
        let old = |s: u64| {
            if s < 1_650_000_000 {
                Some(LocalTime {
                    year: 2020,
                    month: 8,
                    day: 13,
                    hour: 12,
                    minute: 26,
                })
            } else {
                utc(s)
            }
        };
        assert_eq!(start_time(&p, NOW, &old), "2020");
        assert_eq!(start_time(&p, NOW, &|_| None), "?");
    }

    #[test]
    fn local_time_is_the_c_librarys() {
        let t = local_time(1_700_000_000).unwrap();
        assert_eq!(t.year, 2023);
        assert_eq!(t.month, 10);
        assert!((13..=15).contains(&t.day));
    }
}
