//! `berth-vmm run`: boot a microVM, run one command in it through the guest agent, stream
//! its stdio, return its exit code, and tear the VM down.
//!
//! The VMM runs as a child `berth-vmm boot` process (one VMM process per VM, as berthd will
//! run it); this process is only the agent's client. Everything it creates lives in one
//! private temporary directory (the VM's vsock socket, the agent's ready socket, the console
//! log), removed when the VM ends cleanly. When the VM fails, the console log is kept and
//! its path printed.
//!
//! `--fs TAG=DIR[:ro][,nosuid]` (repeatable) shares a host directory with the VM over
//! virtio-fs; the command mounts it (`mount -t virtiofs TAG /mnt`).
//!
//! Exit codes: the command's own; 125 when berth could not run it (the VM did not boot, the
//! agent failed, the guest crashed, reset itself or stopped answering: each said by name,
//! with the console's last lines); 126 when the command is not executable; 127 when it was
//! not found.
//!
//! `--boot-retries N` boots again, up to N times, when a boot fails before the command runs
//! (said on stderr each time; default 0: a failed boot is a failure). `--watchdog SECS`
//! (default 120, 0 = off): a guest whose agent does not answer for that long has stopped
//! answering, and its VM is killed and reported.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_client::{AgentClient, ErrorCode, ProcessSpec, StdioStream, TtySize};
use vmm_launcher::{BootSpec, Console, LaunchError, RestoreSpec, Share, VmmExit};

use crate::args::{Args, Spec};

/// Lines of the guest console shown when the VM fails.
const CONSOLE_TAIL_LINES: usize = 20;

const EXIT_BERTH_FAILED: u8 = 125;
const EXIT_NOT_EXECUTABLE: u8 = 126;
const EXIT_NOT_FOUND: u8 = 127;

const SPEC: Spec = Spec {
    valued: &[
        "--cpus",
        "--mem",
        "--kernel",
        "--initrd",
        "--env",
        "-e",
        "--workdir",
        "-w",
        "--user",
        "-u",
        "--console",
        "--boot-timeout",
        "--boot-retries",
        "--watchdog",
        "--cmdline",
        "--fs",
        "--template",
    ],
    flags: &["-t", "--tty"],
};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The id of the one process `run` starts.
const PROCESS_ID: &str = "main";

/// A failure of berth itself (not of the command), with what to tell the user.
struct Failure {
    message: String,
    code: u8,
    /// An exchange with the agent broke (not a refusal): the VM itself may be gone.
    vm_lost: bool,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: EXIT_BERTH_FAILED,
            vm_lost: false,
        }
    }

    /// A command line this process cannot take.
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: crate::boot::EXIT_USAGE,
            ..Failure::new(message)
        }
    }

    /// A failed exchange with the agent: a refusal leaves the VM usable; anything else
    /// (a broken connection, a timeout) is looked into as the VM's end.
    fn agent(e: agent_client::ClientError) -> Self {
        use agent_client::ClientError as E;
        let vm_lost = !matches!(
            e,
            E::Agent { .. }
                | E::InvalidRequest { .. }
                | E::AgentTooOld { .. }
                | E::IncompatibleVersion { .. }
        );
        Failure {
            vm_lost,
            ..Failure::from(e)
        }
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Failure::new(message)
    }
}

pub fn main(argv: &[String]) -> ExitCode {
    let args = match Args::parse(argv, &SPEC) {
        Ok(a) if !a.command.is_empty() => a,
        Ok(_) => {
            eprintln!("berth-vmm run: no command given (berth-vmm run [OPTIONS] -- CMD [ARGS...])");
            return ExitCode::from(crate::boot::EXIT_USAGE);
        }
        Err(e) => {
            eprintln!("berth-vmm run: {e}");
            return ExitCode::from(crate::boot::EXIT_USAGE);
        }
    };
    match Run::new(&args).and_then(|run| run.execute(&args)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("berth-vmm run: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Where the built guest artifacts are: beside the binary, in target/guest.
fn default_guest_file(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("guest").join(name)))
        .unwrap_or_else(|| PathBuf::from("target/guest").join(name))
}

/// The VMM's stdio and its tie to this process.
fn vmm_stdio(cmd: &mut std::process::Command) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        // The VMM only speaks up about failures; its words go straight to the user.
        .stderr(Stdio::inherit());
    // The VM must not outlive this process, however it ends.
    vmm_launcher::tie_to_parent(cmd);
}

