//! x86_64 specifics: the guest physical layout, the MP table, CPUID and the initial CPU
//! state of the PVH entry.

pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;

/// Most vCPUs a VM may have (the guest kernel is built with NR_CPUS=64).
pub const MAX_VCPUS: u8 = 64;
