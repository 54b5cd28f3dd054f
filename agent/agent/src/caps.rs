//! Linux capabilities by name, and the set Docker gives a container's processes.

/// Capability names (without `CAP_`), by number (linux/capability.h, up to Linux 6.1).
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default capabilities (moby `oci/caps/defaults.go`).
pub const DOCKER_DEFAULT: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A capability name this agent does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability {0:?}")]
pub struct UnknownCapability(pub String);

/// The bit mask of `names` (`CAP_CHOWN` or `chown`, any case).
pub fn mask<S: AsRef<str>>(names: &[S]) -> Result<u64, UnknownCapability> {
    let mut mask = 0u64;
    for name in names {
        let name = name.as_ref();
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        let bit = NAMES
            .iter()
            .position(|n| *n == bare)
            .ok_or_else(|| UnknownCapability(name.to_owned()))?;
        mask |= 1 << bit;
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_default_is_the_well_known_mask() {
        // What `grep CapBnd /proc/self/status` shows in a default Docker container.
        assert_eq!(mask(DOCKER_DEFAULT).unwrap(), 0xa80425fb);
    }

    #[test]
    fn names() {
        assert_eq!(mask(&["CAP_CHOWN"]).unwrap(), 1);
        assert_eq!(mask(&["sys_admin", "Cap_Kill"]).unwrap(), 1 << 21 | 1 << 5);
        assert_eq!(mask(&["CAP_CHECKPOINT_RESTORE"]).unwrap(), 1 << 40);
        assert_eq!(mask::<&str>(&[]).unwrap(), 0);
        assert_eq!(
            mask(&["CAP_FLY"]).unwrap_err(),
            UnknownCapability("CAP_FLY".into())
        );
    }
}
