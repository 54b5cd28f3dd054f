//! The initial CPU state for the PVH entry point (xen/include/public/arch-x86/hvm/start_info.h
//! and the PVH boot ABI): 32-bit protected mode, paging off, flat segments, %ebx pointing at
//! hvm_start_info. Also the boot MSRs, the FPU, and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{GDT_ADDR, PVH_INFO_ADDR};
use devices::GuestMemoryMmap;

/// Errors setting up a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot GDT: {0}")]
    Gdt(#[source] vm_memory::GuestMemoryError),
    #[error("KVM refused the {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM set only {set} of {wanted} boot MSRs")]
    Msrs { set: usize, wanted: usize },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

/// Null, flat 32-bit code, flat data, and a 32-bit TSS descriptor.
const GDT: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0000_8b00_0000_0067,
];

/// Writes the boot GDT into guest memory.
pub fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + (i as u64) * 8))
            .map_err(RegsError::Gdt)?;
    }
    Ok(())
}

fn flat(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for the PVH entry.
pub fn pvh_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    sregs.cs = flat(CODE_SELECTOR, 0xb);
    let data = flat(DATA_SELECTOR, 0x3);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: TSS_SELECTOR,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    // Protected mode, no paging; ET because every x86 since the 486 reports it.
    sregs.cr0 = 0x1 | 0x10;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// Sets the boot vCPU's registers to enter at `entry`.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(kvm("special registers (read)"))?;
    vcpu.set_sregs(&pvh_sregs(sregs))
        .map_err(kvm("special registers"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: PVH_INFO_ADDR,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("general registers"))
}

/// MSR values every vCPU starts with.
fn boot_msrs() -> Vec<kvm_msr_entry> {
    const IA32_SYSENTER_CS: u32 = 0x174;
    const IA32_SYSENTER_ESP: u32 = 0x175;
    const IA32_SYSENTER_EIP: u32 = 0x176;
    const STAR: u32 = 0xc000_0081;
    const LSTAR: u32 = 0xc000_0082;
    const CSTAR: u32 = 0xc000_0083;
    const SYSCALL_MASK: u32 = 0xc000_0084;
    const KERNEL_GS_BASE: u32 = 0xc000_0102;
    const IA32_TSC: u32 = 0x10;
    const IA32_MISC_ENABLE: u32 = 0x1a0;
    const MTRR_DEF_TYPE: u32 = 0x2ff;
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(IA32_SYSENTER_CS, 0),
        entry(IA32_SYSENTER_ESP, 0),
        entry(IA32_SYSENTER_EIP, 0),
        entry(STAR, 0),
        entry(LSTAR, 0),
        entry(CSTAR, 0),
        entry(SYSCALL_MASK, 0),
        entry(KERNEL_GS_BASE, 0),
        // Every vCPU starts its TSC at zero at the same moment: a synchronised TSC.
        entry(IA32_TSC, 0),
        // Fast string operations.
        entry(IA32_MISC_ENABLE, 1),
        // MTRRs enabled, default type write-back: without this the guest treats RAM as
        // uncached and runs slowly.
        entry(MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

/// Sets the boot MSRs, the FPU and the LAPIC's LINT pins of any vCPU.
pub fn setup_common(vcpu: &VcpuFd, supported_msrs: &[u32]) -> Result<(), RegsError> {
    let wanted: Vec<kvm_msr_entry> = boot_msrs()
        .into_iter()
        .filter(|e| supported_msrs.contains(&e.index))
        .collect();
    let msrs = Msrs::from_entries(&wanted).map_err(|_| RegsError::Msrs {
        set: 0,
        wanted: wanted.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("boot MSRs"))?;
    if set != wanted.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: wanted.len(),
        });
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU state"))?;

    let mut lapic = vcpu.get_lapic().map_err(kvm("local APIC (read)"))?;
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 7 << 8;
    const DELIVERY_NMI: u32 = 4 << 8;
    set_lapic_reg(&mut lapic.regs, LVT_LINT0, DELIVERY_EXTINT);
    set_lapic_reg(&mut lapic.regs, LVT_LINT1, DELIVERY_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm("local APIC"))
}

fn set_lapic_reg(regs: &mut [libc::c_char; 1024], offset: usize, delivery_mode: u32) {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&regs[offset..offset + 4]) {
        *b = *r as u8;
    }
    // Keep the vector and mask bits, replace the delivery mode (bits 8-10).
    let value = (u32::from_le_bytes(bytes) & !0x700) | delivery_mode;
    for (r, b) in regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *r = b as libc::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_entry_state() {
        let s = pvh_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & 1, 1, "protected mode");
        assert_eq!(s.cr0 & (1 << 31), 0, "paging off");
        assert_eq!((s.cs.db, s.cs.l, s.cs.limit), (1, 0, 0xffff_ffff));
        assert_eq!(s.gdt.base, GDT_ADDR);
        // The descriptors in memory agree with the hidden state we load.
        assert_eq!((GDT[1] >> 40) & 0xff, 0x9b);
        assert_eq!((GDT[2] >> 40) & 0xff, 0x93);
    }

    #[test]
    fn lint_delivery_modes_keep_other_bits() {
        let mut regs = [0 as libc::c_char; 1024];
        regs[0x350] = 0x30;
        regs[0x352] = 0x01; // mask bit 16
        set_lapic_reg(&mut regs, 0x350, 7 << 8);
        assert_eq!(regs[0x350] as u8, 0x30);
        assert_eq!(regs[0x351] as u8, 0x07);
        assert_eq!(regs[0x352] as u8, 0x01);
    }
}
