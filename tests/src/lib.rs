//! The harness of berth's end-to-end tests: where the built binaries and guest artifacts
//! are, child processes with hard timeouts, scratch directories, and the rule for tests
//! that need a capability this host may lack: under CI (`CI=true`) they fail with the
//! reason; elsewhere they skip, saying why.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod cli;

/// The target directory's profile folder this test binary was built into.
pub fn profile_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("BERTH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test binary>, or target/<profile>/<binary> (the benchmarks).
    let exe = std::env::current_exe().expect("the binary knows its path");
    let dir = exe.parent().expect("binaries live in target/<profile>");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
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

pub use test_gate::{require, under_ci};

/// How many times the harness lets berth boot a VM again after a boot that died or stalled
/// without a word before anything ran in it: once inside the emulated virtualization host
/// (QEMU TCG loses about one boot in a hundred: tests/vmhost/README.md), never elsewhere,
/// where such a boot is berth's failure. berth itself never retries unless told to
/// (`berth-vmm run --boot-retries`, `berthd --boot-retries`), and says so each time; the
/// harness counts each retry with [`note_retry`].
pub fn boot_retries() -> u32 {
    u32::from(std::env::var_os("BERTH_VMHOST").is_some())
}

/// Counts a retry the harness allowed: printed, and appended to `BERTH_RETRY_LOG` (which
/// `make test` tallies at the end of the run), so that no retry hides a failure.
pub fn note_retry(what: &str) {
    let line = format!(
        "RETRY ({}): {}",
        std::thread::current().name().unwrap_or("test"),
        what.replace('\n', " | ")
    );
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("BERTH_RETRY_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Notes every retry a `berth-vmm run` reported on its stderr.
pub fn note_run_retries(stderr: &str) {
    for line in stderr.lines().filter(|l| l.contains("boot retry")) {
        note_retry(line);
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
pub fn run(cmd: Command, input: &[u8], timeout: Duration) -> Finished {
    let shown = format!("{cmd:?}");
    run_within(cmd, input, timeout).unwrap_or_else(|stderr| {
        panic!("{shown} did not finish within {timeout:?}; stderr: {stderr}")
    })
}

/// Runs `cmd` with stdin from `input`; after `timeout` kills it and returns its stderr.
pub fn run_within(mut cmd: Command, input: &[u8], timeout: Duration) -> Result<Finished, String> {
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
        return Err(String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned());
    };
    let _ = writer.join();
    Ok(Finished {
        status,
        stdout: String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned(),
        elapsed: start.elapsed(),
    })
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// A child process killed and reaped when dropped: a test that fails while it runs leaves
/// nothing behind (a VMM left running keeps spinning a core for good).
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
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

// ---------------------------------------------------------------------------------------
// Docker engines for tests: berthd, and Debian's dockerd as the anchor, each on a private
// socket, data root and exec root, driven by the real Docker CLI.

/// The Docker CLI the tests drive (28.x): `BERTH_DOCKER_CLI`, else /usr/local/bin/docker.
pub fn docker_cli() -> PathBuf {
    if let Ok(p) = std::env::var("BERTH_DOCKER_CLI") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from("/usr/local/bin/docker");
    if local.exists() {
        local
    } else {
        PathBuf::from("docker")
    }
}

/// Where expensive things built for tests are cached (`BERTH_CACHE`, else ~/.cache/berth).
pub fn cache_dir() -> PathBuf {
    let dir = std::env::var("BERTH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/berth")
        });
    std::fs::create_dir_all(&dir).expect("can create the cache directory");
    dir
}

/// An image file built once into the cache under `images/<name>-<hash>.tar` (the hash of
/// `key`, the inputs that make it), by `build(tmp)`; tests of one binary asking at once
/// wait for one build.
fn cached_image(name: &str, key: &[u8], build: impl FnOnce(&Path)) -> PathBuf {
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let out = cache_dir().join(format!("images/{name}-{hash:016x}.tar"));
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _building = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    if out.exists() {
        return out;
    }
    std::fs::create_dir_all(out.parent().expect("has a parent")).expect("can create the cache");
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    build(&tmp);
    std::fs::rename(&tmp, &out).expect("can publish the image");
    out
}

/// A busybox image built by tests/images/mkbusybox (`rootfs` for `docker import`, `archive`
/// for `docker load`), cached by the script's and the busybox binary's identity.
pub fn busybox_image(kind: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/mkbusybox");
    let mut key = std::fs::read(&script).expect("tests/images/mkbusybox exists");
    if kind == "netprobe" {
        let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/netprobe.c");
        key.extend(std::fs::read(probe).expect("tests/images/netprobe.c exists"));
    }
    if let Ok(m) = std::fs::metadata("/bin/busybox") {
        use std::os::unix::fs::MetadataExt;
        key.extend_from_slice(format!("{} {}", m.size(), m.mtime()).as_bytes());
    }
    cached_image(&format!("busybox-{kind}"), &key, |tmp| {
        let mut cmd = Command::new(&script);
        cmd.arg(kind).arg(tmp);
        let f = run(cmd, b"", Duration::from_secs(120));
        assert!(f.status.success(), "mkbusybox {kind} failed: {}", f.stderr);
    })
}

/// Debian bookworm made from Debian's packages by tests/images/mkdebian (python3, redis and
/// nginx among them): a Docker archive of some 25 layers (packages grouped, the files no package owns, then whiteouts, an opaque
/// directory and hard links), cached by the script's identity. Its first build runs
/// debootstrap against Debian's mirror, as the test packages are installed.
pub fn debian_image() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/mkdebian");
    let key = std::fs::read(&script).expect("tests/images/mkdebian exists");
    cached_image("debian-bookworm", &key, |tmp| {
        let mut cmd = Command::new(&script);
        cmd.arg(cache_dir().join("debian")).arg(tmp);
        let f = run(cmd, b"", Duration::from_secs(900));
        assert!(f.status.success(), "mkdebian failed: {}", f.stderr);
    })
}

/// A reply from a daemon's API.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request over a Unix socket (Connection: close; chunked replies decoded).
pub fn http_unix(
    socket: &Path,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<HttpReply> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: berth-tests\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        req.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut rest = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(eol) = rest[i..].windows(2).position(|w| w == b"\r\n") {
            let size_str = String::from_utf8_lossy(&rest[i..i + eol]).into_owned();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            i += eol + 2;
            if size == 0 || i + size > rest.len() {
                break;
            }
            out.extend_from_slice(&rest[i..i + size]);
            i += size + 2;
        }
        rest = out;
    }
    Ok(HttpReply {
        status,
        headers,
        body: rest,
    })
}

/// Where test daemons keep their sockets, data and exec roots: `BERTH_TEST_DIR`, else the
/// system temp dir. Inside the emulated virtualization host it must be a tmpfs (overlayfs
/// upper dirs and trusted xattrs cannot live on its overlay root).
pub fn daemon_base_dir() -> PathBuf {
    std::env::var("BERTH_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir())
}

/// A Docker engine process started by a test, and the CLI pointed at it.
pub struct Daemon {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    /// Keep the directory (set `BERTH_KEEP_TEST_DIRS=1` to look at it after a test).
    keep: bool,
    /// A descriptor limit (soft and hard) to start the daemon with.
    nofile: Option<u64>,
}

impl Daemon {
    fn new(name: &'static str, program: PathBuf, extra: &[&str]) -> Daemon {
        Daemon::wrapped(name, &[], program, extra)
    }

    /// A daemon started through `wrapper` (`ip netns exec NS`, say): `wrapper[0]` runs with
    /// the rest of `wrapper`, then `program` and its arguments.
    fn wrapped(name: &'static str, wrapper: &[&str], program: PathBuf, extra: &[&str]) -> Daemon {
        let dir = daemon_base_dir().join(format!(
            "berth-test-{name}-{}-{:08x}",
            std::process::id(),
            rand_u64() as u32
        ));
        std::fs::create_dir_all(dir.join("docker-config")).expect("can create a daemon directory");
        let socket = dir.join("docker.sock");
        let mut args = vec![
            "--host".to_string(),
            format!("unix://{}", socket.display()),
            "--data-root".into(),
            dir.join("data").display().to_string(),
            "--exec-root".into(),
            dir.join("exec").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let (program, args) = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut all: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
                all.push(program.display().to_string());
                all.extend(args);
                (PathBuf::from(first), all)
            }
            None => (program, args),
        };
        Daemon {
            name,
            program,
            args,
            child: None,
            log: dir.join(format!("{name}.log")),
            dir,
            socket,
            keep: std::env::var("BERTH_KEEP_TEST_DIRS").is_ok_and(|v| v == "1"),
            nofile: None,
        }
    }

    /// Starts (or restarts) the daemon and waits until `/_ping` answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("can open the daemon log");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("can dup the log"))
            .stderr(log);
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe and only reads `lim`, copied into the
            // closure; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http_unix(&self.socket, "GET", "/_ping", "", b"") {
                if r.status == 200 {
                    return;
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "{} exited during startup ({status}): {}",
                        self.name,
                        self.log()
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not answer on {} within 60 s: {}",
                    self.name,
                    self.socket.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon: SIGTERM, then SIGKILL after `grace`. Returns how it ended.
    pub fn stop_within(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        match wait_timeout(&mut child, grace) {
            Some(s) => Some(s),
            None => {
                let _ = child.kill();
                child.wait().ok()
            }
        }
    }

    /// Stops the daemon (20 s grace).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stop_within(Duration::from_secs(20))
    }

    /// Stops and starts it again on the same socket, data root and exec root.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not stop cleanly ({status:?}): {}",
            self.name,
            self.log()
        );
        self.start();
    }

    /// Its pid while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its --data-root.
    pub fn data_root(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Its --exec-root.
    pub fn exec_root(&self) -> PathBuf {
        self.dir.join("exec")
    }

    /// What a failed assertion about a running container's VM should show: its VMM's
    /// metrics (each virtio device's interrupts, queue positions and counters: a stalled
    /// queue or dropped frames are seen there), the end of its guest's console and of the
    /// daemon's log.
    pub fn vm_report(&self, container: &str) -> String {
        let id = self
            .docker(&["inspect", "-f", "{{.Id}}", container])
            .stdout
            .trim()
            .to_string();
        let metrics = match id.get(..16) {
            Some(short) => vmm_launcher::control::metrics(
                &self.exec_root().join(short).join("control.sock"),
                Duration::from_secs(10),
            )
            .map(|m| m.to_string())
            .unwrap_or_else(|e| format!("(no metrics: {})", vmm_launcher::chain(&e))),
            None => format!("(no container {container})"),
        };
        let console = std::fs::read_to_string(
            self.data_root()
                .join("containers")
                .join(&id)
                .join("console.log"),
        )
        .unwrap_or_default();
        format!(
            "\n--- VMM metrics of {container}: {metrics}\n--- its console (last 30 lines):\n{}\n\
             --- {} log (last 40 lines):\n{}",
            last_lines(&console, 30),
            self.name,
            last_lines(&self.log(), 40)
        )
    }

    /// Everything it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A `docker` CLI command pointed at this daemon (isolated config, no context).
    pub fn docker_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(docker_cli());
        cmd.args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.dir.join("docker-config"))
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env("DOCKER_CLI_HINTS", "false")
            // Both engines build with the classic builder (berth has no other; the CLI
            // would otherwise look for buildx).
            .env("DOCKER_BUILDKIT", "0");
        cmd
    }

    /// Runs `docker ARGS` (240 s limit: a daemon's first `run` of a size builds its VM
    /// template, which on a slow CI machine inside the emulated host was seen to take 92 s,
    /// and a stalled first boot is given 90 s before its retry).
    pub fn docker(&self, args: &[&str]) -> Finished {
        self.docker_with_input(args, b"")
    }

    /// Runs `docker ARGS` with `input` on stdin. A command that hangs fails the test with
    /// what the daemon and its containers' consoles said last: a hang seen once in CI must
    /// be diagnosable from the log.
    pub fn docker_with_input(&self, args: &[&str], input: &[u8]) -> Finished {
        let timeout = Duration::from_secs(240);
        run_within(self.docker_command(args), input, timeout).unwrap_or_else(|stderr| {
            let mut consoles = String::new();
            if let Ok(entries) = std::fs::read_dir(self.data_root().join("containers")) {
                for e in entries.flatten() {
                    let console = std::fs::read_to_string(e.path().join("console.log"));
                    let console = console.unwrap_or_default();
                    consoles += &format!(
                        "\n--- console of {}:\n{}",
                        e.file_name().to_string_lossy(),
                        last_lines(&console, 15)
                    );
                }
            }
            panic!(
                "docker {args:?} did not finish within {timeout:?}; stderr: {stderr}\n\
                 --- {} log (last 80 lines):\n{}{consoles}",
                self.name,
                last_lines(&self.log(), 80)
            )
        })
    }

    /// Runs `docker ARGS`, which must succeed; returns its stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let f = self.docker(args);
        assert!(
            f.status.success(),
            "docker {args:?} failed ({}):\nstdout: {}\nstderr: {}\n--- {} log (last 30 lines):\n{}",
            f.status,
            f.stdout,
            f.stderr,
            self.name,
            last_lines(&self.log(), 30)
        );
        f.stdout
    }

    /// A raw API request (`path` with or without a version prefix).
    pub fn api(&self, method: &str, path: &str, body: &[u8]) -> HttpReply {
        let ct = if body.is_empty() {
            ""
        } else {
            "application/json"
        };
        self.api_typed(method, path, ct, body)
    }

    /// A raw API request with a content type.
    pub fn api_typed(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> HttpReply {
        http_unix(&self.socket, method, path, content_type, body)
            .unwrap_or_else(|e| panic!("{} {method} {path}: {e}; log: {}", self.name, self.log()))
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if !self.keep {
            // A daemon that failed may leave trees deeper than std's recursive removal can
            // take on a test thread's stack: rm(1) walks them without recursion.
            let _ = Command::new("rm")
                .arg("-rf")
                .arg("--")
                .arg(&self.dir)
                .status();
        }
    }
}

