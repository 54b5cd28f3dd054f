//! The net device's queues as a hostile guest fills them: any descriptor table, available
//! ring and buffer contents, served as frames to send (over a socket pair standing in for
//! the tap) or as receive buffers for a frame from the host (also from the input).
//! Besides a crash, a finding is a frame reaching the backend from another source address
//! than the device's.
#![no_main]

#[path = "raw_queue.rs"]
mod raw_queue;

use std::io::Read;

use devices::virtio::net::backend::SocketBackend;
use devices::virtio::net::feature;
use devices::virtio::net::queue::{
    deliver, prepare_rx_frame, transmit, NetCounters, HDR_LEN, MAX_BUFFER,
};
use libfuzzer_sys::fuzz_target;

const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
/// Two regions of RAM with a hole between, as a VM has around the MMIO gap.
const RAM: [(u64, usize); 2] = [(0, 0x2_0000), (0x10_0000, 0x1_0000)];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    // The first 64 KiB of input are the guest's first 64 KiB (raw_queue's layout); the
    // rest is a frame from the host.
    let (image, host_frame) = body.split_at(body.len().min(0x1_0000));
    let mem = raw_queue::guest(&RAM, image);
    let mut queue = raw_queue::queue(mode & 2 != 0);
    let acked = if mode & 4 != 0 {
        feature::CSUM
            | feature::GUEST_CSUM
            | feature::HOST_TSO4
            | feature::HOST_TSO6
            | feature::GUEST_TSO4
            | feature::GUEST_TSO6
            | feature::MRG_RXBUF
    } else {
        0
    };
    let counters = NetCounters::default();
    if mode & 1 == 0 {
        let (mut backend, peer) = SocketBackend::pair().unwrap();
        let mut peer = std::fs::File::from(peer);
        let mut buf = vec![0; MAX_BUFFER];
        for _ in 0..2 {
            let backend = (mode & 8 == 0)
                .then_some(&mut backend as &mut dyn devices::virtio::net::backend::Backend);
            let _ = transmit(
                &mut queue, &mem, &MAC, acked, &mut buf, backend, &counters, 8,
            );
        }
        drop(backend);
        // Everything that reached the backend came from the device's address.
        let mut frame = vec![0; MAX_BUFFER];
        while let Ok(n) = peer.read(&mut frame) {
            if n == 0 {
                break;
            }
            assert!(n >= HDR_LEN + 12, "a {n}-byte frame reached the backend");
            assert_eq!(
                frame[HDR_LEN + 6..HDR_LEN + 12],
                MAC,
                "a frame from another address reached the backend"
            );
        }
    } else {
        let mut frame = host_frame[..host_frame.len().min(MAX_BUFFER)].to_vec();
        if prepare_rx_frame(&mut frame, acked).is_err() {
            return;
        }
        let mut used = Vec::with_capacity(256);
        for _ in 0..2 {
            let _ = deliver(
                &mut queue,
                &mem,
                &frame,
                acked & feature::MRG_RXBUF != 0,
                &mut used,
                &counters,
            );
        }
    }
});
