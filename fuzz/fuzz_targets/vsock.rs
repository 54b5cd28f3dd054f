//! The vsock device as a hostile guest and the host's processes drive it together: guest
//! packets (well-formed or not) on the TX queue, RX buffers, host processes that connect
//! (`CONNECT <port>`), write, read, shut down and hang up, and listeners on the host ports
//! the guest connects to, so that connection set-up, data, credit and shutdown are all
//! reached. The device runs under a poll(2) stand-in for its event loop. Nothing may panic.
//!
//! Input: one byte of set-up, then records of [kind, a, b, c, length] and `length` bytes.
#![no_main]

#[path = "ring.rs"]
mod ring;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use devices::virtio::vsock::{FuzzLoop, Vsock};
use devices::virtio::{IrqTrigger, VirtioDevice};
use devices::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use ring::{Ring, QUEUE_LEN};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MEM: usize = 4 << 20;
const GUEST_CID: u64 = 3;
/// Ports with a host listener, then one without.
const PORTS: [u32; 4] = [1024, 1025, 52, 9];
const PACKETS: u64 = 0x10000;
const PACKET_ROOM: u64 = 0x1000;
const RX_BUFFERS: u64 = 0x200000;
const RX_ROOM: u64 = 0x1000;
const HEADER_LEN: usize = 44;