/// berthd on a private socket, data root and exec root; stopped (and its directory removed)
/// when dropped.
pub struct Berthd(Daemon);

impl Berthd {
    /// Starts a fresh berthd (target/<profile>/berthd).
    pub fn start() -> Berthd {
        Berthd::start_with(&[])
    }

    /// Starts a fresh berthd with extra arguments (e.g. `--debug`), and the harness's
    /// `--boot-retries` ([`boot_retries`]).
    pub fn start_with(extra: &[&str]) -> Berthd {
        Berthd::start_limited(extra, None)
    }

    /// Starts a fresh berthd with extra arguments and, when given, a descriptor limit (soft
    /// and hard, so it cannot raise it).
    pub fn start_limited(extra: &[&str], nofile: Option<u64>) -> Berthd {
        let retries = boot_retries().to_string();
        let mut args = vec!["--boot-retries", &retries];
        // Tests reach only registries and ADD URLs they serve on loopback: any other name
        // is refused before a lookup or a connection is made.
        for allowed in ["127.0.0.0/8", "::1/128", "localhost"] {
            args.extend_from_slice(&["--allow-registry", allowed, "--allow-fetch", allowed]);
        }
        args.extend_from_slice(extra);
        let mut d = Daemon::new("berthd", bin("berthd"), &args);
        d.nofile = nofile;
        d.start();
        Berthd(d)
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        // Every boot the daemon retried, counted before its log goes with its directory.
        for line in self.0.log().lines().filter(|l| l.contains("boot retry")) {
            note_retry(line);
        }
    }
}

