//! Validation of received messages. A message that decodes is not yet trusted: the agent
//! validates every header and request before acting on it, and the host validates every
//! response, so bounds (lengths, counts, ranges) are enforced in one shared place.

use std::collections::HashSet;

use crate::figures::{GuestStats, InterfaceCounters, ProcessInfo, ProcessList};
use crate::messages::{
    ConnectionHeader, ContainerSpec, DnsConfig, FsSource, HostsEntry, InterfaceConfig, MountSpec,
    Notification, ProcessSpec, Request, Resources, Response,
};

/// Longest process id, in bytes.
pub const MAX_PROCESS_ID_LEN: usize = 128;
/// Most arguments in `argv`.
pub const MAX_ARGS: usize = 32_768;
/// Most entries in `env`.
pub const MAX_ENV: usize = 32_768;
/// Longest single argument or environment entry (Linux's `MAX_ARG_STRLEN`).
pub const MAX_ARG_LEN: usize = 128 * 1024;
/// Longest path (`cwd`).
pub const MAX_PATH_LEN: usize = 4096;
/// Most supplementary groups (Linux's `NGROUPS_MAX`).
pub const MAX_ADDITIONAL_GIDS: usize = 65_536;
/// Longest error message the agent sends.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Longest agent version string.
pub const MAX_VERSION_STRING_LEN: usize = 64;
/// Longest grace period a `Shutdown` may ask for.
pub const MAX_SHUTDOWN_GRACE_MS: u32 = 60_000;
/// Longest virtio-fs tag (the device's config field is 36 bytes).
pub const MAX_VIRTIOFS_TAG_LEN: usize = 36;
/// Fewest random bytes a refresh brings: a full reseed of the kernel's CRNG (256 bits).
pub const MIN_REFRESH_ENTROPY: usize = 32;
/// Most random bytes a refresh brings (the kernel's pool takes no more at once).
pub const MAX_REFRESH_ENTROPY: usize = 512;

/// Longest hostname or domain name (Linux's `HOST_NAME_MAX`).
pub const MAX_HOSTNAME_LEN: usize = 64;
/// Most extra `/etc/hosts` lines.
pub const MAX_HOSTS_ENTRIES: usize = 1024;
/// Most names on one `/etc/hosts` line.
pub const MAX_NAMES_PER_HOST: usize = 64;
/// Longest DNS name (a hosts name, a search domain).
pub const MAX_DNS_NAME_LEN: usize = 253;
/// Most nameservers, search domains, resolver options (each).
pub const MAX_DNS_ENTRIES: usize = 32;
/// Longest `user` string or `group_add` entry.
pub const MAX_USER_LEN: usize = 256;
/// Most `group_add` entries.
pub const MAX_GROUP_ADD: usize = 1024;
/// Most volumes and bind mounts in one container.
pub const MAX_MOUNTS: usize = 256;
/// Most sysctls per container, longest name and longest value.
pub const MAX_SYSCTLS: usize = 128;
pub const MAX_SYSCTL_NAME_LEN: usize = 256;
pub const MAX_SYSCTL_VALUE_LEN: usize = 4096;
/// The longest `cpuset.cpus` list.
const MAX_CPUSET_LEN: usize = 256;
/// Most capabilities (Linux has fewer than 64).
pub const MAX_CAPABILITIES: usize = 64;
/// Longest capability name.
const MAX_CAPABILITY_LEN: usize = 32;
/// Most processes one `ListProcesses` answer lists (the frame stays under its cap with
/// every string at its longest).
pub const MAX_LISTED_PROCESSES: usize = 512;
/// Longest `args` of a listed process, in bytes.
pub const MAX_PS_ARGS_LEN: usize = 512;
/// Longest `comm` of a listed process (Linux's are at most 15 bytes).
pub const MAX_PS_COMM_LEN: usize = 64;
/// Longest user name of a listed process.
pub const MAX_PS_USER_LEN: usize = 64;
/// Most interfaces a `Stats` answer carries.
pub const MAX_LISTED_INTERFACES: usize = 64;
/// Longest interface name (Linux's `IFNAMSIZ` less its NUL).
const MAX_IFNAME_LEN: usize = 15;
/// Most CPUs a VM is said to have online.
const MAX_ONLINE_CPUS: u32 = 1024;
/// Highest signal number (Linux's `SIGRTMAX`).
const MAX_SIGNAL: i32 = 64;
/// Linux's highest pid (`PID_MAX_LIMIT`).
const MAX_PID: u32 = 4 * 1024 * 1024;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes long, more than {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} has {count} entries, more than {max}")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{field} contains a NUL byte")]
    ContainsNul { field: &'static str },
    #[error("{field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ValidationError {
    ValidationError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn check_len(field: &'static str, s: &str, max: usize) -> Result<(), ValidationError> {
    if s.len() > max {
        return Err(ValidationError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

fn check_count(field: &'static str, count: usize, max: usize) -> Result<(), ValidationError> {
    if count > max {
        return Err(ValidationError::TooMany { field, count, max });
    }
    Ok(())
}

/// A string that will become a C string: bounded and without NUL.
fn check_c_string(field: &'static str, s: &str, max: usize) -> Result<(), ValidationError> {
    check_len(field, s, max)?;
    if s.as_bytes().contains(&0) {
        return Err(ValidationError::ContainsNul { field });
    }
    Ok(())
}

/// Checks a host-chosen process id: 1 to [`MAX_PROCESS_ID_LEN`] bytes of `[A-Za-z0-9_.-]`,
/// not starting with `.` or `-`.
pub fn validate_process_id(id: &str) -> Result<(), ValidationError> {
    const FIELD: &str = "process id";
    if id.is_empty() {
        return Err(ValidationError::Empty { field: FIELD });
    }
    check_len(FIELD, id, MAX_PROCESS_ID_LEN)?;
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(invalid(
            FIELD,
            "only ASCII letters, digits, '_', '.' and '-' are allowed",
        ));
    }
    if id.starts_with(['.', '-']) {
        return Err(invalid(FIELD, "must not start with '.' or '-'"));
    }
    Ok(())
}

/// Checks a host-chosen container id: the same rules as [`validate_process_id`].
pub fn validate_container_id(id: &str) -> Result<(), ValidationError> {
    validate_process_id(id).map_err(|e| match e {
        ValidationError::Empty { .. } => ValidationError::Empty {
            field: "container id",
        },
        ValidationError::TooLong { len, max, .. } => ValidationError::TooLong {
            field: "container id",
            len,
            max,
        },
        ValidationError::ContainsNul { .. } => ValidationError::ContainsNul {
            field: "container id",
        },
        ValidationError::TooMany { count, max, .. } => ValidationError::TooMany {
            field: "container id",
            count,
            max,
        },
        ValidationError::Invalid { reason, .. } => ValidationError::Invalid {
            field: "container id",
            reason,
        },
    })
}

/// An absolute path without NUL, at most [`MAX_PATH_LEN`] bytes.
fn check_absolute_path(field: &'static str, path: &str) -> Result<(), ValidationError> {
    check_c_string(field, path, MAX_PATH_LEN)?;
    if !path.starts_with('/') {
        return Err(invalid(field, "must be an absolute path"));
    }
    Ok(())
}

/// A hostname or domain name: ASCII letters, digits, '-', '.' and '_' only, so that it is
/// safe in `/etc/hosts` and the UTS namespace alike.
fn check_host_name(
    field: &'static str,
    name: &str,
    allow_empty: bool,
) -> Result<(), ValidationError> {
    if name.is_empty() && !allow_empty {
        return Err(ValidationError::Empty { field });
    }
    check_len(field, name, MAX_HOSTNAME_LEN)?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(invalid(
            field,
            "only ASCII letters, digits, '-', '.' and '_' are allowed",
        ));
    }
    Ok(())
}

/// One word of a generated config file line: 1 to `max` printable ASCII bytes, no '#'.
fn check_word(field: &'static str, word: &str, max: usize) -> Result<(), ValidationError> {
    if word.is_empty() {
        return Err(ValidationError::Empty { field });
    }
    check_len(field, word, max)?;
    if !word.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return Err(invalid(
            field,
            "only printable ASCII without spaces or '#' is allowed",
        ));
    }
    Ok(())
}

fn check_address(field: &'static str, address: &str) -> Result<(), ValidationError> {
    address
        .parse::<std::net::IpAddr>()
        .map(drop)
        .map_err(|_| invalid(field, format!("{address:?} is not an IP address")))
}

/// Interfaces one VM may be given (eth0 to eth15).
pub const MAX_INTERFACES: usize = 16;

/// A dotted IPv4 address.
fn check_ipv4(field: &'static str, address: &str) -> Result<std::net::Ipv4Addr, ValidationError> {
    address
        .parse::<std::net::Ipv4Addr>()
        .map_err(|_| invalid(field, format!("{address:?} is not an IPv4 address")))
}

impl InterfaceConfig {
    /// Checks the MAC (unicast, six hex pairs), the addresses (the gateway inside the
    /// interface's subnet), the prefix and the MTU.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if usize::from(self.index) >= MAX_INTERFACES {
            return Err(invalid(
                "index",
                format!("{} is not below {MAX_INTERFACES}", self.index),
            ));
        }
        let octets: Vec<&str> = self.mac.split(':').collect();
        let valid_mac = octets.len() == 6
            && octets
                .iter()
                .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
        if !valid_mac {
            return Err(invalid(
                "mac",
                format!("{:?} is not a MAC address", self.mac),
            ));
        }
        if u8::from_str_radix(octets[0], 16).is_ok_and(|b| b & 1 == 1) {
            return Err(invalid(
                "mac",
                "a multicast address cannot be an interface's",
            ));
        }
        let address = check_ipv4("address", &self.address)?;
        if !(1..=30).contains(&self.prefix_len) {
            return Err(invalid(
                "prefix_len",
                format!("{} is not 1 to 30", self.prefix_len),
            ));
        }
        if let Some(gateway) = &self.gateway {
            let gateway = check_ipv4("gateway", gateway)?;
            let mask = u32::MAX << (32 - u32::from(self.prefix_len));
            if u32::from(gateway) & mask != u32::from(address) & mask || gateway == address {
                return Err(invalid(
                    "gateway",
                    "must be another address of the interface's subnet",
                ));
            }
        }
        if !(68..=65_535).contains(&self.mtu) {
            return Err(invalid("mtu", format!("{} is not 68 to 65535", self.mtu)));
        }
        Ok(())
    }
}

