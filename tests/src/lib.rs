//! The harness of berth's end-to-end tests: where the built binaries and guest artifacts
//! are, child processes with hard timeouts, scratch directories, and the rule for tests
//! that need a capability this host may lack: under CI (`CI=true`) they fail with the
//! reason; elsewhere they skip, saying why.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The target directory's profile folder this test binary was built into.
pub fn profile_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("BERTH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("the test binary knows its path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

/// A binary of the workspace, built in the same profile as the tests.
pub fn bin(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`make build`)",
        path.display()
    );
    path
}

/// target/guest: the guest kernel and initramfs built by `make build`.
pub fn guest_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("BERTH_GUEST_DIR") {
        return PathBuf::from(dir);
    }
    profile_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .join("guest")
}

/// Whether this run is CI, where nothing may be skipped.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports a missing capability: a failure under CI, a printed skip elsewhere. Returns
/// false when the test must not go on.
pub fn require(available: Result<(), String>, what: &str) -> bool {
    match available {
        Ok(()) => true,
        Err(reason) if under_ci() => panic!("{what} is required under CI: {reason}"),
        Err(reason) => {
            eprintln!("SKIPPED: {what} unavailable: {reason}");
            false
        }
    }
}

/// /dev/kvm can be opened.
pub fn kvm_available() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))
}

/// `berth-vmm check` passes: this host's KVM runs Linux guests.
pub fn linux_guests_supported() -> Result<(), String> {
    let out = Command::new(bin("berth-vmm"))
        .arg("check")
        .output()
        .map_err(|e| format!("cannot run berth-vmm check: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// The guest kernel exists.
pub fn guest_kernel() -> Result<(), String> {
    let path = guest_dir().join("vmlinux");
    if path.exists() {
        Ok(())
    } else {
        Err(format!("{} is missing (run `make build`)", path.display()))
    }
}

/// The guest kernel and initramfs exist.
pub fn guest_artifacts() -> Result<(), String> {
    for name in ["vmlinux", "initramfs.cpio"] {
        let path = guest_dir().join(name);
        if !path.exists() {
            return Err(format!("{} is missing (run `make build`)", path.display()));
        }
    }
    Ok(())
}

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory named after `name` under the system temp dir.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "berth-test-{}-{}-{:x}",
            name,
            std::process::id(),
            rand_u64()
        ));
        std::fs::create_dir_all(&dir).expect("can create a scratch directory");
        Scratch(dir)
    }

    /// A path inside it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u64::from_ne_bytes(b)
}

/// What a finished child left.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// The exit code; panics (with the output) if the child died of a signal.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("child died of a signal: {self:?}"))
    }
}

/// Runs `cmd` with stdin from `input`, killing it after `timeout` (a test failure).
pub fn run(mut cmd: Command, input: &[u8], timeout: Duration) -> Finished {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&input);
    });
    let stdout = reader(child.stdout.take().expect("stdout is piped"));
    let stderr = reader(child.stderr.take().expect("stderr is piped"));
    let Some(status) = wait_timeout(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{cmd:?} did not finish within {timeout:?}; stderr: {}",
            String::from_utf8_lossy(&stderr.join().unwrap_or_default())
        );
    };
    let _ = writer.join();
    Finished {
        status,
        stdout: String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned(),
        elapsed: start.elapsed(),
    }
}

fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child` up to `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("cannot wait for a child: {e}"),
        }
    }
}

/// The names of a process's threads.
pub fn thread_names(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for entry in entries.flatten() {
            if let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) {
                names.push(name.trim().to_string());
            }
        }
    }
    names
}
