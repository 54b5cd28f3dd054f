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
}

/// berth's kernel arguments: the console on COM1, kept quiet (every byte written to the
/// UART is a VM exit; errors and panics still show), reboot through the i8042 (which ends
/// the VMM), an immediate reboot on panic, and no swiotlb bounce buffer (virtio-mmio never
/// needs one). The guest kernel has no PCI, no modules and no i8042 driver, so their
/// options would only reach /init as stray arguments.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet swiotlb=noforce";
