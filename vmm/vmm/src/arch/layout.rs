//! Where things live in guest physical memory.
//!
//! ```text
//! 0x0000_0500  GDT used for the PVH entry
//! 0x0000_6000  hvm_start_info, then the module list (the initramfs)
//! 0x0000_7000  the memory map handed to the kernel
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (reserved up to 1 MiB)
//! 0x0010_0000  kernel image (at the ELF's physical addresses), then free RAM; the
//!              initramfs sits at the top of low RAM
//! 0xc000_0000  MMIO gap: virtio-mmio windows from 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM beyond 3 GiB
//! ```

/// The boot GDT.
pub const GDT_ADDR: u64 = 0x500;
/// hvm_start_info.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// The module list (one entry: the initramfs).
pub const PVH_MODLIST_ADDR: u64 = 0x6800;
/// The memory map.
pub const MEMMAP_ADDR: u64 = 0x7000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line (x86's COMMAND_LINE_SIZE).
pub const CMDLINE_MAX: usize = 2048;
/// The MP floating pointer and config table, in the classic EBDA spot.
pub const MPTABLE_ADDR: u64 = 0x9_fc00;
/// Start of high memory: kernels load here or above.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// The IOAPIC's MMIO address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APICs' MMIO address.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM's TSS (needed on Intel for real-mode emulation), out of the way at the top of 4 GiB.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// IOAPIC pins; the first 16 are ISA IRQs.
pub const IOAPIC_PINS: u32 = 24;
/// First IRQ for virtio devices (COM1 is 4).
pub const FIRST_VIRTIO_IRQ: u32 = 5;
