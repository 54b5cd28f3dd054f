//! virtio-balloon, for free page reporting: the guest names the ranges of its memory that
//! are free (Linux 5.7+, in blocks of 2 MiB on x86), and the VMM gives their host pages back
//! with `madvise(MADV_DONTNEED)`. An idle VM so holds what its guest uses, not what it once
//! touched. Anonymous guest memory reads as zeros afterwards; a clone's memory, mapped
//! privately from its template's memory file, falls back to the file's page, shared with
//! every other clone. Either way the guest, which no longer uses those pages, sees nothing
//! it relies on change.
//!
//! The inflate and deflate queues are served as the specification has them (an inflated
//! page is released the same way; a deflated one needs nothing, since
//! VIRTIO_BALLOON_F_MUST_TELL_HOST is not offered). The target (`num_pages`) stays 0: the
//! host asks for no memory back, so a Linux driver inflates nothing unless told to later.
//!
//! Queue processing is a set of functions over a queue and guest memory
//! ([`serve_reports`], [`serve_inflate`]), unit-tested with virtio-queue's mock queue; the
//! device struct adds the event glue. A hostile guest can only name its own memory: a range
//! outside guest RAM is refused, never passed to madvise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use super::{
    features, new_queue_events, new_queues, ActivateError, IrqTrigger, VirtioDevice, INT_VRING,
};
use crate::GuestMemoryMmap;

/// virtio device ID of a memory balloon.
pub const TYPE_BALLOON: u32 = 5;
/// VIRTIO_BALLOON_F_REPORTING: the guest reports free pages on a queue of its own.
pub const F_REPORTING: u64 = 1 << 5;
/// The balloon's page size, whatever the guest's (virtio 1.2, 5.5.6).
pub const PAGE_SIZE: u64 = 4096;
const QUEUE_SIZE: u16 = 256;
/// The queues, in the order a driver that negotiates reporting (and neither statistics nor
/// free page hinting, which are not offered) numbers them: Linux numbers only the queues a
/// device has, so the reporting queue is the third.
const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const REPORTING: usize = 2;
/// Page numbers read from one inflate request at most (Linux sends 256 at a time); the rest
/// of a longer request is not read.
const MAX_PFNS: usize = 1024;

/// Errors of the balloon device.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// The available ring is corrupt (index too far ahead).
    #[error("a queue is unusable: {0}")]
    Queue(#[source] virtio_queue::Error),
    /// Writing the used ring failed.
    #[error("cannot complete a request: {0}")]
    Used(#[source] virtio_queue::Error),
}

/// Why a range could not be released (reported, counted, and the request completed anyway).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    /// The range is not inside one region of guest RAM.
    #[error("{len:#x} bytes at {addr:#x} are not guest RAM")]
    NotRam { addr: u64, len: u64 },
    /// madvise refused it.
    #[error("madvise of {len:#x} bytes at {addr:#x} failed: errno {errno}")]
    Madvise { addr: u64, len: u64, errno: i32 },
}

/// The device's own state in a snapshot: its config space (the driver's queues and features
/// belong to the transport's state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonState {
    /// Pages the host asks the guest to give up.
    pub num_pages: u32,
    /// Pages the guest says it has given up.
    pub actual: u32,
}

/// What the balloon has done, for the control socket's metrics.
#[derive(Debug, Default)]
pub struct BalloonCounters {
    /// Ranges the guest reported free, and the bytes given back to the host for them.
    pub reported_ranges: AtomicU64,
    pub reported_bytes: AtomicU64,
    /// Pages the guest put in the balloon, and pages it took back out.
    pub inflated_pages: AtomicU64,
    pub deflated_pages: AtomicU64,
    /// Ranges that could not be released (not guest RAM, or madvise failed).
    pub refused_ranges: AtomicU64,
}

impl BalloonCounters {
    /// Counts and logs a range the guest named that could not be released.
    fn refuse(&self, what: &str, e: &ReleaseError) {
        self.refused_ranges.fetch_add(1, Ordering::Relaxed);
        crate::warn_limited!("virtio-balloon: {what} is refused: {e}");
    }
}

