//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2).
//!
//! It owns the register file the guest's virtio-mmio driver programs: feature negotiation,
//! queue configuration and the status state machine. On DRIVER_OK it validates the queues and
//! activates the device. Every register access comes from a guest and is checked: a
//! misaligned or out-of-range access is ignored (and logged, rate-limited), a queue setting
//! outside the permitted state is dropped, a queue that fails validation puts the device in
//! DEVICE_NEEDS_RESET instead of being used.

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;

use super::{features, status, IrqTrigger, QueueSnapshot, VirtioDevice, INT_CONFIG};
use crate::bus::BusDevice;
use crate::GuestMemoryMmap;

/// Size of one device's MMIO window.
pub const MMIO_LEN: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4854_5242; // "BRTH"
const CONFIG_SPACE: u64 = 0x100;

mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// The transport's state in a snapshot, with its device's inside: the transport alone owns
/// the negotiated features, the status and the queues (a device's own state holds only what
/// is its own: its config space and backend settings).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmioTransportState<S> {
    /// The virtio device ID: a restore into a device of another type is refused.
    pub device_type: u32,
    pub device_status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub acked_features: u64,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub queues: Vec<QueueSnapshot>,
    pub device: S,
}

/// What restoring a transport needs: the restored VM's memory and interrupt line, and its
/// device's own resources.
pub struct MmioTransportResources<R> {
    pub mem: GuestMemoryMmap,
    pub irq: Arc<IrqTrigger>,
    pub device: R,
}

/// Why a transport cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum MmioRestoreError {
    #[error(
        "the snapshot holds a virtio device of type {found} where this VM has type {expected}"
    )]
    DeviceType { expected: u32, found: u32 },
    #[error("the snapshot's virtio device of type {device_type} has {found} queues; the device has {expected}")]
    QueueCount {
        device_type: u32,
        expected: usize,
        found: usize,
    },
    #[error(
        "queue {index} of virtio device type {device_type} is invalid in the snapshot: {reason}"
    )]
    Queue {
        device_type: u32,
        index: usize,
        reason: String,
    },
    #[error("virtio device type {device_type} accepted features {features:#x} it does not offer")]
    Features { device_type: u32, features: u64 },
    #[error("virtio device type {device_type}: {reason}")]
    Device { device_type: u32, reason: String },
}

