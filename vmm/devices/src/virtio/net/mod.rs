//! virtio-net on a tap device the VMM is handed (never one it opens).
//!
//! Two queues (receive 0, transmit 1; no control queue, one queue pair). The device offers
//! checksum and TCP segmentation offloads both ways and mergeable receive buffers; at
//! activation the tap is told the 12-byte header size and the offloads the driver took, so
//! the host hands over only frames the guest can take.
//!
//! Transmit drains the queue per notification (in batches of at most [`BUDGET`] frames),
//! copying each chain into one preallocated buffer, checking it ([`queue::check_tx_frame`]:
//! a frame whose source address is not the VM's own is dropped and counted, so a VM cannot
//! pose as another on the bridge) and writing it to the tap whole. Receive reads the tap
//! (edge-triggered: read until it would block) into another preallocated buffer and spreads
//! each frame over the guest's buffers; when the guest has none, the frame is kept and the
//! tap is left unread until the guest adds buffers (its notification brings the device
//! back), so nothing is dropped for want of a buffer.
//!
//! A device may have no backend (a template VM): its link is down, every frame it is given
//! is completed and counted as dropped, nothing is received. A clone restored from it is
//! given its own tap and MAC; the device tells the driver its link changed.
//!
//! Queue processing is a set of functions over a queue and guest memory ([`queue`]); the
//! device struct adds the event glue.

pub mod backend;
pub mod queue;

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    features, new_queue_events, new_queues, ActivateError, IrqTrigger, VirtioDevice, INT_CONFIG,
    INT_VRING,
};
use crate::GuestMemoryMmap;
use backend::{offload, Backend};
use queue::{Delivery, NetCounters, NetQueueError, HDR_LEN, MAX_BUFFER};

/// virtio device ID of a network card.
pub const TYPE_NET: u32 = 1;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const TAP_TOKEN: u32 = 2;
/// Frames served per event at most, so that a busy network cannot starve the other
/// devices of the event loop; the device comes back for the rest through its own queue
/// event.
pub const BUDGET: usize = 256;

/// The virtio-net feature bits the device offers (virtio 1.2, 5.1.3).
pub mod feature {
    /// The driver may leave checksums to the host (transmit).
    pub const CSUM: u64 = 1 << 0;
    /// The driver takes frames with partial checksums (receive).
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// The config space holds the MAC address.
    pub const MAC: u64 = 1 << 5;
    /// The driver takes TCP segmentation offload frames (receive).
    pub const GUEST_TSO4: u64 = 1 << 7;
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// The driver may send TCP segmentation offload frames (transmit).
    pub const HOST_TSO4: u64 = 1 << 11;
    pub const HOST_TSO6: u64 = 1 << 12;
    /// Received frames may span several buffers.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// The config space holds the link status.
    pub const STATUS: u64 = 1 << 16;
}

/// VIRTIO_NET_S_LINK_UP.
const LINK_UP: u16 = 1;

/// Errors setting up the net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{} is not a unicast MAC address", queue::mac_string(.0))]
    NotUnicast([u8; 6]),
    #[error("cannot create the device's queue events: {0}")]
    Events(#[source] std::io::Error),
}

/// The device's own state in a snapshot: its config space (the driver's queues and
/// features belong to the transport's state). The tap is never part of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    /// The MAC address the config space showed.
    pub mac: [u8; 6],
}

/// What a net device is given: its MAC address and its backend, if any.
pub struct NetConfig {
    pub mac: [u8; 6],
    pub backend: Option<Box<dyn Backend>>,
}

/// The virtio-net device.
pub struct Net {
    mac: [u8; 6],
    backend: Option<Box<dyn Backend>>,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    acked_features: u64,
    active: Option<(GuestMemoryMmap, Arc<IrqTrigger>)>,
    /// A queue that failed (corrupt ring) is left alone until the driver resets the device.
    broken: bool,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    /// The length of the frame in `rx_buf` that waits for the guest's buffers.
    rx_pending: Option<usize>,
    /// The tap may have frames: it has not said it would block since its last edge.
    tap_readable: bool,
    /// Scratch space for the chains one received frame takes.
    rx_used: Vec<(u16, u32)>,
    /// Restored with a backend: the driver is told to read the link status again.
    announce_link: bool,
    counters: NetCounters,
}

