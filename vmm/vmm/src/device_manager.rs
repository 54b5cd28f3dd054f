//! Puts devices on the buses and wires them to KVM: irqfds for interrupts, ioeventfds for
//! virtio queue notifications, and `virtio_mmio.device=` arguments so the guest finds them.

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{FIRST_VIRTIO_IRQ, IOAPIC_PINS, VIRTIO_MMIO_BASE};
use crate::virtio_snapshot::{SnapshotDevice, Snapshotted, VirtioSlot};
use devices::bus::{Bus, BusError};
use devices::legacy::i8042::{I8042, I8042_BASE, I8042_LEN};
use devices::legacy::serial::{SerialDevice, COM1_BASE, COM1_IRQ, COM1_LEN};
use devices::legacy::EventFdTrigger;
use devices::virtio::mmio::{
    Describe, MmioRestoreError, MmioTransport, MmioTransportResources, MmioTransportState, MMIO_LEN,
};
use devices::virtio::IrqTrigger;
use devices::GuestMemoryMmap;
use snapshot::Persist;

/// Offset of QueueNotify in a virtio-mmio window.
const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

/// Errors attaching devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("KVM refused {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("no IRQ left for another virtio device")]
    OutOfIrqs,
}

/// A subscriber of the VMM's event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The VM's devices, their buses and the kernel arguments that announce them.
pub struct DeviceManager {
    pub pio: Bus,
    pub mmio: Bus,
    pub subscribers: Vec<Subscriber>,
    pub cmdline: Vec<String>,
    /// Every virtio transport, for the state dump on SIGUSR1.
    pub transports: Vec<Arc<Mutex<dyn Describe>>>,
    /// Every virtio interrupt line, re-asserted while the guest leaves it unacknowledged.
    pub irqs: Vec<Arc<IrqTrigger>>,
    /// Every virtio device in layout order, for snapshots.
    pub virtio: Vec<(VirtioSlot, Arc<Mutex<dyn SnapshotDevice>>)>,
    next_virtio: u32,
}

impl DeviceManager {
    /// No devices yet.
    pub fn new() -> Self {
        DeviceManager {
            pio: Bus::new(),
            mmio: Bus::new(),
            subscribers: Vec::new(),
            cmdline: Vec::new(),
            transports: Vec::new(),
            irqs: Vec::new(),
            virtio: Vec::new(),
            next_virtio: 0,
        }
    }

