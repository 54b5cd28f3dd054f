//! What the tests that drive berthd through the Docker CLI share (tests/tests/docker.rs,
//! network.rs): the capability check, one berthd per test binary, unique names, and
//! waiting for an inspected field.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{
    busybox_image, guest_artifacts, linux_guests_supported, require, Berthd, Daemon, Finished,
};

/// Whether this host runs the microVMs these tests boot (under CI, a failure if not).
pub fn ready() -> bool {
    require(linux_guests_supported(), "a KVM that runs Linux guests")
        && require(guest_artifacts(), "the guest kernel and initramfs")
}

/// One berthd for the tests of this binary that do not restart it, with busybox loaded.
pub fn daemon() -> &'static Berthd {
    static DAEMON: OnceLock<Berthd> = OnceLock::new();
    DAEMON.get_or_init(|| {
        // Debug logging: a test that hangs prints the daemon's log (Daemon::docker).
        let d = Berthd::start_with(&["--debug"]);
        let archive = busybox_image("archive");
        d.docker_ok(&["load", "-i", archive.to_str().expect("utf-8 path")]);
        d
    })
}

/// A name no other test of this run uses.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// `docker run FLAGS busybox sh -c SCRIPT`.
pub fn run_sh(d: &Daemon, flags: &[&str], script: &str) -> Finished {
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend(["busybox", "sh", "-c", script]);
    d.docker(&args)
}

/// `docker inspect -f FORMAT NAME` until it prints `want`, up to two minutes; returns the
/// last answer.
pub fn wait_inspect(d: &Daemon, name: &str, format: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = d
            .docker_ok(&["inspect", "-f", format, name])
            .trim()
            .to_string();
        if got == want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