/// Gives the host pages behind `len` bytes of guest memory at `addr` back to the host. Only
/// whole pages are released; the range must lie inside one region of guest RAM. Returns the
/// bytes released.
pub fn release(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<u64, ReleaseError> {
    let not_ram = || ReleaseError::NotRam { addr, len };
    let end = addr.checked_add(len).ok_or_else(not_ram)?;
    let start = addr
        .checked_next_multiple_of(PAGE_SIZE)
        .ok_or_else(not_ram)?;
    let end = end - end % PAGE_SIZE;
    if start >= end {
        return Ok(0);
    }
    let bytes = end - start;
    let region = mem.find_region(GuestAddress(start)).ok_or_else(not_ram)?;
    let offset = start - region.start_addr().raw_value();
    if bytes > region.len() - offset {
        return Err(not_ram());
    }
    let host = region
        .get_host_address(MemoryRegionAddress(offset))
        .map_err(|_| not_ram())?;
    // SAFETY: [host, host + bytes) lies inside one mapping of guest memory (checked against
    // its region above), page-aligned at both ends as the mapping is. MADV_DONTNEED only
    // replaces its contents (zeros for anonymous memory, the file's pages for a private file
    // mapping); the mapping stays, so every reference into guest memory stays valid.
    let rc = unsafe { libc::madvise(host.cast(), bytes as usize, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(ReleaseError::Madvise {
            addr: start,
            len: bytes,
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        });
    }
    Ok(bytes)
}

/// Drains `queue`, handing each descriptor chain to `serve`, and completes every chain with
/// length 0 (the device writes nothing back). Returns whether the guest must be notified.
fn drain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut serve: impl FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>),
) -> Result<bool, BalloonError> {
    let mut used_any = false;
    // With EVENT_IDX the driver only notifies when told where to (avail_event): re-arm
    // after draining, and drain again if requests slipped in meanwhile.
    loop {
        queue
            .disable_notification(mem)
            .map_err(BalloonError::Queue)?;
        while let Some(chain) = queue.iter(mem).map_err(BalloonError::Queue)?.next() {
            let head = chain.head_index();
            serve(chain);
            queue.add_used(mem, head, 0).map_err(BalloonError::Used)?;
            used_any = true;
        }
        if !queue
            .enable_notification(mem)
            .map_err(BalloonError::Queue)?
        {
            break;
        }
    }
    if !used_any {
        return Ok(false);
    }
    queue.needs_notification(mem).map_err(BalloonError::Used)
}

/// Serves the reporting queue: every descriptor of every chain is a free range of guest
/// memory, released with `release` before the chain is returned (the guest reuses a range
/// only once it has it back). Returns whether the guest must be notified.
pub fn serve_reports(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    counters: &BalloonCounters,
    mut release: impl FnMut(u64, u64) -> Result<u64, ReleaseError>,
) -> Result<bool, BalloonError> {
    drain(queue, mem, |chain| {
        // The chain's iterator follows at most a queue's size of descriptors.
        for desc in chain {
            match release(desc.addr().raw_value(), u64::from(desc.len())) {
                Ok(bytes) => {
                    counters.reported_ranges.fetch_add(1, Ordering::Relaxed);
                    counters.reported_bytes.fetch_add(bytes, Ordering::Relaxed);
                }
                Err(e) => counters.refuse("a reported range", &e),
            }
        }
    })
}