/// Docker's user strings: bounded, no NUL or control characters.
fn check_user_string(field: &'static str, s: &str) -> Result<(), ValidationError> {
    check_c_string(field, s, MAX_USER_LEN)?;
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

impl FsSource {
    /// Checks the tag or path.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            FsSource::Virtiofs { tag } => {
                if tag.is_empty() {
                    return Err(ValidationError::Empty {
                        field: "virtiofs tag",
                    });
                }
                check_c_string("virtiofs tag", tag, MAX_VIRTIOFS_TAG_LEN)?;
                if tag.chars().any(char::is_control) {
                    return Err(invalid("virtiofs tag", "contains control characters"));
                }
                Ok(())
            }
            FsSource::Directory { path } => check_absolute_path("directory path", path),
            FsSource::Tmpfs { options } => {
                check_count("tmpfs options", options.len(), MAX_TMPFS_OPTIONS)?;
                options.iter().try_for_each(|o| check_tmpfs_option(o))
            }
        }
    }
}

/// Most options one tmpfs mount takes.
pub const MAX_TMPFS_OPTIONS: usize = 32;

/// The flags a tmpfs mount takes, as mount(8) names them (each has its MS_ flag in the
/// agent).
pub const TMPFS_FLAGS: &[&str] = &[
    "ro",
    "rw",
    "noexec",
    "exec",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "sync",
    "async",
    "dirsync",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
];

/// One tmpfs option: a flag of [`TMPFS_FLAGS`], or `size=` (bytes, with a `k`, `m` or `g`
/// suffix, or a `%` of the guest's memory), `mode=` (octal, at most 7777), `uid=`, `gid=`
/// (numbers) or `nr_inodes=` (a number, with a suffix).
pub fn check_tmpfs_option(option: &str) -> Result<(), ValidationError> {
    const FIELD: &str = "tmpfs option";
    check_len(FIELD, option, 64)?;
    if TMPFS_FLAGS.contains(&option) {
        return Ok(());
    }
    let Some((key, value)) = option.split_once('=') else {
        return Err(invalid(FIELD, format!("unknown option {option:?}")));
    };
    let number = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    let sized = |v: &str| {
        let digits = v.strip_suffix(['k', 'K', 'm', 'M', 'g', 'G']).unwrap_or(v);
        number(digits)
    };
    let ok = match key {
        "size" => sized(value) || value.strip_suffix('%').is_some_and(number),
        "nr_inodes" => sized(value),
        "mode" => {
            value.len() <= 5
                && value.bytes().all(|b| (b'0'..=b'7').contains(&b))
                && u32::from_str_radix(value, 8).is_ok_and(|m| m <= 0o7777)
        }
        "uid" | "gid" => number(value) && value.parse::<u32>().is_ok(),
        _ => return Err(invalid(FIELD, format!("unknown option {option:?}"))),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(FIELD, format!("invalid value in {option:?}")))
    }
}

