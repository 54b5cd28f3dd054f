//! berth's network namespace: where its bridges, the containers' taps and the gateway
//! addresses live, so that nothing of the host's own network is ever touched.
//!
//! berthd stays in the host's namespace (its API socket and published ports are the host's).
//! Everything that must exist inside berth's namespace (a tap, a bridge, a socket that
//! reaches a container) is made by one thread that entered it, [`NetNs::run`]: a socket
//! belongs to the namespace it was created in, wherever it is used afterwards.
//!
//! The namespace is berthd's own (bind-mounted at `<exec-root>/netns`, so `nsenter
//! --net=<exec-root>/netns` and `ip netns` style tools reach it, and removed when berthd
//! stops), or one it is given (`--netns PATH`), which it uses and never removes.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// Why the namespace could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("cannot create berth's network namespace at {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter the network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("berth's network namespace thread is gone")]
    Gone,
}

type Job = Box<dyn FnOnce() + Send>;

/// A network namespace and the thread that works inside it.
pub struct NetNs {
    path: PathBuf,
    /// Created (and so removed) by this berthd.
    owned: bool,
    jobs: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn io_err(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

impl NetNs {
    /// Creates a namespace of berthd's own at `path` (one left by a berthd that died is
    /// unmounted first: whatever was in it belonged to VMs that are gone).
    pub fn create(path: &Path) -> Result<NetNs, NetNsError> {
        let create_err = |source| NetNsError::Create {
            path: path.to_path_buf(),
            source,
        };
        let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(path);
        File::create(path).map_err(create_err)?;
        let target = path.to_path_buf();
        let ns = Self::spawn(path, true, move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(io_err)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(io_err)
        })
        .map_err(|e| match e {
            NetNsError::Enter { source, .. } => create_err(source),
            other => other,
        });
        if ns.is_err() {
            let _ = std::fs::remove_file(path);
        }
        ns
    }

    /// Uses the namespace at `path` (`--netns`), which stays when berthd stops.
    pub fn open(path: &Path) -> Result<NetNs, NetNsError> {
        let file = File::open(path).map_err(|source| NetNsError::Enter {
            path: path.to_path_buf(),
            source,
        })?;
        Self::spawn(path, false, move || {
            // SAFETY: setns(2) on an open namespace file, for this thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }

    fn spawn(
        path: &Path,
        owned: bool,
        enter: impl FnOnce() -> std::io::Result<()> + Send + 'static,
    ) -> Result<NetNs, NetNsError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("berth-netns".into())
            .spawn(move || {
                let entered = enter();
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                // Nothing but jobs ever runs here: the thread never leaves the namespace.
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(|source| NetNsError::Enter {
                path: path.to_path_buf(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                let _ = thread.join();
                return Err(NetNsError::Enter {
                    path: path.to_path_buf(),
                    source,
                });
            }
            Err(_) => return Err(NetNsError::Gone),
        }
        Ok(NetNs {
            path: path.to_path_buf(),
            owned,
            jobs: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// The namespace's file (for `nsenter --net=`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, job: Job) -> Result<(), NetNsError> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.as_ref()
            .ok_or(NetNsError::Gone)?
            .send(job)
            .map_err(|_| NetNsError::Gone)
    }

    /// Runs `f` inside the namespace and returns what it returned. Blocks: from async code
    /// use [`NetNs::run_async`].
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetNsError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.recv().map_err(|_| NetNsError::Gone)
    }

    /// [`NetNs::run`] for async callers.
    pub async fn run_async<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetNsError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.await.map_err(|_| NetNsError::Gone)
    }

    /// Stops the namespace's thread and, for a namespace of berthd's own, removes it: with
    /// no process, mount or descriptor holding it, the kernel tears it down with every
    /// device still in it.
    pub fn close(&self) {
        drop(self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        if self.owned {
            if let Err(e) = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH) {
                log::warn!("cannot unmount {}: {e}", self.path.display());
            }
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.close();
    }
}