/// The private directory of one run.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    fn create() -> Result<Self, Failure> {
        let mut random = [0u8; 8];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random))?;
        let path = std::env::temp_dir().join(format!(
            "berth-run-{}-{:016x}",
            std::process::id(),
            u64::from_ne_bytes(random)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| Failure::new(format!("cannot create {}: {e}", path.display())))?;
        Ok(RunDir { path, keep: false })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            // Keep what explains the failure; the sockets are useless now.
            for name in ["vsock.sock", "vsock.sock_1025"] {
                let _ = std::fs::remove_file(self.path.join(name));
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

struct Run {
    dir: RunDir,
    vmm: Child,
    uds: PathBuf,
    console: PathBuf,
    /// Restored from a template: made its own (random state, clock) before the command runs.
    clone: bool,
    /// Set once this process has asked the guest to shut down: only then is the guest's own
    /// end an orderly one.
    asked_to_stop: bool,
    /// Set by the watchdog when the guest stopped answering (and its VMM was killed).
    unresponsive: Arc<std::sync::Mutex<Option<String>>>,
}

impl Run {
    /// Creates the run directory, starts the VMM and waits for its agent.
    fn new(args: &Args) -> Result<Run, Failure> {
        let kernel = args
            .value("--kernel")
            .map(PathBuf::from)
            .unwrap_or_else(|| default_guest_file("vmlinux"));
        let initrd = args
            .value("--initrd")
            .map(PathBuf::from)
            .unwrap_or_else(|| default_guest_file("initramfs.cpio"));
        for (what, path) in [("kernel", &kernel), ("initramfs", &initrd)] {
            if !path.is_file() {
                return Err(Failure::new(format!(
                    "the guest {what} {} does not exist (build it with `make build`, or pass --{})",
                    path.display(),
                    if what == "kernel" { "kernel" } else { "initrd" }
                )));
            }
        }
        let cpus: u8 = args.number("--cpus", 1).map_err(Failure::new)?;
        let mem: u64 = args.number("--mem", 256).map_err(Failure::new)?;
        let boot_timeout =
            Duration::from_secs(args.number("--boot-timeout", 300).map_err(Failure::new)?);
        let retries: u32 = args.number("--boot-retries", 0).map_err(Failure::new)?;

        let dir = RunDir::create()?;
        let uds = dir.path.join("vsock.sock");
        let console = match args.value("--console") {
            Some(path) => PathBuf::from(path),
            None => dir.path.join("console.log"),
        };
        let mut spec = BootSpec::new(kernel, cpus, mem);
        spec.initrd = Some(initrd);
        spec.console = Console::File(console.clone());
        spec.vsock_uds = Some(uds.clone());
        spec.cmdline = args.value("--cmdline").map(str::to_string);
        for share in args.values("--fs") {
            // Checked here so that a bad one is a usage error, not a failed boot.
            let share: vmm::config::FsShareConfig = share
                .parse()
                .map_err(|e| Failure::usage(format!("--fs {e}")))?;
            spec.shares.push(Share {
                tag: share.tag,
                dir: share.dir,
                read_only: share.read_only,
                nosuid: share.nosuid,
            });
        }
        let exe = std::env::current_exe()?;
        if let Some(template) = args.value("--template") {
            let template = vmm_launcher::template::ensure(
                &exe,
                &spec,
                Path::new(template),
                &dir.path,
                boot_timeout,
            )?;
            let restore = RestoreSpec::of(&spec, template.state(), template.memory());
            let mut cmd = restore.command(&exe);
            vmm_stdio(&mut cmd);
            // The clone's socket appearing is its readiness: none may be left from the build.
            let _ = std::fs::remove_file(&uds);
            return match vmm_launcher::launch_restored(&mut cmd, &uds, boot_timeout) {
                Ok(vmm) => Ok(Run {
                    dir,
                    vmm,
                    uds,
                    console,
                    clone: true,
                    asked_to_stop: false,
                    unresponsive: Arc::default(),
                }),
                Err(e) => {
                    let mut dir = dir;
                    Err(failure_with_console(
                        &mut dir,
                        &console,
                        format!(
                            "the clone of {} did not start: {}",
                            template.dir.display(),
                            Failure::from(e).message
                        ),
                    ))
                }
            };
        }
        let mut attempt = 0;
        loop {
            let mut cmd = spec.command(&exe);
            vmm_stdio(&mut cmd);
            // A boot that died or stalled without a word (reset, triple fault, silence) may
            // be tried again; a panic, KVM's refusal or a VMM error may not.
            let (why, silent) = match vmm_launcher::launch(&mut cmd, &uds, boot_timeout) {
                Ok(vmm) => {
                    return Ok(Run {
                        dir,
                        vmm,
                        uds,
                        console,
                        clone: false,
                        asked_to_stop: false,
                        unresponsive: Arc::default(),
                    })
                }
                Err(LaunchError::Exited(VmmExit::GuestShutdown)) => (
                    "the guest reset itself before its agent was ready (nobody asked it to)"
                        .to_string(),
                    true,
                ),
                Err(e @ (LaunchError::Exited(VmmExit::GuestCrash) | LaunchError::Stalled(_))) => {
                    (Failure::from(e).message, true)
                }
                Err(e) => (Failure::from(e).message, false),
            };
            if !silent || attempt >= retries {
                let mut dir = dir;
                return Err(failure_with_console(&mut dir, &console, why));
            }
            // Only on request (--boot-retries, which the tests give inside the emulated
            // host, where about one boot in a hundred dies silently): the command has not
            // run yet, so a second boot changes nothing it could observe. Said, every time.
            attempt += 1;
            eprintln!("berth-vmm run: {why}; boot retry {attempt} of {retries}");
            let _ = std::fs::remove_file(&uds);
        }
    }

    /// Records a failure: the VM is killed if it still runs, and what it ended with, its
    /// console log's place and last lines are told.
    fn fail(&mut self, message: String) -> Failure {
        let vmm_state = match self.vmm.try_wait() {
            Ok(Some(status)) => VmmExit::from_status(status).to_string(),
            _ => {
                let _ = self.vmm.kill();
                let _ = self.vmm.wait();
                "the VMM was still running and was killed".to_string()
            }
        };
        let message = format!("{message} ({vmm_state})");
        failure_with_console(&mut self.dir, &self.console, message)
    }

    /// What ended the VM, or made it unusable, when an exchange with its agent failed.
    /// Waits a little for the VMM: the guest's end and the connection's end race. A VMM
    /// that still runs then has a guest that stopped answering: it writes its devices'
    /// state to stderr and is killed.
    fn vm_ended(&mut self) -> String {
        if let Some(why) = self.unresponsive.lock().ok().and_then(|w| w.clone()) {
            let _ = self.vmm.wait();
            return why;
        }
        match vmm_launcher::wait_exit(&mut self.vmm, Duration::from_secs(5)) {
            Some(VmmExit::GuestShutdown) if !self.asked_to_stop => {
                "the guest reset itself while the command ran (nobody asked it to)".to_string()
            }
            Some(other) => format!("the VM stopped while the command ran: {other}"),
            None => {
                let threads = vmm_launcher::dump_and_kill(&mut self.vmm);
                format!("the guest stopped answering; the VMM was killed (its threads: {threads})")
            }
        }
    }

    fn execute(mut self, args: &Args) -> Result<u8, Failure> {
        let outcome = self.run_command(args);
        let code = match outcome {
            Ok(code) => code,
            Err(failure) => {
                let code = failure.code;
                if failure.vm_lost {
                    let message = format!("{}; {}", self.vm_ended(), failure.message);
                    return Err(self.fail(message));
                }
                if code == EXIT_BERTH_FAILED {
                    return Err(self.fail(failure.message));
                }
                let message = failure.message;
                // Not found / not executable: the VM is fine; shut it down normally.
                eprintln!("berth-vmm run: {message}");
                code
            }
        };
        self.shutdown()?;
        Ok(code)
    }

    fn run_command(&mut self, args: &Args) -> Result<u8, Failure> {
        let mut control =
            AgentClient::connect(&self.uds, Duration::from_secs(30)).map_err(Failure::agent)?;
        if self.clone {
            control.refresh(None).map_err(Failure::agent)?;
        }
        let tty = args.flag("-t") || args.flag("--tty");
        let spec = process_spec(args, tty)?;
        control
            .create_process(PROCESS_ID, &spec)
            .map_err(Failure::agent)?;

        let stdin_stream = control
            .attach(PROCESS_ID, StdioStream::Stdin)
            .map_err(Failure::agent)?;
        let stdout_stream = control
            .attach(PROCESS_ID, StdioStream::Stdout)
            .map_err(Failure::agent)?;
        let stderr_stream = if tty {
            None
        } else {
            Some(
                control
                    .attach(PROCESS_ID, StdioStream::Stderr)
                    .map_err(Failure::agent)?,
            )
        };
        // The connection that forwards signals is opened before the process starts: opened
        // after, it raced a guest that stopped answering right away (its connect timed out
        // before the watchdog named the guest, and the run failed with a bare timeout).
        let forwarder_conn = control.open_control().map_err(Failure::agent)?;
        let raw_mode = if tty { RawMode::enable() } else { None };

        if let Err(e) = control.start_process(PROCESS_ID) {
            drop(raw_mode);
            let argv0 = spec.argv.first().cloned().unwrap_or_default();
            return Err(match e.code() {
                Some(ErrorCode::NotFound) => Failure {
                    code: EXIT_NOT_FOUND,
                    ..Failure::new(format!("{argv0}: executable file not found"))
                },
                Some(ErrorCode::PermissionDenied) => Failure {
                    code: EXIT_NOT_EXECUTABLE,
                    ..Failure::new(format!("{argv0}: permission denied"))
                },
                _ => Failure::agent(e),
            });
        }

        // From here on the guest runs the command: a guest that stops answering is found and
        // named, whatever this process is waiting for.
        let watchdog = match args.number("--watchdog", 120).map_err(Failure::new)? {
            0 => None,
            secs => Some(Watchdog::start(
                self.uds.clone(),
                self.vmm.id(),
                Duration::from_secs(secs),
                self.unresponsive.clone(),
            )),
        };

        // stdin is copied until it ends; a command that exits first leaves this thread
        // blocked in read, which is fine: the process is about to exit.
        std::thread::spawn(move || {
            let mut stream = stdin_stream;
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut stream);
            // Dropping the stream closes it: end of input for the process.
        });
        let stdout_pump = std::thread::spawn(move || {
            let mut stream = stdout_stream;
            pump(&mut stream, &mut std::io::stdout())
        });
        let stderr_pump = stderr_stream.map(|mut stream| {
            std::thread::spawn(move || pump(&mut stream, &mut std::io::stderr()))
        });
        let forwarder = SignalForwarder::start(forwarder_conn, tty);

        let status = control.wait_process(PROCESS_ID);
        drop(watchdog);
        let status = status.map_err(Failure::agent)?;
        // The agent closes the output streams before it reports the exit: these end now.
        let _ = stdout_pump.join();
        if let Some(p) = stderr_pump {
            let _ = p.join();
        }
        drop(forwarder);
        drop(raw_mode);
        Ok(status.code.clamp(0, 255) as u8)
    }

    /// Asks the agent to power the VM off and waits for the VMM to exit: only an orderly
    /// end of the guest is a clean one.
    fn shutdown(mut self) -> Result<(), Failure> {
        self.asked_to_stop = true;
        let result = AgentClient::connect(&self.uds, Duration::from_secs(10))
            .and_then(|c| c.shutdown(Some(Duration::from_secs(2))));
        if let Err(e) = result {
            let message = format!(
                "{}; cannot shut the VM down: {}",
                self.vm_ended(),
                Failure::from(e).message
            );
            return Err(self.fail(message));
        }
        match vmm_launcher::wait_exit(&mut self.vmm, Duration::from_secs(30)) {
            Some(VmmExit::GuestShutdown) => Ok(()),
            Some(other) => Err(self.fail(format!("the VM did not shut down in order: {other}"))),
            None => Err(self.fail("the VM did not power off within 30 s".to_string())),
        }
    }
}

/// A failure that keeps the run directory and tells where the console log is and how it
/// ended, so a failure reported far away (a CI log) says why.
fn failure_with_console(dir: &mut RunDir, console: &Path, message: String) -> Failure {
    dir.keep = true;
    let tail: String = vmm_launcher::console_tail(console, CONSOLE_TAIL_LINES)
        .iter()
        .map(|l| format!("\nberth-vmm run:   {l}"))
        .collect();
    Failure::new(format!(
        "{message}\nberth-vmm run: the guest console log is {}\nberth-vmm run: its last lines:{tail}",
        console.display()
    ))
}

fn pump(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<u64> {
    let mut buf = [0u8; 16 << 10];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
        total += n as u64;
    }
    Ok(total)
}

fn process_spec(args: &Args, tty: bool) -> Result<ProcessSpec, Failure> {
    let mut spec = ProcessSpec::new(args.command.iter().cloned());
    let mut env = vec![DEFAULT_PATH.to_string(), "HOME=/root".to_string()];
    if tty {
        env.push("TERM=xterm".to_string());
    }
    for var in args.values("--env").iter().chain(args.values("-e")) {
        if !var.contains('=') {
            return Err(Failure::usage(format!("--env {var:?}: expected KEY=VALUE")));
        }
        let key = var.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(var.clone());
    }
    spec.env = env;
    if let Some(dir) = args.value("--workdir").or(args.value("-w")) {
        spec.cwd = dir.to_string();
    }
    if let Some(user) = args.value("--user").or(args.value("-u")) {
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let parse = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| Failure::usage(format!("--user {user:?}: numeric UID[:GID] expected")))
        };
        spec.uid = parse(uid)?;
        spec.gid = match gid {
            Some(g) => parse(g)?,
            None => spec.uid,
        };
    }
    spec.tty = tty;
    spec.tty_size = if tty { terminal_size() } else { None };
    spec.stdin = true;
    Ok(spec)
}

