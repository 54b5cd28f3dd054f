//! The i8042 keyboard controller, reduced to the CPU reset line.
//!
//! The guest kernel runs with `reboot=k`, so both a reboot and the agent's shutdown end with
//! the guest writing 0xFE to port 0x64; the trigger signals the VMM's exit event.

use vm_superio::I8042Device;

use super::EventFdTrigger;
use crate::bus::BusDevice;

/// First port of the controller (data port 0x60; command/status port 0x64 is offset 4).
pub const I8042_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_LEN: u64 = 5;

/// The i8042 on the port I/O bus.
pub struct I8042 {
    inner: I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// An i8042 whose reset line signals `reset`.
    pub fn new(reset: EventFdTrigger) -> Self {
        I8042 {
            inner: I8042Device::new(reset),
        }
    }
}

/// The i8042's state in a snapshot: nothing. berth's controller is the CPU reset line; its
/// registers hold nothing between two port accesses that the guest relies on (the kernel's
/// driver finds empty buffers, as it does after every command), so a restored controller
/// starts as a new one, wired to the restored VM's reset event.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042State {}

impl snapshot::Persist for I8042 {
    type State = I8042State;
    /// The restored VM's reset event.
    type Resources = EventFdTrigger;
    type Error = std::convert::Infallible;

    fn save(&self) -> I8042State {
        I8042State {}
    }

    fn restore(reset: EventFdTrigger, _: &I8042State) -> Result<Self, Self::Error> {
        Ok(I8042::new(reset))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.inner.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.inner.write(offset, value) {
                log::error!("i8042: cannot signal the reset event: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn reset_command_signals_the_exit_event() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger::new(evt.try_clone().unwrap()));
        dev.write(0, &[0xfe]);
        assert!(
            evt.read().is_err(),
            "a write to the data port is not a reset"
        );
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status[0], 0, "status: input and output buffers empty");
    }

    #[test]
    fn a_restored_controller_resets_the_restored_vm() {
        use snapshot::Persist;
        let old = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042::new(EventFdTrigger::new(old.try_clone().unwrap()));
        let saved = dev.save();
        let new = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut restored =
            I8042::restore(EventFdTrigger::new(new.try_clone().unwrap()), &saved).unwrap();
        assert_eq!(restored.save(), saved);
        restored.write(4, &[0xfe]);
        assert_eq!(new.read().unwrap(), 1);
        assert!(
            old.read().is_err(),
            "the template's reset event stays quiet"
        );
    }
}
