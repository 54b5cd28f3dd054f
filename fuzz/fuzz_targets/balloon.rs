//! The balloon's queues as a hostile guest fills them: any descriptor table, available ring
//! and request contents, served as free page reports and as inflate requests.
//! Besides a crash, a finding is a range given back to the host that is not guest RAM.
#![no_main]

use devices::virtio::balloon::{release, serve_inflate, serve_reports, BalloonCounters};
use devices::virtio::QueueSnapshot;
use devices::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Two regions of RAM with a hole between, as a VM has around the MMIO gap.
const RAM: [(u64, usize); 2] = [(0, 0x1_0000), (0x10_0000, 0x1_0000)];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let ranges: Vec<_> = RAM.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).unwrap();
    // The input is the guest's first 64 KiB: descriptor table at 0, available ring at
    // 0x100, used ring at 0x200, and whatever the descriptors point at.
    let body = &body[..body.len().min(RAM[0].1)];
    mem.write_slice(body, GuestAddress(0)).unwrap();
    let mut queue = QueueSnapshot {
        max_size: 16,
        size: 16,
        ready: true,
        desc_table: 0,
        avail_ring: 0x100,
        used_ring: 0x200,
        next_avail: 0,
        next_used: 0,
        event_idx: mode & 2 != 0,
    }
    .to_queue()
    .unwrap();
    let counters = BalloonCounters::default();
    let checked = |addr: u64, len: u64| {
        let released = release(&mem, addr, len);
        if let Ok(bytes) = released {
            let start = addr.next_multiple_of(4096);
            assert!(
                bytes == 0 || mem.check_range(GuestAddress(start), bytes as usize),
                "{bytes:#x} bytes released at {start:#x}, not guest RAM"
            );
        }
        released
    };
    // Twice: the second pass sees what the first left (rings zeroed by a release, say).
    for _ in 0..2 {
        let _ = if mode & 1 == 0 {
            serve_reports(&mut queue, &mem, &counters, checked)
        } else {
            serve_inflate(&mut queue, &mem, &counters, checked)
        };
    }
});