/// The page frame numbers of one inflate or deflate request (little-endian u32s in the
/// chain's readable part; at most [`MAX_PFNS`]).
fn read_pfns(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
) -> Vec<u32> {
    let mut reader = match chain.reader(mem) {
        Ok(r) => r,
        Err(e) => {
            crate::warn_limited!("virtio-balloon: malformed descriptor chain: {e}");
            return vec![];
        }
    };
    let mut bytes = vec![0u8; reader.available_bytes().min(MAX_PFNS * 4)];
    if let Err(e) = std::io::Read::read_exact(&mut reader, &mut bytes) {
        crate::warn_limited!("virtio-balloon: cannot read a request: {e}");
        return vec![];
    }
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Serves the inflate queue: each page named is released (runs of consecutive pages in one
/// call). Returns whether the guest must be notified.
pub fn serve_inflate(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    counters: &BalloonCounters,
    mut release: impl FnMut(u64, u64) -> Result<u64, ReleaseError>,
) -> Result<bool, BalloonError> {
    drain(queue, mem, |chain| {
        let pfns = read_pfns(mem, chain);
        counters
            .inflated_pages
            .fetch_add(pfns.len() as u64, Ordering::Relaxed);
        let mut i = 0;
        while i < pfns.len() {
            let first = u64::from(pfns[i]);
            let mut count = 1;
            while i + count < pfns.len() && u64::from(pfns[i + count]) == first + count as u64 {
                count += 1;
            }
            i += count;
            if let Err(e) = release(first * PAGE_SIZE, count as u64 * PAGE_SIZE) {
                counters.refuse("an inflated page", &e);
            }
        }
    })
}

/// The virtio-balloon device.
pub struct Balloon {
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    acked_features: u64,
    config: BalloonState,
    active: Option<(GuestMemoryMmap, Arc<IrqTrigger>)>,
    broken: bool,
    counters: BalloonCounters,
}

impl Balloon {
    /// A new, inactive balloon that asks for no memory.
    pub fn new() -> std::io::Result<Self> {
        Ok(Balloon {
            queues: new_queues(&[QUEUE_SIZE; 3]),
            queue_events: new_queue_events(3)?,
            acked_features: 0,
            config: BalloonState::default(),
            active: None,
            broken: false,
            counters: BalloonCounters::default(),
        })
    }

    /// What the balloon has done so far.
    pub fn counters(&self) -> &BalloonCounters {
        &self.counters
    }

    fn reporting(&self) -> bool {
        self.acked_features & F_REPORTING != 0
    }

    fn process_queue(&mut self, index: usize) {
        let Some((mem, irq)) = &self.active else {
            return;
        };
        if self.broken || index >= self.queues_in_use() {
            return;
        }
        let queue = &mut self.queues[index];
        let counters = &self.counters;
        let releaser = |addr, len| release(mem, addr, len);
        let served = match index {
            INFLATE => serve_inflate(queue, mem, counters, releaser),
            DEFLATE => drain(queue, mem, |chain| {
                let pages = read_pfns(mem, chain).len() as u64;
                counters.deflated_pages.fetch_add(pages, Ordering::Relaxed);
            }),
            REPORTING => serve_reports(queue, mem, counters, releaser),
            _ => Ok(false),
        };
        match served {
            Ok(true) => irq.trigger(INT_VRING),
            Ok(false) => {}
            Err(e) => {
                // A corrupt ring stays corrupt: stop serving until the driver resets us.
                crate::warn_limited!("virtio-balloon: {e}; device stopped until reset");
                self.broken = true;
            }
        }
    }

    fn config_bytes(&self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[0..4].copy_from_slice(&self.config.num_pages.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.config.actual.to_le_bytes());
        // free_page_hint_cmd_id and poison_val stay 0: neither feature is offered.
        bytes
    }
}

impl MutEventSubscriber for Balloon {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let index = events.data() as usize;
        if events.event_set().contains(EventSet::IN) && index < self.queue_events.len() {
            // Draining the eventfd can only fail with EAGAIN, i.e. nothing to drain.
            let _ = self.queue_events[index].read();
            self.process_queue(index);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("virtio-balloon: cannot watch queue event {i}: {e}");
            }
        }
    }
}

impl snapshot::Persist for Balloon {
    type State = BalloonState;
    type Resources = ();
    type Error = std::io::Error;

    fn save(&self) -> BalloonState {
        self.config.clone()
    }

