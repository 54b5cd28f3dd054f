//! virtio-vsock with its host side in userspace (this host has no vhost-vsock, and device
//! state that lives in the VMM is what snapshots need).
//!
//! The device moves packets between the guest's queues and the [`muxer::Muxer`], which maps
//! connections onto Unix sockets (hybrid vsock). Queue processing validates every header
//! from the guest ([`packet::validate`]): a bad packet is dropped and logged, rate-limited;
//! the device carries on.

pub mod muxer;
pub mod packet;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::{
    features, new_queue_events, new_queues, ActivateError, IrqTrigger, VirtioDevice, INT_VRING,
};
use crate::GuestMemoryMmap;
use muxer::{Muxer, MuxerError, Watcher};
use packet::{Header, RawHeader, HEADER_LEN, MAX_PAYLOAD};

/// virtio device ID of a socket device.
pub const TYPE_VSOCK: u32 = 19;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const EVQ: usize = 2;
const TIMER_TOKEN: u32 = 4;

/// Errors of the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The host side cannot be set up.
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    /// Eventfds or timers cannot be created.
    #[error("cannot create the device's event sources: {0}")]
    Events(#[source] std::io::Error),
    /// The guest CID is reserved.
    #[error("guest CID {0} is reserved (CIDs 0, 1, 2 and u32::MAX are not guest CIDs)")]
    ReservedCid(u64),
}

/// The device's own state in a snapshot (its queues and features are the transport's).
/// Connections are not part of it: they belong to host sockets of the VM that was
/// snapshotted; a restored device tells the guest its transport was reset, so the guest's
/// sockets of that time fail and no clone shares a connection with its template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockState {
    pub guest_cid: u64,
}

/// The event ID of a transport reset (virtio 1.2, 5.10.6.5).
const EVENT_TRANSPORT_RESET: u32 = 0;

/// The virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    acked_features: u64,
    active: Option<(GuestMemoryMmap, Arc<IrqTrigger>)>,
    muxer: Muxer,
    timer: TimerFd,
    timer_armed: bool,
    payload: Vec<u8>,
    /// A queue that failed (corrupt ring) is left alone until the driver resets the device.
    broken: bool,
    /// The driver reset the device; the muxer drops its connections at the next event.
    pending_reset: bool,
    /// Restored from a snapshot: the guest must hear of a transport reset, as soon as it
    /// has an event buffer for it.
    transport_reset_due: bool,
}