impl MountSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        self.source.validate()?;
        check_absolute_path("mount destination", &self.destination)?;
        if self
            .destination
            .split('/')
            .all(|c| c.is_empty() || c == ".")
        {
            return Err(invalid("mount destination", "must not be the root"));
        }
        if self.destination.split('/').any(|c| c == "..") {
            return Err(invalid("mount destination", "must not contain '..'"));
        }
        if let Some(file) = &self.file {
            if !matches!(self.source, FsSource::Virtiofs { .. }) {
                return Err(invalid("mount file", "only a virtio-fs share has one"));
            }
            if file.is_empty()
                || file == "."
                || file == ".."
                || file.len() > 255
                || file.contains(['/', '\0'])
            {
                return Err(invalid("mount file", "must be one path component"));
            }
        }
        Ok(())
    }
}

impl HostsEntry {
    fn validate(&self) -> Result<(), ValidationError> {
        check_address("hosts address", &self.address)?;
        if self.names.is_empty() {
            return Err(ValidationError::Empty {
                field: "hosts names",
            });
        }
        check_count("hosts names", self.names.len(), MAX_NAMES_PER_HOST)?;
        for n in &self.names {
            check_word("hosts name", n, MAX_DNS_NAME_LEN)?;
        }
        Ok(())
    }
}

impl DnsConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        check_count("nameservers", self.nameservers.len(), MAX_DNS_ENTRIES)?;
        for a in &self.nameservers {
            check_address("nameserver", a)?;
        }
        check_count("dns search", self.search.len(), MAX_DNS_ENTRIES)?;
        for d in &self.search {
            check_word("dns search domain", d, MAX_DNS_NAME_LEN)?;
        }
        check_count("dns options", self.options.len(), MAX_DNS_ENTRIES)?;
        for o in &self.options {
            check_word("dns option", o, MAX_DNS_NAME_LEN)?;
        }
        Ok(())
    }
}

impl ContainerSpec {
    /// Checks every field against the limits above.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.rootfs.validate()?;
        if matches!(self.rootfs, FsSource::Tmpfs { .. }) {
            return Err(invalid(
                "rootfs",
                "must be a share or a directory, not a tmpfs",
            ));
        }
        check_host_name("hostname", &self.hostname, false)?;
        check_host_name("domainname", &self.domainname, true)?;
        check_count("hosts", self.hosts.len(), MAX_HOSTS_ENTRIES)?;
        for h in &self.hosts {
            h.validate()?;
        }
        if let Some(dns) = &self.dns {
            dns.validate()?;
        }
        if self.shm_size == Some(0) {
            return Err(invalid("shm_size", "must not be 0"));
        }
        check_count("mounts", self.mounts.len(), MAX_MOUNTS)?;
        for m in &self.mounts {
            m.validate()?;
        }
        self.resources.validate()?;
        check_count("sysctls", self.sysctls.len(), MAX_SYSCTLS)?;
        for (name, value) in &self.sysctls {
            check_sysctl(name, value)?;
        }
        Ok(())
    }
}

/// A sysctl's dotted name becomes a path under `/proc/sys`: only lowercase words of
/// `[a-z0-9_-]` joined by single dots, so it can name nothing else. Its value is one line.
fn check_sysctl(name: &str, value: &str) -> Result<(), ValidationError> {
    if name.len() > MAX_SYSCTL_NAME_LEN {
        return Err(ValidationError::TooLong {
            field: "sysctl name",
            len: name.len(),
            max: MAX_SYSCTL_NAME_LEN,
        });
    }
    let word_ok = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    if !name.split('.').all(word_ok) || !name.contains('.') {
        return Err(invalid(
            "sysctl name",
            format!("{name:?} is not a dotted sysctl name"),
        ));
    }
    if value.len() > MAX_SYSCTL_VALUE_LEN {
        return Err(ValidationError::TooLong {
            field: "sysctl value",
            len: value.len(),
            max: MAX_SYSCTL_VALUE_LEN,
        });
    }
    if value.contains(['\0', '\n']) {
        return Err(invalid("sysctl value", "must be one line"));
    }
    Ok(())
}

impl Resources {
    /// Checks each limit against what its cgroup file takes.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.pids_max == Some(0) {
            return Err(invalid("pids_max", "must not be 0"));
        }
        if let Some(w) = self.cpu_weight {
            if !(1..=10_000).contains(&w) {
                return Err(invalid("cpu_weight", "must be 1 to 10000"));
            }
        }
        if let Some(c) = self.cpu_max {
            if !(1_000..=1_000_000).contains(&c.period_us) {
                return Err(invalid("cpu_max", "the period must be 1000 to 1000000 us"));
            }
            if c.quota_us < 1_000 || c.quota_us > (1 << 40) {
                return Err(invalid("cpu_max", "the quota must be 1000 us or more"));
            }
        }
        if let Some(cpus) = &self.cpuset_cpus {
            if cpus.len() > MAX_CPUSET_LEN {
                return Err(ValidationError::TooLong {
                    field: "cpuset_cpus",
                    len: cpus.len(),
                    max: MAX_CPUSET_LEN,
                });
            }
            if cpus.is_empty()
                || !cpus
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
            {
                return Err(invalid("cpuset_cpus", "must be a list such as 0-2,4"));
            }
        }
        Ok(())
    }
}

fn validate_signal(signal: i32) -> Result<(), ValidationError> {
    if !(1..=MAX_SIGNAL).contains(&signal) {
        return Err(invalid(
            "signal",
            format!("{signal} is not in 1..={MAX_SIGNAL}"),
        ));
    }
    Ok(())
}

/// `u32::MAX` is `(uid_t)-1`, which `setresuid`/`setresgid` read as "leave unchanged": a
/// process asked to run as it would silently stay root.
fn validate_id(field: &'static str, id: u32) -> Result<(), ValidationError> {
    if id == u32::MAX {
        return Err(invalid(field, "4294967295 (-1) is not a valid id"));
    }
    Ok(())
}

fn validate_version_string(s: &str) -> Result<(), ValidationError> {
    check_len("agent version", s, MAX_VERSION_STRING_LEN)?;
    if s.chars().any(char::is_control) {
        return Err(invalid("agent version", "contains control characters"));
    }
    Ok(())
}