    /// A new device with the snapshot's config space: the transport restores its queues
    /// and features and activates it.
    fn restore((): (), state: &BalloonState) -> std::io::Result<Self> {
        let mut balloon = Balloon::new()?;
        balloon.config = state.clone();
        Ok(balloon)
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
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
    fn queues_in_use(&self) -> usize {
        if self.reporting() {
            3
        } else {
            2
        }
    }
    fn avail_features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX | F_REPORTING
    }
    fn set_acked_features(&mut self, acked: u64) {
        self.acked_features = acked;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| bytes.get(at).copied())
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's to write.
        if offset == 4 && data.len() == 4 {
            self.config.actual = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        } else {
            crate::warn_limited!(
                "virtio-balloon: {}-byte config write at {offset:#x}; only `actual` is writable",
                data.len()
            );
        }
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        self.active = Some((mem, irq));
        self.broken = false;
        // Requests may have been queued before DRIVER_OK.
        for index in 0..self.queues_in_use() {
            self.process_queue(index);
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
        self.acked_features = 0;
        self.config.actual = 0;
    }
    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("reported_ranges", get(&c.reported_ranges)),
            ("reported_bytes", get(&c.reported_bytes)),
            ("inflated_pages", get(&c.inflated_pages)),
            ("deflated_pages", get(&c.deflated_pages)),
            ("refused_ranges", get(&c.refused_ranges)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshot::Persist;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;

    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    /// 1 MiB of RAM at 0 and 1 MiB at 16 MiB, with a hole between.
    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x100_0000), 0x10_0000),
        ])
        .unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn fill(m: &GuestMemoryMmap, addr: u64, len: usize) {
        m.write_slice(&vec![0xaa; len], GuestAddress(addr)).unwrap();
    }

    fn read(m: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        m.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }

    #[test]
    fn release_gives_back_whole_pages_of_guest_ram_only() {
        let m = mem();
        fill(&m, 0x8000, 0x4000);
        // Only the whole pages inside the range go: 0x9000..0xb000.
        assert_eq!(release(&m, 0x8800, 0x3000), Ok(0x2000));
        assert_eq!(read(&m, 0x8000, 0x1000), vec![0xaa; 0x1000]);
        assert_eq!(read(&m, 0x9000, 0x2000), vec![0; 0x2000]);
        assert_eq!(read(&m, 0xb000, 0x1000), vec![0xaa; 0x1000]);
        // Less than a page: nothing.
        assert_eq!(release(&m, 0x8000, 0xfff), Ok(0));
        // Outside RAM, across the hole, past the end, wrapping around: refused.
        for (addr, len) in [
            (0x20_0000, 0x1000),
            (0xf_f000, 0x2000),
            (0x110_0000, 0x1000),
            (u64::MAX - 0xfff, 0x2000),
        ] {
            assert_eq!(
                release(&m, addr, len),
                Err(ReleaseError::NotRam { addr, len }),
                "{addr:#x}+{len:#x}"
            );
        }
        // The second region.
        fill(&m, 0x100_0000, 0x1000);
        assert_eq!(release(&m, 0x100_0000, 0x1000), Ok(0x1000));
        assert_eq!(read(&m, 0x100_0000, 0x1000), vec![0; 0x1000]);
    }

    #[test]
    fn reported_ranges_are_released_and_every_chain_returned() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // A chain of two ranges, then one whose range is not RAM.
        vq.add_desc_chains(
            &[
                desc(0x2_0000, 0x2000, WRITE | NEXT, 1),
                desc(0x3_0000, 0x1000, WRITE, 0),
                desc(0x50_0000, 0x1000, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let counters = BalloonCounters::default();
        let mut seen = vec![];
        let notify = serve_reports(&mut q, &m, &counters, |a, l| {
            seen.push((a, l));
            release(&m, a, l)
        })
        .unwrap();
        assert!(notify);
        assert_eq!(
            seen,
            vec![(0x2_0000, 0x2000), (0x3_0000, 0x1000), (0x50_0000, 0x1000)]
        );
        assert_eq!(q.next_used(), 2);
        assert_eq!(counters.reported_ranges.load(Ordering::Relaxed), 2);
        assert_eq!(counters.reported_bytes.load(Ordering::Relaxed), 0x3000);
        assert_eq!(counters.refused_ranges.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn inflated_pages_are_released_in_runs() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // Page numbers 0x40, 0x41, 0x42, 0x50 and one outside RAM, at 0x8000.
        let pfns: Vec<u8> = [0x40u32, 0x41, 0x42, 0x50, 0xf_0000]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        m.write_slice(&pfns, GuestAddress(0x8000)).unwrap();
        vq.add_desc_chains(&[desc(0x8000, pfns.len() as u32, 0, 0)], 0)
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let counters = BalloonCounters::default();
        let mut seen = vec![];
        serve_inflate(&mut q, &m, &counters, |a, l| {
            seen.push((a, l));
            Ok(l)
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                (0x40_000, 0x3000),
                (0x50_000, 0x1000),
                (0xf_0000 * PAGE_SIZE, 0x1000)
            ]
        );
        assert_eq!(counters.inflated_pages.load(Ordering::Relaxed), 5);
        assert_eq!(q.next_used(), 1);
    }

    #[test]
    fn a_corrupt_ring_is_an_error_not_a_panic() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        vq.avail().idx().store(1000);
        let counters = BalloonCounters::default();
        assert!(matches!(
            serve_reports(&mut q, &m, &counters, |_, l| Ok(l)),
            Err(BalloonError::Queue(_))
        ));
    }

    #[test]
    fn the_reporting_queue_is_in_use_only_once_negotiated() {
        let mut b = Balloon::new().unwrap();
        assert_eq!(b.queues().len(), 3);
        b.set_acked_features(features::VERSION_1);
        assert_eq!(b.queues_in_use(), 2);
        b.set_acked_features(features::VERSION_1 | F_REPORTING);
        assert_eq!(b.queues_in_use(), 3);
    }

    #[test]
    fn config_space_round_trips_and_only_actual_is_writable() {
        let mut b = Balloon::new().unwrap();
        b.config.num_pages = 7;
        b.write_config(4, &9u32.to_le_bytes());
        b.write_config(0, &1u32.to_le_bytes());
        let mut data = [0u8; 4];
        b.read_config(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), 7);
        b.read_config(4, &mut data);
        assert_eq!(u32::from_le_bytes(data), 9);
        // Past the end, and at an offset that would overflow: zeros, no panic.
        b.read_config(14, &mut data);
        assert_eq!(data, [0; 4]);
        b.read_config(u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
        // Save, restore, save: the same state.
        let saved = b.save();
        let restored = Balloon::restore((), &saved).unwrap();
        assert_eq!(restored.save(), saved);
        assert_eq!(
            saved,
            BalloonState {
                num_pages: 7,
                actual: 9
            }
        );
    }
}
