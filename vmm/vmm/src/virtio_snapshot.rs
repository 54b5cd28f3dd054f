//! The virtio devices of a snapshot: which device sits in which MMIO window on which IRQ
//! (the layout, checked before anything is restored), and each transport's state with its
//! device's inside.
//!
//! The layout is the VM's, so a restore builds the same devices in the same order; what
//! differs per VM (the vsock's Unix socket, a share's host directory) comes from the
//! restoring VM's configuration, matched to the snapshot's devices by kind and tag. A
//! snapshot device the configuration lacks, or a configured device the snapshot lacks, is
//! refused by name.

use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use devices::virtio::balloon::{Balloon, BalloonState};
use devices::virtio::fs::{Fs, FsState};
use devices::virtio::mmio::{MmioTransport, MmioTransportState};
use devices::virtio::net::{Net, NetState};
use devices::virtio::rng::{Rng, RngState};
use devices::virtio::vsock::{Vsock, VsockState};
use devices::virtio::VirtioDevice;
use snapshot::Persist;

/// What a virtio device is, as far as the layout goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum VirtioKind {
    Rng,
    Vsock,
    Balloon,
    Net,
    Fs { tag: String },
}

impl std::fmt::Display for VirtioKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VirtioKind::Rng => write!(f, "virtio-rng"),
            VirtioKind::Vsock => write!(f, "virtio-vsock"),
            VirtioKind::Balloon => write!(f, "virtio-balloon"),
            VirtioKind::Net => write!(f, "virtio-net"),
            VirtioKind::Fs { tag } => write!(f, "the virtio-fs share tagged {tag:?}"),
        }
    }
}

/// One device's place: its kind, MMIO window and interrupt line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioSlot {
    pub kind: VirtioKind,
    pub mmio_base: u64,
    pub irq: u32,
}

impl std::fmt::Display for VirtioSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at {:#x} on IRQ {}",
            self.kind, self.mmio_base, self.irq
        )
    }
}

/// A transport's state with its device's, by device type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "state", rename_all = "snake_case")]
pub enum VirtioDeviceState {
    Rng(MmioTransportState<RngState>),
    Vsock(MmioTransportState<VsockState>),
    Balloon(MmioTransportState<BalloonState>),
    Net(MmioTransportState<NetState>),
    Fs(MmioTransportState<FsState>),
}

/// One virtio device of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioSnapshot {
    pub slot: VirtioSlot,
    pub state: VirtioDeviceState,
}

/// A device type a snapshot can hold.
pub trait Snapshotted: VirtioDevice + Persist + Sized + 'static {
    /// Its kind in the layout.
    fn kind(&self) -> VirtioKind;
    /// Its transport's state, tagged with its type.
    fn wrap(state: MmioTransportState<Self::State>) -> VirtioDeviceState;
}

impl Snapshotted for Rng {
    fn kind(&self) -> VirtioKind {
        VirtioKind::Rng
    }
    fn wrap(state: MmioTransportState<RngState>) -> VirtioDeviceState {
        VirtioDeviceState::Rng(state)
    }
}

impl Snapshotted for Vsock {
    fn kind(&self) -> VirtioKind {
        VirtioKind::Vsock
    }
    fn wrap(state: MmioTransportState<VsockState>) -> VirtioDeviceState {
        VirtioDeviceState::Vsock(state)
    }
}

impl Snapshotted for Balloon {
    fn kind(&self) -> VirtioKind {
        VirtioKind::Balloon
    }
    fn wrap(state: MmioTransportState<BalloonState>) -> VirtioDeviceState {
        VirtioDeviceState::Balloon(state)
    }
}

impl Snapshotted for Net {
    fn kind(&self) -> VirtioKind {
        VirtioKind::Net
    }
    fn wrap(state: MmioTransportState<NetState>) -> VirtioDeviceState {
        VirtioDeviceState::Net(state)
    }
}

