//! Guest memory written straight from the fuzzer's input, and one queue over it, for the
//! targets whose input is the guest's RAM as a hostile driver left it: the descriptor table
//! at 0, the available ring at 0x100, the used ring at 0x200, and whatever the descriptors
//! point at.

use devices::virtio::QueueSnapshot;
use devices::GuestMemoryMmap;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM of `ram` (address, length) regions, with `image` written at address 0 (it
/// must fit the first region).
pub fn guest(ram: &[(u64, usize)], image: &[u8]) -> GuestMemoryMmap {
    let ranges: Vec<_> = ram.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).unwrap();
    mem.write_slice(image, GuestAddress(0)).unwrap();
    mem
}

/// A ready queue of 16 entries over the rings at 0, 0x100 and 0x200.
pub fn queue(event_idx: bool) -> Queue {
    QueueSnapshot {
        max_size: 16,
        size: 16,
        ready: true,
        desc_table: 0,
        avail_ring: 0x100,
        used_ring: 0x200,
        next_avail: 0,
        next_used: 0,
        event_idx,
    }
    .to_queue()
    .unwrap()
}
