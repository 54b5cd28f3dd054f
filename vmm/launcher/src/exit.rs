//! How a `berth-vmm boot` process ended: the exit codes it uses, both ways.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// How a VMM process ended. `berth-vmm boot` exits with [`VmmExit::code`]; its supervisors
/// read the status back with [`VmmExit::from_status`]. Only [`VmmExit::GuestShutdown`] is
/// the guest's own orderly end, and even that is a failure when nobody asked the guest to
/// stop: the supervisor, which knows whether it asked, says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmmExit {
    /// The guest reset or powered itself off in an orderly way (through the i8042).
    GuestShutdown,
    /// The VMM failed, or could not build the VM.
    VmmError,
    /// The VMM was started with arguments it does not take.
    Usage,
    /// The guest kernel panicked (its console says why).
    GuestPanic,
    /// KVM could not run the guest (an internal error, a failed VM entry, an unhandled exit).
    KvmFatal,
    /// The guest crashed without a word: a triple fault that no reset request came before.
    GuestCrash,
    /// The VMM was stopped by this signal (from its supervisor, or it crashed).
    Signal(i32),
    /// An exit code `berth-vmm boot` never uses.
    Unknown(i32),
}

impl VmmExit {
    /// The exit code `berth-vmm boot` uses for this end.
    pub const fn code(self) -> u8 {
        match self {
            VmmExit::GuestShutdown => 0,
            VmmExit::VmmError => 1,
            VmmExit::Usage => 2,
            VmmExit::GuestPanic => 3,
            VmmExit::KvmFatal => 4,
            VmmExit::GuestCrash => 5,
            VmmExit::Signal(sig @ 1..=127) => 128 + sig as u8,
            VmmExit::Signal(_) => 255,
            VmmExit::Unknown(code @ 0..=255) => code as u8,
            VmmExit::Unknown(_) => 1,
        }
    }

    /// Reads a VMM's exit status. A VMM that handled a termination signal exits 128+N, as
    /// one killed by it would be seen by a shell.
    pub fn from_status(status: ExitStatus) -> VmmExit {
        if let Some(sig) = status.signal() {
            return VmmExit::Signal(sig);
        }
        match status.code() {
            Some(0) => VmmExit::GuestShutdown,
            Some(1) => VmmExit::VmmError,
            Some(2) => VmmExit::Usage,
            Some(3) => VmmExit::GuestPanic,
            Some(4) => VmmExit::KvmFatal,
            Some(5) => VmmExit::GuestCrash,
            Some(code) if (129..=192).contains(&code) => VmmExit::Signal(code - 128),
            Some(code) => VmmExit::Unknown(code),
            None => VmmExit::Unknown(-1),
        }
    }

    /// Whether the guest ended on its own, in order (still a failure if nobody asked it to).
    pub fn is_guest_shutdown(self) -> bool {
        self == VmmExit::GuestShutdown
    }
}

impl std::fmt::Display for VmmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmmExit::GuestShutdown => write!(f, "the guest shut itself down"),
            VmmExit::VmmError => write!(f, "the VMM failed"),
            VmmExit::Usage => write!(f, "the VMM refused its arguments"),
            VmmExit::GuestPanic => write!(f, "the guest kernel panicked"),
            VmmExit::KvmFatal => write!(f, "KVM could not run the guest"),
            VmmExit::GuestCrash => write!(f, "the guest crashed (triple fault)"),
            VmmExit::Signal(sig) => write!(f, "the VMM was stopped by signal {sig}"),
            VmmExit::Unknown(code) => write!(f, "the VMM exited with unknown status {code}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_back_as_what_they_were() {
        for exit in [
            VmmExit::GuestShutdown,
            VmmExit::VmmError,
            VmmExit::Usage,
            VmmExit::GuestPanic,
            VmmExit::KvmFatal,
            VmmExit::GuestCrash,
            VmmExit::Signal(15),
            VmmExit::Unknown(77),
        ] {
            let status = ExitStatus::from_raw(i32::from(exit.code()) << 8);
            assert_eq!(VmmExit::from_status(status), exit, "{exit}");
        }
        assert_eq!(
            VmmExit::from_status(ExitStatus::from_raw(libc::SIGKILL)),
            VmmExit::Signal(libc::SIGKILL)
        );
    }

    #[test]
    fn only_an_orderly_guest_end_is_a_shutdown() {
        assert!(VmmExit::GuestShutdown.is_guest_shutdown());
        for exit in [VmmExit::GuestCrash, VmmExit::GuestPanic, VmmExit::Signal(9)] {
            assert!(!exit.is_guest_shutdown());
        }
    }
}
