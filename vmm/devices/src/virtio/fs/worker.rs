//! The thread that serves one virtio-fs device's queues.
//!
//! File system requests can block for as long as the host's disk takes (an fsync of a large
//! file, a cold directory on a slow disk). On the event loop thread they would stall every
//! other device of the VM (the vsock connection carrying the container's stdio among them), so
//! each virtio-fs device gets its own thread, woken directly by the queues' ioeventfds. The
//! thread never takes the transport's lock; the device stops it (flag, eventfd, join) on reset
//! and drop.
//!
//! The thread has its own file system context (`unshare(CLONE_FS)`): the FUSE server sets the
//! umask to 0 (the guest applies its own) and that must not change the umask of the rest of
//! the VMM.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use fuse_backend_rs::api::server::Server;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::confined::ConfinedFs;
use super::request::process_queue;
use crate::virtio::{IrqTrigger, INT_VRING};
use crate::GuestMemoryMmap;

/// What the worker and the device share while the device is active.
pub struct Shared {
    /// The queues being served (the device's own copies only hold the configuration).
    pub queues: Mutex<Vec<Queue>>,
    /// A queue failed: nothing is served until the driver resets the device.
    pub broken: AtomicBool,
}

impl Shared {
    pub fn lock_queues(&self) -> std::sync::MutexGuard<'_, Vec<Queue>> {
        match self.queues.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Everything the thread needs.
pub struct WorkerContext {
    pub name: String,
    pub mem: GuestMemoryMmap,
    pub irq: Arc<IrqTrigger>,
    pub shared: Arc<Shared>,
    pub queue_events: Vec<EventFd>,
    pub server: Arc<Server<ConfinedFs>>,
}

/// A running worker thread.
pub struct Worker {
    stop: Arc<AtomicBool>,
    stop_evt: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts serving.
    pub fn spawn(ctx: WorkerContext) -> std::io::Result<Worker> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_evt = EventFd::new(libc::EFD_NONBLOCK)?;
        let thread_stop = stop.clone();
        let thread_stop_evt = stop_evt.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(ctx.name.clone())
            .spawn(move || run(ctx, &thread_stop, &thread_stop_evt))?;
        Ok(Worker {
            stop,
            stop_evt,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it: at most the request being served finishes.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.stop_evt.write(1) {
            log::error!("virtio-fs: cannot signal the worker to stop: {e}");
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("virtio-fs: the worker thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Gives this thread its own umask and keeps asynchronous signals away from it.
fn prepare_thread() -> std::io::Result<()> {
    // SAFETY: sigfillset initialises the set; pthread_sigmask only changes this thread's
    // mask. Synchronous fault signals are delivered regardless of the mask.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    // SAFETY: unshare(CLONE_FS) copies this thread's root, cwd and umask into a private
    // fs_struct; it touches no memory of ours.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: umask only changes the (now private) file creation mask and cannot fail.
    unsafe { libc::umask(0) };
    Ok(())
}

fn run(ctx: WorkerContext, stop: &AtomicBool, stop_evt: &EventFd) {
    if let Err(e) = prepare_thread() {
        // Serving with the process's umask (or changing it) would be wrong: stay broken.
        log::error!("virtio-fs {}: cannot prepare the worker: {e}", ctx.name);
        ctx.shared.broken.store(true, Ordering::SeqCst);
    }
    let mut fds: Vec<libc::pollfd> = std::iter::once(stop_evt.as_raw_fd())
        .chain(ctx.queue_events.iter().map(AsRawFd::as_raw_fd))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        // Requests may have been queued before activation, or between two notifications:
        // serve everything that is there before sleeping.
        serve_all(&ctx, stop);
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd entries that outlives the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                log::error!("virtio-fs {}: poll failed: {e}", ctx.name);
                break;
            }
            continue;
        }
        for evt in &ctx.queue_events {
            // Draining can only fail with EAGAIN: nothing to drain.
            let _ = evt.read();
        }
    }
}

fn serve_all(ctx: &WorkerContext, stop: &AtomicBool) {
    if ctx.shared.broken.load(Ordering::SeqCst) {
        return;
    }
    let mut notify = false;
    {
        let mut queues = ctx.shared.lock_queues();
        for (index, queue) in queues.iter_mut().enumerate() {
            match process_queue(queue, &ctx.mem, &ctx.server, stop) {
                Ok(n) => notify |= n,
                Err(e) => {
                    crate::warn_limited!(
                        "virtio-fs {}: queue {index}: {e}; device stopped until reset",
                        ctx.name
                    );
                    ctx.shared.broken.store(true, Ordering::SeqCst);
                    break;
                }
            }
        }
    }
    if notify {
        ctx.irq.trigger(INT_VRING);
    }
}
