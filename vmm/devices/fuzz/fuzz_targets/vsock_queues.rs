//! The guest writes anything it likes into its memory (descriptor tables, rings, packet
//! headers, payloads) and notifies: the vsock device must never panic.
#![no_main]

use std::sync::Arc;

use devices::virtio::vsock::Vsock;
use devices::virtio::{IrqTrigger, VirtioDevice};
use devices::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MEM: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    // The fuzzer's bytes are the guest's memory, from the start: the rings live there.
    let _ = mem.write_slice(&data[..data.len().min(MEM)], GuestAddress(0));
    let dir = std::env::temp_dir().join(format!("berth-fuzz-vsock-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let sock = dir.join("v.sock");
    let _ = std::fs::remove_file(&sock);
    let Ok(mut dev) = Vsock::new(3, &sock) else {
        return;
    };
    // Queue layout: sizes and event_idx from the first bytes, rings at fixed places.
    for (i, q) in dev.queues_mut().iter_mut().enumerate() {
        let base = 0x1000 * (i as u64 + 1);
        q.set_size(1 << (data[i] % 9));
        q.set_desc_table_address(Some(base as u32), Some(0));
        q.set_avail_ring_address(Some((base + 0x800) as u32), Some(0));
        q.set_used_ring_address(Some((base + 0xc00) as u32), Some(0));
        q.set_event_idx(data[3] & 1 == 1);
        q.set_ready(true);
    }
    let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    if dev.activate(mem.clone(), irq).is_err() {
        return;
    }
    for _ in 0..(data[4] % 4 + 1) {
        dev.run_queues_for_fuzzing();
    }
    drop(dev);
    let _ = std::fs::remove_file(&sock);
});
