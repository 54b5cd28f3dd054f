//! Templates: a VM booted once until its agent is up, snapshotted, and stopped, so that
//! clones start from the snapshot (`berth-vmm restore`) instead of booting.
//!
//! A template directory holds `vm.state` and `vm.mem` (the snapshot) and the template
//! boot's `console.log`. It is built in a private directory beside its place and renamed
//! into place once complete, so a template that exists is whole; when two builders race,
//! the first rename wins and the other's build is dropped. What a template is keyed by (the
//! kernel, the agent, the VM's size and devices) is the caller's business: a directory is
//! one template, never rebuilt in place.
//!
//! Before the snapshot, the build waits (at most [`SETTLE_LIMIT`]) for the guest's first
//! free page reports over virtio-balloon to be done: Linux sends them 2 s after its balloon
//! driver starts, marking each reported block in its page structures. Done in the
//! template, they are done once for every clone instead of in each.
//!
//! The template's shares are empty directories of the build: its guest has not mounted
//! them (berth's agent mounts a share only when a container asks for it), so no FUSE state
//! is in the snapshot and every clone's share device serves the clone's own directory.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::control::{self, ControlError, Request};
use crate::{launch, wait_exit, BootSpec, Console, LaunchError, VmmExit};

/// A built template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub dir: PathBuf,
}

impl Template {
    /// The template in `dir`, if one was built there.
    pub fn open(dir: &Path) -> Option<Template> {
        let t = Template {
            dir: dir.to_path_buf(),
        };
        (t.state().is_file() && t.memory().is_file()).then_some(t)
    }

    /// The snapshot's state file.
    pub fn state(&self) -> PathBuf {
        self.dir.join("vm.state")
    }

    /// The snapshot's memory file.
    pub fn memory(&self) -> PathBuf {
        self.dir.join("vm.mem")
    }
}

/// Why a template could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `console` is where its console log was kept; `tail`, its last lines (a retry's log
    /// line must say why, far from the file).
    #[error("the template VM did not come up (its console, kept at {console}, ended: [{tail}])")]
    Boot {
        console: PathBuf,
        tail: String,
        #[source]
        source: LaunchError,
    },
    #[error("the template VM could not be snapshotted ({booted_after_ms} ms after its start, in {took_ms} ms)")]
    Snapshot {
        booted_after_ms: u128,
        took_ms: u128,
        #[source]
        source: ControlError,
    },
    #[error("the template VM did not stop as asked: {0}")]
    Stop(String),
}

/// How long the snapshotted template VM gets to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a snapshot may take: it parks the vCPUs and writes the guest's memory (256 MiB
/// by default) to a file, well under a second on hardware; inside the emulated host on a
/// CI machine running slow, beside three busy VMs, one was seen past 60 s.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The template in `dir`, built from `boot` (with `vmm` as the VMM binary, its agent
/// awaited up to `boot_timeout`) unless it is there already. Of `boot`, the size, kernel,
/// initramfs, command line and devices count; its console and share directories are
/// replaced by the build's own, its vsock and control sockets by ones in `sockets` (an
/// existing directory with a short path: a Unix socket's address has at most 107 bytes).
pub fn ensure(
    vmm: &Path,
    boot: &BootSpec,
    dir: &Path,
    sockets: &Path,
    boot_timeout: Duration,
) -> Result<Template, TemplateError> {
    if let Some(t) = Template::open(dir) {
        return Ok(t);
    }
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| TemplateError::Io { what, path, source }
    };
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    let name = dir
        .file_name()
        .map_or_else(|| "template".into(), |n| n.to_string_lossy().into_owned());
    let build = parent.join(format!(".{name}.build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir(&build).map_err(io("create", &build))?;
    let built = build_in(vmm, boot, &build, sockets, boot_timeout);
    if let Err(mut e) = built {
        // The console log explains a failed boot: kept, beside the place of the template.
        let kept = parent.join(format!("{name}.failed-console.log"));
        let kept = match std::fs::rename(build.join("console.log"), &kept) {
            Ok(()) => kept,
            Err(_) => build.join("console.log"),
        };
        if let TemplateError::Boot { console, tail, .. } = &mut e {
            *tail = crate::console_tail(&kept, 10).join(" | ");
            *console = kept;
        }
        let _ = std::fs::remove_dir_all(&build);
        return Err(e);
    }
    match std::fs::rename(&build, dir) {
        Ok(()) => {}
        // Another builder finished first: its template is as good as this one.
        Err(_) if Template::open(dir).is_some() => {
            let _ = std::fs::remove_dir_all(&build);
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&build);
            return Err(io("move the template into", dir)(e));
        }
    }
    Template::open(dir).ok_or_else(|| TemplateError::Io {
        what: "find the template in",
        path: dir.to_path_buf(),
        source: io::Error::from(io::ErrorKind::NotFound),
    })
}