fn header(op: u16, src_port: u32, dst_port: u32, len: u32, extra: &[u8]) -> Vec<u8> {
    let word = |i: usize| {
        extra
            .get(i..i + 4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&GUEST_CID.to_le_bytes());
    h.extend_from_slice(&2u64.to_le_bytes());
    h.extend_from_slice(&src_port.to_le_bytes());
    h.extend_from_slice(&dst_port.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&op.to_le_bytes());
    // flags, buf_alloc, fwd_cnt
    h.extend_from_slice(&word(0).to_le_bytes());
    h.extend_from_slice(&word(4).to_le_bytes());
    h.extend_from_slice(&word(8).to_le_bytes());
    h
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, mut rest)) = data.split_first() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("berth-fuzz-vsock-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let sock = dir.join("v.sock");
    let port_path = |port: u32| PathBuf::from(format!("{}_{port}", sock.display()));
    let _ = std::fs::remove_file(&sock);
    let listeners: Vec<UnixListener> = PORTS[..3]
        .iter()
        .map(|&p| {
            let _ = std::fs::remove_file(port_path(p));
            let l = UnixListener::bind(port_path(p)).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let mut dev = Vsock::new(GUEST_CID, &sock).unwrap();
    let mut rings: Vec<Ring> = (0..3).map(|i| Ring::new(0x4000 * i as u64)).collect();
    for (q, r) in dev.queues_mut().iter_mut().zip(&rings) {
        q.set_size(QUEUE_LEN);
        q.set_desc_table_address(Some(r.desc_table() as u32), Some(0));
        q.set_avail_ring_address(Some(r.avail() as u32), Some(0));
        q.set_used_ring_address(Some(r.used() as u32), Some(0));
        q.set_event_idx(setup & 0x80 != 0);
        q.set_ready(true);
    }
    let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    if dev.activate(mem.clone(), irq).is_err() {
        return;
    }
    let mut lp = FuzzLoop::default();
    dev.init_for_fuzzing(&mut lp);
    let (rx, tx) = rings.split_at_mut(1);
    let (rx, tx) = (&mut rx[0], &mut tx[0]);
    let mut rx_buffers = 0u64;
    let mut add_rx = |rx: &mut Ring, n: u64, size: u32| {
        for _ in 0..n {
            if rx_buffers >= 255 {
                return;
            }
            let at = RX_BUFFERS + rx_buffers * RX_ROOM;
            if !rx.add(&mem, &[(at, size, true)]) {
                return;
            }
            rx_buffers += 1;
        }
    };
    add_rx(rx, u64::from(setup & 0x1f), RX_ROOM as u32);
    let mut packets = 0u64;
    let mut host: Vec<UnixStream> = Vec::new();
    let mut accepted = 0;
    let mut host_read = 0;
    while rest.len() >= 5 {
        let (kind, a, b, c) = (rest[0], rest[1], rest[2], rest[3]);
        let len = usize::from(rest[4]) * 8;
        let bytes = &rest[5..(5 + len).min(rest.len())];
        rest = &rest[5 + bytes.len()..];
        match kind % 8 {
            // A guest packet: op and ports from the record, flags and credit from the first
            // 16 bytes (the last 4 unused: records come in 8-byte units), then the payload;
            // in one buffer or two.
            0 | 1 => {
                let (extra, payload) = bytes.split_at(bytes.len().min(16));
                let payload = &payload[..payload.len().min(PACKET_ROOM as usize - HEADER_LEN)];
                let op = u16::from(a % 8);
                let src_port = 2000 + u32::from(b % 4);
                let dst_port = PORTS[usize::from(c % 4)];
                let mut pkt = header(op, src_port, dst_port, payload.len() as u32, extra);
                pkt.extend_from_slice(payload);
                if packets >= 255 {
                    continue;
                }
                let at = PACKETS + packets * PACKET_ROOM;
                mem.write_slice(&pkt, GuestAddress(at)).unwrap();
                packets += 1;
                let bufs = if kind % 8 == 1 && !payload.is_empty() {
                    vec![
                        (at, HEADER_LEN as u32, false),
                        (at + HEADER_LEN as u64, payload.len() as u32, false),
                    ]
                } else {
                    vec![(at, pkt.len() as u32, false)]
                };
                tx.add(&mem, &bufs);
            }
            // A raw guest packet: header and payload as given, malformed or not.
            2 => {
                if packets >= 255 {
                    continue;
                }
                let at = PACKETS + packets * PACKET_ROOM;
                let raw = &bytes[..bytes.len().min(PACKET_ROOM as usize)];
                mem.write_slice(raw, GuestAddress(at)).unwrap();
                packets += 1;
                let writable = a & 1 == 1;
                tx.add(&mem, &[(at, raw.len() as u32, writable)]);
            }
            // A host process connects to a guest port.
            3 => {
                if let Ok(mut s) = UnixStream::connect(&sock) {
                    let _ = s.set_nonblocking(true);
                    let port = PORTS[usize::from(a % 4)];
                    let line = if b & 1 == 0 {
                        format!("CONNECT {port}\n").into_bytes()
                    } else {
                        bytes.to_vec()
                    };
                    let _ = s.write_all(&line);
                    host.push(s);
                }
            }
            // A host process writes, reads, shuts down or hangs up.
            4 => {
                let i = usize::from(a) % host.len().max(1);
                if let Some(s) = host.get_mut(i) {
                    match b % 4 {
                        0 => {
                            let _ = s.write(bytes);
                        }
                        1 => {
                            let mut buf = [0u8; 4096];
                            host_read += s.read(&mut buf).unwrap_or(0);
                        }
                        2 => {
                            let _ = s.shutdown(std::net::Shutdown::Write);
                        }
                        _ => {
                            host.swap_remove(i);
                        }
                    }
                }
            }
            5 => add_rx(rx, u64::from(a % 16) + 1, 64 + u32::from(c) * 16),
            _ => {}
        }
        // The host listeners accept what the device connected.
        for l in &listeners {
            while let Ok((s, _)) = l.accept() {
                let _ = s.set_nonblocking(true);
                host.push(s);
                accepted += 1;
            }
        }
        if kind % 8 >= 6 || c & 0x80 != 0 {
            dev.run_for_fuzzing(&mut lp);
        }
    }
    dev.run_for_fuzzing(&mut lp);
    // What the seeds must reach (`BERTH_FUZZ_TRACE=1 <target binary> fuzz/seeds/vsock/*`).
    if std::env::var_os("BERTH_FUZZ_TRACE").is_some() {
        eprintln!(
            "vsock: {accepted} guest connections accepted by host listeners, {} host streams, {host_read} bytes read by the host, {} RX buffers used",
            host.len(),
            mem.read_obj::<u16>(GuestAddress(rx.used() + 2)).unwrap_or(0)
        );
    }
    drop(host);
    dev.run_for_fuzzing(&mut lp);
    drop(dev);
    drop(listeners);
    let _ = std::fs::remove_dir_all(&dir);
});