fn terminal_size() -> Option<TtySize> {
    let mut ws: libc::winsize = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which outlives the call.
    let rc = unsafe { libc::ioctl(std::io::stdin().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some(TtySize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// The host terminal in raw mode while a tty process runs; restored on drop.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enable() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// Asks the agent, every few seconds while the command runs, whether it still answers (a
/// fresh connection and its handshake). A guest that does not answer within the limit has
/// stopped answering: its VMM is killed, which ends the wait for the command, and the
/// reason is left for the failure message.
struct Watchdog {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    const PERIOD: Duration = Duration::from_secs(10);

    fn start(
        uds: PathBuf,
        vmm_pid: u32,
        limit: Duration,
        verdict: Arc<std::sync::Mutex<Option<String>>>,
    ) -> Watchdog {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let stopped = || stop_flag.load(std::sync::atomic::Ordering::Relaxed);
                loop {
                    // Wall-clock time: on a loaded host a 100 ms sleep can take far longer,
                    // and a period counted in sleeps would stretch with it.
                    let period_end = Instant::now() + Self::PERIOD;
                    while Instant::now() < period_end {
                        if stopped() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    let Err(e) = AgentClient::connect(&uds, limit) else {
                        continue;
                    };
                    // The command may have ended meanwhile and the VM gone with it.
                    if stopped() {
                        return;
                    }
                    if let Ok(mut slot) = verdict.lock() {
                        *slot = Some(format!(
                            "the guest stopped answering: its agent did not answer for {} s ({}); the VMM was killed",
                            limit.as_secs(),
                            Failure::from(e).message
                        ));
                    }
                    // The VMM writes its devices' queue states to our stderr first: what the
                    // guest was waiting for, if it was waiting on a device.
                    // SAFETY: kill(2) on our own child VMM, which has not been reaped yet (Run
                    // holds it and reaps it only after this thread is stopped).
                    unsafe { libc::kill(vmm_pid as i32, libc::SIGUSR1) };
                    std::thread::sleep(Duration::from_secs(1));
                    // SAFETY: as above.
                    unsafe { libc::kill(vmm_pid as i32, libc::SIGKILL) };
                    return;
                }
            })
            .ok();
        Watchdog { stop, thread }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Forwards SIGINT, SIGTERM and SIGHUP to the process, and SIGWINCH as a tty resize.
struct SignalForwarder {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SignalForwarder {
    fn start(mut control: AgentClient, tty: bool) -> SignalForwarder {
        use nix::sys::signal::{SigSet, Signal};
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut set = SigSet::empty();
        for sig in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGWINCH,
        ] {
            set.add(sig);
        }
        // Blocked here, taken by the thread below through a signalfd.
        if set.thread_block().is_err() {
            return SignalForwarder { stop, thread: None };
        }
        let fd = match nix::sys::signalfd::SignalFd::with_flags(
            &set,
            nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
        ) {
            Ok(fd) => fd,
            Err(_) => return SignalForwarder { stop, thread: None },
        };
        let stop_flag = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsFd;
            while !stop_flag.load(std::sync::atomic::Ordering::Relaxed) {
                let mut fds = [nix::poll::PollFd::new(
                    fd.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                if !matches!(nix::poll::poll(&mut fds, 100u16), Ok(n) if n > 0) {
                    continue;
                }
                let Ok(Some(info)) = fd.read_signal() else {
                    continue;
                };
                let signo = info.ssi_signo as i32;
                let result = if signo == libc::SIGWINCH {
                    match (tty, terminal_size()) {
                        (true, Some(size)) => control.resize_tty(PROCESS_ID, size.rows, size.cols),
                        _ => Ok(()),
                    }
                } else {
                    control.signal(PROCESS_ID, signo)
                };
                if result.is_err() {
                    return;
                }
            }
        });
        SignalForwarder {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
