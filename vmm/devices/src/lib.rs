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

/// A timerfd whose reads never block. An event loop learns a timer expired from epoll, but
/// a handler earlier in the same batch may disarm it (which drops the pending expiry): a
/// blocking read would then wait forever, holding the device's lock, and the vCPU that
/// touches that device next would wait on the lock for good.
pub fn nonblocking_timer() -> std::io::Result<vmm_sys_util::timerfd::TimerFd> {
    use std::os::fd::AsRawFd;
    let timer = vmm_sys_util::timerfd::TimerFd::new()
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    let fd = timer.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor this function owns; results are checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(timer)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn a_timer_disarmed_after_it_expired_does_not_block_its_reader() {
        let mut t = super::nonblocking_timer().unwrap();
        t.reset(Duration::from_millis(1), None).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // What a queue handler earlier in the same epoll batch does.
        t.clear().unwrap();
        let started = Instant::now();
        let err = t.wait().unwrap_err();
        assert_eq!(err.errno(), libc::EAGAIN);
        assert!(started.elapsed() < Duration::from_secs(1));
        // And an expired, armed timer still reads its count.
        t.reset(Duration::from_millis(1), None).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(t.wait().unwrap(), 1);
    }
}
