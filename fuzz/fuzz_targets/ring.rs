//! A virtqueue's descriptor table and available ring, filled the way a guest's driver fills
//! them, for the targets that drive a device through its queues.

use devices::GuestMemoryMmap;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use vm_memory::{Address, Bytes, GuestAddress};

const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

/// Queue size of every ring here.
pub const QUEUE_LEN: u16 = 256;

/// One queue's rings, placed at `base`: the descriptor table, then the available ring at
/// +0x1000 and the used ring at +0x2000.
pub struct Ring {
    base: u64,
    next_desc: u16,
    /// Chains made available so far (the available index).
    pub chains: u16,
}

impl Ring {
    pub fn new(base: u64) -> Self {
        Ring {
            base,
            next_desc: 0,
            chains: 0,
        }
    }

    pub fn desc_table(&self) -> u64 {
        self.base
    }

    pub fn avail(&self) -> u64 {
        self.base + 0x1000
    }

    pub fn used(&self) -> u64 {
        self.base + 0x2000
    }

    /// Puts a chain of (address, length, device-writable) buffers on the ring; false when
    /// the descriptor table is full (it never wraps within one input).
    pub fn add(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> bool {
        if usize::from(self.next_desc) + bufs.len() > usize::from(QUEUE_LEN) {
            return false;
        }
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let flags = if write { WRITE } else { 0 } | if last { 0 } else { NEXT };
            let next = if last { 0 } else { head + i as u16 + 1 };
            let desc = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            let at = GuestAddress(self.desc_table() + 16 * u64::from(head + i as u16));
            mem.write_obj(desc, at).unwrap();
        }
        self.next_desc += bufs.len() as u16;
        let avail = GuestAddress(self.avail());
        mem.write_obj(head, avail.unchecked_add(4 + 2 * u64::from(self.chains)))
            .unwrap();
        self.chains += 1;
        mem.write_obj(self.chains, avail.unchecked_add(2)).unwrap();
        true
    }
}