impl ProcessSpec {
    /// Checks every field against the limits above.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.argv.is_empty() {
            return Err(ValidationError::Empty { field: "argv" });
        }
        if self.argv[0].is_empty() {
            return Err(ValidationError::Empty { field: "argv[0]" });
        }
        check_count("argv", self.argv.len(), MAX_ARGS)?;
        for a in &self.argv {
            check_c_string("argv entry", a, MAX_ARG_LEN)?;
        }
        check_count("env", self.env.len(), MAX_ENV)?;
        for e in &self.env {
            check_c_string("env entry", e, MAX_ARG_LEN)?;
            match e.split_once('=') {
                Some((key, _)) if !key.is_empty() => {}
                _ => return Err(invalid("env entry", "must look like KEY=value")),
            }
        }
        check_absolute_path("cwd", &self.cwd)?;
        validate_id("uid", self.uid)?;
        validate_id("gid", self.gid)?;
        check_count(
            "additional_gids",
            self.additional_gids.len(),
            MAX_ADDITIONAL_GIDS,
        )?;
        for &g in &self.additional_gids {
            validate_id("additional_gids entry", g)?;
        }
        if self.tty_size.is_some() && !self.tty {
            return Err(invalid("tty_size", "given without tty"));
        }
        if let Some(c) = &self.container {
            validate_container_id(c)?;
        }
        if self.init && self.container.is_none() {
            return Err(invalid("init", "only for a process in a container"));
        }
        if let Some(u) = &self.user {
            check_user_string("user", u)?;
            if self.uid != 0 || self.gid != 0 || !self.additional_gids.is_empty() {
                return Err(invalid(
                    "user",
                    "given together with uid, gid or additional_gids",
                ));
            }
        }
        if let Some(caps) = &self.capabilities {
            check_count("capabilities", caps.len(), MAX_CAPABILITIES)?;
            for c in caps {
                if c.is_empty() {
                    return Err(ValidationError::Empty {
                        field: "capability",
                    });
                }
                check_len("capability", c, MAX_CAPABILITY_LEN)?;
                if !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(invalid("capability", "only ASCII letters, digits and '_'"));
                }
            }
        }
        check_count("group_add", self.group_add.len(), MAX_GROUP_ADD)?;
        for g in &self.group_add {
            if g.is_empty() {
                return Err(ValidationError::Empty {
                    field: "group_add entry",
                });
            }
            check_user_string("group_add entry", g)?;
        }
        let mut seen = HashSet::new();
        for r in &self.rlimits {
            if !seen.insert(r.resource) {
                return Err(invalid("rlimits", format!("{:?} is set twice", r.resource)));
            }
            if r.soft > r.hard {
                return Err(invalid(
                    "rlimits",
                    format!("{:?}: soft limit above hard limit", r.resource),
                ));
            }
        }
        Ok(())
    }
}

impl ConnectionHeader {
    /// Checks the header's fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            ConnectionHeader::Hello { .. } => Ok(()),
            ConnectionHeader::Attach { process_id, .. } => validate_process_id(process_id),
        }
    }
}

impl Request {
    /// Checks the request's fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Request::CreateProcess { id, spec } => {
                validate_process_id(id)?;
                spec.validate()
            }
            Request::StartProcess { id }
            | Request::WaitProcess { id }
            | Request::ResizeTty { id, .. }
            | Request::DeleteProcess { id } => validate_process_id(id),
            Request::Signal { id, signal } => {
                validate_process_id(id)?;
                validate_signal(*signal)
            }
            Request::CreateContainer { id, spec } => {
                validate_container_id(id)?;
                spec.validate()
            }
            Request::DeleteContainer { id } => validate_container_id(id),
            Request::Refresh {
                entropy, hostname, ..
            } => {
                if !(MIN_REFRESH_ENTROPY..=MAX_REFRESH_ENTROPY).contains(&entropy.len()) {
                    return Err(invalid(
                        "entropy",
                        format!(
                            "{} bytes; {MIN_REFRESH_ENTROPY} to {MAX_REFRESH_ENTROPY} are taken",
                            entropy.len()
                        ),
                    ));
                }
                match hostname {
                    Some(h) => check_host_name("hostname", h, false),
                    None => Ok(()),
                }
            }
            Request::ConfigureNetwork { interfaces } => {
                if interfaces.len() > MAX_INTERFACES {
                    return Err(invalid(
                        "interfaces",
                        format!("{} are more than {MAX_INTERFACES}", interfaces.len()),
                    ));
                }
                for (i, iface) in interfaces.iter().enumerate() {
                    iface.validate()?;
                    if interfaces[..i].iter().any(|o| o.index == iface.index) {
                        return Err(invalid(
                            "index",
                            format!("eth{} is given twice", iface.index),
                        ));
                    }
                }
                Ok(())
            }
            Request::ListProcesses { container } | Request::Stats { container } => {
                validate_container_id(container)
            }
            Request::Shutdown { grace_ms } => match grace_ms {
                Some(ms) if *ms > MAX_SHUTDOWN_GRACE_MS => Err(invalid(
                    "grace_ms",
                    format!("{ms} is more than {MAX_SHUTDOWN_GRACE_MS}"),
                )),
                _ => Ok(()),
            },
        }
    }
}

impl Response {
    /// Checks the response's fields; the host calls this on everything the agent sends.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Response::Hello {
                protocol_version: _,
                agent_version,
            } => validate_version_string(agent_version),
            Response::Ok => Ok(()),
            Response::Started { pid } => {
                if *pid == 0 || *pid > MAX_PID {
                    return Err(invalid("pid", format!("{pid} is not a valid pid")));
                }
                Ok(())
            }
            Response::Exited { code, signal } => {
                if !(0..=255).contains(code) {
                    return Err(invalid("exit code", format!("{code} is not in 0..=255")));
                }
                if let Some(s) = signal {
                    validate_signal(*s)?;
                    if *code != 128 + *s {
                        return Err(invalid(
                            "exit code",
                            format!("{code} does not match signal {s}"),
                        ));
                    }
                }
                Ok(())
            }
            Response::Error { code: _, message } => {
                check_len("error message", message, MAX_MESSAGE_LEN)
            }
            Response::Processes { list } => list.validate(),
            Response::Stats { stats } => stats.validate(),
        }
    }

    /// An error response, its message cut to [`MAX_MESSAGE_LEN`] so it always validates.
    pub fn error_truncated(code: crate::ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_LEN {
            let mut end = MAX_MESSAGE_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Response::Error { code, message }
    }
}

