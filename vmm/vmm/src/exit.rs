//! Why a VM stopped, and the one-shot signal that stops it.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset or powered itself off in an orderly way (i8042 reset, KVM system
    /// event).
    GuestShutdown { how: &'static str },
    /// The guest kernel printed a panic, then reset.
    GuestPanic,
    /// The guest crashed without a word: a triple fault with no reset request before it.
    /// `rip` is where the vCPU was, as far as KVM still knows.
    GuestCrash { vcpu: u8, rip: Option<u64> },
    /// KVM could not run the guest (KVM_EXIT_INTERNAL_ERROR).
    InternalError {
        vcpu: u8,
        suberror: u32,
        data: Vec<u64>,
        rip: Option<u64>,
    },
    /// VM entry failed (KVM_EXIT_FAIL_ENTRY).
    FailEntry { vcpu: u8, reason: u64 },
    /// A vCPU exit berth does not handle, or a failed KVM_RUN.
    VcpuFault { vcpu: u8, what: String },
    /// The host asked the VMM to stop (SIGTERM, SIGINT, SIGHUP).
    HostSignal(i32),
    /// Its controller asked the VMM to stop (the control socket's `shutdown`).
    Stopped,
}

impl ExitReason {
    /// Whether the guest ended on its own terms without an error.
    pub fn is_clean(&self) -> bool {
        matches!(self, ExitReason::GuestShutdown { .. })
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestShutdown { how } => write!(f, "guest shut down ({how})"),
            ExitReason::GuestPanic => write!(f, "guest kernel panicked"),
            ExitReason::GuestCrash { vcpu, rip } => {
                write!(f, "guest crashed: triple fault on vCPU {vcpu}")?;
                if let Some(rip) = rip {
                    write!(f, " (rip {rip:#x})")?;
                }
                write!(f, " with no reset requested")
            }
            ExitReason::InternalError {
                vcpu,
                suberror,
                data,
                rip,
            } => {
                write!(
                    f,
                    "KVM_EXIT_INTERNAL_ERROR on vCPU {vcpu}: suberror {suberror} ({})",
                    internal_error_name(*suberror)
                )?;
                if let Some(rip) = rip {
                    write!(f, " at rip {rip:#x}")?;
                }
                if !data.is_empty() {
                    write!(f, ", data [")?;
                    for (i, d) in data.iter().enumerate() {
                        write!(f, "{}{d:#x}", if i > 0 { ", " } else { "" })?;
                    }
                    write!(f, "]")?;
                }
                Ok(())
            }
            ExitReason::FailEntry { vcpu, reason } => write!(
                f,
                "KVM_EXIT_FAIL_ENTRY on vCPU {vcpu}: hardware entry failure reason {reason:#x}"
            ),
            ExitReason::VcpuFault { vcpu, what } => write!(f, "vCPU {vcpu}: {what}"),
            ExitReason::HostSignal(sig) => write!(f, "stopped by signal {sig}"),
            ExitReason::Stopped => write!(f, "stopped by its controller"),
        }
    }
}

/// Names KVM's internal error suberrors (linux/kvm.h).
pub fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "KVM_INTERNAL_ERROR_EMULATION: KVM could not emulate an instruction",
        2 => "KVM_INTERNAL_ERROR_SIMUL_EX: exception while delivering an exception",
        3 => "KVM_INTERNAL_ERROR_DELIVERY_EV: exit while delivering an event",
        4 => "KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON",
        _ => "unknown suberror",
    }
}

/// The first reason to stop wins; the eventfd wakes the event loop.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitSignal {
    /// A signal that nobody raised yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Asks the VM to stop for `reason`, unless it is already stopping for another.
    pub fn raise(&self, reason: ExitReason) {
        let mut slot = devices::bus::lock(&self.reason);
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot wake the event loop to stop the VM: {e}");
        }
    }

    /// The reason, once raised.
    pub fn reason(&self) -> Option<ExitReason> {
        devices::bus::lock(&self.reason).clone()
    }

    /// The eventfd to watch.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}
