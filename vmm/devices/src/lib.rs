//! berth's guest-facing devices: the legacy serial port and i8042, the virtio-mmio transport
//! and the virtio devices behind it (vsock, rng, fs).
//!
//! This crate owns device *state and behaviour*: register files, queue processing, host-side
//! backends. It does not know about KVM: interrupts leave through [`virtio::IrqTrigger`]'s
//! eventfd and the serial/i8042 triggers, which the `vmm` crate wires to KVM irqfds, and
//! queue notifications arrive on eventfds that the `vmm` crate registers as ioeventfds.
//! Every device keeps its guest-visible state in a plain serde struct, so snapshots can
//! save and restore it later; host resources (fds, sockets) are never part of that state.
//!
//! Everything a guest writes is hostile input: a malformed descriptor chain or packet is an
//! error for that device (logged, rate-limited), never a panic of the VMM.

pub mod bus;
pub mod legacy;
pub mod log_limit;
pub mod virtio;

/// The guest memory type every device works on.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