/// Text for a `ps` column: bounded, printable, no control characters.
fn check_ps_text(field: &'static str, s: &str, max: usize) -> Result<(), ValidationError> {
    check_len(field, s, max)?;
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

fn check_pid(field: &'static str, pid: u32) -> Result<(), ValidationError> {
    if pid == 0 || pid > MAX_PID {
        return Err(invalid(field, format!("{pid} is not a valid pid")));
    }
    Ok(())
}

impl ProcessInfo {
    fn validate(&self) -> Result<(), ValidationError> {
        check_pid("pid", self.pid)?;
        if self.ppid > MAX_PID {
            return Err(invalid("ppid", format!("{} is not a valid pid", self.ppid)));
        }
        if let Some(user) = &self.user {
            if user.is_empty() {
                return Err(ValidationError::Empty { field: "user" });
            }
            check_ps_text("user", user, MAX_PS_USER_LEN)?;
            // A column of its own: a space would shift every column after it.
            if user.chars().any(char::is_whitespace) {
                return Err(invalid("user", "contains white space"));
            }
        }
        let mut state = self.state.chars();
        match (state.next(), state.next()) {
            (Some(c), None) if c.is_ascii_alphabetic() => {}
            _ => {
                return Err(invalid(
                    "state",
                    format!("{:?} is not one letter", self.state),
                ))
            }
        }
        if !(-20..=19).contains(&self.nice) {
            return Err(invalid("nice", format!("{} is not -20 to 19", self.nice)));
        }
        check_ps_text("comm", &self.comm, MAX_PS_COMM_LEN)?;
        check_ps_text("args", &self.args, MAX_PS_ARGS_LEN)
    }
}

impl ProcessList {
    /// Checks the count, every process, and that no pid is listed twice.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_count("processes", self.processes.len(), MAX_LISTED_PROCESSES)?;
        let mut pids = HashSet::new();
        for p in &self.processes {
            p.validate()?;
            if !pids.insert(p.pid) {
                return Err(invalid("pid", format!("{} is listed twice", p.pid)));
            }
        }
        Ok(())
    }
}

impl InterfaceCounters {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.name.is_empty() {
            return Err(ValidationError::Empty {
                field: "interface name",
            });
        }
        check_len("interface name", &self.name, MAX_IFNAME_LEN)?;
        if !self
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
        {
            return Err(invalid(
                "interface name",
                "only ASCII letters, digits, '_', '-', '.' and '@' are allowed",
            ));
        }
        Ok(())
    }
}

impl GuestStats {
    /// Checks the CPU count, the memory figures against the total, and the interfaces.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let cpus = self.cpu.online_cpus;
        if cpus == 0 || cpus > MAX_ONLINE_CPUS {
            return Err(invalid(
                "online_cpus",
                format!("{cpus} is not 1 to {MAX_ONLINE_CPUS}"),
            ));
        }
        if self.cpu.vm_busy_ns > self.cpu.vm_total_ns {
            return Err(invalid("vm_busy_ns", "is more than vm_total_ns"));
        }
        let m = &self.memory;
        if m.total == 0 {
            return Err(invalid("memory total", "is 0"));
        }
        if m.free > m.total || m.available > m.total {
            return Err(invalid(
                "memory",
                "free or available is more than the total",
            ));
        }
        check_count("networks", self.networks.len(), MAX_LISTED_INTERFACES)?;
        for (i, n) in self.networks.iter().enumerate() {
            n.validate()?;
            if self.networks[..i].iter().any(|o| o.name == n.name) {
                return Err(invalid(
                    "interface name",
                    format!("{} is listed twice", n.name),
                ));
            }
        }
        Ok(())
    }
}