impl Snapshotted for Fs {
    fn kind(&self) -> VirtioKind {
        VirtioKind::Fs {
            tag: self.tag().to_string(),
        }
    }
    fn wrap(state: MmioTransportState<FsState>) -> VirtioDeviceState {
        VirtioDeviceState::Fs(state)
    }
}

/// Every virtio device of a VM in layout order, as snapshots take them.
pub type VirtioDevices =
    std::sync::Arc<Vec<(VirtioSlot, std::sync::Arc<Mutex<dyn SnapshotDevice>>)>>;

/// A virtio device's counters and positions, read at one moment (the control socket's
/// `metrics`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceMetrics {
    pub device: VirtioSlot,
    pub status: u32,
    pub interrupts: u64,
    /// Interrupts raised again because the guest left one unacknowledged.
    pub interrupts_again: u64,
    /// Each queue's next used index: requests completed, modulo 2^16.
    pub queues_next_used: Vec<u16>,
    /// The device's own counters (the balloon's: ranges reported and bytes given back).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub counters: std::collections::BTreeMap<&'static str, u64>,
}

/// A transport as a snapshot (or a metrics reader) sees it, whatever its device.
pub trait SnapshotDevice: Send {
    /// See [`VirtioDevice::quiesce`].
    fn quiesce(&mut self);
    fn unquiesce(&mut self);
    fn save_state(&self) -> VirtioDeviceState;
    fn metrics(&self, slot: &VirtioSlot) -> DeviceMetrics;
}

impl<D> SnapshotDevice for MmioTransport<D>
where
    D: Snapshotted,
    D::Error: std::fmt::Display,
{
    fn quiesce(&mut self) {
        self.device_mut().quiesce();
    }
    fn unquiesce(&mut self) {
        self.device_mut().unquiesce();
    }
    fn save_state(&self) -> VirtioDeviceState {
        D::wrap(self.save())
    }
    fn metrics(&self, slot: &VirtioSlot) -> DeviceMetrics {
        let state = self.save();
        DeviceMetrics {
            device: slot.clone(),
            status: state.device_status,
            interrupts: self.irq().raised(),
            interrupts_again: self.irq().reasserted(),
            queues_next_used: state.queues.iter().map(|q| q.next_used).collect(),
            counters: self.device().counters().into_iter().collect(),
        }
    }
}

/// Every virtio device of a VM held still: their transports locked (the event loop waits
/// to serve them) and their own threads stopped. Dropping it lets them go on.
pub struct Quiesced<'a> {
    held: Vec<MutexGuard<'a, dyn SnapshotDevice + 'static>>,
}

impl<'a> Quiesced<'a> {
    /// Locks and quiesces every device of `devices`, in order.
    pub fn hold(devices: impl IntoIterator<Item = &'a Mutex<dyn SnapshotDevice>>) -> Self {
        let held = devices
            .into_iter()
            .map(|d| {
                let mut guard = d.lock().unwrap_or_else(|e| e.into_inner());
                guard.quiesce();
                guard
            })
            .collect();
        Quiesced { held }
    }

    /// The states of the held devices, in order.
    pub fn states(&self) -> Vec<VirtioDeviceState> {
        self.held.iter().map(|d| d.save_state()).collect()
    }
}

impl Drop for Quiesced<'_> {
    fn drop(&mut self) {
        for device in &mut self.held {
            device.unquiesce();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_reads_back_and_names_each_device() {
        let slots = vec![
            VirtioSlot {
                kind: VirtioKind::Rng,
                mmio_base: 0xd000_0000,
                irq: 5,
            },
            VirtioSlot {
                kind: VirtioKind::Fs { tag: "root".into() },
                mmio_base: 0xd000_1000,
                irq: 6,
            },
        ];
        let json = serde_json::to_string(&slots).unwrap();
        assert!(json.contains(r#"{"type":"fs","tag":"root"}"#), "{json}");
        let back: Vec<VirtioSlot> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, slots);
        assert_eq!(
            slots[1].to_string(),
            "the virtio-fs share tagged \"root\" at 0xd0001000 on IRQ 6"
        );
    }
}
