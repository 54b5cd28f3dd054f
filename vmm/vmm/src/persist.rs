//! The VM's own state in a snapshot: each vCPU's registers and the in-kernel devices (the
//! PIC pair, the IOAPIC, the PIT) and kvmclock. Read with every vCPU out of KVM_RUN
//! ([`crate::vcpu::Pause`]); written into a new VM before any of its vCPUs runs.
//!
//! The order of the writes follows what KVM needs: MP state before the registers, special
//! registers before XSAVE (XSAVE depends on CR4 and XCR0), the LAPIC before the MSRs (the
//! TSC deadline MSR needs the LAPIC timer mode), vCPU events last (they hold the pending
//! exception and interrupt, checked against the rest).

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// Why a VM's or a vCPU's state cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("KVM cannot {what} of vCPU {vcpu}: {source}")]
    Vcpu {
        vcpu: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM cannot {what} of the VM: {source}")]
    Vm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM took only {set} of vCPU {vcpu}'s {wanted} MSRs")]
    Msrs { vcpu: u8, set: usize, wanted: usize },
}

/// The TSC-deadline timer's MSR.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// One vCPU, everything KVM keeps of it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// (index, value) of every MSR in KVM's list of MSRs to save that this vCPU reads.
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
}

/// The in-kernel devices and the clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// Reads vCPU `index`'s state. `msr_index` is KVM's list of MSRs to save
/// (`KVM_GET_MSR_INDEX_LIST`); those this vCPU cannot read are left out.
pub fn save_vcpu(fd: &VcpuFd, index: u8, msr_index: &[u32]) -> Result<VcpuState, PersistError> {
    let kvm = |what| {
        move |source| PersistError::Vcpu {
            vcpu: index,
            what,
            source,
        }
    };
    let mp_state = fd.get_mp_state().map_err(kvm("read the MP state"))?;
    let regs = fd.get_regs().map_err(kvm("read the registers"))?;
    let sregs = fd.get_sregs().map_err(kvm("read the special registers"))?;
    let xsave = fd.get_xsave().map_err(kvm("read the XSAVE area"))?;
    let xcrs = fd.get_xcrs().map_err(kvm("read the XCRs"))?;
    let debug_regs = fd
        .get_debug_regs()
        .map_err(kvm("read the debug registers"))?;
    let lapic = fd.get_lapic().map_err(kvm("read the local APIC"))?;
    let msrs = read_msrs(fd, index, msr_index)?;
    let events = fd.get_vcpu_events().map_err(kvm("read the vCPU events"))?;
    Ok(VcpuState {
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        msrs,
        events,
    })
}

/// KVM_GET_MSRS stops at the first MSR it cannot read: that one is left out and the rest
/// read again, so one unreadable MSR does not cost the others.
fn read_msrs(fd: &VcpuFd, index: u8, msr_index: &[u32]) -> Result<Vec<(u32, u64)>, PersistError> {
    let mut wanted: Vec<u32> = msr_index.to_vec();
    let mut out = Vec::with_capacity(wanted.len());
    while !wanted.is_empty() {
        let entries: Vec<kvm_msr_entry> = wanted
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| PersistError::Msrs {
            vcpu: index,
            set: 0,
            wanted: entries.len(),
        })?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(|source| PersistError::Vcpu {
                vcpu: index,
                what: "read the MSRs",
                source,
            })?;
        out.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        // Skip the one that failed.
        wanted.drain(..(read + 1).min(wanted.len()));
    }
    Ok(out)
}

/// Writes `state` into vCPU `index` of a new VM, before it runs.
pub fn restore_vcpu(fd: &VcpuFd, index: u8, state: &VcpuState) -> Result<(), PersistError> {
    let kvm = |what| {
        move |source| PersistError::Vcpu {
            vcpu: index,
            what,
            source,
        }
    };
    fd.set_mp_state(state.mp_state)
        .map_err(kvm("write the MP state"))?;
    fd.set_regs(&state.regs)
        .map_err(kvm("write the registers"))?;
    fd.set_sregs(&state.sregs)
        .map_err(kvm("write the special registers"))?;
    // SAFETY: `state.xsave` is a whole kvm_xsave read from KVM by `save_vcpu` (fixed size,
    // 4 KiB: no XSAVE2 extension), so KVM reads no more than the struct holds.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(kvm("write the XSAVE area"))?;
    fd.set_xcrs(&state.xcrs).map_err(kvm("write the XCRs"))?;
    fd.set_debug_regs(&state.debug_regs)
        .map_err(kvm("write the debug registers"))?;
    fd.set_lapic(&state.lapic)
        .map_err(kvm("write the local APIC"))?;
    let mut entries: Vec<kvm_msr_entry> = state
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    // KVM arms the TSC-deadline timer against the guest's TSC as it stands when the deadline
    // is written: written before the TSC, a deadline would count from the new vCPU's TSC
    // (near zero) and fire as late as the template had run. KVM_SET_MSRS writes in order.
    entries.sort_by_key(|e| e.index == MSR_IA32_TSC_DEADLINE);
    let msrs = Msrs::from_entries(&entries).map_err(|_| PersistError::Msrs {
        vcpu: index,
        set: 0,
        wanted: entries.len(),
    })?;
    let set = fd.set_msrs(&msrs).map_err(kvm("write the MSRs"))?;
    if set != entries.len() {
        return Err(PersistError::Msrs {
            vcpu: index,
            set,
            wanted: entries.len(),
        });
    }
    fd.set_vcpu_events(&state.events)
        .map_err(kvm("write the vCPU events"))
}

fn irqchip(vm: &VmFd, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, PersistError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(|source| PersistError::Vm { what, source })?;
    Ok(chip)
}

/// Reads the VM's in-kernel devices and clock.
pub fn save_vm(vm: &VmFd) -> Result<VmState, PersistError> {
    let kvm = |what| move |source| PersistError::Vm { what, source };
    Ok(VmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER, "read the master PIC")?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE, "read the slave PIC")?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC, "read the IOAPIC")?,
        pit: vm.get_pit2().map_err(kvm("read the PIT"))?,
        clock: vm.get_clock().map_err(kvm("read the clock"))?,
    })
}

/// Writes `state` into a new VM (its irqchip and PIT created) before any vCPU runs.
pub fn restore_vm(vm: &VmFd, state: &VmState) -> Result<(), PersistError> {
    let kvm = |what| move |source| PersistError::Vm { what, source };
    vm.set_irqchip(&state.pic_master)
        .map_err(kvm("write the master PIC"))?;
    vm.set_irqchip(&state.pic_slave)
        .map_err(kvm("write the slave PIC"))?;
    vm.set_irqchip(&state.ioapic)
        .map_err(kvm("write the IOAPIC"))?;
    vm.set_pit2(&state.pit).map_err(kvm("write the PIT"))?;
    // The guest's clock goes on from where it stood: no jump forward by however long the
    // snapshot waited, never a step back. The flags describe the host it was read on.
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(kvm("write the clock"))
}
