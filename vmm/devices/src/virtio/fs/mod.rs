//! virtio-fs: a host directory shared with the guest, served by a FUSE server inside the VMM.
//!
//! The device (virtio ID 26) has one high-priority queue (FORGET, INTERRUPT) and
//! [`REQUEST_QUEUES`] request queue; its config space holds the mount tag and the number of
//! request queues. The FUSE server is fuse-backend-rs's `PassthroughFs` behind
//! [`confined::ConfinedFs`], which holds the share's confinement policy (read it: this is the
//! most security-critical code of the VMM). Requests run on one worker thread per device
//! ([`worker`]), never on the event loop. [`request::process_queue`] is the pure queue
//! processing, unit-tested below with virtio-queue's mock queue.
//!
//! A session of the FUSE server (inodes, open files) lives from activation to reset: a reset
//! drops it, and the next activation starts a fresh one, as the guest's driver starts over.
//! Snapshots carry the device's configuration and queue positions ([`FsState`]), never the
//! session or the host directory, which is reattached at restore.

pub mod confined;
pub mod request;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use fuse_backend_rs::api::server::Server;
use serde::{Deserialize, Serialize};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::mmio::read_config_bytes;
use super::{
    features, new_queue_events, new_queues, ActivateError, IrqTrigger, QueueSnapshot, VirtioDevice,
};
use crate::GuestMemoryMmap;
pub use confined::{ConfinedFs, ShareOptions};
use worker::{Shared, Worker, WorkerContext};

/// virtio device ID of a file system device.
pub const TYPE_FS: u32 = 26;
/// Longest mount tag (the config space field, NUL-padded).
pub const TAG_LEN: usize = 36;
/// Request queues offered. Linux (6.1 at least) sends every request on the first one.
pub const REQUEST_QUEUES: usize = 1;
const HIPRIO_QUEUE_SIZE: u16 = 128;
/// Linux limits a request to this size minus 4, in pages: 1024 allows FUSE's full 1 MiB.
const REQUEST_QUEUE_SIZE: u16 = 1024;
/// VIRTIO_RING_F_INDIRECT_DESC: a request's pages take one ring slot, not one each.
const RING_INDIRECT_DESC: u64 = 1 << 28;

/// Errors setting up a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag does not fit the config space.
    #[error("virtio-fs tag {tag:?}: {reason}")]
    InvalidTag { tag: String, reason: &'static str },
    /// The shared directory cannot be used.
    #[error("virtio-fs share {path}: {reason}")]
    InvalidDir { path: PathBuf, reason: String },
    /// Eventfds cannot be created.
    #[error("cannot create the device's event sources: {0}")]
    Events(#[source] std::io::Error),
    /// A snapshot's share differs from the restored VM's.
    #[error("the snapshot's virtio-fs share has {what} {snapshot}, this VM's has {vm}")]
    Layout {
        what: &'static str,
        snapshot: String,
        vm: String,
    },
}

/// One share: what the guest mounts (`mount -t virtiofs TAG DIR`), the host directory it
/// shows, and the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsConfig {
    pub tag: String,
    pub dir: PathBuf,
    pub options: ShareOptions,
}

/// The device's own state in a snapshot: the share's identity and policy (its queues and
/// features are the transport's). No FUSE session state is in it: berth snapshots a VM before
/// its guest mounts the share (ARCHITECTURE.md, "Snapshots"), and a restored device starts a
/// new session over the restored VM's own directory. A queue that had failed fails again at
/// the same place in the restored guest's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsState {
    pub tag: String,
    pub num_request_queues: u32,
    pub read_only: bool,
    pub nosuid: bool,
}

struct Active {
    shared: Arc<Shared>,
    /// None while quiesced for a snapshot.
    worker: Option<Worker>,
    /// What a worker needs, to start one again after a quiesce.
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    server: Arc<Server<ConfinedFs>>,
}

impl Active {
    fn spawn_worker(&mut self, tag: &str, queue_events: &[EventFd]) -> std::io::Result<()> {
        let queue_events = queue_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        self.worker = Some(Worker::spawn(WorkerContext {
            name: format!("fs-{tag}"),
            mem: self.mem.clone(),
            irq: self.irq.clone(),
            shared: self.shared.clone(),
            queue_events,
            server: self.server.clone(),
        })?);
        Ok(())
    }
}

/// The virtio-fs device.
pub struct Fs {
    tag: String,
    dir: PathBuf,
    options: ShareOptions,
    config_space: Vec<u8>,
    /// The driver's queue configuration; while active, the worker serves copies of these.
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    acked_features: u64,
    active: Option<Active>,
}

