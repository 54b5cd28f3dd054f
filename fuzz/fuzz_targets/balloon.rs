//! The balloon's queues as a hostile guest fills them: any descriptor table, available ring
//! and request contents, served as free page reports and as inflate requests.
//! Besides a crash, a finding is a range given back to the host that is not guest RAM.
#![no_main]

#[path = "raw_queue.rs"]
mod raw_queue;

use devices::virtio::balloon::{release, serve_inflate, serve_reports, BalloonCounters};
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemory};

/// Two regions of RAM with a hole between, as a VM has around the MMIO gap.
const RAM: [(u64, usize); 2] = [(0, 0x1_0000), (0x10_0000, 0x1_0000)];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    // The input is the guest's first 64 KiB (raw_queue's layout).
    let mem = raw_queue::guest(&RAM, &body[..body.len().min(RAM[0].1)]);
    let mut queue = raw_queue::queue(mode & 2 != 0);
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