impl Vsock {
    /// A vsock device for guest `guest_cid` whose host side listens on `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if guest_cid <= 2 || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::ReservedCid(guest_cid));
        }
        Ok(Vsock {
            guest_cid,
            queues: new_queues(&[QUEUE_SIZE; 3]),
            queue_events: new_queue_events(3).map_err(VsockError::Events)?,
            acked_features: 0,
            active: None,
            muxer: Muxer::new(guest_cid, uds_path)?,
            timer: crate::nonblocking_timer().map_err(VsockError::Events)?,
            timer_armed: false,
            payload: Vec::with_capacity(MAX_PAYLOAD),
            broken: false,
            pending_reset: false,
            transport_reset_due: false,
        })
    }

    /// Puts a transport reset event in the guest's event queue (see `transport_reset_due`);
    /// without a buffer there yet, it goes when the guest adds one.
    fn send_transport_reset(&mut self) {
        let Some((mem, irq)) = &self.active else {
            return;
        };
        let (mem, irq) = (mem.clone(), irq.clone());
        let sent = (|| -> Result<bool, virtio_queue::Error> {
            let Some(chain) = self.queues[EVQ].iter(&mem)?.next() else {
                return Ok(false);
            };
            let head = chain.head_index();
            let written = match chain.writer(&mem) {
                Ok(mut w) if w.available_bytes() >= 4 => {
                    w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()).is_ok()
                }
                _ => false,
            };
            self.queues[EVQ].add_used(&mem, head, if written { 4 } else { 0 })?;
            Ok(written)
        })();
        match sent {
            Ok(true) => {
                log::debug!("vsock: told the guest its transport was reset");
                self.transport_reset_due = false;
                irq.trigger(INT_VRING);
            }
            Ok(false) => {}
            Err(e) => {
                crate::warn_limited!(
                    "vsock: event queue unusable ({e}); device stopped until reset"
                );
                self.broken = true;
            }
        }
    }

    /// Moves guest packets from the TX queue to the muxer. Returns whether the guest must
    /// be notified.
    fn process_tx(&mut self, w: &mut dyn Watcher) -> Result<bool, virtio_queue::Error> {
        let Some((mem, _)) = &self.active else {
            return Ok(false);
        };
        let mem = mem.clone();
        let mut used_any = false;
        // With EVENT_IDX the driver notifies only where avail_event says: re-arm after
        // draining, and drain again if packets slipped in meanwhile.
        loop {
            self.queues[TX].disable_notification(&mem)?;
            while let Some(chain) = self.queues[TX].iter(&mem)?.next() {
                let head = chain.head_index();
                match read_packet(&mem, chain, self.guest_cid, &mut self.payload) {
                    Ok(header) => self.muxer.handle_guest_packet(&header, &self.payload, w),
                    Err(e) => crate::warn_limited!("vsock: guest packet dropped: {e}"),
                }
                self.queues[TX].add_used(&mem, head, 0)?;
                used_any = true;
            }
            if !self.queues[TX].enable_notification(&mem)? {
                break;
            }
        }
        Ok(used_any && self.queues[TX].needs_notification(&mem)?)
    }

    /// Fills the guest's RX buffers with whatever the muxer has for it.
    fn process_rx(&mut self, w: &mut dyn Watcher) -> Result<bool, virtio_queue::Error> {
        let Some((mem, _)) = &self.active else {
            return Ok(false);
        };
        let mem = mem.clone();
        let mut used_any = false;
        loop {
            self.queues[RX].disable_notification(&mem)?;
            let mut out_of_buffers = false;
            while self.muxer.has_rx_work() {
                let Some(chain) = self.queues[RX].iter(&mem)?.next() else {
                    out_of_buffers = true;
                    break;
                };
                let head = chain.head_index();
                let mut writer = match chain.writer(&mem) {
                    Ok(writer) if writer.available_bytes() >= HEADER_LEN => writer,
                    Ok(_) | Err(_) => {
                        crate::warn_limited!("vsock: unusable RX buffer from the guest; skipped");
                        self.queues[RX].add_used(&mem, head, 0)?;
                        used_any = true;
                        continue;
                    }
                };
                let room = writer.available_bytes() - HEADER_LEN;
                let Some(header) = self.muxer.next_rx_packet(room, &mut self.payload, w) else {
                    // Nothing after all (the host had no data yet): give the buffer back.
                    self.queues[RX].go_to_previous_position();
                    break;
                };
                let raw = RawHeader::from(header);
                let written = writer
                    .write_all(raw.as_slice())
                    .and_then(|()| writer.write_all(&self.payload));
                let len = match written {
                    Ok(()) => (HEADER_LEN + self.payload.len()) as u32,
                    Err(e) => {
                        crate::warn_limited!("vsock: cannot write an RX buffer: {e}");
                        0
                    }
                };
                self.queues[RX].add_used(&mem, head, len)?;
                used_any = true;
            }
            // Ask to hear about new RX buffers; if some arrived meanwhile and there is
            // still work, use them now.
            let more = self.queues[RX].enable_notification(&mem)?;
            if !(more && out_of_buffers && self.muxer.has_rx_work()) {
                break;
            }
        }
        Ok(used_any && self.queues[RX].needs_notification(&mem)?)
    }

    fn run_queues(&mut self, w: &mut dyn Watcher) {
        if self.transport_reset_due {
            self.send_transport_reset();
        }
        if self.broken {
            return;
        }
        let result = self.process_tx(w).and_then(|tx_notify| {
            let rx_notify = self.process_rx(w)?;
            Ok(tx_notify || rx_notify)
        });
        match result {
            Ok(true) => {
                if let Some((_, irq)) = &self.active {
                    irq.trigger(INT_VRING);
                }
            }
            Ok(false) => {}
            Err(e) => {
                crate::warn_limited!("vsock: queue unusable ({e}); device stopped until reset");
                self.broken = true;
            }
        }
    }

    fn arm_timer_if_needed(&mut self, w: &mut dyn Watcher) {
        let waiting = self.muxer.sweep(Instant::now(), w);
        if waiting && !self.timer_armed {
            let period = Duration::from_millis(500);
            match self.timer.reset(period, Some(period)) {
                Ok(()) => self.timer_armed = true,
                Err(e) => log::error!("vsock: cannot arm the connection timer: {e}"),
            }
        } else if !waiting && self.timer_armed {
            if let Err(e) = self.timer.clear() {
                log::error!("vsock: cannot disarm the connection timer: {e}");
            }
            self.timer_armed = false;
        }
    }
}

