//! Legacy PC devices on the port I/O bus: the 8250 serial console (COM1) and the i8042,
//! whose only job here is to turn the guest's reset request into a clean VMM exit.

pub mod i8042;
pub mod serial;

use vmm_sys_util::eventfd::EventFd;

/// A vm-superio trigger backed by an eventfd (an irqfd for the serial IRQ, the VMM's exit
/// event for the i8042 reset).
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }

    /// The underlying eventfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
