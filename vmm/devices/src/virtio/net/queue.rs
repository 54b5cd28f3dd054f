//! The net device's queue processing, as functions over a queue, guest memory and a
//! backend, unit-tested with virtio-queue's mock queue and fuzzed without an event loop.
//!
//! Every frame crosses one preallocated buffer of [`MAX_BUFFER`] bytes (a 12-byte
//! virtio-net header and at most [`MAX_FRAME`] bytes of Ethernet frame): nothing is
//! allocated per frame. Guest buffers are read and written descriptor by descriptor, each
//! checked against guest memory first.

use std::sync::atomic::{AtomicU64, Ordering};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use super::backend::Backend;
use super::feature;
use crate::GuestMemoryMmap;

/// The virtio-net header with VERSION_1 (`num_buffers` included).
pub const HDR_LEN: usize = 12;
/// An Ethernet header: the shortest frame there is.
pub const ETH_HLEN: usize = 14;
/// The longest frame: 64 KiB of a GSO frame's payload and its Ethernet header.
pub const MAX_FRAME: usize = 65550;
/// A header and the longest frame.
pub const MAX_BUFFER: usize = HDR_LEN + MAX_FRAME;

const NEEDS_CSUM: u8 = virtio_bindings::virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
const DATA_VALID: u8 = virtio_bindings::virtio_net::VIRTIO_NET_HDR_F_DATA_VALID as u8;
const GSO_NONE: u8 = virtio_bindings::virtio_net::VIRTIO_NET_HDR_GSO_NONE as u8;
const GSO_TCPV4: u8 = virtio_bindings::virtio_net::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
const GSO_TCPV6: u8 = virtio_bindings::virtio_net::VIRTIO_NET_HDR_GSO_TCPV6 as u8;

/// A queue that cannot be served (the device stops until the driver resets it).
#[derive(Debug, thiserror::Error)]
pub enum NetQueueError {
    /// The available ring is corrupt (index too far ahead).
    #[error("a queue is unusable: {0}")]
    Queue(#[source] virtio_queue::Error),
    /// Writing the used ring failed.
    #[error("cannot complete a request: {0}")]
    Used(#[source] virtio_queue::Error),
}

/// Why one frame or one descriptor chain is refused (counted, logged rate-limited; the
/// device carries on).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("a transmit chain has a device-writable buffer")]
    WritableTx,
    #[error("a receive chain has a device-readable buffer")]
    ReadableRx,
    #[error("a buffer of {len} bytes at {addr:#x} is not guest memory")]
    NotGuestMemory { addr: u64, len: u32 },
    #[error("a transmit chain is longer than {MAX_BUFFER} bytes")]
    TooLong,
    #[error("{len} bytes are shorter than a virtio-net header and an Ethernet header")]
    TooShort { len: usize },
    #[error("a receive chain of {len} bytes cannot hold a virtio-net header")]
    BufferTooSmall { len: u64 },
    #[error("a frame sent from {source_mac} is not from this VM's address")]
    Spoofed { source_mac: String },
    #[error("header flags {0:#x} are not allowed with the features negotiated")]
    Flags(u8),
    #[error("header GSO type {0:#x} is not allowed with the features negotiated")]
    Gso(u8),
    #[error("a frame of {len} bytes does not fit the receive buffer and buffers cannot be merged")]
    NoMerge { len: usize },
    #[error("a frame of {len} bytes does not fit the whole receive queue")]
    NoRoom { len: usize },
}

/// What the device has done, for the control socket's metrics.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames (and their bytes, headers left out) given to the guest.
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames from the host the guest could not be given (malformed, not negotiated, or
    /// too large for its buffers).
    pub rx_dropped: AtomicU64,
    /// Receive chains from the guest that could not be used.
    pub rx_bad_buffers: AtomicU64,
    /// Times a frame had to wait for the guest's receive buffers.
    pub rx_no_buffers: AtomicU64,
    /// Frames (and bytes, headers left out) written to the backend.
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames whose source address is not the VM's.
    pub tx_spoofed: AtomicU64,
    /// Transmit chains or frames that were malformed.
    pub tx_malformed: AtomicU64,
    /// Frames sent while the device has no backend (a template VM).
    pub tx_dropped_no_backend: AtomicU64,
    /// Reads and writes the backend refused.
    pub tap_read_errors: AtomicU64,
    pub tap_write_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl NetCounters {
    /// Every counter by name.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("rx_frames", get(&self.rx_frames)),
            ("rx_bytes", get(&self.rx_bytes)),
            ("rx_dropped", get(&self.rx_dropped)),
            ("rx_bad_buffers", get(&self.rx_bad_buffers)),
            ("rx_no_buffers", get(&self.rx_no_buffers)),
            ("tx_frames", get(&self.tx_frames)),
            ("tx_bytes", get(&self.tx_bytes)),
            ("tx_spoofed", get(&self.tx_spoofed)),
            ("tx_malformed", get(&self.tx_malformed)),
            ("tx_dropped_no_backend", get(&self.tx_dropped_no_backend)),
            ("tap_read_errors", get(&self.tap_read_errors)),
            ("tap_write_errors", get(&self.tap_write_errors)),
        ]
    }
}

