//! vCPU threads: each runs KVM_RUN in a loop and serves port I/O and MMIO exits from the
//! buses. A fatal exit raises the VM's exit signal with a reason that names the exit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::exit::{ExitReason, ExitSignal};
use devices::bus::Bus;

/// KVM system event types (linux/kvm.h).
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// The signal that kicks a vCPU out of KVM_RUN.
fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler of the kick signal; its only effect is EINTR in KVM_RUN.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
}

/// Parks every vCPU outside KVM_RUN and lets them go again. Parked vCPUs save their state
/// when asked, each on its own thread (KVM's vCPU ioctls belong to the thread that runs the
/// vCPU): a snapshot parks the vCPUs first, then quiesces the devices, and only then has the
/// vCPUs saved, so that an interrupt a device raised meanwhile is in the saved LAPIC.
pub struct Pause {
    /// Checked by the vCPU loops after every exit; the lock is taken only to park.
    requested: AtomicBool,
    inner: Mutex<PauseInner>,
    changed: Condvar,
}

#[derive(Default)]
struct PauseInner {
    /// The vCPU threads, to kick out of KVM_RUN.
    threads: Vec<libc::pthread_t>,
    parked: Vec<bool>,
    /// Each vCPU's state, saved while parked, once per save request.
    saved: Vec<Option<Result<crate::persist::VcpuState, crate::persist::PersistError>>>,
    /// Bumped by every save request; each vCPU saves when its own `saved_for` lags.
    save_generation: u64,
    saved_for: Vec<u64>,
    msr_index: Vec<u32>,
    /// The VM is stopping: nothing stays parked.
    released: bool,
}

/// Why the vCPUs could not be paused.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("vCPU {0} did not leave KVM_RUN within {PAUSE_TIMEOUT:?}")]
    Timeout(usize),
    #[error("the VM is stopping")]
    Stopping,
    #[error("the vCPUs are not paused")]
    NotPaused,
    #[error(transparent)]
    Save(#[from] crate::persist::PersistError),
}

/// How long a pause waits for every vCPU to park.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