/// A virtio device behind its virtio-mmio register window.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    device_status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    config_generation: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Puts `device` behind a transport that raises interrupts through `irq`.
    pub fn new(device: D, mem: GuestMemoryMmap, irq: Arc<IrqTrigger>) -> Self {
        MmioTransport {
            device,
            mem,
            irq,
            device_status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            config_generation: 0,
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The interrupt line, for irqfd registration.
    pub fn irq(&self) -> &Arc<IrqTrigger> {
        &self.irq
    }

    /// One line per queue of what the device and the driver see: the device's positions
    /// and the rings' indexes and event fields as they are in guest memory, the interrupt
    /// status and how many interrupts were raised. For diagnosing a stalled device (the
    /// VMM writes it on SIGUSR1); read without stopping anything, so only a snapshot.
    pub fn describe(&self) -> String {
        use vm_memory::{Bytes, GuestAddress};
        let read_u16 = |addr: u64| -> String {
            self.mem
                .read_obj::<u16>(GuestAddress(addr))
                .map_or_else(|_| "?".to_string(), |v| v.to_string())
        };
        let mut out = format!(
            "virtio device type {} status {:#x} interrupt status {:#x} interrupts raised {} (again after no ack: {})",
            self.device.device_type(),
            self.device_status,
            self.irq.status(),
            self.irq.raised(),
            self.irq.reasserted()
        );
        for (i, q) in self.device.queue_snapshots().iter().enumerate() {
            if !q.ready {
                continue;
            }
            let size = u64::from(q.size);
            out.push_str(&format!(
                "\n  queue {i}: size {} next_avail {} next_used {} event_idx {}; guest: avail.flags {} avail.idx {} used_event {}; used.flags {} used.idx {} avail_event {}",
                q.size,
                q.next_avail,
                q.next_used,
                q.event_idx,
                read_u16(q.avail_ring),
                read_u16(q.avail_ring + 2),
                read_u16(q.avail_ring + 4 + 2 * size),
                read_u16(q.used_ring),
                read_u16(q.used_ring + 2),
                read_u16(q.used_ring + 4 + 8 * size),
            ));
        }
        out
    }

    fn offered_features(&self) -> u64 {
        self.device.avail_features() | features::VERSION_1
    }

    fn with_selected_queue(
        &mut self,
        f: impl FnOnce(&mut virtio_queue::Queue) -> Result<(), virtio_queue::Error>,
    ) {
        // Queues may only be configured between FEATURES_OK and DRIVER_OK (4.2.3.2).
        if self.device_status & status::FEATURES_OK == 0
            || self.device_status & (status::DRIVER_OK | status::FAILED) != 0
        {
            crate::warn_limited!(
                "virtio-mmio: queue configured in device status {:#x}; ignored",
                self.device_status
            );
            return;
        }
        let queue_sel = self.queue_sel;
        match self.device.queues_mut().get_mut(queue_sel as usize) {
            Some(q) => {
                if let Err(e) = f(q) {
                    crate::warn_limited!("virtio-mmio: queue {queue_sel} setting refused: {e}");
                }
            }
            None => crate::warn_limited!(
                "virtio-mmio: access to missing queue {}; ignored",
                self.queue_sel
            ),
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in self.device.queues_mut() {
            q.reset();
        }
        self.device_status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.irq.set_status(0);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.device_status;
        // The driver only ever adds bits (3.1.1); anything else is ignored.
        if value & old != old {
            crate::warn_limited!("virtio-mmio: status {old:#x} -> {value:#x} clears bits; ignored");
            return;
        }
        let added = value & !old;
        if added & status::FEATURES_OK != 0 {
            if self.acked_features & features::VERSION_1 == 0 {
                // Leaving FEATURES_OK unset tells the driver the negotiation failed.
                crate::warn_limited!("virtio-mmio: driver did not accept VERSION_1");
                self.device_status = value & !status::FEATURES_OK;
                return;
            }
            self.device.set_acked_features(self.acked_features);
        }
        if added & status::DRIVER_OK != 0 {
            if old & status::FEATURES_OK == 0 {
                crate::warn_limited!("virtio-mmio: DRIVER_OK before FEATURES_OK; ignored");
                return;
            }
            if let Err(e) = self.activate() {
                crate::warn_limited!(
                    "virtio-mmio: device type {} cannot be activated: {e}",
                    self.device.device_type()
                );
                self.device_status = value | status::DEVICE_NEEDS_RESET;
                self.config_generation = self.config_generation.wrapping_add(1);
                self.irq.trigger(INT_CONFIG);
                return;
            }
        }
        self.device_status = value;
    }

    fn activate(&mut self) -> Result<(), super::ActivateError> {
        let event_idx = self.acked_features & features::RING_EVENT_IDX != 0;
        let in_use = self.device.queues_in_use();
        for (index, q) in self.device.queues_mut().iter_mut().enumerate().take(in_use) {
            q.set_event_idx(event_idx);
            if !q.ready() || !q.is_valid(&self.mem) {
                return Err(super::ActivateError::InvalidQueue { index });
            }
        }
        self.device.activate(self.mem.clone(), self.irq.clone())
    }

    fn read_u32(&self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self
                .device
                .queues()
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self
                .device
                .queues()
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.irq.status(),
            reg::STATUS => self.device_status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                crate::warn_limited!("virtio-mmio: read of register {offset:#x}; returning 0");
                0
            }
        }
    }

    fn write_u32(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                if self.device_status & status::FEATURES_OK != 0 {
                    crate::warn_limited!("virtio-mmio: features written after FEATURES_OK");
                    return;
                }
                let (shift, mask) = match self.driver_features_sel {
                    0 => (0, 0xffff_ffffu64),
                    1 => (32, 0xffff_ffff_0000_0000u64),
                    _ => return,
                };
                // Bits the device did not offer are dropped, not accepted.
                let bits = (u64::from(value) << shift) & self.offered_features();
                self.acked_features = (self.acked_features & !mask) | bits;
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => {
                let Ok(size) = u16::try_from(value) else {
                    crate::warn_limited!("virtio-mmio: queue size {value} out of range");
                    return;
                };
                self.with_selected_queue(|q| q.try_set_size(size));
            }
            reg::QUEUE_READY => self.with_selected_queue(|q| {
                q.set_ready(value == 1);
                Ok(())
            }),
            reg::QUEUE_NOTIFY => {
                // Normally an ioeventfd catches this write before it exits to userspace.
                match self.device.queue_events().get(value as usize) {
                    Some(evt) => {
                        if let Err(e) = evt.write(1) {
                            crate::warn_limited!("virtio-mmio: cannot signal queue {value}: {e}");
                        }
                    }
                    None => crate::warn_limited!("virtio-mmio: notify of missing queue {value}"),
                }
            }
            reg::INTERRUPT_ACK => self.irq.ack(value),
            reg::STATUS => self.set_status(value),
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => self.with_selected_queue(|q| {
                let addr = merge_half(q.desc_table(), offset == reg::QUEUE_DESC_HIGH, value);
                q.try_set_desc_table_address(addr)
            }),
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH => self.with_selected_queue(|q| {
                let addr = merge_half(q.avail_ring(), offset == reg::QUEUE_DRIVER_HIGH, value);
                q.try_set_avail_ring_address(addr)
            }),
            reg::QUEUE_DEVICE_LOW | reg::QUEUE_DEVICE_HIGH => self.with_selected_queue(|q| {
                let addr = merge_half(q.used_ring(), offset == reg::QUEUE_DEVICE_HIGH, value);
                q.try_set_used_ring_address(addr)
            }),
            _ => crate::warn_limited!("virtio-mmio: write of register {offset:#x}; ignored"),
        }
    }
}