impl Net {
    /// A new, inactive net device with address `mac` on `backend` (none: a template's
    /// device, link down, every frame dropped).
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        if config.mac[0] & 1 != 0 {
            return Err(NetError::NotUnicast(config.mac));
        }
        Ok(Net {
            mac: config.mac,
            backend: config.backend,
            queues: new_queues(&[QUEUE_SIZE; 2]),
            queue_events: new_queue_events(2).map_err(NetError::Events)?,
            acked_features: 0,
            active: None,
            broken: false,
            // vec! of zeros: untouched pages cost a clone nothing.
            tx_buf: vec![0; MAX_BUFFER],
            rx_buf: vec![0; MAX_BUFFER],
            rx_pending: None,
            tap_readable: false,
            rx_used: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            announce_link: false,
            counters: NetCounters::default(),
        })
    }

    /// The MAC address the device shows and enforces.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// What the device has done so far.
    pub fn net_counters(&self) -> &NetCounters {
        &self.counters
    }

    /// The tap offloads matching what the driver takes on receive.
    pub fn offloads_for(acked: u64) -> u32 {
        let mut flags = 0;
        if acked & feature::GUEST_CSUM != 0 {
            flags |= offload::CSUM;
            if acked & feature::GUEST_TSO4 != 0 {
                flags |= offload::TSO4;
            }
            if acked & feature::GUEST_TSO6 != 0 {
                flags |= offload::TSO6;
            }
        }
        flags
    }

    fn broke(&mut self, e: &NetQueueError) {
        // A corrupt ring stays corrupt: stop serving until the driver resets us.
        crate::warn_limited!("virtio-net: {e}; device stopped until reset");
        self.broken = true;
    }

    fn process_tx(&mut self) {
        let Some((mem, irq)) = &self.active else {
            return;
        };
        if self.broken {
            return;
        }
        let sent = queue::transmit(
            &mut self.queues[TX],
            mem,
            &self.mac,
            self.acked_features,
            &mut self.tx_buf,
            self.backend.as_deref_mut(),
            &self.counters,
            BUDGET,
        );
        match sent {
            Ok(pass) => {
                if pass.notify {
                    irq.trigger(INT_VRING);
                }
                if pass.more {
                    // Come back for the rest after the loop's other events.
                    let _ = self.queue_events[TX].write(1);
                }
            }
            Err(e) => self.broke(&e),
        }
    }

    fn process_rx(&mut self) {
        let Some((mem, irq)) = &self.active else {
            return;
        };
        if self.broken {
            return;
        }
        let mergeable = self.acked_features & feature::MRG_RXBUF != 0;
        let used_before = self.queues[RX].next_used();
        let mut delivered = 0;
        let mut failed = None;
        loop {
            let len = match self.rx_pending.take() {
                Some(len) => len,
                None => {
                    let Some(backend) = self.backend.as_mut().filter(|_| self.tap_readable) else {
                        break;
                    };
                    match backend.read_frame(&mut self.rx_buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            // Edge-triggered: the next frame brings a new edge.
                            self.tap_readable = false;
                            if e.kind() != std::io::ErrorKind::WouldBlock {
                                self.counters
                                    .tap_read_errors
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                crate::warn_limited!("virtio-net: cannot read the tap: {e}");
                            }
                            break;
                        }
                    }
                }
            };
            let frame = &mut self.rx_buf[..len];
            if let Err(e) = queue::prepare_rx_frame(frame, self.acked_features) {
                self.counters
                    .rx_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                crate::warn_limited!("virtio-net: host frame dropped: {e}");
                continue;
            }
            let delivery = queue::deliver(
                &mut self.queues[RX],
                mem,
                frame,
                mergeable,
                &mut self.rx_used,
                &self.counters,
            );
            match delivery {
                Ok(Delivery::Delivered { .. }) => {
                    let c = &self.counters;
                    c.rx_frames
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    c.rx_bytes
                        .fetch_add((len - HDR_LEN) as u64, std::sync::atomic::Ordering::Relaxed);
                    delivered += 1;
                    if delivered >= BUDGET {
                        // Come back for the rest after the loop's other events.
                        let _ = self.queue_events[RX].write(1);
                        break;
                    }
                }
                Ok(Delivery::NoBuffers) => {
                    self.counters
                        .rx_no_buffers
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Kept until the guest adds buffers; the tap is not read meanwhile.
                    self.rx_pending = Some(len);
                    break;
                }
                Ok(Delivery::Dropped(e)) => {
                    self.counters
                        .rx_dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    crate::warn_limited!("virtio-net: host frame dropped: {e}");
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let notify = if self.queues[RX].next_used() == used_before {
            Ok(false)
        } else {
            self.queues[RX]
                .needs_notification(mem)
                .map_err(NetQueueError::Used)
        };
        match notify {
            Ok(true) => irq.trigger(INT_VRING),
            Ok(false) => {}
            Err(e) => failed = failed.or(Some(e)),
        }
        if let Some(e) = failed {
            self.broke(&e);
        }
    }

    fn config_bytes(&self) -> [u8; 8] {
        let mut bytes = [0u8; 8];
        bytes[..6].copy_from_slice(&self.mac);
        let status = if self.backend.is_some() { LINK_UP } else { 0 };
        bytes[6..].copy_from_slice(&status.to_le_bytes());
        bytes
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TAP_TOKEN => {
                self.tap_readable = true;
                self.process_rx();
            }
            index @ (0 | 1) if events.event_set().contains(EventSet::IN) => {
                let index = index as usize;
                // Draining the eventfd can only fail with EAGAIN, i.e. nothing to drain.
                let _ = self.queue_events[index].read();
                if index == RX {
                    self.process_rx();
                } else {
                    self.process_tx();
                }
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("virtio-net: cannot watch queue event {i}: {e}");
            }
        }
        if let Some(backend) = &self.backend {
            // Edge-triggered: the device reads until the tap would block, or keeps a frame
            // for want of guest buffers and stops reading; a level-triggered tap would wake
            // the loop for as long as that lasts.
            let events = Events::with_data_raw(
                backend.as_raw_fd(),
                TAP_TOKEN,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            );
            if let Err(e) = ops.add(events) {
                log::error!("virtio-net: cannot watch the tap: {e}");
            }
        }
    }
}