impl Notification {
    /// Checks the notification's fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Notification::Ready {
                protocol_version: _,
                agent_version,
            } => validate_version_string(agent_version),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        CpuMax, ErrorCode, Rlimit, RlimitResource, StdioStream, TtySize, PROTOCOL_VERSION,
    };

    fn spec() -> ProcessSpec {
        ProcessSpec::new(["/bin/true"])
    }

    fn create(spec: ProcessSpec) -> Request {
        Request::CreateProcess {
            id: "c1".into(),
            spec,
        }
    }

    #[test]
    fn good_requests_pass() {
        let mut s = spec();
        s.env = vec!["A=".into(), "B=c=d".into()];
        s.tty = true;
        s.tty_size = Some(TtySize { rows: 1, cols: 1 });
        s.rlimits = vec![Rlimit {
            resource: RlimitResource::Nofile,
            soft: 1,
            hard: u64::MAX,
        }];
        s.additional_gids = vec![0, 1, 65534];
        assert_eq!(create(s).validate(), Ok(()));
        assert_eq!(
            Request::Signal {
                id: "a-b_c.9".into(),
                signal: 64
            }
            .validate(),
            Ok(())
        );
        assert_eq!(Request::Shutdown { grace_ms: Some(0) }.validate(), Ok(()));
        let refresh = |len: usize, hostname: Option<&str>| Request::Refresh {
            entropy: vec![1; len],
            realtime_ns: 1,
            hostname: hostname.map(str::to_string),
        };
        assert_eq!(refresh(MIN_REFRESH_ENTROPY, None).validate(), Ok(()));
        assert_eq!(
            refresh(MAX_REFRESH_ENTROPY, Some("web-1")).validate(),
            Ok(())
        );
        for bad in [
            refresh(MIN_REFRESH_ENTROPY - 1, None),
            refresh(MAX_REFRESH_ENTROPY + 1, None),
            refresh(MIN_REFRESH_ENTROPY, Some("a b")),
            refresh(MIN_REFRESH_ENTROPY, Some("")),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn process_ids() {
        assert!(validate_process_id("0123abcdef").is_ok());
        assert!(validate_process_id(&"a".repeat(MAX_PROCESS_ID_LEN)).is_ok());
        for bad in [
            "", ".hidden", "-x", "a/b", "a b", "é", "a\0b", "..", "../etc",
        ] {
            assert!(validate_process_id(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            validate_process_id(&"a".repeat(MAX_PROCESS_ID_LEN + 1)),
            Err(ValidationError::TooLong { .. })
        ));
        let hdr = ConnectionHeader::Attach {
            process_id: "../x".into(),
            stream: StdioStream::Stdout,
        };
        assert!(hdr.validate().is_err());
    }

    #[test]
    fn bad_specs_fail() {
        type Mutation = Box<dyn Fn(&mut ProcessSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("empty argv", Box::new(|s| s.argv.clear())),
            ("empty argv0", Box::new(|s| s.argv[0].clear())),
            ("nul in argv", Box::new(|s| s.argv.push("a\0b".into()))),
            (
                "long arg",
                Box::new(|s| s.argv.push("x".repeat(MAX_ARG_LEN + 1))),
            ),
            (
                "too many args",
                Box::new(|s| s.argv.resize(MAX_ARGS + 1, "x".into())),
            ),
            ("env without =", Box::new(|s| s.env.push("PATH".into()))),
            ("env empty key", Box::new(|s| s.env.push("=x".into()))),
            ("nul in env", Box::new(|s| s.env.push("A=\0".into()))),
            ("relative cwd", Box::new(|s| s.cwd = "tmp".into())),
            ("nul in cwd", Box::new(|s| s.cwd = "/t\0".into())),
            ("uid -1", Box::new(|s| s.uid = u32::MAX)),
            ("gid -1", Box::new(|s| s.gid = u32::MAX)),
            ("group -1", Box::new(|s| s.additional_gids.push(u32::MAX))),
            (
                "tty size without tty",
                Box::new(|s| s.tty_size = Some(TtySize { rows: 2, cols: 2 })),
            ),
            (
                "soft above hard",
                Box::new(|s| {
                    s.rlimits.push(Rlimit {
                        resource: RlimitResource::Core,
                        soft: 2,
                        hard: 1,
                    })
                }),
            ),
            (
                "bad container id",
                Box::new(|s| s.container = Some("../c".into())),
            ),
            (
                "user and uid",
                Box::new(|s| {
                    s.user = Some("app".into());
                    s.uid = 1;
                }),
            ),
            (
                "user and groups",
                Box::new(|s| {
                    s.user = Some("app".into());
                    s.additional_gids = vec![5];
                }),
            ),
            ("nul in user", Box::new(|s| s.user = Some("a\0".into()))),
            ("newline in user", Box::new(|s| s.user = Some("a\n".into()))),
            (
                "long user",
                Box::new(|s| s.user = Some("u".repeat(MAX_USER_LEN + 1))),
            ),
            (
                "empty group_add",
                Box::new(|s| s.group_add = vec![String::new()]),
            ),
            (
                "odd capability",
                Box::new(|s| s.capabilities = Some(vec!["CAP_SYS ADMIN".into()])),
            ),
            (
                "long capability",
                Box::new(|s| s.capabilities = Some(vec!["C".repeat(33)])),
            ),
            (
                "too many capabilities",
                Box::new(|s| s.capabilities = Some(vec!["CAP_KILL".into(); 65])),
            ),
            (
                "too many group_add",
                Box::new(|s| s.group_add = vec!["g".into(); MAX_GROUP_ADD + 1]),
            ),
            (
                "duplicate rlimit",
                Box::new(|s| {
                    let r = Rlimit {
                        resource: RlimitResource::Core,
                        soft: 1,
                        hard: 1,
                    };
                    s.rlimits.extend([r, r]);
                }),
            ),
        ];
        for (name, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert!(create(s).validate().is_err(), "{name} passed validation");
        }
    }

    fn container(spec: ContainerSpec) -> Request {
        Request::CreateContainer {
            id: "c1".into(),
            spec,
        }
    }

    fn base_container() -> ContainerSpec {
        ContainerSpec::new(
            FsSource::Virtiofs {
                tag: "rootfs".into(),
            },
            "c0ffee",
        )
    }

    #[test]
    fn good_containers_pass() {
        let mut c = base_container();
        c.domainname = "example.org".into();
        c.hosts = vec![
            HostsEntry {
                address: "10.0.0.2".into(),
                names: vec!["c0ffee".into(), "c0ffee.example.org".into()],
            },
            HostsEntry {
                address: "fd00::1".into(),
                names: vec!["v6-host".into()],
            },
        ];
        c.dns = Some(DnsConfig {
            nameservers: vec!["1.1.1.1".into(), "::1".into()],
            search: vec!["example.org".into()],
            options: vec!["ndots:0".into(), "edns0".into()],
        });
        c.shm_size = Some(1);
        c.mounts = vec![MountSpec {
            source: FsSource::Directory {
                path: "/srv/data".into(),
            },
            destination: "/var/lib/data".into(),
            readonly: true,
            file: None,
        }];
        assert_eq!(container(c).validate(), Ok(()));
        let mut c = base_container();
        c.rootfs = FsSource::Directory {
            path: "/tmp/root fs".into(),
        };
        c.hostname = "a".repeat(MAX_HOSTNAME_LEN);
        assert_eq!(container(c).validate(), Ok(()));
        let mut p = spec();
        p.container = Some("c1".into());
        p.user = Some(String::new());
        p.group_add = vec!["audio".into(), "1000".into()];
        assert_eq!(create(p).validate(), Ok(()));
        assert_eq!(
            Request::DeleteContainer { id: "c1".into() }.validate(),
            Ok(())
        );
    }

    #[test]
    fn bad_containers_fail() {
        type Mutation = Box<dyn Fn(&mut ContainerSpec)>;
        let hosts = |address: &str, name: &str| HostsEntry {
            address: address.into(),
            names: vec![name.into()],
        };
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "empty tag",
                Box::new(|c| c.rootfs = FsSource::Virtiofs { tag: String::new() }),
            ),
            (
                "long tag",
                Box::new(|c| {
                    c.rootfs = FsSource::Virtiofs {
                        tag: "t".repeat(MAX_VIRTIOFS_TAG_LEN + 1),
                    }
                }),
            ),
            (
                "nul in tag",
                Box::new(|c| c.rootfs = FsSource::Virtiofs { tag: "a\0".into() }),
            ),
            (
                "relative directory",
                Box::new(|c| {
                    c.rootfs = FsSource::Directory {
                        path: "root".into(),
                    }
                }),
            ),
            (
                "nul in directory",
                Box::new(|c| {
                    c.rootfs = FsSource::Directory {
                        path: "/r\0".into(),
                    }
                }),
            ),
            (
                "long directory",
                Box::new(|c| {
                    c.rootfs = FsSource::Directory {
                        path: format!("/{}", "d".repeat(MAX_PATH_LEN)),
                    }
                }),
            ),
            ("empty hostname", Box::new(|c| c.hostname.clear())),
            (
                "long hostname",
                Box::new(|c| c.hostname = "h".repeat(MAX_HOSTNAME_LEN + 1)),
            ),
            ("space in hostname", Box::new(|c| c.hostname = "a b".into())),
            (
                "newline in hostname",
                Box::new(|c| c.hostname = "a\nb".into()),
            ),
            ("bad domainname", Box::new(|c| c.domainname = "a#b".into())),
            (
                "bad address",
                Box::new(move |c| c.hosts = vec![hosts("10.0.0", "x")]),
            ),
            (
                "space in a hosts name",
                Box::new(move |c| c.hosts = vec![hosts("10.0.0.1", "a b")]),
            ),
            (
                "comment in a hosts name",
                Box::new(move |c| c.hosts = vec![hosts("10.0.0.1", "#x")]),
            ),
            (
                "no names",
                Box::new(|c| {
                    c.hosts = vec![HostsEntry {
                        address: "10.0.0.1".into(),
                        names: vec![],
                    }]
                }),
            ),
            (
                "too many hosts",
                Box::new(move |c| c.hosts = vec![hosts("10.0.0.1", "x"); MAX_HOSTS_ENTRIES + 1]),
            ),
            (
                "bad nameserver",
                Box::new(|c| {
                    c.dns = Some(DnsConfig {
                        nameservers: vec!["dns.example".into()],
                        ..DnsConfig::default()
                    })
                }),
            ),
            (
                "newline in a search domain",
                Box::new(|c| {
                    c.dns = Some(DnsConfig {
                        search: vec!["a\nnameserver 6.6.6.6".into()],
                        ..DnsConfig::default()
                    })
                }),
            ),
            (
                "too many options",
                Box::new(|c| {
                    c.dns = Some(DnsConfig {
                        options: vec!["x".into(); MAX_DNS_ENTRIES + 1],
                        ..DnsConfig::default()
                    })
                }),
            ),
            ("zero shm", Box::new(|c| c.shm_size = Some(0))),
            (
                "sysctl path",
                Box::new(|c| c.sysctls = vec![("kernel/../../etc".into(), "1".into())]),
            ),
            (
                "sysctl word",
                Box::new(|c| c.sysctls = vec![("kernel..msgmax".into(), "1".into())]),
            ),
            (
                "sysctl bare",
                Box::new(|c| c.sysctls = vec![("hostname".into(), "x".into())]),
            ),
            (
                "sysctl lines",
                Box::new(|c| c.sysctls = vec![("kernel.msgmax".into(), "1\n2".into())]),
            ),
            ("zero pids", Box::new(|c| c.resources.pids_max = Some(0))),
            (
                "weight",
                Box::new(|c| c.resources.cpu_weight = Some(10_001)),
            ),
            (
                "period",
                Box::new(|c| {
                    c.resources.cpu_max = Some(CpuMax {
                        quota_us: 50_000,
                        period_us: 10,
                    })
                }),
            ),
            (
                "cpuset",
                Box::new(|c| c.resources.cpuset_cpus = Some("0-1\n".into())),
            ),
            (
                "mount on /",
                Box::new(|c| {
                    c.mounts = vec![MountSpec {
                        source: FsSource::Directory { path: "/v".into() },
                        destination: "/./".into(),
                        readonly: false,
                        file: None,
                    }]
                }),
            ),
            (
                "mount with ..",
                Box::new(|c| {
                    c.mounts = vec![MountSpec {
                        source: FsSource::Directory { path: "/v".into() },
                        destination: "/data/../etc".into(),
                        readonly: false,
                        file: None,
                    }]
                }),
            ),
            (
                "relative mount",
                Box::new(|c| {
                    c.mounts = vec![MountSpec {
                        source: FsSource::Virtiofs { tag: "v".into() },
                        destination: "data".into(),
                        readonly: false,
                        file: None,
                    }]
                }),
            ),
            (
                "bad mount source",
                Box::new(|c| {
                    c.mounts = vec![MountSpec {
                        source: FsSource::Virtiofs { tag: String::new() },
                        destination: "/data".into(),
                        readonly: false,
                        file: None,
                    }]
                }),
            ),
            (
                "tmpfs root",
                Box::new(|c| c.rootfs = FsSource::Tmpfs { options: vec![] }),
            ),
        ];
        let tmpfs = |options: &[&str]| FsSource::Tmpfs {
            options: options.iter().map(|o| o.to_string()).collect(),
        };
        for bad in [
            &["size=1x"][..],
            &["size="],
            &["mode=8"],
            &["mode=17777"],
            &["uid=-1"],
            &["uid=4294967296"],
            &["exec,nosuid"],
            &["huge=always"],
            &["mpol=bind"],
            &["context=x"],
            &["size=1%%"],
        ] {
            assert!(tmpfs(bad).validate().is_err(), "{bad:?} passed validation");
        }
        assert!(tmpfs(&["ro"; MAX_TMPFS_OPTIONS + 1]).validate().is_err());
        tmpfs(&[
            "size=64m",
            "size=10%",
            "size=4096",
            "mode=1777",
            "mode=0700",
            "uid=1000",
            "gid=0",
            "nr_inodes=1k",
            "noexec",
            "nosuid",
            "nodev",
            "exec",
            "ro",
            "rw",
            "noatime",
        ])
        .validate()
        .unwrap();
        for (name, mutate) in cases {
            let mut c = base_container();
            mutate(&mut c);
            assert!(container(c).validate().is_err(), "{name} passed validation");
        }
        let r = Request::CreateContainer {
            id: ".x".into(),
            spec: base_container(),
        };
        match r.validate() {
            Err(ValidationError::Invalid { field, .. }) => assert_eq!(field, "container id"),
            other => panic!("{other:?}"),
        }
        assert!(Request::DeleteContainer { id: String::new() }
            .validate()
            .is_err());
    }

    #[test]
    fn bad_requests_fail() {
        for sig in [0, -1, 65, i32::MAX] {
            let r = Request::Signal {
                id: "c".into(),
                signal: sig,
            };
            assert!(r.validate().is_err(), "signal {sig}");
        }
        assert!(Request::Shutdown {
            grace_ms: Some(MAX_SHUTDOWN_GRACE_MS + 1)
        }
        .validate()
        .is_err());
        assert!(Request::WaitProcess { id: String::new() }
            .validate()
            .is_err());
    }

    #[test]
    fn responses() {
        let ok = [
            Response::Ok,
            Response::Started { pid: 1 },
            Response::Exited {
                code: 0,
                signal: None,
            },
            Response::Exited {
                code: 137,
                signal: Some(9),
            },
            Response::Hello {
                protocol_version: PROTOCOL_VERSION,
                agent_version: "0.1.0".into(),
            },
            Response::error(ErrorCode::Internal, "x".repeat(MAX_MESSAGE_LEN)),
        ];
        for r in ok {
            assert_eq!(r.validate(), Ok(()), "{r:?}");
        }
        let bad = [
            Response::Started { pid: 0 },
            Response::Started { pid: u32::MAX },
            Response::Exited {
                code: 256,
                signal: None,
            },
            Response::Exited {
                code: -1,
                signal: None,
            },
            Response::Exited {
                code: 1,
                signal: Some(9),
            },
            Response::Exited {
                code: 128,
                signal: Some(0),
            },
            Response::Hello {
                protocol_version: PROTOCOL_VERSION,
                agent_version: "x".repeat(MAX_VERSION_STRING_LEN + 1),
            },
            Response::Hello {
                protocol_version: PROTOCOL_VERSION,
                agent_version: "1\n2".into(),
            },
            Response::error(ErrorCode::Internal, "x".repeat(MAX_MESSAGE_LEN + 1)),
        ];
        for r in bad {
            assert!(r.validate().is_err(), "{r:?}");
        }
    }

    #[test]
    fn error_messages_are_truncated_on_char_boundaries() {
        let long = "é".repeat(MAX_MESSAGE_LEN);
        let r = Response::error_truncated(ErrorCode::Internal, long);
        assert_eq!(r.validate(), Ok(()));
        match r {
            Response::Error { message, .. } => assert_eq!(message.len(), MAX_MESSAGE_LEN),
            other => panic!("{other:?}"),
        }
    }

    pub(crate) fn process(pid: u32) -> ProcessInfo {
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
            start_time_ns: 1,
            cpu_time_ns: 2,
            rss_bytes: 4096,
            vsz_bytes: 8192,
            comm: "sh".into(),
            args: "sh -c sleep 1000".into(),
        }
    }

    pub(crate) fn stats() -> GuestStats {
        GuestStats {
            cpu: crate::CpuFigures {
                container_user_ns: 1,
                container_system_ns: 2,
                vm_total_ns: 10,
                vm_busy_ns: 3,
                online_cpus: 2,
            },
            memory: crate::MemoryFigures {
                total: 100,
                free: 50,
                available: 60,
                ..Default::default()
            },
            pids: 2,
            networks: vec![InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 1,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn figures() {
        let list = |processes| Response::Processes {
            list: ProcessList {
                now_ns: 3,
                mem_total_bytes: 100,
                processes,
                truncated: false,
            },
        };
        assert_eq!(list(vec![process(1), process(7)]).validate(), Ok(()));
        assert_eq!(list(vec![]).validate(), Ok(()));
        let mut unnamed = process(2);
        unnamed.user = None;
        unnamed.args = String::new();
        assert_eq!(list(vec![unnamed]).validate(), Ok(()));
        type Mutation = Box<dyn Fn(&mut ProcessInfo)>;
        let bad: Vec<(&str, Mutation)> = vec![
            ("pid 0", Box::new(|p| p.pid = 0)),
            ("huge pid", Box::new(|p| p.pid = MAX_PID + 1)),
            ("huge ppid", Box::new(|p| p.ppid = u32::MAX)),
            ("empty user", Box::new(|p| p.user = Some(String::new()))),
            ("spaced user", Box::new(|p| p.user = Some("a b".into()))),
            (
                "long user",
                Box::new(|p| p.user = Some("u".repeat(MAX_PS_USER_LEN + 1))),
            ),
            ("two-letter state", Box::new(|p| p.state = "SS".into())),
            ("empty state", Box::new(|p| p.state = String::new())),
            ("odd state", Box::new(|p| p.state = "\n".into())),
            ("nice 20", Box::new(|p| p.nice = 20)),
            ("nice -21", Box::new(|p| p.nice = -21)),
            ("escape in comm", Box::new(|p| p.comm = "\u{1b}[2J".into())),
            (
                "long comm",
                Box::new(|p| p.comm = "c".repeat(MAX_PS_COMM_LEN + 1)),
            ),
            ("newline in args", Box::new(|p| p.args = "a\nb".into())),
            (
                "long args",
                Box::new(|p| p.args = "a".repeat(MAX_PS_ARGS_LEN + 1)),
            ),
        ];
        for (name, mutate) in bad {
            let mut p = process(3);
            mutate(&mut p);
            assert!(
                list(vec![p]).validate().is_err(),
                "{name} passed validation"
            );
        }
        assert!(list(vec![process(1), process(1)]).validate().is_err());
        assert!(
            list((1..=MAX_LISTED_PROCESSES as u32 + 1).map(process).collect())
                .validate()
                .is_err()
        );

        let answer = |s| Response::Stats { stats: s };
        assert_eq!(answer(stats()).validate(), Ok(()));
        type StatsMutation = Box<dyn Fn(&mut GuestStats)>;
        let bad: Vec<(&str, StatsMutation)> = vec![
            ("no cpu", Box::new(|s| s.cpu.online_cpus = 0)),
            ("too many cpus", Box::new(|s| s.cpu.online_cpus = 1025)),
            ("busy above total", Box::new(|s| s.cpu.vm_busy_ns = 11)),
            ("no memory", Box::new(|s| s.memory.total = 0)),
            ("free above total", Box::new(|s| s.memory.free = 101)),
            (
                "available above total",
                Box::new(|s| s.memory.available = 101),
            ),
            (
                "empty interface name",
                Box::new(|s| s.networks[0].name.clear()),
            ),
            (
                "long interface name",
                Box::new(|s| s.networks[0].name = "e".repeat(16)),
            ),
            (
                "spaced interface name",
                Box::new(|s| s.networks[0].name = "eth 0".into()),
            ),
            (
                "interface twice",
                Box::new(|s| s.networks.push(s.networks[0].clone())),
            ),
            (
                "too many interfaces",
                Box::new(|s| {
                    s.networks = (0..=MAX_LISTED_INTERFACES)
                        .map(|i| InterfaceCounters {
                            name: format!("eth{i}"),
                            ..Default::default()
                        })
                        .collect()
                }),
            ),
        ];
        for (name, mutate) in bad {
            let mut s = stats();
            mutate(&mut s);
            assert!(answer(s).validate().is_err(), "{name} passed validation");
        }
        for r in [
            Request::ListProcesses {
                container: "../c".into(),
            },
            Request::Stats {
                container: String::new(),
            },
        ] {
            assert!(r.validate().is_err(), "{r:?}");
        }
        assert_eq!(
            Request::Stats {
                container: "c1".into()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn the_largest_process_list_fits_in_a_frame() {
        let mut p = process(1);
        p.user = Some("\"".repeat(MAX_PS_USER_LEN));
        p.comm = "\"".repeat(MAX_PS_COMM_LEN);
        p.args = "\"".repeat(MAX_PS_ARGS_LEN);
        p.ppid = MAX_PID;
        p.uid = u32::MAX;
        p.nice = -20;
        p.threads = u32::MAX;
        p.tty_nr = u32::MAX;
        p.start_time_ns = u64::MAX;
        p.cpu_time_ns = u64::MAX;
        p.rss_bytes = u64::MAX;
        p.vsz_bytes = u64::MAX;
        let r = Response::Processes {
            list: ProcessList {
                now_ns: u64::MAX,
                mem_total_bytes: u64::MAX,
                processes: (1..=MAX_LISTED_PROCESSES as u32)
                    .map(|pid| ProcessInfo { pid, ..p.clone() })
                    .collect(),
                truncated: true,
            },
        };
        assert_eq!(r.validate(), Ok(()));
        let frame = crate::encode(&r).unwrap();
        assert!(frame.len() <= crate::MAX_FRAME_LEN, "{}", frame.len());
    }

    #[test]
    fn notifications() {
        let n = Notification::Ready {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
        };
        assert_eq!(n.validate(), Ok(()));
        let n = Notification::Ready {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "\u{7}".into(),
        };
        assert!(n.validate().is_err());
    }
}
