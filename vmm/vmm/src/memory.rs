//! Guest physical memory: RAM below the 32-bit MMIO gap, and above 4 GiB for the rest.

use vm_memory::GuestAddress;

use crate::arch::layout::{MMIO_GAP_END, MMIO_GAP_START};
use devices::GuestMemoryMmap;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Less memory than a kernel can boot in, or more than the host can address.
    #[error("guest memory of {mib} MiB is out of range ({min}..={max} MiB)")]
    Size { mib: u64, min: u64, max: u64 },
    /// The anonymous mapping failed.
    #[error("cannot map {mib} MiB of guest memory: {source}")]
    Map {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Smallest VM: the test guests need a few pages, but the boot layout wants 2 MiB.
pub const MIN_MIB: u64 = 2;
/// Largest VM this VMM creates.
pub const MAX_MIB: u64 = 1 << 20;

/// The RAM ranges of a VM with `mib` MiB.
pub fn ram_ranges(mib: u64) -> Vec<(GuestAddress, usize)> {
    let bytes = mib << 20;
    if bytes <= MMIO_GAP_START {
        vec![(GuestAddress(0), bytes as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(MMIO_GAP_END),
                (bytes - MMIO_GAP_START) as usize,
            ),
        ]
    }
}

/// Maps the guest's RAM (anonymous, private, not reserved: untouched pages cost nothing).
pub fn create(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if !(MIN_MIB..=MAX_MIB).contains(&mib) {
        return Err(MemoryError::Size {
            mib,
            min: MIN_MIB,
            max: MAX_MIB,
        });
    }
    GuestMemoryMmap::from_ranges(&ram_ranges(mib))
        .map_err(|source| MemoryError::Map { mib, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemory;

    #[test]
    fn memory_above_the_gap_moves_past_4g() {
        assert_eq!(ram_ranges(256), vec![(GuestAddress(0), 256 << 20)]);
        let r = ram_ranges(4096);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(r[0].1 + r[1].1, 4096 << 20);
        let mem = create(16).unwrap();
        assert_eq!(mem.last_addr(), GuestAddress((16 << 20) - 1));
        assert!(create(1).is_err());
    }
}