/// The event loop for fuzzing: poll(2) over what the device asked to watch, so that a fuzz
/// target drives host sockets (accepts, data, hang-ups) as well as the queues.
#[cfg(feature = "fuzzing")]
#[derive(Default)]
pub struct FuzzLoop {
    watched: std::collections::BTreeMap<u32, (std::os::fd::RawFd, EventSet)>,
}

#[cfg(feature = "fuzzing")]
impl Watcher for FuzzLoop {
    fn add(&mut self, fd: std::os::fd::RawFd, token: u32, events: EventSet) {
        self.watched.insert(token, (fd, events));
    }
    fn modify(&mut self, fd: std::os::fd::RawFd, token: u32, events: EventSet) {
        self.watched.insert(token, (fd, events));
    }
    fn remove(&mut self, _: std::os::fd::RawFd, token: u32) {
        self.watched.remove(&token);
    }
}

#[cfg(feature = "fuzzing")]
impl Vsock {
    /// Starts watching the device's host sockets, as `init` does under the event loop.
    pub fn init_for_fuzzing(&mut self, lp: &mut FuzzLoop) {
        self.muxer.init(lp);
    }

    /// One turn of the event loop: the queues, then every watched host socket that is ready
    /// now (each followed by the queues, as `process` does), then the connection timer.
    pub fn run_for_fuzzing(&mut self, lp: &mut FuzzLoop) {
        self.run_queues(lp);
        let mut fds: Vec<libc::pollfd> = lp
            .watched
            .values()
            .map(|&(fd, events)| libc::pollfd {
                fd,
                events: (if events.contains(EventSet::IN) {
                    libc::POLLIN
                } else {
                    0
                }) | (if events.contains(EventSet::OUT) {
                    libc::POLLOUT
                } else {
                    0
                }),
                revents: 0,
            })
            .collect();
        let tokens: Vec<u32> = lp.watched.keys().copied().collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if n > 0 {
            for (pfd, token) in fds.iter().zip(tokens) {
                let mut set = EventSet::empty();
                if pfd.revents & libc::POLLIN != 0 {
                    set |= EventSet::IN;
                }
                if pfd.revents & libc::POLLOUT != 0 {
                    set |= EventSet::OUT;
                }
                if pfd.revents & libc::POLLHUP != 0 {
                    set |= EventSet::HANG_UP;
                }
                if pfd.revents & libc::POLLERR != 0 {
                    set |= EventSet::ERROR;
                }
                // Skip what an earlier handler in this turn stopped watching.
                if !set.is_empty() && lp.watched.contains_key(&token) {
                    self.muxer.handle_event(token, set, lp);
                    self.run_queues(lp);
                }
            }
        }
        self.muxer.sweep(Instant::now(), lp);
    }
}

/// Reads one guest packet: the header, validated, and its payload into `payload`.
fn read_packet(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    guest_cid: u64,
    payload: &mut Vec<u8>,
) -> Result<Header, String> {
    let mut reader = chain
        .reader(mem)
        .map_err(|e| format!("malformed descriptor chain: {e}"))?;
    if reader.available_bytes() < HEADER_LEN {
        return Err(packet::PacketError::Short(reader.available_bytes()).to_string());
    }
    let raw: RawHeader = reader
        .read_obj()
        .map_err(|e| format!("cannot read the header: {e}"))?;
    let header = Header::from(raw);
    packet::validate(&header, guest_cid, reader.available_bytes()).map_err(|e| e.to_string())?;
    payload.clear();
    payload.resize(header.len as usize, 0);
    reader
        .read_exact(payload)
        .map_err(|e| format!("cannot read the payload: {e}"))?;
    Ok(header)
}

impl snapshot::Persist for Vsock {
    type State = VsockState;
    /// The restored VM's own Unix socket for its host side.
    type Resources = std::path::PathBuf;
    type Error = VsockError;

    fn save(&self) -> VsockState {
        VsockState {
            guest_cid: self.guest_cid,
        }
    }