impl std::ops::Deref for Berthd {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.0
    }
}

impl std::ops::DerefMut for Berthd {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.0
    }
}

/// Debian's dockerd (docker.io: dockerd 20.10, containerd, runc) as the anchor, on a
/// private socket, data root and exec root, without touching the host's network.
pub struct Dockerd(Daemon);

/// dockerd can run here.
pub fn dockerd_available() -> Result<(), String> {
    if !nix_is_root() {
        return Err("dockerd needs root".into());
    }
    for bin in ["/usr/sbin/dockerd", "/usr/bin/containerd", "/usr/sbin/runc"] {
        if !Path::new(bin).exists() && !Path::new(&bin.replace("/usr/sbin/", "/usr/bin/")).exists()
        {
            return Err(format!(
                "{bin} is missing (apt-get install docker.io; `make test-deps` does it)"
            ));
        }
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Dockerd {
    /// Starts a fresh dockerd.
    pub fn start() -> Dockerd {
        let mut d = Daemon::new(
            "dockerd",
            PathBuf::from("dockerd"),
            &["--iptables=false", "--bridge=none", "--ip-masq=false"],
        );
        let pidfile = d.dir.join("dockerd.pid").display().to_string();
        d.args.extend(["--pidfile".to_string(), pidfile]);
        d.start();
        Dockerd(d)
    }
}

impl Dockerd {
    /// Starts a fresh dockerd inside network namespace `netns` (`ip netns add`), with its
    /// default bridge and userland proxy (no iptables): published ports on the namespace's
    /// own loopback, the host's interfaces untouched. Entered with nsenter, which changes
    /// the network namespace alone (`ip netns exec` remounts /sys, and the cgroup mounts
    /// under it with it).
    pub fn start_in_netns(netns: &str) -> Dockerd {
        let net = format!("--net=/run/netns/{netns}");
        let mut d = Daemon::wrapped(
            "dockerd",
            &["nsenter", &net],
            PathBuf::from("dockerd"),
            &[
                "--iptables=false",
                "--ip-masq=false",
                "--userland-proxy=true",
            ],
        );
        let pidfile = d.dir.join("dockerd.pid").display().to_string();
        d.args.extend(["--pidfile".to_string(), pidfile]);
        d.start();
        Dockerd(d)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // dockerd stops its own containerd; a killed dockerd leaves it behind.
        let containerd_pid =
            std::fs::read_to_string(self.0.exec_root().join("containerd/containerd.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
        self.0.stop();
        if let Some(pid) = containerd_pid {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "containerd" {
                // SAFETY: kill(2) on the containerd this dockerd started (checked by name).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // Mounts dockerd may have left under its data root.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let dir = self.0.dir.display().to_string();
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|p| p.starts_with(&dir))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
    }
}

impl std::ops::Deref for Dockerd {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.0
    }
}

impl std::ops::DerefMut for Dockerd {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.0
    }
}
/// Debian's docker-registry on 127.0.0.1, with htpasswd auth when given a file; killed with
/// the test.
pub struct Registry {
    child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    root: PathBuf,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// What a [`CuttingProxy`] does to the traffic it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Carry everything.
    Never,
    /// Cut the connection carrying the `n`th byte sent back to clients (counted from when
    /// this was set), then carry everything.
    OnceAfter(u64),
    /// As `OnceAfter`, then refuse every connection (closed as soon as accepted).
    AfterThenDown(u64),
    /// Refuse every connection.
    Down,
}

struct ProxyState {
    cut: std::sync::Mutex<(Cut, u64)>,
    requests: std::sync::Mutex<Vec<String>>,
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` (a [`Registry`]) that cuts its
/// connections as told: a registry whose connection breaks mid-blob. It keeps the header
/// lines of the requests it carries. Stopped with the test (its threads end as their
/// connections do).
pub struct CuttingProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    state: std::sync::Arc<ProxyState>,
}

impl CuttingProxy {
    pub fn start(upstream: &str) -> CuttingProxy {
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(ProxyState {
            cut: std::sync::Mutex::new((Cut::Never, 0)),
            requests: std::sync::Mutex::new(Vec::new()),
        });
        let (shared, upstream) = (state.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let cut = shared.cut.lock().unwrap().0;
                if cut == Cut::Down {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let (c2, s2, st) = (
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    shared.clone(),
                );
                // Requests up: their header lines kept.
                std::thread::spawn(move || copy_up(c2, s2, &st));
                let st = shared.clone();
                std::thread::spawn(move || copy_down(server, client, &st));
            }
        });
        CuttingProxy { addr, state }
    }

    /// From now on, cut as `cut` says.
    pub fn set(&self, cut: Cut) {
        *self.state.cut.lock().unwrap() = (cut, 0);
    }

    /// The header lines of every request carried so far.
    pub fn request_lines(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }
}

fn copy_up(mut from: std::net::TcpStream, mut to: std::net::TcpStream, state: &ProxyState) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        state
            .requests
            .lock()
            .unwrap()
            .extend(text.lines().filter(|l| l.is_ascii()).map(str::to_string));
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn copy_down(mut from: std::net::TcpStream, mut to: std::net::TcpStream, state: &ProxyState) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut send = n;
        let mut cut_here = false;
        {
            let mut cut = state.cut.lock().unwrap();
            let (mode, sent) = *cut;
            match mode {
                Cut::OnceAfter(limit) | Cut::AfterThenDown(limit) => {
                    if sent + n as u64 >= limit {
                        send = (limit - sent.min(limit)) as usize;
                        cut_here = true;
                        *cut = (
                            if matches!(mode, Cut::OnceAfter(_)) {
                                Cut::Never
                            } else {
                                Cut::Down
                            },
                            0,
                        );
                    } else {
                        cut.1 = sent + n as u64;
                    }
                }
                Cut::Down => cut_here = true,
                Cut::Never => {}
            }
        }
        if to.write_all(&buf[..send]).is_err() || cut_here {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

/// A certificate authority made for a test, and a server certificate it signed for
/// 127.0.0.1 and localhost (PEM files, made with openssl).
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn make(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let script = "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=berth-test-ca \
               -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
               -keyout ca.key -out ca.crt && \
             openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
               -keyout server.key -out server.csr && \
             printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > server.ext && \
             openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
               -extfile server.ext -out server.crt";
        let out = Command::new("sh")
            .args(["-ec", script])
            .current_dir(dir)
            .output()
            .expect("openssl runs (`make test-deps`)");
        assert!(
            out.status.success(),
            "openssl could not make the test CA: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestCa {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        }
    }
}

/// Debian's nginx on 127.0.0.1, serving the `server` block a test gives (its `listen` is
/// added), with every request logged as "METHOD URI STATUS REQUEST-LENGTH AUTHORIZATION".
/// Killed with the test.
pub struct Nginx {
    _child: KillOnDrop,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: PathBuf,
}

impl Nginx {
    pub fn start(dir: &Path, server: &str) -> Nginx {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let d = dir.display();
        let config = dir.join("nginx.conf");
        std::fs::write(
            &config,
            format!(
                "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n\
                 log_format berth '$request_method $request_uri $status $request_length \"$http_authorization\"';\n\
                 access_log {d}/access.log berth;\n\
                 client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
                 server {{\nlisten {addr};\n{server}\n}}\n}}\n"
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .expect("nginx starts (`make test-deps`)");
        let mut child = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            let log = || {
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
                    + &std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            };
            assert!(
                matches!(child.try_wait(), Ok(None)),
                "nginx exited: {}",
                log()
            );
            assert!(Instant::now() < deadline, "nginx did not listen: {}", log());
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            _child: child,
            addr,
            dir: dir.to_path_buf(),
        }
    }

    /// The requests served so far, a line each.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// The test token service (`tests/registry/token-server`) for a [`Registry`] started with
/// [`Registry::start_with_tokens`]: Bearer tokens for `user:password`, signed with a key
/// made here. Killed with the test.
pub struct TokenServer {
    child: std::process::Child,
    /// The registry's `auth:` section for it.
    pub auth: String,
}

impl TokenServer {
    pub fn start(dir: &Path, user_password: &str) -> TokenServer {
        std::fs::create_dir_all(dir).unwrap();
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=berth-test-tokens", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs (`make test-deps`)");
        assert!(made.success(), "openssl could not make the token key");
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("registry/token-server");
        let mut child = Command::new(script)
            .arg(port.to_string())
            .arg(&key)
            .arg(&cert)
            .args(["berth-test-issuer", "berth-test-registry", user_password])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("token-server.log")).unwrap())
            .spawn()
            .expect("the token server starts");
        let mut ready = String::new();
        {
            use std::io::BufRead;
            let out = child.stdout.take().expect("piped");
            std::io::BufReader::new(out)
                .read_line(&mut ready)
                .expect("the token server says it is ready");
        }
        assert_eq!(ready.trim(), "ready", "the token server did not start");
        let auth = format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{port}/token\n    service: berth-test-registry\n    issuer: berth-test-issuer\n    rootcertbundle: {}\n",
            cert.display()
        );
        TokenServer { child, auth }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    pub fn start(dir: &Path, htpasswd: Option<&Path>) -> Registry {
        let auth = htpasswd
            .map(|p| {
                format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    p.display()
                )
            })
            .unwrap_or_default();
        Registry::start_with(dir, &auth)
    }

    /// A registry whose tokens `tokens` issues.
    pub fn start_with_tokens(dir: &Path, tokens: &TokenServer) -> Registry {
        Registry::start_with(dir, &tokens.auth)
    }

    /// A registry serving HTTPS with `tls`'s certificate.
    pub fn start_tls(dir: &Path, tls: &TestCa) -> Registry {
        Registry::start_serving(
            dir,
            "",
            &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                tls.cert.display(),
                tls.key.display()
            ),
        )
    }

    fn start_with(dir: &Path, auth: &str) -> Registry {
        Registry::start_serving(dir, auth, "")
    }

    /// `http` is more of the config's `http:` section.
    fn start_serving(dir: &Path, auth: &str, http: &str) -> Registry {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let root = dir.join("storage");
        std::fs::create_dir_all(&root).unwrap();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{http}{auth}",
                root.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry starts (`make test-deps`)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the registry did not listen: {}",
                std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Registry { child, addr, root }
    }

    /// The file holding blob `digest`.
    pub fn blob(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
