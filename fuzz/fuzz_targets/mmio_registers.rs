//! Any sequence of register reads and writes from the guest's virtio-mmio driver: the
//! transport must never panic, whatever the order, size or value.
#![no_main]

use std::sync::Arc;

use devices::bus::BusDevice;
use devices::virtio::mmio::MmioTransport;
use devices::virtio::rng::Rng;
use devices::virtio::IrqTrigger;
use devices::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let mut t = MmioTransport::new(Rng::new().unwrap(), mem, irq);
    // Each operation: 1 byte kind/size, 2 bytes offset, 4 bytes value.
    for op in data.chunks_exact(7) {
        let size = [1usize, 2, 4, 8][(op[0] & 3) as usize];
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) & 0x1ff);
        let value = [op[3], op[4], op[5], op[6], 0, 0, 0, 0];
        if op[0] & 0x80 == 0 {
            t.write(offset, &value[..size]);
        } else {
            let mut out = [0u8; 8];
            t.read(offset, &mut out[..size]);
        }
    }
});
