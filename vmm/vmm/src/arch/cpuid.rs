//! The CPUID a vCPU sees: KVM's supported set, with the topology made true for this VM
//! (APIC IDs, CPU count) and the hypervisor bit set.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_PERFMON: u32 = 0xa;
const LEAF_AMD_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_PERFMON_V2: u32 = 0x8000_0022;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
/// The local APIC's TSC-deadline timer mode.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Perfmon and debug capability (IA32_PERF_CAPABILITIES).
const ECX_PDCM: u32 = 1 << 15;
/// AMD core, northbridge and last-level-cache performance counter extensions.
const AMD_ECX_PERFCTR: u32 = (1 << 23) | (1 << 24) | (1 << 28);
const EDX_HTT: u32 = 1 << 28;

/// Bits needed to number `count` items.
fn bits_for(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Offers the TSC-deadline timer, which KVM emulates whatever the host's CPU (it says so with
/// KVM_CAP_TSC_DEADLINE_TIMER, not in its supported CPUID), as QEMU and Firecracker do.
///
/// Without it, Linux calibrates its local APIC timer at boot against the PIT and checks the
/// result over a tenth of a second of ticks; on a loaded host the two disagree, the kernel
/// says "APIC timer disabled due to verification failure" and takes its ticks from the PIT
/// instead. A VM template snapshotted from such a guest gave clones whose timers never
/// fired again (every clone of it hung in its first sleep; seen in the emulated host under
/// load, a few templates in a hundred). With TSC-deadline, there is no calibration to fail.
pub fn offer_tsc_deadline(supported: &mut CpuId) {
    for entry in supported.as_mut_slice().iter_mut() {
        if entry.function == LEAF_FEATURES {
            entry.ecx |= ECX_TSC_DEADLINE;
        }
    }
}

/// Adapts KVM's supported CPUID for vCPU `index` of `count` (one thread per core, one
/// socket, APIC ID = index), without performance monitoring.
pub fn for_vcpu(supported: &CpuId, index: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    let apic_id = u32::from(index);
    let count = u32::from(count);
    for entry in cpuid.as_mut_slice().iter_mut() {
        patch(entry, apic_id, count);
    }
    cpuid
}

fn patch(entry: &mut kvm_cpuid_entry2, apic_id: u32, count: u32) {
    match entry.function {
        LEAF_FEATURES => {
            // EBX: initial APIC ID, logical processors per package, CLFLUSH line (8 qwords).
            entry.ebx = (apic_id << 24) | ((count & 0xff) << 16) | (8 << 8);
            entry.ecx |= ECX_HYPERVISOR;
            entry.ecx &= !ECX_PDCM;
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            entry.edx = apic_id;
            match entry.index {
                // SMT level: one thread per core.
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = 1 << 8;
                }
                // Core level: all CPUs in one package.
                1 => {
                    entry.eax = bits_for(count);
                    entry.ebx = count;
                    entry.ecx = (2 << 8) | 1;
                }
                n => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = n;
                }
            }
        }
        // No performance counters: a microVM has no use for them, they are a side channel
        // between tenants, and nested hypervisors handle their MSRs poorly.
        LEAF_PERFMON | LEAF_AMD_PERFMON_V2 => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        LEAF_AMD_FEATURES => entry.ecx &= !AMD_ECX_PERFCTR,
        LEAF_AMD_SIZE => {
            // ECX: APIC ID size for cores, and the number of cores minus one.
            entry.ecx = (bits_for(count) << 12) | (count.saturating_sub(1) & 0xff);
        }
        LEAF_AMD_TOPOLOGY => {
            entry.eax = apic_id;
            entry.ebx = apic_id & 0xff;
            entry.ecx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn tsc_deadline_is_offered_in_the_feature_leaf_only() {
        let mut supported = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0)]).unwrap();
        offer_tsc_deadline(&mut supported);
        let c = for_vcpu(&supported, 0, 1);
        assert_ne!(c.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(c.as_slice()[1].ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn topology_names_each_vcpu() {
        let supported =
            CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)])
                .unwrap();
        let c = for_vcpu(&supported, 3, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[2].ebx, 4);
        assert_eq!(e[2].eax, 2);
        assert_eq!(e[1].edx, 3);
        assert_eq!(e[3].ecx, 2);
        let pmu = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0xa,
                eax: 0x0703_0402,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x8000_0001,
                ecx: AMD_ECX_PERFCTR | 1,
                ..Default::default()
            },
        ])
        .unwrap();
        let c = for_vcpu(&pmu, 0, 1);
        assert_eq!(c.as_slice()[0].eax, 0, "no architectural perfmon");
        assert_eq!(
            c.as_slice()[1].ecx,
            1,
            "no AMD perf counters, other bits kept"
        );
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(5), 3);
    }
}
