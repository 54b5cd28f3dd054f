//! Snapshots of a whole VM: the state file (`snapshot` crate format: every vCPU, the
//! in-kernel devices and clock, the legacy devices, the virtio devices with their layout)
//! and the memory file (guest RAM, its regions one after the other); and guest memory
//! mapped back from a memory file, private to the restored VM.
//!
//! The order of a snapshot: park every vCPU; hold every virtio device still (its transport
//! locked, its own thread stopped); only then save the vCPUs, so an interrupt a device
//! raised while the vCPUs were parking is in the saved LAPIC; then the devices, the
//! in-kernel interrupt controllers and clock, the memory. The devices go on when it is
//! written; the vCPUs stay parked until resumed.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemory, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
    WriteVolatile,
};

use crate::persist::{self, PersistError, VcpuState, VmState};
use crate::vcpu::{Pause, PauseError};
use crate::virtio_snapshot::{Quiesced, VirtioDevices, VirtioSnapshot};
use devices::legacy::i8042::I8042State;
use devices::legacy::serial::{SerialDevice, SerialDeviceState};
use devices::GuestMemoryMmap;
use snapshot::Persist;

/// Everything of a VM but its memory.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshot {
    /// The RAM size the memory file holds: a restore with another size is refused.
    pub mem_mib: u64,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub serial: SerialDeviceState,
    pub i8042: I8042State,
    /// In layout order (MMIO window and IRQ ascending).
    #[serde(default)]
    pub virtio: Vec<VirtioSnapshot>,
}

/// Why a snapshot cannot be taken or restored.
#[derive(Debug, thiserror::Error)]
pub enum VmSnapshotError {
    #[error("cannot pause the vCPUs: {0}")]
    Pause(#[from] PauseError),
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error(transparent)]
    File(#[from] snapshot::SnapshotError),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read guest memory: {0}")]
    Memory(String),
    #[error(transparent)]
    Virtio(#[from] crate::device_manager::RestoreDeviceError),
    #[error(
        "the snapshot holds {found} MiB of memory; this VM is configured for {configured} MiB"
    )]
    MemSize { found: u64, configured: u64 },
    #[error("the snapshot holds {found} vCPUs; this VM is configured for {configured}")]
    VcpuCount { found: usize, configured: u8 },
    #[error("the memory file {path} has {found} bytes; the snapshot's memory is {expected}")]
    MemFile {
        path: std::path::PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("the serial device cannot be restored: {0}")]
    Serial(#[from] devices::legacy::serial::SerialError),
    #[error("cannot attach the restored {what}: {reason}")]
    Attach { what: &'static str, reason: String },
}

/// A running VM's controls, usable from any thread while [`crate::Vmm::run`] runs.
#[derive(Clone)]
pub struct VmHandle {
    pub(crate) vm: Arc<VmFd>,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) mem_mib: u64,
    pub(crate) pause: Arc<Pause>,
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    pub(crate) virtio: VirtioDevices,
    pub(crate) counters: Arc<Vec<Arc<crate::vcpu::VcpuCounters>>>,
}

/// A running VM's counters (the control socket's `metrics`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmMetrics {
    pub vcpus: Vec<crate::vcpu::VcpuMetrics>,
    pub virtio: Vec<crate::virtio_snapshot::DeviceMetrics>,
}

impl VmHandle {
    /// Parks every vCPU outside KVM_RUN; returns once all have acknowledged.
    pub fn pause(&self) -> Result<(), VmSnapshotError> {
        self.pause.pause()?;
        Ok(())
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        self.pause.resume();
    }

    /// Every vCPU's exits and every virtio device's interrupts and queue positions, now.
    pub fn metrics(&self) -> VmMetrics {
        VmMetrics {
            vcpus: self.counters.iter().map(|c| c.read()).collect(),
            virtio: self
                .virtio
                .iter()
                .map(|(slot, d)| devices::bus::lock(d).metrics(slot))
                .collect(),
        }
    }

    /// Pauses the VM and writes its state to `state_path` and its memory to `memory_path`
    /// (the order is the module's). The VM stays paused: resume it, or stop it.
    pub fn snapshot(&self, state_path: &Path, memory_path: &Path) -> Result<(), VmSnapshotError> {
        self.pause.pause()?;
        let held = Quiesced::hold(self.virtio.iter().map(|(_, d)| &**d));
        let state = VmSnapshot {
            mem_mib: self.mem_mib,
            vcpus: self.pause.save_parked()?,
            vm: persist::save_vm(&self.vm)?,
            serial: devices::bus::lock(&self.serial).save(),
            i8042: I8042State {},
            virtio: self
                .virtio
                .iter()
                .zip(held.states())
                .map(|((slot, _), state)| VirtioSnapshot {
                    slot: slot.clone(),
                    state,
                })
                .collect(),
        };
        write_memory(&self.mem, memory_path)?;
        drop(held);
        let io = |what, source| VmSnapshotError::Io {
            what,
            path: state_path.to_path_buf(),
            source,
        };
        let file = File::create(state_path).map_err(|e| io("create", e))?;
        snapshot::write(&file, &state)?;
        file.sync_all().map_err(|e| io("sync", e))?;
        Ok(())
    }
}

/// Writes guest RAM, region after region, to `path`.
fn write_memory(mem: &GuestMemoryMmap, path: &Path) -> Result<(), VmSnapshotError> {
    let io = |what, source| VmSnapshotError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::create(path).map_err(|e| io("create", e))?;
    for region in mem.iter() {
        let slice = mem
            .get_slice(region.start_addr(), region.len() as usize)
            .map_err(|e| VmSnapshotError::Memory(e.to_string()))?;
        file.write_all_volatile(&slice)
            .map_err(|e| VmSnapshotError::Memory(e.to_string()))?;
    }
    file.sync_all().map_err(|e| io("sync", e))
}

/// Reads a state file.
pub fn read_state(path: &Path) -> Result<VmSnapshot, VmSnapshotError> {
    let file = File::open(path).map_err(|source| VmSnapshotError::Io {
        what: "open",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(snapshot::read(std::io::BufReader::new(file))?)
}

/// Maps `path` as the guest RAM of a VM of `ranges`, privately: pages are read from the file
/// (shared through the page cache with every other VM mapping it) until the guest writes
/// them, and nothing the guest writes reaches the file.
pub fn map_memory_file(
    path: &Path,
    ranges: &[(GuestAddress, usize)],
) -> Result<GuestMemoryMmap, VmSnapshotError> {
    let io = |what, source| VmSnapshotError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| io("open", e))?;
    let expected: u64 = ranges.iter().map(|(_, len)| *len as u64).sum();
    let found = file.metadata().map_err(|e| io("stat", e))?.len();
    if found != expected {
        return Err(VmSnapshotError::MemFile {
            path: path.to_path_buf(),
            found,
            expected,
        });
    }
    let mut offset = 0u64;
    let mut regions = Vec::with_capacity(ranges.len());
    for &(addr, len) in ranges {
        let file = file.try_clone().map_err(|e| io("duplicate", e))?;
        let mapping = MmapRegion::build(
            Some(FileOffset::new(file, offset)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_NORESERVE | libc::MAP_PRIVATE,
        )
        .map_err(|e| VmSnapshotError::Memory(e.to_string()))?;
        regions.push(
            GuestRegionMmap::new(mapping, addr).ok_or_else(|| {
                VmSnapshotError::Memory(format!("a region at {addr:?} is invalid"))
            })?,
        );
        offset += len as u64;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| VmSnapshotError::Memory(e.to_string()))
}
