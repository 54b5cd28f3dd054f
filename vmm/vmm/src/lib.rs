//! berth's virtual machine monitor library: one KVM microVM per process.
//!
//! It owns the KVM VM and its vCPUs, guest memory, the boot of a PVH kernel (ELF loading,
//! start info, MP table, initial CPU state) and the device manager that puts the `devices`
//! crate's devices on the port I/O and MMIO buses and wires their interrupts and queue
//! notifications to KVM (irqfd, ioeventfd). It runs one event loop (event-manager, on the
//! calling thread) for device backends and one thread per vCPU; no async runtime.
//!
//! Ownership: guest memory is created here and shared (cloned handle) with the devices on
//! activation; device state lives in the devices, behind the bus mutexes; the event loop and
//! the exit signal belong to [`Vmm::run`]. Host policy (which files, which sockets, jailing)
//! belongs to the `berth-vmm` binary and the engine, not here.

pub mod arch;
pub mod boot;
pub mod config;
pub mod device_manager;
pub mod exit;
pub mod hostcheck;
pub mod memory;
pub mod persist;
pub mod snapshot;
pub mod vcpu;
pub mod virtio_snapshot;
pub mod vmm;

pub use config::{ConsoleOutput, VmConfig, VsockConfig};
pub use exit::ExitReason;
pub use snapshot::{VmHandle, VmSnapshotError};
pub use vmm::{Vmm, VmmError};