    fn restore(uds_path: std::path::PathBuf, state: &VsockState) -> Result<Self, VsockError> {
        let mut dev = Vsock::new(state.guest_cid, &uds_path)?;
        dev.transport_reset_due = true;
        Ok(dev)
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.pending_reset {
            self.muxer.reset(ops);
            self.pending_reset = false;
        }
        let token = events.data();
        log::trace!("vsock: event token {token} {:?}", events.event_set());
        match token {
            t if t == RX as u32 || t == TX as u32 || t == EVQ as u32 => {
                // Draining can only fail with EAGAIN: nothing to drain.
                let _ = self.queue_events[t as usize].read();
            }
            TIMER_TOKEN => {
                // Non-blocking: a queue event earlier in this batch may have disarmed it.
                let _ = self.timer.wait();
            }
            _ => self.muxer.handle_event(token, events.event_set(), ops),
        }
        self.run_queues(ops);
        self.arm_timer_if_needed(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("vsock: cannot watch queue {i}: {e}");
            }
        }
        if let Err(e) = ops.add(Events::with_data(&self.timer, TIMER_TOKEN, EventSet::IN)) {
            log::error!("vsock: cannot watch the connection timer: {e}");
        }
        self.muxer.init(ops);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn queues(&self) -> &[Queue] {
        &self.queues
    }
    fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }
    fn avail_features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX
    }
    fn set_acked_features(&mut self, acked: u64) {
        self.acked_features = acked;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // The config space is the guest's CID, a 64-bit little-endian integer.
        super::mmio::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        crate::warn_limited!("vsock: config write at {offset:#x}; the config is read-only");
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        log::debug!("vsock: activated (guest CID {})", self.guest_cid);
        self.active = Some((mem, irq));
        self.broken = false;
        if self.transport_reset_due {
            self.send_transport_reset();
        }
        Ok(())
    }
    fn reset(&mut self) {
        // Connections die with the driver; the event loop still watches their fds, so they
        // are closed on the next muxer event instead of here (no EventOps at hand).
        self.active = None;
        self.broken = false;
        self.acked_features = 0;
        self.pending_reset = true;
    }
    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use packet::{op, HOST_CID, TYPE_STREAM};
    use std::os::fd::RawFd;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    struct NullWatcher;
    impl Watcher for NullWatcher {
        fn add(&mut self, _: RawFd, _: u32, _: EventSet) {}
        fn modify(&mut self, _: RawFd, _: u32, _: EventSet) {}
        fn remove(&mut self, _: RawFd, _: u32) {}
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn header(op: u16, src_cid: u64, len: u32) -> RawHeader {
        RawHeader::from(Header {
            src_cid,
            dst_cid: HOST_CID,
            src_port: 5000,
            dst_port: 1025,
            len,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 4096,
            ..Default::default()
        })
    }

    struct Rig {
        dir: std::path::PathBuf,
        mem: GuestMemoryMmap,
        dev: Vsock,
    }

    impl Rig {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("berth-vsockdev-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
            let dev = Vsock::new(3, &dir.join("v.sock")).unwrap();
            Rig { dir, mem, dev }
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_restored_device_tells_the_guest_its_transport_was_reset() {
        use snapshot::Persist;
        let rig = Rig::new("restore");
        let saved = rig.dev.save();
        assert_eq!(saved, VsockState { guest_cid: 3 });
        // The clone's own socket, not the template's.
        let clone_sock = rig.dir.join("clone.sock");
        let mut dev = Vsock::restore(clone_sock.clone(), &saved).unwrap();
        assert_eq!(dev.save(), saved);
        assert_eq!(dev.muxer.uds_path(), clone_sock);
        let evq = MockSplitQueue::create(&rig.mem, GuestAddress(0x10_0000), 16);
        // The guest has no event buffer yet when the device starts again: the event waits.
        dev.queues[EVQ] = evq.create_queue().unwrap();
        let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        dev.activate(rig.mem.clone(), irq.clone()).unwrap();
        assert_eq!(irq.status(), 0);
        rig.mem
            .write_obj(0xffff_ffffu32, GuestAddress(0x30_0000))
            .unwrap();
        evq.add_desc_chains(&[desc(0x30_0000, 8, WRITE, 0)], 0)
            .unwrap();
        dev.run_queues(&mut NullWatcher);
        assert_eq!(dev.queues[EVQ].next_used(), 1);
        let event: u32 = rig.mem.read_obj(GuestAddress(0x30_0000)).unwrap();
        assert_eq!(event, EVENT_TRANSPORT_RESET);
        assert_eq!(irq.status() & INT_VRING, INT_VRING);
        // Once only.
        dev.run_queues(&mut NullWatcher);
        assert_eq!(dev.queues[EVQ].next_used(), 1);
        assert!(Vsock::restore(clone_sock, &VsockState { guest_cid: 2 }).is_err());
    }

    #[test]
    fn hostile_tx_packets_are_dropped_and_the_device_carries_on() {
        let mut rig = Rig::new("hostile");
        let tx = MockSplitQueue::create(&rig.mem, GuestAddress(0x10_0000), 16);
        let rx = MockSplitQueue::create(&rig.mem, GuestAddress(0x20_0000), 16);
        // 0: a chain shorter than a header; 1: a header claiming more payload than present;
        // 2: a buffer outside guest memory; 3: a spoofed source CID; 4: a header whose
        // payload descriptor is missing (len says 100, chain has 0); 5: a valid REQUEST.
        let base = 0x30_0000u64;
        rig.mem.write_slice(&[1u8; 10], GuestAddress(base)).unwrap();
        rig.mem
            .write_obj(header(op::RW, 3, 1000), GuestAddress(base + 0x100))
            .unwrap();
        rig.mem
            .write_obj(header(op::RW, 7, 0), GuestAddress(base + 0x300))
            .unwrap();
        rig.mem
            .write_obj(header(op::RW, 3, 100), GuestAddress(base + 0x400))
            .unwrap();
        rig.mem
            .write_obj(header(op::REQUEST, 3, 0), GuestAddress(base + 0x500))
            .unwrap();
        tx.add_desc_chains(
            &[
                desc(base, 10, 0, 0),
                desc(base + 0x100, HEADER_LEN as u32, NEXT, 2),
                desc(base + 0x200, 8, 0, 0),
                desc(0xfff_0000, 64, 0, 0),
                desc(base + 0x300, HEADER_LEN as u32, 0, 0),
                desc(base + 0x400, HEADER_LEN as u32, 0, 0),
                desc(base + 0x500, HEADER_LEN as u32, 0, 0),
            ],
            0,
        )
        .unwrap();
        rx.add_desc_chains(&[desc(base + 0x1000, 4096, WRITE, 0)], 0)
            .unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(format!(
            "{}_1025",
            rig.dev.muxer.uds_path().display()
        ))
        .unwrap();
        rig.dev.queues[RX] = rx.create_queue().unwrap();
        rig.dev.queues[TX] = tx.create_queue().unwrap();
        rig.dev.queues[TX].set_event_idx(true);
        let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        rig.dev.activate(rig.mem.clone(), irq.clone()).unwrap();
        rig.dev.run_queues(&mut NullWatcher);

        assert!(!rig.dev.broken);
        assert_eq!(
            rig.dev.queues[TX].next_used(),
            6,
            "every chain was returned"
        );
        assert_eq!(rig.dev.queues[RX].next_used(), 1);
        let reply: RawHeader = rig.mem.read_obj(GuestAddress(base + 0x1000)).unwrap();
        let reply = Header::from(reply);
        assert_eq!(
            reply.op,
            op::RESPONSE,
            "the valid request still got through"
        );
        assert_eq!(reply.dst_cid, 3);
        assert_ne!(irq.status() & INT_VRING, 0);
        // With EVENT_IDX the device re-arms the driver's notifications after draining TX:
        // avail_event (after the used ring's entries) names the next index to notify at.
        let avail_event: u16 = rig
            .mem
            .read_obj(tx.used_addr().unchecked_add(4 + 8 * 16))
            .unwrap();
        assert_eq!(avail_event, 6, "the driver must be asked to notify again");
    }

    #[test]
    fn a_corrupt_ring_stops_the_device_until_reset() {
        let mut rig = Rig::new("corrupt");
        let tx = MockSplitQueue::create(&rig.mem, GuestAddress(0x10_0000), 16);
        rig.dev.queues[TX] = tx.create_queue().unwrap();
        tx.avail().idx().store(1000);
        let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        rig.dev.activate(rig.mem.clone(), irq).unwrap();
        rig.dev.run_queues(&mut NullWatcher);
        assert!(rig.dev.broken);
        rig.dev.reset();
        assert!(!rig.dev.broken);
        assert!(!rig.dev.is_activated());
    }

    #[test]
    fn config_space_is_the_guest_cid() {
        let rig = Rig::new("config");
        let mut cid = [0u8; 8];
        rig.dev.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), 3);
        let mut high = [0xffu8; 4];
        rig.dev.read_config(4, &mut high);
        assert_eq!(high, [0; 4]);
        assert!(matches!(
            Vsock::new(2, &rig.dir.join("x.sock")),
            Err(VsockError::ReservedCid(2))
        ));
    }
}