/// A transport of any device, for the VMM's diagnostics.
pub trait Describe: Send {
    fn describe(&self) -> String;
}

impl<D: VirtioDevice> Describe for MmioTransport<D> {
    fn describe(&self) -> String {
        MmioTransport::describe(self)
    }
}

impl<D> snapshot::Persist for MmioTransport<D>
where
    D: VirtioDevice + snapshot::Persist,
    D::Error: std::fmt::Display,
{
    type State = MmioTransportState<D::State>;
    type Resources = MmioTransportResources<D::Resources>;
    type Error = MmioRestoreError;

    fn save(&self) -> Self::State {
        MmioTransportState {
            device_type: self.device.device_type(),
            device_status: self.device_status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.irq.status(),
            config_generation: self.config_generation,
            queues: self.device.queue_snapshots(),
            device: self.device.save(),
        }
    }

    fn restore(res: Self::Resources, state: &Self::State) -> Result<Self, MmioRestoreError> {
        let mut device =
            D::restore(res.device, &state.device).map_err(|e| MmioRestoreError::Device {
                device_type: state.device_type,
                reason: e.to_string(),
            })?;
        let device_type = device.device_type();
        if device_type != state.device_type {
            return Err(MmioRestoreError::DeviceType {
                expected: device_type,
                found: state.device_type,
            });
        }
        if device.queues().len() != state.queues.len() {
            return Err(MmioRestoreError::QueueCount {
                device_type,
                expected: device.queues().len(),
                found: state.queues.len(),
            });
        }
        for (index, (q, snap)) in device
            .queues_mut()
            .iter_mut()
            .zip(&state.queues)
            .enumerate()
        {
            let invalid = |reason: String| MmioRestoreError::Queue {
                device_type,
                index,
                reason,
            };
            if snap.max_size != q.max_size() {
                return Err(invalid(format!(
                    "its maximum size is {} where the device's is {}",
                    snap.max_size,
                    q.max_size()
                )));
            }
            *q = snap.to_queue().map_err(|e| invalid(e.to_string()))?;
        }
        let mut t = MmioTransport::new(device, res.mem, res.irq);
        if state.acked_features & !t.offered_features() != 0 {
            return Err(MmioRestoreError::Features {
                device_type,
                features: state.acked_features,
            });
        }
        t.device_status = state.device_status;
        t.device_features_sel = state.device_features_sel;
        t.driver_features_sel = state.driver_features_sel;
        t.acked_features = state.acked_features;
        t.queue_sel = state.queue_sel;
        t.config_generation = state.config_generation;
        t.irq.set_status(state.interrupt_status);
        if t.device_status & status::FEATURES_OK != 0 {
            t.device.set_acked_features(t.acked_features);
        }
        // A device the driver started runs again; one that failed waits for its reset.
        if t.device_status & status::DRIVER_OK != 0
            && t.device_status & (status::DEVICE_NEEDS_RESET | status::FAILED) == 0
        {
            t.activate().map_err(|e| MmioRestoreError::Device {
                device_type,
                reason: format!("cannot be activated again: {e}"),
            })?;
        }
        Ok(t)
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            crate::warn_limited!(
                "virtio-mmio: {}-byte read at {offset:#x}; registers are 32-bit",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_u32(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            crate::warn_limited!(
                "virtio-mmio: {}-byte write at {offset:#x}; registers are 32-bit",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            crate::warn_limited!("virtio-mmio: misaligned write at {offset:#x}");
            return;
        }
        self.write_u32(offset, u32::from_le_bytes(bytes));
    }
}

impl<D: VirtioDevice> MutEventSubscriber for MmioTransport<D> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.device.process(events, ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.device.init(ops);
    }
}

/// Replaces the low or high half of a 64-bit guest address.
fn merge_half(current: u64, high: bool, value: u32) -> vm_memory::GuestAddress {
    let merged = if high {
        (current & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (current & !0xffff_ffff) | u64::from(value)
    };
    vm_memory::GuestAddress(merged)
}

/// Reads `data.len()` bytes of a config space laid out in `config`, with out-of-range bytes
/// reading as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::virtio::{new_queue_events, new_queues, ActivateError};
    use virtio_queue::Queue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    pub struct Dummy {
        queues: Vec<Queue>,
        evts: Vec<EventFd>,
        pub acked: u64,
        pub active: bool,
    }

    impl Dummy {
        pub fn new() -> Self {
            Dummy {
                queues: new_queues(&[16, 16]),
                evts: new_queue_events(2).unwrap(),
                acked: 0,
                active: false,
            }
        }
    }

    impl MutEventSubscriber for Dummy {
        fn process(&mut self, _: Events, _: &mut EventOps) {}
        fn init(&mut self, _: &mut EventOps) {}
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queues(&self) -> &[Queue] {
            &self.queues
        }
        fn queues_mut(&mut self) -> &mut [Queue] {
            &mut self.queues
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn avail_features(&self) -> u64 {
            1 << 3
        }
        fn set_acked_features(&mut self, acked: u64) {
            self.acked = acked;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&[1, 2, 3, 4], offset, data);
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(
            &mut self,
            _: GuestMemoryMmap,
            _: Arc<IrqTrigger>,
        ) -> Result<(), ActivateError> {
            self.active = true;
            Ok(())
        }
        fn reset(&mut self) {
            self.active = false;
        }
        fn is_activated(&self) -> bool {
            self.active
        }
    }

    fn transport() -> MmioTransport<Dummy> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        MmioTransport::new(Dummy::new(), mem, irq)
    }

    fn w(t: &mut MmioTransport<Dummy>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn r(t: &mut MmioTransport<Dummy>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn setup_queue(t: &mut MmioTransport<Dummy>, index: u32, base: u64) {
        w(t, reg::QUEUE_SEL, index);
        w(t, reg::QUEUE_NUM, 16);
        w(t, reg::QUEUE_DESC_LOW, base as u32);
        w(t, reg::QUEUE_DRIVER_LOW, (base + 0x100) as u32);
        w(t, reg::QUEUE_DEVICE_LOW, (base + 0x200) as u32);
        w(t, reg::QUEUE_READY, 1);
    }

    fn negotiate(t: &mut MmioTransport<Dummy>) {
        w(t, reg::STATUS, status::ACKNOWLEDGE);
        w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, 0xffff_ffff);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, 1);
        w(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    #[test]
    fn identity_registers() {
        let mut t = transport();
        assert_eq!(r(&mut t, reg::MAGIC), MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1, "VERSION_1 offered");
        let mut cfg = [0u8; 2];
        t.read(0x102, &mut cfg);
        assert_eq!(cfg, [3, 4]);
        t.read(0x104, &mut cfg);
        assert_eq!(cfg, [0, 0]);
    }

    #[test]
    fn full_negotiation_activates_and_reset_deactivates() {
        let mut t = transport();
        negotiate(&mut t);
        assert_eq!(
            t.device().acked,
            (1 << 3) | features::VERSION_1,
            "unoffered bits dropped"
        );
        setup_queue(&mut t, 0, 0x1000);
        setup_queue(&mut t, 1, 0x2000);
        w(&mut t, reg::STATUS, 0xf);
        assert!(t.device().active);
        assert_eq!(r(&mut t, reg::STATUS), 0xf);
        w(&mut t, reg::STATUS, 0);
        assert!(!t.device().active);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        w(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn hostile_register_use_is_contained() {
        let mut t = transport();
        // Queue setup before FEATURES_OK is dropped.
        setup_queue(&mut t, 0, 0x1000);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
        // Without VERSION_1, FEATURES_OK does not stick.
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        w(&mut t, reg::STATUS, 0);
        negotiate(&mut t);
        // A queue outside guest memory: activation fails, device needs reset.
        setup_queue(&mut t, 0, 0x1000);
        setup_queue(&mut t, 1, 0xffff_f000);
        w(&mut t, reg::STATUS, 0xf);
        assert!(!t.device().active);
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, reg::INTERRUPT_STATUS) & INT_CONFIG, 0);
        // Odd sizes, misalignment, missing queues: ignored without panic.
        t.write(reg::STATUS, &[1, 2]);
        t.write(0x71, &[0; 4]);
        w(&mut t, reg::QUEUE_SEL, 99);
        w(&mut t, reg::QUEUE_NUM, 16);
        w(&mut t, reg::QUEUE_NOTIFY, 99);
        let mut b = [0u8; 8];
        t.read(reg::STATUS, &mut b);
        assert_eq!(b, [0; 8]);
        let mut b = [0u8; 4];
        t.read(u64::MAX, &mut b);
    }

    #[test]
    fn notify_signals_the_queue_event() {
        let mut t = transport();
        w(&mut t, reg::QUEUE_NOTIFY, 1);
        assert_eq!(t.device().queue_events()[1].read().unwrap(), 1);
    }

    /// An entropy device the way the guest's driver leaves it: features negotiated, its
    /// queue configured, DRIVER_OK, an interrupt pending.
    fn running_rng(mem: &GuestMemoryMmap) -> MmioTransport<crate::virtio::rng::Rng> {
        let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mut t = MmioTransport::new(crate::virtio::rng::Rng::new().unwrap(), mem.clone(), irq);
        let w = |t: &mut MmioTransport<_>, off: u64, v: u32| t.write(off, &v.to_le_bytes());
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_NUM, 64);
        w(&mut t, reg::QUEUE_DESC_LOW, 0x1000);
        w(&mut t, reg::QUEUE_DRIVER_LOW, 0x2000);
        w(&mut t, reg::QUEUE_DEVICE_LOW, 0x3000);
        w(&mut t, reg::QUEUE_READY, 1);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert!(t.device().is_activated());
        t.irq().trigger(super::super::INT_VRING);
        t
    }

    #[test]
    fn state_survives_save_restore_save() {
        use snapshot::Persist;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let t = running_rng(&mem);
        let mut saved = t.save();
        assert_eq!(saved.device_type, 4);
        assert_eq!(saved.acked_features, features::VERSION_1);
        assert_eq!(saved.interrupt_status, super::super::INT_VRING);
        assert_eq!(saved.queues[0].size, 64);
        // Positions part-way round the ring.
        saved.queues[0].next_avail = 7;
        saved.queues[0].next_used = 5;
        let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let restored = MmioTransport::<crate::virtio::rng::Rng>::restore(
            MmioTransportResources {
                mem: mem.clone(),
                irq: irq.clone(),
                device: (),
            },
            &saved,
        )
        .unwrap();
        assert_eq!(restored.save(), saved);
        assert!(
            restored.device().is_activated(),
            "the driver had started it"
        );
        assert_eq!(
            irq.status(),
            super::super::INT_VRING,
            "the pending interrupt"
        );
        assert_eq!(restored.device().queues()[0].next_avail(), 7);
    }

    #[test]
    fn a_snapshot_of_another_layout_is_refused_by_name() {
        use snapshot::Persist;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let saved = running_rng(&mem).save();
        let restore = |state: &MmioTransportState<crate::virtio::rng::RngState>| {
            let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
            let res = MmioTransportResources {
                mem: mem.clone(),
                irq,
                device: (),
            };
            MmioTransport::<crate::virtio::rng::Rng>::restore(res, state)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let mut other = saved.clone();
        other.device_type = 19;
        assert!(restore(&other).contains("type 19 where this VM has type 4"));
        let mut queues = saved.clone();
        queues.queues.push(queues.queues[0]);
        assert!(restore(&queues).contains("has 2 queues; the device has 1"));
        let mut size = saved.clone();
        size.queues[0].size = 3;
        assert!(restore(&size).contains("queue 0 of virtio device type 4 is invalid"));
        let mut max = saved.clone();
        max.queues[0].max_size = 1024;
        assert!(restore(&max).contains("maximum size is 1024"));
        let mut features = saved.clone();
        features.acked_features |= 1 << 40;
        assert!(restore(&features).contains("features"));
        // A queue outside guest memory: the device cannot start again.
        let mut outside = saved;
        outside.queues[0].desc_table = 0x4000_0000;
        assert!(restore(&outside).contains("cannot be activated again"));
    }
}
