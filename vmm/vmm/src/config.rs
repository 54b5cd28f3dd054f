//! What a VM is built from.

use std::path::PathBuf;

/// Where the guest's serial console goes.
pub enum ConsoleOutput {
    /// The VMM's standard output.
    Stdout,
    /// A log file, created (or truncated) at start.
    File(PathBuf),
    /// Nowhere (still rate-limited and watched for panics).
    Discard,
}

/// The host side of the VM's vsock device.
#[derive(Clone, Debug)]
pub struct VsockConfig {
    /// The guest's context ID.
    pub guest_cid: u64,
    /// The Unix socket host processes connect to (hybrid vsock).
    pub uds_path: PathBuf,
}

/// The VM's network card.
#[derive(Debug)]
pub struct NetConfig {
    /// The MAC address the device shows and enforces on every frame the guest sends.
    pub mac: [u8; 6],
    /// A tap opened by the VMM's starter (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), or none: the
    /// card's link is down and what the guest sends is dropped (a template VM's card).
    pub tap: Option<std::os::fd::OwnedFd>,
}

/// A host directory shared with the guest over virtio-fs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsShareConfig {
    /// The mount tag the guest names (`mount -t virtiofs TAG /mnt`), 1 to 36 bytes.
    pub tag: String,
    /// The host directory.
    pub dir: PathBuf,
    /// Refuse every change (EROFS).
    pub read_only: bool,
    /// Never let the guest create set-user-ID or set-group-ID files.
    pub nosuid: bool,
}

impl std::str::FromStr for FsShareConfig {
    type Err = String;

    /// Parses `TAG=DIR[:OPTION[,OPTION...]]`, the options being `ro`, `rw`, `nosuid` and
    /// `suid`. A suffix after the last `:` is taken as options only when every word of it
    /// is one; otherwise it is part of the directory.
    fn from_str(spec: &str) -> Result<Self, String> {
        let (tag, rest) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec:?}: expected TAG=DIR[:ro][,nosuid]"))?;
        if tag.is_empty() || tag.len() > 36 || tag.contains('\0') {
            return Err(format!("{spec:?}: the tag must be 1 to 36 bytes"));
        }
        let mut share = FsShareConfig {
            tag: tag.to_string(),
            dir: PathBuf::from(rest),
            read_only: false,
            nosuid: false,
        };
        if let Some((dir, options)) = rest.rsplit_once(':') {
            let words: Vec<&str> = options.split(',').collect();
            if words
                .iter()
                .all(|w| matches!(*w, "ro" | "rw" | "nosuid" | "suid"))
            {
                share.dir = PathBuf::from(dir);
                for word in words {
                    match word {
                        "ro" => share.read_only = true,
                        "rw" => share.read_only = false,
                        "nosuid" => share.nosuid = true,
                        _ => share.nosuid = false,
                    }
                }
            }
        }
        if share.dir.as_os_str().is_empty() {
            return Err(format!("{spec:?}: no directory"));
        }
        Ok(share)
    }
}

/// A microVM's configuration.
pub struct VmConfig {
    /// Number of vCPUs (1 to [`crate::arch::MAX_VCPUS`]).
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// An ELF kernel with a PVH entry note.
    pub kernel: PathBuf,
    /// An initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// Kernel command line arguments after berth's own.
    pub extra_cmdline: String,
    /// The serial console's destination.
    pub console: ConsoleOutput,
    /// A vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// Whether the guest gets a virtio-rng device.
    pub rng: bool,
    /// Whether the guest gets a virtio-balloon device (free page reporting: the host pages
    /// of memory the guest frees go back to the host).
    pub balloon: bool,
    /// A virtio-net device, if any.
    pub net: Option<NetConfig>,
    /// Host directories shared over virtio-fs, one device each.
    pub shares: Vec<FsShareConfig>,
}

/// berth's kernel arguments: the console on COM1, kept quiet (every byte written to the
/// UART is a VM exit; errors and panics still show), reboot through the i8042 (which ends
/// the VMM), an immediate reboot on panic, and no swiotlb bounce buffer (virtio-mmio never
/// needs one). The guest kernel has no PCI, no modules and no i8042 driver, so their
/// options would only reach /init as stray arguments.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet swiotlb=noforce";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<FsShareConfig, String> {
        spec.parse()
    }

    #[test]
    fn share_specs_parse() {
        let s = parse("rootfs=/var/lib/berth/c1/rootfs").unwrap();
        assert_eq!(s.tag, "rootfs");
        assert_eq!(s.dir, PathBuf::from("/var/lib/berth/c1/rootfs"));
        assert!(!s.read_only && !s.nosuid);
        let s = parse("data=/srv/data:ro").unwrap();
        assert_eq!(s.dir, PathBuf::from("/srv/data"));
        assert!(s.read_only);
        let s = parse("vol=/srv/v:ro,nosuid").unwrap();
        assert!(s.read_only && s.nosuid);
        // A colon that is not followed by options belongs to the path.
        let s = parse("odd=/srv/a:b").unwrap();
        assert_eq!(s.dir, PathBuf::from("/srv/a:b"));
        assert!(!s.read_only);
        let s = parse("eq=/srv/a=b").unwrap();
        assert_eq!(s.dir, PathBuf::from("/srv/a=b"));
    }

    #[test]
    fn bad_share_specs_are_refused() {
        for spec in [
            "noequals",
            "=/dir",
            "t=",
            "t=:ro",
            &format!("{}=/d", "x".repeat(37)),
        ] {
            assert!(parse(spec).is_err(), "{spec}");
        }
    }
}