/// The longest a template build waits for the guest's first free page reports.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// Reports are done when their count has not moved for this long.
const SETTLED_AFTER: Duration = Duration::from_millis(500);

/// Waits until the guest has reported free pages and sent no more for [`SETTLED_AFTER`], or
/// [`SETTLE_LIMIT`] has passed (a guest that reports nothing, say with too little memory
/// free for Linux to report any). A VM without a balloon is not waited for.
fn settle_free_page_reports(control_sock: &Path) {
    let reported = || -> Option<u64> {
        let m = control::metrics(control_sock, Duration::from_secs(10)).ok()?;
        m["virtio"]
            .as_array()?
            .iter()
            .find_map(|d| d["counters"]["reported_ranges"].as_u64())
    };
    let Some(mut last) = reported() else {
        return;
    };
    let started = std::time::Instant::now();
    let mut moved = started;
    while started.elapsed() < SETTLE_LIMIT {
        std::thread::sleep(Duration::from_millis(100));
        let Some(now) = reported() else {
            return;
        };
        if now != last {
            (last, moved) = (now, std::time::Instant::now());
        } else if last > 0 && moved.elapsed() >= SETTLED_AFTER {
            return;
        }
    }
}

fn build_in(
    vmm: &Path,
    boot: &BootSpec,
    build: &Path,
    sockets: &Path,
    boot_timeout: Duration,
) -> Result<(), TemplateError> {
    let mut spec = boot.clone();
    let console = build.join("console.log");
    let uds = sockets.join("vsock.sock");
    let control_sock = sockets.join("control.sock");
    for stale in [&uds, &control_sock] {
        let _ = std::fs::remove_file(stale);
    }
    spec.console = Console::File(console.clone());
    spec.vsock_uds = Some(uds.clone());
    spec.control = Some(control_sock.clone());
    // The template's net device has no backend: every clone is given its own tap.
    if let Some(net) = spec.net.as_mut() {
        net.tap_fd = None;
    }
    for (i, share) in spec.shares.iter_mut().enumerate() {
        share.dir = build.join(format!("share-{i}"));
        std::fs::create_dir(&share.dir).map_err(|source| TemplateError::Io {
            what: "create",
            path: share.dir.clone(),
            source,
        })?;
    }
    let mut cmd = spec.command(vmm);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // The template VM must not outlive its builder, however the builder ends.
    crate::tie_to_parent(&mut cmd);
    let started = std::time::Instant::now();
    let mut child = launch(&mut cmd, &uds, boot_timeout).map_err(|source| TemplateError::Boot {
        console: console.clone(),
        tail: String::new(),
        source,
    })?;
    let ask = |r: Request, timeout| control::request(&control_sock, &r, timeout);
    settle_free_page_reports(&control_sock);
    let snapshot_start = std::time::Instant::now();
    let snapshot = ask(
        Request::Snapshot {
            state: build.join("vm.state"),
            memory: build.join("vm.mem"),
        },
        SNAPSHOT_TIMEOUT,
    )
    .map_err(|source| TemplateError::Snapshot {
        booted_after_ms: (snapshot_start - started).as_millis(),
        took_ms: snapshot_start.elapsed().as_millis(),
        source,
    });
    // Stopped whatever the snapshot's outcome: a template VM has no other use.
    let stopped = ask(Request::Shutdown, Duration::from_secs(60));
    let exit = wait_exit(&mut child, STOP_TIMEOUT);
    if exit.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    snapshot?;
    stopped.map_err(|e| TemplateError::Stop(e.to_string()))?;
    match exit {
        Some(VmmExit::GuestShutdown) => {}
        Some(other) => return Err(TemplateError::Stop(other.to_string())),
        None => {
            return Err(TemplateError::Stop(format!(
                "still running after {} s; killed",
                STOP_TIMEOUT.as_secs()
            )))
        }
    }
    for leftover in [&uds, &control_sock] {
        let _ = std::fs::remove_file(leftover);
    }
    let _ = std::fs::remove_file(format!("{}_1025", uds.display()));
    Ok(())
}