/// Checks a mount tag: 1 to 36 bytes, no NUL.
pub fn validate_tag(tag: &str) -> Result<(), FsError> {
    let reason = if tag.is_empty() {
        "empty"
    } else if tag.len() > TAG_LEN {
        "longer than 36 bytes"
    } else if tag.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(FsError::InvalidTag {
        tag: tag.to_string(),
        reason,
    })
}

/// Resolves a share's directory once, at setup: an absolute, symlink-free path to an
/// existing directory, in UTF-8 (the FUSE server takes its root as a string).
fn resolve_dir(dir: &Path) -> Result<PathBuf, FsError> {
    let invalid = |reason: String| FsError::InvalidDir {
        path: dir.to_path_buf(),
        reason,
    };
    let canonical = std::fs::canonicalize(dir).map_err(|e| invalid(e.to_string()))?;
    let meta = std::fs::metadata(&canonical).map_err(|e| invalid(e.to_string()))?;
    if !meta.is_dir() {
        return Err(invalid("not a directory".to_string()));
    }
    if canonical.to_str().is_none() {
        return Err(invalid("the path is not valid UTF-8".to_string()));
    }
    Ok(canonical)
}

/// A share given as a regular file (a bind of one file): its directory, resolved as
/// [`resolve_dir`] resolves one, and its name; `None` for anything else.
fn single_file(path: &Path) -> Result<Option<(PathBuf, String)>, FsError> {
    let invalid = |reason: String| FsError::InvalidDir {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        _ => return Ok(None),
    }
    let canonical = std::fs::canonicalize(path).map_err(|e| invalid(e.to_string()))?;
    let (Some(dir), Some(name)) = (canonical.parent(), canonical.file_name()) else {
        return Err(invalid("a file with no directory".to_string()));
    };
    let name = name
        .to_str()
        .ok_or_else(|| invalid("the name is not valid UTF-8".to_string()))?;
    Ok(Some((resolve_dir(dir)?, name.to_string())))
}

impl Fs {
    /// A device sharing `config.dir` under `config.tag`. A regular file given as the
    /// directory makes a single-file share of it (see [`ShareOptions::file`]).
    pub fn new(config: &FsConfig) -> Result<Self, FsError> {
        validate_tag(&config.tag)?;
        let mut options = config.options.clone();
        let dir = match (&options.file, single_file(&config.dir)?) {
            (None, Some((dir, name))) => {
                options.file = Some(name);
                dir
            }
            _ => resolve_dir(&config.dir)?,
        };
        if let Some(file) = &options.file {
            let invalid = |reason: String| FsError::InvalidDir {
                path: dir.join(file),
                reason,
            };
            let name = std::ffi::CString::new(file.as_str())
                .map_err(|_| invalid("the name has a NUL byte".into()))?;
            confined::check_name(&name).map_err(|e| invalid(e.to_string()))?;
            let meta =
                std::fs::symlink_metadata(dir.join(file)).map_err(|e| invalid(e.to_string()))?;
            if !meta.file_type().is_file() {
                return Err(invalid("not a regular file".into()));
            }
        }
        let mut config_space = vec![0u8; TAG_LEN + 4];
        config_space[..config.tag.len()].copy_from_slice(config.tag.as_bytes());
        config_space[TAG_LEN..].copy_from_slice(&(REQUEST_QUEUES as u32).to_le_bytes());
        let mut sizes = vec![HIPRIO_QUEUE_SIZE];
        sizes.extend(std::iter::repeat_n(REQUEST_QUEUE_SIZE, REQUEST_QUEUES));
        Ok(Fs {
            tag: config.tag.clone(),
            dir,
            options,
            config_space,
            queue_events: new_queue_events(sizes.len()).map_err(FsError::Events)?,
            queues: new_queues(&sizes),
            acked_features: 0,
            active: None,
        })
    }

    /// The mount tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The shared directory, as resolved at setup.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A single-file share's one entry.
    pub fn file(&self) -> Option<&str> {
        self.options.file.as_deref()
    }

    fn stop_worker(&mut self) {
        if let Some(mut worker) = self.active.take().and_then(|a| a.worker) {
            worker.stop();
        }
    }
}

impl snapshot::Persist for Fs {
    type State = FsState;
    /// The restored VM's own share: same tag and policy, its own directory.
    type Resources = FsConfig;
    type Error = FsError;

    fn save(&self) -> FsState {
        FsState {
            tag: self.tag.clone(),
            num_request_queues: REQUEST_QUEUES as u32,
            read_only: self.options.read_only,
            nosuid: self.options.nosuid,
        }
    }