/// Formats a MAC address for messages.
pub fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Copies a transmit chain (header and frame) into `buf`. Returns its length.
fn read_tx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> Result<usize, FrameError> {
    let mut len = 0usize;
    // The chain's iterator follows at most a queue's (or an indirect table's) worth of
    // descriptors; the length check bounds the copy.
    for desc in chain {
        if desc.is_write_only() {
            return Err(FrameError::WritableTx);
        }
        let end = len
            .checked_add(desc.len() as usize)
            .filter(|&end| end <= buf.len())
            .ok_or(FrameError::TooLong)?;
        mem.read_slice(&mut buf[len..end], desc.addr())
            .map_err(|_| FrameError::NotGuestMemory {
                addr: desc.addr().raw_value(),
                len: desc.len(),
            })?;
        len = end;
    }
    Ok(len)
}

/// Checks a frame the guest sends (header and frame): long enough for an Ethernet header,
/// a header that asks only for the offloads negotiated, and the VM's own source address.
pub fn check_tx_frame(frame: &[u8], mac: &[u8; 6], acked: u64) -> Result<(), FrameError> {
    if frame.len() < HDR_LEN + ETH_HLEN {
        return Err(FrameError::TooShort { len: frame.len() });
    }
    let (flags, gso) = (frame[0], frame[1]);
    // The driver sets nothing but NEEDS_CSUM, and that only with VIRTIO_NET_F_CSUM
    // (virtio 1.2, 5.1.6.2.1).
    let allowed_flags = if acked & feature::CSUM != 0 {
        NEEDS_CSUM
    } else {
        0
    };
    if flags & !allowed_flags != 0 {
        return Err(FrameError::Flags(flags));
    }
    let gso_ok = match gso {
        GSO_NONE => true,
        GSO_TCPV4 => acked & feature::HOST_TSO4 != 0,
        GSO_TCPV6 => acked & feature::HOST_TSO6 != 0,
        // ECN and UDP fragmentation are not offered.
        _ => false,
    };
    if !gso_ok {
        return Err(FrameError::Gso(gso));
    }
    let source = &frame[HDR_LEN + 6..HDR_LEN + 12];
    if source != mac {
        return Err(FrameError::Spoofed {
            source_mac: mac_string(source),
        });
    }
    Ok(())
}

/// What a pass over the transmit queue did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TxPass {
    /// The guest must be notified.
    pub notify: bool,
    /// The budget ran out with chains perhaps left: the caller comes back.
    pub more: bool,
}