impl Pause {
    /// For `vcpus` vCPUs whose saved state takes the MSRs in `msr_index`.
    pub fn new(vcpus: usize, msr_index: Vec<u32>) -> Self {
        Pause {
            requested: AtomicBool::new(false),
            inner: Mutex::new(PauseInner {
                parked: vec![false; vcpus],
                saved: (0..vcpus).map(|_| None).collect(),
                saved_for: vec![0; vcpus],
                msr_index,
                ..PauseInner::default()
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PauseInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the vCPU threads once they run.
    pub fn set_threads(&self, threads: Vec<libc::pthread_t>) {
        self.lock().threads = threads;
    }

    /// Parks every vCPU; returns once all are parked (acknowledged).
    pub fn pause(&self) -> Result<(), PauseError> {
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        let mut inner = self.lock();
        if inner.released {
            return Err(PauseError::Stopping);
        }
        self.requested.store(true, Ordering::Release);
        while let Some(i) = inner.parked.iter().position(|p| !p) {
            if inner.released {
                return Err(PauseError::Stopping);
            }
            if Instant::now() >= deadline {
                drop(inner);
                self.resume();
                return Err(PauseError::Timeout(i));
            }
            // A kick can land just before KVM_RUN and be lost: kick again until parked.
            for (&thread, _) in inner
                .threads
                .iter()
                .zip(&inner.parked)
                .filter(|(_, p)| !**p)
            {
                // SAFETY: the pthread_t is a vCPU thread of this VM, joined only after
                // `release`, which happens before any join; the kick signal has a handler.
                unsafe { libc::pthread_kill(thread, kick_signal()) };
            }
            inner = self
                .changed
                .wait_timeout(inner, Duration::from_millis(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Has every parked vCPU save its state, and returns the states in vCPU order.
    pub fn save_parked(&self) -> Result<Vec<crate::persist::VcpuState>, PauseError> {
        let mut inner = self.lock();
        if !self.requested.load(Ordering::Acquire) || inner.parked.iter().any(|p| !p) {
            return Err(PauseError::NotPaused);
        }
        inner.save_generation += 1;
        let generation = inner.save_generation;
        inner.saved.iter_mut().for_each(|s| *s = None);
        self.changed.notify_all();
        while inner.saved_for.iter().any(|&g| g != generation) {
            if inner.released {
                return Err(PauseError::Stopping);
            }
            inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        inner
            .saved
            .iter_mut()
            .map(|s| s.take().expect("every parked vCPU saved its state"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(PauseError::Save)
    }

    /// Lets every parked vCPU run again.
    pub fn resume(&self) {
        let _inner = self.lock();
        self.requested.store(false, Ordering::Release);
        self.changed.notify_all();
    }

    /// The VM stops: parked vCPUs go, and no pause starts again.
    pub fn release(&self) {
        let mut inner = self.lock();
        inner.released = true;
        self.requested.store(false, Ordering::Release);
        self.changed.notify_all();
    }

    /// Called by vCPU `index` when a pause is requested: parks until resumed or released,
    /// saving its state whenever asked meanwhile.
    fn park(&self, index: usize, fd: &mut VcpuFd) {
        let mut inner = self.lock();
        if !self.requested.load(Ordering::Acquire) || inner.released {
            return;
        }
        inner.parked[index] = true;
        self.changed.notify_all();
        while self.requested.load(Ordering::Acquire) && !inner.released {
            if inner.saved_for[index] != inner.save_generation {
                // The last exit may have left work for the next KVM_RUN (the value of a
                // port read goes into RAX on entry): KVM_RUN with immediate_exit completes
                // it and returns at once, so the registers saved are the ones the guest
                // would see.
                fd.set_kvm_immediate_exit(1);
                let _ = fd.run();
                fd.set_kvm_immediate_exit(0);
                let msr_index = std::mem::take(&mut inner.msr_index);
                let state = crate::persist::save_vcpu(fd, index as u8, &msr_index);
                inner.msr_index = msr_index;
                inner.saved[index] = Some(state);
                inner.saved_for[index] = inner.save_generation;
                self.changed.notify_all();
                continue;
            }
            inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        inner.parked[index] = false;
    }
}

/// A vCPU ready to run.
pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
    pub stop: Arc<AtomicBool>,
    /// The i8042 reset event (the event loop consumes it): pending means the guest asked
    /// for a reset.
    pub reset_evt: vmm_sys_util::eventfd::EventFd,
    pub pause: Arc<Pause>,
    pub counters: Arc<VcpuCounters>,
}

/// One vCPU's exits to this process, by kind, since it started (the control socket's
/// `metrics`). Counted with relaxed atomics on the vCPU's own thread: nearly free.
#[derive(Debug, Default)]
pub struct VcpuCounters {
    pub io: AtomicU64,
    pub mmio: AtomicU64,
    /// KVM_RUN left for a signal (a pause, a stop) or with nothing to serve.
    pub interrupted: AtomicU64,
}

/// [`VcpuCounters`] read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VcpuMetrics {
    pub io_exits: u64,
    pub mmio_exits: u64,
    pub interrupted: u64,
}

impl VcpuCounters {
    pub fn read(&self) -> VcpuMetrics {
        VcpuMetrics {
            io_exits: self.io.load(Ordering::Relaxed),
            mmio_exits: self.mmio.load(Ordering::Relaxed),
            interrupted: self.interrupted.load(Ordering::Relaxed),
        }
    }
}

/// What one exit means for the loop.
enum Step {
    Continue,
    Interrupted,
    Stop(ExitReason),
    InternalError,
    TripleFault,
}

impl Vcpu {
    /// Starts the vCPU on its own thread, named `vcpu<N>`.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            // vCPU threads need little stack: exits are handled in shallow code.
            .stack_size(256 << 10)
            .spawn(move || self.run())
    }

    fn run(mut self) {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            if self.pause.requested.load(Ordering::Acquire) {
                self.pause.park(usize::from(self.index), &mut self.fd);
                continue;
            }
            let step = self.step();
            if let Step::Interrupted = step {
                self.counters.interrupted.fetch_add(1, Ordering::Relaxed);
            }
            match step {
                Step::Continue => {}
                Step::Interrupted => {
                    self.fd.set_kvm_immediate_exit(0);
                }
                Step::Stop(reason) => {
                    self.exit.raise(reason);
                    return;
                }
                Step::InternalError => {
                    let reason = self.internal_error();
                    self.exit.raise(reason);
                    return;
                }
                Step::TripleFault => {
                    // Linux's reboot writes the i8042 reset, waits a little, then falls
                    // back to a triple fault, which can beat the event loop to the reset
                    // event: after a reset request it is the reset. Without one it is a
                    // crash, and is reported as one.
                    let reason = if self.reset_pending() {
                        ExitReason::GuestShutdown { how: "i8042 reset" }
                    } else {
                        ExitReason::GuestCrash {
                            vcpu: self.index,
                            rip: self.fd.get_regs().ok().map(|r| r.rip),
                        }
                    };
                    self.exit.raise(reason);
                    return;
                }
            }
        }
    }

    fn step(&mut self) -> Step {
        let index = self.index;
        match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    self.counters.io.fetch_add(1, Ordering::Relaxed);
                    if !self.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                    Step::Continue
                }
                VcpuExit::IoOut(port, data) => {
                    self.counters.io.fetch_add(1, Ordering::Relaxed);
                    self.pio.write(u64::from(port), data);
                    Step::Continue
                }
                VcpuExit::MmioRead(addr, data) => {
                    self.counters.mmio.fetch_add(1, Ordering::Relaxed);
                    if !self.mmio.read(addr, data) {
                        devices::warn_limited!("vCPU {index}: MMIO read of unmapped {addr:#x}");
                        data.fill(0);
                    }
                    Step::Continue
                }
                VcpuExit::MmioWrite(addr, data) => {
                    self.counters.mmio.fetch_add(1, Ordering::Relaxed);
                    if !self.mmio.write(addr, data) {
                        devices::warn_limited!("vCPU {index}: MMIO write to unmapped {addr:#x}");
                    }
                    Step::Continue
                }
                VcpuExit::Hlt => Step::Stop(ExitReason::GuestShutdown {
                    how: "halted with no interrupt controller to wake it",
                }),
                // Linux asks for a reset through the i8042 (reboot=k); a triple fault is a
                // crash.
                VcpuExit::Shutdown => Step::TripleFault,
                VcpuExit::SystemEvent(kind, _) => match kind {
                    SYSTEM_EVENT_SHUTDOWN => {
                        Step::Stop(ExitReason::GuestShutdown { how: "power off" })
                    }
                    SYSTEM_EVENT_RESET => Step::Stop(ExitReason::GuestShutdown { how: "reset" }),
                    SYSTEM_EVENT_CRASH => Step::Stop(ExitReason::GuestPanic),
                    other => Step::Stop(ExitReason::VcpuFault {
                        vcpu: index,
                        what: format!("unknown KVM system event {other}"),
                    }),
                },
                VcpuExit::InternalError => Step::InternalError,
                VcpuExit::FailEntry(reason, _) => Step::Stop(ExitReason::FailEntry {
                    vcpu: index,
                    reason,
                }),
                VcpuExit::Intr => Step::Interrupted,
                other => Step::Stop(ExitReason::VcpuFault {
                    vcpu: index,
                    what: format!("unhandled KVM exit {other:?}"),
                }),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Interrupted,
            Err(e) => Step::Stop(ExitReason::VcpuFault {
                vcpu: index,
                what: format!("KVM_RUN failed: {e}"),
            }),
        }
    }

    /// Whether the i8042 reset event is pending (readable), without consuming it.
    fn reset_pending(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.reset_evt.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd that outlives the call; a zero timeout never blocks.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        rc == 1 && pfd.revents & libc::POLLIN != 0
    }

    fn internal_error(&mut self) -> ExitReason {
        let rip = self.fd.get_regs().ok().map(|r| r.rip);
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM filled the `internal` member of the exit union: this is only called
        // right after KVM_RUN returned with exit_reason KVM_EXIT_INTERNAL_ERROR.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        ExitReason::InternalError {
            vcpu: self.index,
            suberror: internal.suberror,
            data: internal.data[..ndata].to_vec(),
            rip,
        }
    }
}

/// Stops vCPU threads: sets their stop flag and kicks each until it has left KVM_RUN.
/// A kick can land just before a thread re-enters KVM_RUN and be lost, hence the retries.
pub fn stop_all(stop: &AtomicBool, pause: &Pause, threads: Vec<JoinHandle<()>>) {
    use std::os::unix::thread::JoinHandleExt;
    stop.store(true, Ordering::Release);
    pause.release();
    let deadline = Instant::now() + Duration::from_secs(2);
    for handle in threads {
        while !handle.is_finished() && Instant::now() < deadline {
            // SAFETY: the pthread_t belongs to a thread that has not been joined yet (we
            // hold its JoinHandle), so it is valid; the kick signal has a handler installed.
            unsafe { libc::pthread_kill(handle.as_pthread_t(), kick_signal()) };
            std::thread::sleep(Duration::from_millis(1));
        }
        if handle.is_finished() {
            if handle.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        } else {
            log::error!("a vCPU thread did not stop within 2 s; leaving it to process exit");
        }
    }
}