    fn restore(config: FsConfig, state: &FsState) -> Result<Self, FsError> {
        let fs = Fs::new(&config)?;
        let vm = fs.save();
        let differs = |what, snapshot: &dyn ToString, vm: &dyn ToString| FsError::Layout {
            what,
            snapshot: snapshot.to_string(),
            vm: vm.to_string(),
        };
        if state.tag != vm.tag {
            return Err(differs("tag", &state.tag, &vm.tag));
        }
        if state.num_request_queues != vm.num_request_queues {
            return Err(differs(
                "request queue count",
                &state.num_request_queues,
                &vm.num_request_queues,
            ));
        }
        // Whether the share is one file is the host side's, as its directory is: a
        // template's placeholder directory restores as a container's single-file bind.
        if (state.read_only, state.nosuid) != (vm.read_only, vm.nosuid) {
            let policy = |s: &FsState| format!("read_only={} nosuid={}", s.read_only, s.nosuid);
            return Err(differs("policy", &policy(state), &policy(&vm)));
        }
        Ok(fs)
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

impl MutEventSubscriber for Fs {
    // The queue eventfds are the worker thread's: nothing runs on the event loop.
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {}
    fn init(&mut self, _ops: &mut EventOps) {}
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }
    fn queues(&self) -> &[Queue] {
        &self.queues
    }
    fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }
    fn queue_snapshots(&self) -> Vec<QueueSnapshot> {
        match &self.active {
            Some(active) => active
                .shared
                .lock_queues()
                .iter()
                .map(QueueSnapshot::of)
                .collect(),
            None => self.queues.iter().map(QueueSnapshot::of).collect(),
        }
    }
    fn avail_features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX | RING_INDIRECT_DESC
    }
    fn set_acked_features(&mut self, acked: u64) {
        self.acked_features = acked;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        crate::warn_limited!("virtio-fs: config write at {offset:#x}; the config is read-only");
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        self.stop_worker();
        let backend = |what: &str, e: std::io::Error| {
            ActivateError::Backend(format!("virtio-fs {}: {what}: {e}", self.tag))
        };
        let fs = ConfinedFs::new(&self.dir, self.options.clone())
            .map_err(|e| backend("cannot serve the share", e))?;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, q) in self.queues.iter().enumerate() {
            queues.push(
                Queue::try_from(q.state()).map_err(|_| ActivateError::InvalidQueue { index })?,
            );
        }
        let mut active = Active {
            shared: Arc::new(Shared {
                queues: Mutex::new(queues),
                broken: AtomicBool::new(false),
            }),
            worker: None,
            mem,
            irq,
            server: Arc::new(Server::new(fs)),
        };
        active
            .spawn_worker(&self.tag, &self.queue_events)
            .map_err(|e| backend("worker thread", e))?;
        self.active = Some(active);
        Ok(())
    }
    fn reset(&mut self) {
        self.stop_worker();
        self.acked_features = 0;
    }
    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
    fn quiesce(&mut self) {
        if let Some(mut worker) = self.active.as_mut().and_then(|a| a.worker.take()) {
            worker.stop();
        }
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        // Where each ring stands, for a stalled share to show which side waits: a request
        // the driver made available that the device never took, or none made at all.
        const NAMES: [[&str; 3]; 2] = [
            [
                "hiprio_driver_avail_idx",
                "hiprio_device_next_avail",
                "hiprio_avail_event",
            ],
            [
                "requests_driver_avail_idx",
                "requests_device_next_avail",
                "requests_avail_event",
            ],
        ];
        let mut all = Vec::new();
        let Some(active) = &self.active else {
            return all;
        };
        all.push((
            "broken",
            u64::from(
                active
                    .shared
                    .broken
                    .load(std::sync::atomic::Ordering::SeqCst),
            ),
        ));
        // The worker holds the queues while it serves them: a busy worker is an answer too.
        let Ok(queues) = active.shared.queues.try_lock() else {
            all.push(("worker_busy", 1));
            return all;
        };
        for (q, names) in queues.iter().zip(NAMES) {
            let [avail, next, event] = names;
            let (driver, device, avail_event) = super::ring_positions(q, &active.mem);
            all.push((avail, driver));
            all.push((next, device));
            all.push((event, avail_event));
        }
        all
    }
    fn unquiesce(&mut self) {
        let tag = self.tag.clone();
        if let Some(active) = self.active.as_mut().filter(|a| a.worker.is_none()) {
            if let Err(e) = active.spawn_worker(&tag, &self.queue_events) {
                // Nothing serves the guest's requests now: say so, and mark the device
                // broken as a failed queue does (nothing more is attempted until a reset).
                log::error!("virtio-fs {tag}: cannot start the worker again: {e}");
                active
                    .shared
                    .broken
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests;