/// Sends the guest's pending frames, at most `budget` of them: each chain is copied into
/// `buf` ([`MAX_BUFFER`] bytes), checked ([`check_tx_frame`]) and written to `backend`
/// whole. Every chain is completed (with length 0: the device writes nothing back),
/// whatever became of its frame; a refused frame is counted and logged.
#[allow(clippy::too_many_arguments)]
pub fn transmit(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mac: &[u8; 6],
    acked: u64,
    buf: &mut [u8],
    mut backend: Option<&mut (dyn Backend + 'static)>,
    counters: &NetCounters,
    budget: usize,
) -> Result<TxPass, NetQueueError> {
    let mut pass = TxPass::default();
    let mut served = 0;
    let mut used_any = false;
    // With EVENT_IDX the driver notifies only where avail_event says: re-arm after
    // draining, and drain again if frames slipped in meanwhile.
    loop {
        queue
            .disable_notification(mem)
            .map_err(NetQueueError::Queue)?;
        while served < budget {
            let Some(chain) = queue.iter(mem).map_err(NetQueueError::Queue)?.next() else {
                break;
            };
            served += 1;
            let head = chain.head_index();
            let checked = read_tx_chain(mem, chain, buf)
                .and_then(|len| check_tx_frame(&buf[..len], mac, acked).map(|()| len));
            match checked {
                Ok(len) => send(&buf[..len], backend.as_deref_mut(), counters),
                Err(e @ FrameError::Spoofed { .. }) => {
                    bump(&counters.tx_spoofed);
                    crate::warn_limited!("virtio-net: frame dropped: {e}");
                }
                Err(e) => {
                    bump(&counters.tx_malformed);
                    crate::warn_limited!("virtio-net: frame dropped: {e}");
                }
            }
            queue.add_used(mem, head, 0).map_err(NetQueueError::Used)?;
            used_any = true;
        }
        if served >= budget {
            // Notifications stay off: the caller comes back for the rest.
            pass.more = true;
            break;
        }
        if !queue
            .enable_notification(mem)
            .map_err(NetQueueError::Queue)?
        {
            break;
        }
    }
    pass.notify = used_any && queue.needs_notification(mem).map_err(NetQueueError::Used)?;
    Ok(pass)
}

fn send(frame: &[u8], backend: Option<&mut (dyn Backend + 'static)>, counters: &NetCounters) {
    let Some(backend) = backend else {
        bump(&counters.tx_dropped_no_backend);
        return;
    };
    match backend.write_frame(frame) {
        Ok(()) => {
            bump(&counters.tx_frames);
            counters
                .tx_bytes
                .fetch_add((frame.len() - HDR_LEN) as u64, Ordering::Relaxed);
        }
        Err(e) => {
            // A full or downed tap loses the frame, as a wire would.
            bump(&counters.tap_write_errors);
            crate::warn_limited!("virtio-net: the tap refused a frame: {e}");
        }
    }
}

/// Readies a frame from the host for the guest: long enough, an offload the driver took,
/// and no flags it did not negotiate.
pub fn prepare_rx_frame(frame: &mut [u8], acked: u64) -> Result<(), FrameError> {
    if frame.len() < HDR_LEN + ETH_HLEN {
        return Err(FrameError::TooShort { len: frame.len() });
    }
    let gso_ok = match frame[1] {
        GSO_NONE => true,
        GSO_TCPV4 => acked & feature::GUEST_TSO4 != 0,
        GSO_TCPV6 => acked & feature::GUEST_TSO6 != 0,
        _ => false,
    };
    if !gso_ok {
        return Err(FrameError::Gso(frame[1]));
    }
    if acked & feature::GUEST_CSUM != 0 {
        frame[0] &= NEEDS_CSUM | DATA_VALID;
    } else if frame[0] & NEEDS_CSUM != 0 {
        // A partial checksum the driver cannot complete.
        return Err(FrameError::Flags(frame[0]));
    } else {
        frame[0] = 0;
    }
    Ok(())
}

/// What became of one frame offered to the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// In the guest's buffers: this many chains.
    Delivered { buffers: u16 },
    /// The guest has not given enough buffers yet; nothing was consumed, and the driver is
    /// asked to notify when it adds some.
    NoBuffers,
    /// The frame cannot be delivered at all (the buffers it took, if any, went back empty).
    Dropped(FrameError),
}

/// Writes as much of `data` as fits into `chain`'s buffers, after checking each one
/// (device-writable, inside guest memory). `at` is where `data` starts in the frame: the
/// guest addresses of the frame's `num_buffers` bytes (10 and 11) are noted in
/// `num_buffers_at` as they are written. Returns the bytes written.
fn fill_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    data: &[u8],
    at: usize,
    num_buffers_at: &mut [Option<GuestAddress>; 2],
) -> Result<usize, FrameError> {
    let mut written = 0usize;
    let mut capacity = 0u64;
    for desc in chain {
        let bad = || FrameError::NotGuestMemory {
            addr: desc.addr().raw_value(),
            len: desc.len(),
        };
        if !desc.is_write_only() {
            return Err(FrameError::ReadableRx);
        }
        if !mem.check_range(desc.addr(), desc.len() as usize) {
            return Err(bad());
        }
        capacity += u64::from(desc.len());
        let n = (desc.len() as usize).min(data.len() - written);
        if n == 0 {
            continue;
        }
        mem.write_slice(&data[written..written + n], desc.addr())
            .map_err(|_| bad())?;
        for (i, slot) in num_buffers_at.iter_mut().enumerate() {
            let k = 10 + i;
            if (at + written..at + written + n).contains(&k) {
                *slot = desc.addr().checked_add((k - at - written) as u64);
            }
        }
        written += n;
    }
    // Every buffer holds at least a header (virtio 1.2, 5.1.6.3.1).
    if capacity < HDR_LEN as u64 {
        return Err(FrameError::BufferTooSmall { len: capacity });
    }
    Ok(written)
}

