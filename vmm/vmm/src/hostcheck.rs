//! Whether this host's KVM can run a Linux guest.
//!
//! berth needs hardware-assisted KVM (kvm_intel or kvm_amd). Some hosts, berth's own
//! development machines among them, offer only kvm_pvm: it runs tiny guests, but an
//! unmodified Linux kernel dies in its instruction emulator. This module tells the two apart
//! and words the advice for the second case.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// Which KVM backs /dev/kvm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware-assisted, Intel VMX.
    Intel,
    /// Hardware-assisted, AMD SVM.
    Amd,
    /// Pagetable-based virtual machines: no hardware virtualisation.
    Pvm,
    /// KVM built in, or a module berth does not know; judged by the CPU flags.
    Other { hardware_flags: bool },
}

impl KvmKind {
    /// Detects the KVM flavour from loaded modules and CPU flags.
    pub fn detect() -> Self {
        let module = |name: &str| Path::new("/sys/module").join(name).exists();
        if module("kvm_pvm") {
            KvmKind::Pvm
        } else if module("kvm_intel") {
            KvmKind::Intel
        } else if module("kvm_amd") {
            KvmKind::Amd
        } else {
            let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let hardware_flags = flags
                .lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
            KvmKind::Other { hardware_flags }
        }
    }
}

/// What to do on a host whose KVM cannot run Linux guests.
pub const PVM_ADVICE: &str = "this host's KVM is kvm_pvm (no hardware virtualisation): it cannot \
run an unmodified Linux guest. Run berth on a host with kvm_intel or kvm_amd, or here inside \
the emulated virtualization host: tests/vmhost/run -- <command>";

/// Capabilities berth relies on.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
];

/// Ok with a description when this host can run Linux microVMs; Err with the reason.
pub fn check() -> Result<String, String> {
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(format!(
            "/dev/kvm speaks API version {version}; berth needs 12"
        ));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(format!("/dev/kvm lacks {name}"));
        }
    }
    match KvmKind::detect() {
        KvmKind::Pvm => Err(PVM_ADVICE.to_string()),
        KvmKind::Intel => Ok("hardware-assisted KVM (kvm_intel)".to_string()),
        KvmKind::Amd => Ok("hardware-assisted KVM (kvm_amd)".to_string()),
        KvmKind::Other {
            hardware_flags: true,
        } => Ok("hardware-assisted KVM (built in)".to_string()),
        KvmKind::Other {
            hardware_flags: false,
        } => Err(
            "/dev/kvm exists but the CPU shows neither vmx nor svm: this KVM cannot \
run a Linux guest"
                .to_string(),
        ),
    }
}
