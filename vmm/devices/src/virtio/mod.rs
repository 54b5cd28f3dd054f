//! virtio devices and their MMIO transport.
//!
//! A device implements [`VirtioDevice`]: its identity, features, config space and queues
//! (register side, driven by the transport from vCPU threads), plus event glue
//! (`MutEventSubscriber`, driven by the event loop thread). The transport
//! ([`mmio::MmioTransport`]) owns the register file of the virtio-mmio v2 layout.

pub mod balloon;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use event_manager::MutEventSubscriber;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemoryMmap;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Feature bits every berth device offers.
pub mod features {
    /// VIRTIO_F_VERSION_1: modern devices only.
    pub const VERSION_1: u64 = 1 << 32;
    /// VIRTIO_RING_F_EVENT_IDX: notification suppression by index.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
}

/// Interrupt status bits of the MMIO transport.
pub const INT_VRING: u32 = 1;
/// The device's configuration changed (or it needs a reset).
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt line: the status register the guest reads and acknowledges, and the
/// eventfd that the VMM registers as an irqfd.
///
/// The line is an edge (an irqfd pulse) but virtio-mmio's interrupt means "asserted while the
/// status is not zero": [`IrqTrigger::reassert_if_stale`], called periodically, raises it
/// again when the status has stayed set with no new interrupt since the last call, so an
/// interrupt lost on its way to the guest cannot leave a device waiting for good.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    evt: EventFd,
    raised: AtomicU64,
    /// `raised` at the previous check, and re-assertions made.
    seen: AtomicU64,
    reasserted: AtomicU64,
}

impl IrqTrigger {
    /// An interrupt line signalled through `evt`.
    pub fn new(evt: EventFd) -> Self {
        IrqTrigger {
            status: AtomicU32::new(0),
            evt,
            raised: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            reasserted: AtomicU64::new(0),
        }
    }

    /// Raises the interrupt again if the status has been set since the previous call with no
    /// interrupt raised in between (the guest has not acknowledged it for a whole period).
    /// Returns whether it did.
    pub fn reassert_if_stale(&self) -> bool {
        let raised = self.raised.load(Ordering::SeqCst);
        let previous = self.seen.swap(raised, Ordering::SeqCst);
        if self.status() == 0 || raised != previous {
            return false;
        }
        self.reasserted.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.evt.write(1) {
            crate::warn_limited!("virtio: cannot raise an interrupt: {e}");
        }
        true
    }

    /// Raises the interrupt if the status is set, whatever happened before: a restored VM's
    /// interrupt controllers start from the snapshot, so a device raising its line while
    /// the VM was being built (a restored vsock's transport reset) is raised again once the
    /// vCPUs exist. Returns whether it did.
    pub fn reassert_pending(&self) -> bool {
        if self.status() == 0 {
            return false;
        }
        self.raised.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.evt.write(1) {
            crate::warn_limited!("virtio: cannot raise an interrupt: {e}");
        }
        true
    }

    /// How many times [`IrqTrigger::reassert_if_stale`] raised the interrupt again.
    pub fn reasserted(&self) -> u64 {
        self.reasserted.load(Ordering::Relaxed)
    }