/// Delivers `frame` (header and Ethernet frame) to the guest's receive queue: spread over
/// as many chains as it needs when buffers may be merged (`num_buffers` in the header set
/// to their count), in one chain otherwise. The chains are completed only once the frame
/// is whole in them. `used` is scratch space for the chains taken (kept by the caller so
/// that nothing is allocated per frame).
///
/// A guest buffer that cannot be used is counted and completed empty; if it comes in the
/// middle of a frame, that frame is lost (its chains completed empty too).
pub fn deliver(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &[u8],
    mergeable: bool,
    used: &mut Vec<(u16, u32)>,
    counters: &NetCounters,
) -> Result<Delivery, NetQueueError> {
    used.clear();
    let mut start = queue.next_avail();
    let mut written = 0usize;
    let mut num_buffers_at = [None; 2];
    while written < frame.len() {
        if !mergeable && !used.is_empty() {
            // The frame did not fit one chain: leave that chain for the next frame.
            queue.set_next_avail(start);
            return Ok(Delivery::Dropped(FrameError::NoMerge { len: frame.len() }));
        }
        let Some(chain) = queue.iter(mem).map_err(NetQueueError::Queue)?.next() else {
            if used.len() >= usize::from(queue.size()) {
                // The whole ring is not enough: waiting would wait forever.
                for &(head, _) in used.iter() {
                    queue.add_used(mem, head, 0).map_err(NetQueueError::Used)?;
                }
                return Ok(Delivery::Dropped(FrameError::NoRoom { len: frame.len() }));
            }
            // Ask for a notification when the driver adds buffers (with EVENT_IDX:
            // avail_event at the end of what is available now), unless it just did.
            if queue
                .enable_notification(mem)
                .map_err(NetQueueError::Queue)?
            {
                continue;
            }
            queue.set_next_avail(start);
            return Ok(Delivery::NoBuffers);
        };
        let head = chain.head_index();
        match fill_chain(mem, chain, &frame[written..], written, &mut num_buffers_at) {
            Ok(n) => {
                used.push((head, n as u32));
                written += n;
            }
            Err(e) => {
                bump(&counters.rx_bad_buffers);
                crate::warn_limited!("virtio-net: receive buffer refused: {e}");
                let lost = !used.is_empty();
                for &(head, _) in used.iter() {
                    queue.add_used(mem, head, 0).map_err(NetQueueError::Used)?;
                }
                queue.add_used(mem, head, 0).map_err(NetQueueError::Used)?;
                if lost {
                    return Ok(Delivery::Dropped(e));
                }
                // Nothing of the frame is in the guest yet: go on with the next chain.
                start = queue.next_avail();
                num_buffers_at = [None; 2];
            }
        }
    }
    let buffers = used.len() as u16;
    for (addr, byte) in num_buffers_at.iter().zip(buffers.to_le_bytes()) {
        if let Some(addr) = addr {
            // Checked as part of its descriptor by fill_chain.
            let _ = mem.write_obj(byte, *addr);
        }
    }
    for &(head, len) in used.iter() {
        queue
            .add_used(mem, head, len)
            .map_err(NetQueueError::Used)?;
    }
    Ok(Delivery::Delivered { buffers })
}