impl snapshot::Persist for Net {
    type State = NetState;
    type Resources = NetConfig;
    type Error = NetError;

    fn save(&self) -> NetState {
        NetState { mac: self.mac }
    }

    /// A new device with the restoring VM's MAC and backend, not the snapshot's: a clone
    /// is not its template on the network. The driver keeps the address it read at probe
    /// until the guest is told another; the device enforces the new one from now on.
    fn restore(config: NetConfig, _state: &NetState) -> Result<Self, NetError> {
        let mut net = Net::new(config)?;
        net.announce_link = net.backend.is_some();
        Ok(net)
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
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
        // UDP fragmentation offload is left out: Linux no longer produces it, and a tap
        // given TUN_F_UFO may hand over frames a driver without it cannot take.
        features::VERSION_1
            | features::RING_EVENT_IDX
            | feature::CSUM
            | feature::GUEST_CSUM
            | feature::MAC
            | feature::GUEST_TSO4
            | feature::GUEST_TSO6
            | feature::HOST_TSO4
            | feature::HOST_TSO6
            | feature::MRG_RXBUF
            | feature::STATUS
    }
    fn set_acked_features(&mut self, acked: u64) {
        self.acked_features = acked;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::mmio::read_config_bytes(&self.config_bytes(), offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC address is the host's to set (without VIRTIO_NET_F_CTRL_MAC_ADDR, which
        // is not offered, the driver only writes it on legacy devices).
        crate::warn_limited!(
            "virtio-net: {}-byte config write at {offset:#x}; the config space is read-only",
            data.len()
        );
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        if let Some(backend) = &mut self.backend {
            backend
                .configure(Self::offloads_for(self.acked_features))
                .map_err(|e| {
                    ActivateError::Backend(format!(
                        "cannot set the tap's header size and offloads: {e}"
                    ))
                })?;
        }
        if self.announce_link {
            self.announce_link = false;
            irq.trigger(INT_CONFIG);
        }
        self.active = Some((mem, irq));
        self.broken = false;
        // Frames may have been queued either way before DRIVER_OK.
        self.tap_readable = self.backend.is_some();
        self.process_tx();
        self.process_rx();
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
        self.acked_features = 0;
        self.rx_pending = None;
    }
    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut all = self.counters.named();
        // Where each ring stands, for a stalled queue to show which side waits: the
        // driver's available index against the device's next one, and whether a host frame
        // waits for receive buffers.
        all.push((
            "rx_waiting_for_buffers",
            u64::from(self.rx_pending.is_some()),
        ));
        all.push(("tap_readable", u64::from(self.tap_readable)));
        if let Some((mem, _)) = &self.active {
            let names = [
                (
                    "rx_driver_avail_idx",
                    "rx_device_next_avail",
                    "rx_avail_event",
                ),
                (
                    "tx_driver_avail_idx",
                    "tx_device_next_avail",
                    "tx_avail_event",
                ),
            ];
            for (q, (avail_name, next_name, event_name)) in
                [&self.queues[RX], &self.queues[TX]].into_iter().zip(names)
            {
                let (avail, next, event) = super::ring_positions(q, mem);
                all.push((avail_name, avail));
                all.push((next_name, next));
                all.push((event_name, event));
            }
        }
        all
    }
}

#[cfg(test)]
mod tests;
