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
//! agent failed); 126 when the command is not executable; 127 when it was not found.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_client::{AgentClient, ErrorCode, ProcessSpec, ReadyListener, StdioStream, TtySize};

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
        "--cmdline",
        "--fs",
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
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: EXIT_BERTH_FAILED,
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

/// Why a VM's agent did not come up.
enum NotReady {
    /// The guest reset itself cleanly before its agent was ready.
    Reset(String),
    Failed(String),
}

struct Run {
    dir: RunDir,
    vmm: Child,
    uds: PathBuf,
    console: PathBuf,
}

impl Run {
    /// Creates the run directory and starts the VMM.
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

        let dir = RunDir::create()?;
        let uds = dir.path.join("vsock.sock");
        let console = match args.value("--console") {
            Some(path) => PathBuf::from(path),
            None => dir.path.join("console.log"),
        };
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("boot")
            .arg("--kernel")
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initrd)
            .arg("--cpus")
            .arg(cpus.to_string())
            .arg("--mem")
            .arg(mem.to_string())
            .arg("--console")
            .arg(&console)
            .arg("--vsock-uds")
            .arg(&uds)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // The VMM only speaks up about failures; its words go straight to the user.
            .stderr(Stdio::inherit());
        if let Some(extra) = args.value("--cmdline") {
            cmd.arg("--cmdline").arg(extra);
        }
        // Shares go to the VMM as given; it checks them (and says what is wrong) at start.
        for share in args.values("--fs") {
            cmd.arg("--fs").arg(share);
        }
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe; it touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(|| {
                // The VM must not outlive this process, however it ends.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let boot_timeout =
            Duration::from_secs(args.number("--boot-timeout", 300).map_err(Failure::new)?);
        // The agent announces itself on the ready socket: bind it before the VM starts.
        let ready = ReadyListener::bind(&uds)?;
        let vmm = cmd
            .spawn()
            .map_err(|e| Failure::new(format!("cannot start the VMM: {e}")))?;
        let mut run = Run {
            dir,
            vmm,
            uds,
            console,
        };
        match run.wait_ready(ready, boot_timeout) {
            Ok(()) => return Ok(run),
            Err(NotReady::Failed(message)) => return Err(run.fail(message)),
            Err(NotReady::Reset(message)) => {
                // Seen about once in a hundred boots inside the emulated virtualization host
                // (QEMU TCG), silent on the console; the command has not run yet, so a second
                // boot changes nothing it could observe. Once only: a guest that resets
                // every time is broken, and says so below.
                eprintln!("berth-vmm run: {message}; booting it once more");
            }
        }
        let _ = std::fs::remove_file(&run.uds);
        let ready = ReadyListener::bind(&run.uds)?;
        run.vmm = cmd
            .spawn()
            .map_err(|e| Failure::new(format!("cannot start the VMM: {e}")))?;
        match run.wait_ready(ready, boot_timeout) {
            Ok(()) => Ok(run),
            Err(NotReady::Failed(message) | NotReady::Reset(message)) => Err(run.fail(message)),
        }
    }

    /// Waits for the agent's ready notification, or for the VMM to die trying.
    fn wait_ready(&mut self, ready: ReadyListener, timeout: Duration) -> Result<(), NotReady> {
        // The listener waits on its own thread so that this one can watch the VMM.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(ready.wait(timeout));
        });
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => {
                    return Err(NotReady::Failed(format!(
                        "the guest agent did not come up within {timeout:?}: {}",
                        Failure::from(e).message
                    )))
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(NotReady::Failed("the ready listener failed".to_string()))
                }
            }
            if let Ok(Some(status)) = self.vmm.try_wait() {
                let message = format!("the VM stopped before its agent was ready (VMM {status})");
                return Err(if status.success() {
                    NotReady::Reset(message)
                } else {
                    NotReady::Failed(message)
                });
            }
        }
    }

    /// Records a failure: the VM is killed, the console log kept and pointed at.
    fn fail(&mut self, message: String) -> Failure {
        let vmm_state = match self.vmm.try_wait() {
            Ok(Some(status)) => format!("the VMM had exited ({status})"),
            _ => "the VMM was still running and was killed".to_string(),
        };
        let _ = self.vmm.kill();
        let _ = self.vmm.wait();
        let message = format!("{message} ({vmm_state})");
        self.dir.keep = true;
        // The console's last lines, so a failure reported far away (a CI log) says why.
        let tail: String = std::fs::read(&self.console)
            .map(|bytes| {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                let start = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
                lines[start..]
                    .iter()
                    .map(|l| format!("\nberth-vmm run:   {l}"))
                    .collect()
            })
            .unwrap_or_default();
        Failure::new(format!(
            "{message}\nberth-vmm run: the guest console log is {}\nberth-vmm run: its last lines:{tail}",
            self.console.display()
        ))
    }

    fn execute(mut self, args: &Args) -> Result<u8, Failure> {
        let outcome = self.run_command(args);
        let code = match outcome {
            Ok(code) => code,
            Err(failure) => {
                let message = failure.message;
                let code = failure.code;
                if code == EXIT_BERTH_FAILED {
                    return Err(self.fail(message));
                }
                // Not found / not executable: the VM is fine; shut it down normally.
                eprintln!("berth-vmm run: {message}");
                code
            }
        };
        self.shutdown()?;
        Ok(code)
    }

    fn run_command(&mut self, args: &Args) -> Result<u8, Failure> {
        let mut control = AgentClient::connect(&self.uds, Duration::from_secs(30))?;
        let tty = args.flag("-t") || args.flag("--tty");
        let spec = process_spec(args, tty)?;
        control.create_process(PROCESS_ID, &spec)?;

        let stdin_stream = control.attach(PROCESS_ID, StdioStream::Stdin)?;
        let stdout_stream = control.attach(PROCESS_ID, StdioStream::Stdout)?;
        let stderr_stream = if tty {
            None
        } else {
            Some(control.attach(PROCESS_ID, StdioStream::Stderr)?)
        };
        let raw_mode = if tty { RawMode::enable() } else { None };

        if let Err(e) = control.start_process(PROCESS_ID) {
            drop(raw_mode);
            let argv0 = spec.argv.first().cloned().unwrap_or_default();
            return Err(match e.code() {
                Some(ErrorCode::NotFound) => Failure {
                    message: format!("{argv0}: executable file not found"),
                    code: EXIT_NOT_FOUND,
                },
                Some(ErrorCode::PermissionDenied) => Failure {
                    message: format!("{argv0}: permission denied"),
                    code: EXIT_NOT_EXECUTABLE,
                },
                _ => Failure::from(e),
            });
        }

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
        let forwarder = SignalForwarder::start(control.open_control()?, tty);

        let status = control.wait_process(PROCESS_ID)?;
        // The agent closes the output streams before it reports the exit: these end now.
        let _ = stdout_pump.join();
        if let Some(p) = stderr_pump {
            let _ = p.join();
        }
        drop(forwarder);
        drop(raw_mode);
        Ok(status.code.clamp(0, 255) as u8)
    }

    /// Asks the agent to power the VM off and waits for the VMM to exit.
    fn shutdown(mut self) -> Result<(), Failure> {
        let result = AgentClient::connect(&self.uds, Duration::from_secs(10))
            .and_then(|c| c.shutdown(Some(Duration::from_secs(2))));
        if let Err(e) = result {
            return Err(self.fail(format!("cannot shut the VM down: {e}")));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.vmm.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(self.fail(format!("the VMM exited with {status} during shutdown")));
                }
                Ok(None) if Instant::now() >= deadline => {
                    return Err(self.fail("the VM did not power off within 30 s".to_string()));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(self.fail(format!("cannot wait for the VMM: {e}"))),
            }
        }
    }
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
            return Err(Failure {
                message: format!("--env {var:?}: expected KEY=VALUE"),
                code: crate::boot::EXIT_USAGE,
            });
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
            s.parse::<u32>().map_err(|_| Failure {
                message: format!("--user {user:?}: numeric UID[:GID] expected"),
                code: crate::boot::EXIT_USAGE,
            })
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
