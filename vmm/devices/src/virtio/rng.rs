//! virtio-rng: the guest's entropy source, filled from the host's getrandom(2).
//!
//! Queue processing is a pure function over a queue and guest memory
//! ([`fill_requests`]), unit-tested with virtio-queue's mock queue; the device struct adds
//! the event glue.

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    features, new_queue_events, new_queues, ActivateError, IrqTrigger, VirtioDevice, INT_VRING,
};
use crate::GuestMemoryMmap;

/// virtio device ID of an entropy device.
pub const TYPE_RNG: u32 = 4;
const QUEUE_SIZE: u16 = 256;
/// Bytes served per request at most: a guest asking for more gets a short answer.
const MAX_REQUEST: usize = 64 << 10;

/// Errors of the entropy device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The available ring is corrupt (index too far ahead).
    #[error("the request queue is unusable: {0}")]
    Queue(#[source] virtio_queue::Error),
    /// Writing the used ring failed.
    #[error("cannot complete a request: {0}")]
    Used(#[source] virtio_queue::Error),
    /// The host's entropy source failed.
    #[error("getrandom failed: {0}")]
    Entropy(#[source] std::io::Error),
}

/// The device's own state in a snapshot: nothing. An entropy device has no config space and
/// no backend setting; its queue and features belong to the transport's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngState {}

/// Fills `buf` from the host's getrandom(2).
pub fn host_entropy(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes that getrandom
        // fills at most completely; no other reference to it exists during the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        filled += n as usize;
    }
    Ok(())
}

/// Serves every pending request on `queue`: each descriptor chain's writable part is filled
/// with entropy (up to [`MAX_REQUEST`] bytes). A chain that cannot be used (bad addresses,
/// no writable part) is returned with length 0. Returns whether the guest must be notified.
pub fn fill_requests(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut entropy: impl FnMut(&mut [u8]) -> std::io::Result<()>,
) -> Result<bool, RngError> {
    let mut used_any = false;
    let mut buf = Vec::new();
    // With EVENT_IDX the driver only notifies when told where to (avail_event): re-arm
    // after draining, and drain again if requests slipped in meanwhile.
    loop {
        queue.disable_notification(mem).map_err(RngError::Queue)?;
        while let Some(chain) = queue.iter(mem).map_err(RngError::Queue)?.next() {
            let head = chain.head_index();
            let written = match chain.writer(mem) {
                Ok(mut writer) => {
                    let len = writer.available_bytes().min(MAX_REQUEST);
                    buf.resize(len, 0);
                    entropy(&mut buf).map_err(RngError::Entropy)?;
                    match std::io::Write::write_all(&mut writer, &buf) {
                        Ok(()) => len as u32,
                        Err(e) => {
                            crate::warn_limited!("virtio-rng: cannot write a request: {e}");
                            0
                        }
                    }
                }
                Err(e) => {
                    crate::warn_limited!("virtio-rng: malformed descriptor chain: {e}");
                    0
                }
            };
            queue.add_used(mem, head, written).map_err(RngError::Used)?;
            used_any = true;
        }
        if !queue.enable_notification(mem).map_err(RngError::Queue)? {
            break;
        }
    }
    if !used_any {
        return Ok(false);
    }
    queue.needs_notification(mem).map_err(RngError::Used)
}

/// The virtio-rng device.
pub struct Rng {
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    acked_features: u64,
    active: Option<(GuestMemoryMmap, Arc<IrqTrigger>)>,
    broken: bool,
}

impl Rng {
    /// A new, inactive entropy device.
    pub fn new() -> std::io::Result<Self> {
        Ok(Rng {
            queues: new_queues(&[QUEUE_SIZE]),
            queue_events: new_queue_events(1)?,
            acked_features: 0,
            active: None,
            broken: false,
        })
    }

    fn process_queue(&mut self) {
        let Some((mem, irq)) = &self.active else {
            return;
        };
        if self.broken {
            return;
        }
        match fill_requests(&mut self.queues[0], mem, host_entropy) {
            Ok(true) => irq.trigger(INT_VRING),
            Ok(false) => {}
            Err(e) => {
                // A corrupt ring stays corrupt: stop serving until the driver resets us.
                crate::warn_limited!("virtio-rng: {e}; device stopped until reset");
                self.broken = true;
            }
        }
    }
}

impl MutEventSubscriber for Rng {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            // Draining the eventfd can only fail with EAGAIN, i.e. nothing to drain.
            let _ = self.queue_events[0].read();
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_events[0], EventSet::IN)) {
            log::error!("virtio-rng: cannot watch the queue event: {e}");
        }
    }
}

impl snapshot::Persist for Rng {
    type State = RngState;
    type Resources = ();
    type Error = std::io::Error;

    fn save(&self) -> RngState {
        RngState {}
    }

    /// A new device: the transport restores its queue and activates it.
    fn restore((): (), _: &RngState) -> std::io::Result<Self> {
        Rng::new()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
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
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no config space.
        data.fill(0);
    }
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        crate::warn_limited!("virtio-rng: config write at {offset:#x}; it has no config space");
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        self.active = Some((mem, irq));
        self.broken = false;
        // Requests may have been queued before DRIVER_OK.
        self.process_queue();
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
        self.acked_features = 0;
    }
    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    #[test]
    fn fills_writable_buffers() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&[desc(0x8000, 64, WRITE), desc(0x9000, 16, WRITE)], 0)
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let notify = fill_requests(&mut q, &m, |b| {
            b.fill(0xab);
            Ok(())
        })
        .unwrap();
        assert!(notify);
        let mut out = [0u8; 64];
        m.read_slice(&mut out, GuestAddress(0x8000)).unwrap();
        assert_eq!(out, [0xab; 64]);
        assert_eq!(q.next_used(), 2);
        let used_len: u32 = m.read_obj(vq.used_addr().unchecked_add(4 + 4)).unwrap();
        assert_eq!(used_len, 64);
    }

    #[test]
    fn malformed_chains_complete_empty_and_device_survives() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // Read-only buffer, then a buffer beyond guest memory, then a good one.
        vq.add_desc_chains(
            &[
                desc(0x8000, 64, 0),
                desc(0xfff_0000, 64, WRITE),
                desc(0x9000, 8, WRITE),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(fill_requests(&mut q, &m, |b| {
            b.fill(1);
            Ok(())
        })
        .unwrap());
        assert_eq!(q.next_used(), 3);
        let len_of = |i: u64| -> u32 {
            m.read_obj(vq.used_addr().unchecked_add(4 + 8 * i + 4))
                .unwrap()
        };
        assert_eq!((len_of(0), len_of(1), len_of(2)), (0, 0, 8));
    }

    #[test]
    fn corrupt_avail_index_is_an_error_not_a_panic() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        vq.avail().idx().store(1000);
        assert!(matches!(
            fill_requests(&mut q, &m, |_| Ok(())),
            Err(RngError::Queue(_))
        ));
    }

    #[test]
    fn host_entropy_is_not_constant() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        host_entropy(&mut a).unwrap();
        host_entropy(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