    /// Sets `bits` in the interrupt status and raises the interrupt.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.raised.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.evt.write(1) {
            crate::warn_limited!("virtio: cannot raise an interrupt: {e}");
        }
    }

    /// How many times the interrupt was raised (diagnostics).
    pub fn raised(&self) -> u64 {
        self.raised.load(Ordering::Relaxed)
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The guest acknowledged `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Restores the status register (snapshot restore).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// The eventfd behind the interrupt, for irqfd registration.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs is not ready or points outside guest memory.
    #[error("queue {index} is not ready or not valid in guest memory")]
    InvalidQueue { index: usize },
    /// The device's backend could not be set up.
    #[error("backend setup failed: {0}")]
    Backend(String),
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: MutEventSubscriber + Send {
    /// The virtio device ID (virtio 1.2, 5).
    fn device_type(&self) -> u32;
    /// The device's queues, configured by the driver through the transport.
    fn queues(&self) -> &[Queue];
    /// Mutable access to the queues for the transport.
    fn queues_mut(&mut self) -> &mut [Queue];
    /// One eventfd per queue, signalled when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd];
    /// The queues' current configuration and positions, for snapshots. A device that serves
    /// its queues on a thread of its own reports that thread's positions.
    fn queue_snapshots(&self) -> Vec<QueueSnapshot> {
        self.queues().iter().map(QueueSnapshot::of).collect()
    }
    /// How many of its queues (the first ones) the device serves with the features
    /// negotiated: a queue that exists only with a feature the driver did not take is
    /// never set up, and activation does not wait for it.
    fn queues_in_use(&self) -> usize {
        self.queues().len()
    }
    /// Features the device offers.
    fn avail_features(&self) -> u64;
    /// The features the driver accepted (a subset of `avail_features`).
    fn set_acked_features(&mut self, acked: u64);
    /// Reads the device-specific config space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific config space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start processing queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        irq: std::sync::Arc<IrqTrigger>,
    ) -> Result<(), ActivateError>;
    /// The driver reset the device: stop processing and forget queue state.
    fn reset(&mut self);
    /// Whether `activate` succeeded and no reset happened since.
    fn is_activated(&self) -> bool;
    /// Stops touching guest memory and the interrupt line until [`VirtioDevice::unquiesce`]
    /// (a snapshot is being taken). A device served on the event loop needs nothing: the
    /// snapshot holds its transport's lock, which the loop takes to serve it. A device with
    /// a thread of its own stops that thread after the request it is serving.
    fn quiesce(&mut self) {}
    /// Serves again after [`VirtioDevice::quiesce`].
    fn unquiesce(&mut self) {}
    /// The device's own counters, by name, for the control socket's metrics.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![]
    }
}

/// Where a queue stands, for metrics: the driver's available index, the device's next
/// available index, and the avail event the device last published in the used ring (with
/// VIRTIO_F_EVENT_IDX, the driver notifies only when its index passes that one). A value
/// that cannot be read is `u64::MAX`.
pub fn ring_positions(q: &Queue, mem: &GuestMemoryMmap) -> (u64, u64, u64) {
    use vm_memory::{Address, Bytes, GuestAddress};
    let driver = q
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .map_or(u64::MAX, |i| u64::from(i.0));
    // The used ring: flags (2), idx (2), size elements of 8 bytes, then avail_event.
    let avail_event = GuestAddress(q.used_ring())
        .checked_add(4 + 8 * u64::from(q.size()))
        .and_then(|at| mem.read_obj::<u16>(at).ok())
        .map_or(u64::MAX, u64::from);
    (driver, u64::from(q.next_avail()), avail_event)
}

/// A queue's configuration and position, for snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

impl QueueSnapshot {
    /// The queue this snapshot describes, checked as virtio-queue checks a queue's state
    /// (size a power of two within the maximum, rings aligned).
    pub fn to_queue(&self) -> Result<Queue, virtio_queue::Error> {
        Queue::try_from(virtio_queue::QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
    }

    /// Captures `q`.
    pub fn of(q: &Queue) -> Self {
        QueueSnapshot {
            max_size: q.max_size(),
            size: q.size(),
            ready: q.ready(),
            desc_table: q.desc_table(),
            avail_ring: q.avail_ring(),
            used_ring: q.used_ring(),
            next_avail: q.next_avail(),
            next_used: q.next_used(),
            event_idx: q.event_idx_enabled(),
        }
    }
}

/// Creates `sizes.len()` queues with the given maximum sizes.
pub fn new_queues(sizes: &[u16]) -> Vec<Queue> {
    sizes
        .iter()
        .map(|&size| Queue::new(size).expect("device queue sizes are powers of two"))
        .collect()
}

/// Creates one non-blocking eventfd per queue.
pub fn new_queue_events(count: usize) -> std::io::Result<Vec<EventFd>> {
    (0..count)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulses(evt: &EventFd) -> u64 {
        evt.read().unwrap_or(0)
    }

    #[test]
    fn an_unacknowledged_interrupt_is_raised_again_once_a_period_has_passed() {
        let irq = IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let evt = irq.eventfd().try_clone().unwrap();
        // Nothing pending: nothing to raise.
        assert!(!irq.reassert_if_stale());
        irq.trigger(INT_VRING);
        assert_eq!(pulses(&evt), 1);
        // Raised since the last check: the guest gets its period to acknowledge it.
        assert!(!irq.reassert_if_stale());
        // A whole period without an acknowledgement or a new interrupt: raised again.
        assert!(irq.reassert_if_stale());
        assert_eq!(pulses(&evt), 1);
        assert!(irq.reassert_if_stale());
        assert_eq!(irq.reasserted(), 2);
        // Acknowledged: quiet again.
        irq.ack(INT_VRING);
        assert!(!irq.reassert_if_stale());
        assert_eq!(pulses(&evt), 1);
        assert_eq!(irq.raised(), 1);
    }
}