    /// COM1, its interrupt an irqfd on IRQ 4.
    pub fn add_serial(
        &mut self,
        vm: &VmFd,
        sink: devices::legacy::serial::ConsoleSink,
    ) -> Result<Arc<Mutex<SerialDevice>>, DeviceError> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&irq, COM1_IRQ)
            .map_err(|source| DeviceError::Kvm {
                what: "the serial irqfd",
                source,
            })?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            EventFdTrigger::new(irq),
            sink,
        )));
        self.pio.insert(serial.clone(), COM1_BASE, COM1_LEN)?;
        Ok(serial)
    }

    /// COM1 restored from a snapshot's `state`, writing to `sink`.
    pub fn restore_serial(
        &mut self,
        vm: &VmFd,
        sink: devices::legacy::serial::ConsoleSink,
        state: &devices::legacy::serial::SerialDeviceState,
    ) -> Result<Arc<Mutex<SerialDevice>>, crate::snapshot::VmSnapshotError> {
        use crate::snapshot::VmSnapshotError;
        use snapshot::Persist;
        let attach = |reason: String| VmSnapshotError::Attach {
            what: "serial device",
            reason,
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| attach(e.to_string()))?;
        vm.register_irqfd(&irq, COM1_IRQ)
            .map_err(|e| attach(format!("KVM refused its irqfd: {e}")))?;
        let serial = Arc::new(Mutex::new(SerialDevice::restore(
            (EventFdTrigger::new(irq), sink),
            state,
        )?));
        self.pio
            .insert(serial.clone(), COM1_BASE, COM1_LEN)
            .map_err(|e| attach(e.to_string()))?;
        Ok(serial)
    }

    /// The i8042, its reset line signalling `reset`.
    pub fn add_i8042(&mut self, reset: EventFd) -> Result<(), DeviceError> {
        let dev = Arc::new(Mutex::new(I8042::new(EventFdTrigger::new(reset))));
        self.pio.insert(dev, I8042_BASE, I8042_LEN)?;
        Ok(())
    }

    /// The window and IRQ the next virtio device gets.
    fn next_slot(&self) -> Result<(u64, u32), DeviceError> {
        let irq = FIRST_VIRTIO_IRQ + self.next_virtio;
        if irq >= IOAPIC_PINS {
            return Err(DeviceError::OutOfIrqs);
        }
        Ok((
            VIRTIO_MMIO_BASE + u64::from(self.next_virtio) * MMIO_LEN,
            irq,
        ))
    }

    /// A new interrupt line for a device on `irq`.
    fn irq_line(vm: &VmFd, irq: u32) -> Result<Arc<IrqTrigger>, DeviceError> {
        let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&irq_evt, irq)
            .map_err(|source| DeviceError::Kvm {
                what: "a virtio irqfd",
                source,
            })?;
        Ok(Arc::new(IrqTrigger::new(irq_evt)))
    }

    /// A virtio device in the next MMIO window with the next IRQ.
    pub fn add_virtio<D>(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        device: D,
    ) -> Result<Arc<Mutex<MmioTransport<D>>>, DeviceError>
    where
        D: Snapshotted,
        D::Error: std::fmt::Display,
    {
        let (mmio_base, irq) = self.next_slot()?;
        let slot = VirtioSlot {
            kind: device.kind(),
            mmio_base,
            irq,
        };
        let irq_trigger = Self::irq_line(vm, irq)?;
        let transport = MmioTransport::new(device, mem.clone(), irq_trigger);
        self.place(vm, slot, transport)
    }

    /// A virtio device restored from `state`, in the window and on the IRQ the snapshot's
    /// `slot` names, which must be the next ones here (the layout is the snapshot's).
    pub fn restore_virtio<D>(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        slot: &VirtioSlot,
        state: &MmioTransportState<D::State>,
        resources: D::Resources,
    ) -> Result<Arc<Mutex<MmioTransport<D>>>, RestoreDeviceError>
    where
        D: Snapshotted,
        D::Error: std::fmt::Display,
    {
        let (mmio_base, irq) = self.next_slot()?;
        if (mmio_base, irq) != (slot.mmio_base, slot.irq) {
            return Err(RestoreDeviceError::Layout(format!(
                "the snapshot has {slot}; this VM puts its next device at {mmio_base:#x} on IRQ {irq}"
            )));
        }
        let irq_trigger = Self::irq_line(vm, irq)?;
        let transport = MmioTransport::<D>::restore(
            MmioTransportResources {
                mem: mem.clone(),
                irq: irq_trigger,
                device: resources,
            },
            state,
        )?;
        let kind = transport.device().kind();
        if kind != slot.kind {
            return Err(RestoreDeviceError::Layout(format!(
                "the snapshot's state of {slot} restored {kind}"
            )));
        }
        // A notification the guest gave just before the snapshot was consumed by the
        // snapshotted VM's eventfd, not this one's; with EVENT_IDX the guest will not give it
        // again. Every queue is looked at once, as if notified (a spurious notification is
        // harmless).
        for evt in transport.device().queue_events() {
            evt.write(1).map_err(DeviceError::EventFd)?;
        }
        Ok(self.place(vm, slot.clone(), transport)?)
    }

    /// Puts `transport` on the MMIO bus at `slot` and wires its queue notifications.
    fn place<D>(
        &mut self,
        vm: &VmFd,
        slot: VirtioSlot,
        transport: MmioTransport<D>,
    ) -> Result<Arc<Mutex<MmioTransport<D>>>, DeviceError>
    where
        D: Snapshotted,
        D::Error: std::fmt::Display,
    {
        let base = slot.mmio_base;
        for (index, evt) in transport.device().queue_events().iter().enumerate() {
            // The guest's notify write never leaves the kernel: KVM signals the eventfd.
            vm.register_ioevent(
                evt,
                &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                index as u32,
            )
            .map_err(|source| DeviceError::Kvm {
                what: "a virtio queue ioeventfd",
                source,
            })?;
        }
        self.irqs.push(transport.irq().clone());
        let transport = Arc::new(Mutex::new(transport));
        self.mmio.insert(transport.clone(), base, MMIO_LEN)?;
        self.next_virtio += 1;
        self.subscribers.push(transport.clone());
        self.transports.push(transport.clone());
        self.cmdline
            .push(format!("virtio_mmio.device=4K@{base:#x}:{}", slot.irq));
        self.virtio.push((slot, transport.clone()));
        Ok(transport)
    }
}

/// Why a snapshot's virtio device cannot be restored here.
#[derive(Debug, thiserror::Error)]
pub enum RestoreDeviceError {
    #[error("the snapshot's device layout differs from this VM's: {0}")]
    Layout(String),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Transport(#[from] MmioRestoreError),
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}
