//! `berth-vmm boot`: the VMM proper.
//!
//! `--fs TAG=DIR[:ro][,nosuid]` (repeatable) adds a virtio-fs device sharing DIR under TAG;
//! `ro` refuses every change, `nosuid` keeps the guest from creating set-id files. A
//! regular file given as DIR is shared alone: the guest sees its directory with that one
//! entry in it, and can change neither the directory nor anything else in it.
//!
//! `--net mac=MAC[,tap-fd=N]` adds a virtio-net device with address MAC (a unicast one) on
//! the tap the VMM inherited as descriptor N (opened by the starter with
//! IFF_TAP|IFF_NO_PI|IFF_VNET_HDR; the VMM never opens one itself). Without `tap-fd` the
//! card's link is down and what the guest sends is dropped: a template VM's card, whose
//! clones are restored with a tap and a MAC of their own. Every frame the guest sends must
//! come from MAC.
//!
//! `--control PATH` listens there for the control protocol (`vmm_launcher::control`: pause,
//! resume, snapshot, shutdown). `berth-vmm restore --state S --memory M` builds the VM from a
//! snapshot instead of booting a kernel, and goes on where it was paused; it takes the
//! boot's device options (`--vsock-uds`, `--net`, `--fs`, `--no-rng`, `--no-balloon`) for the restored VM's own host
//! side of the snapshot's devices, which must be the same devices.
//!
//! Exit codes (`vmm_launcher::VmmExit`, which supervisors read them back with): 0 the guest
//! reset or powered itself off in order, or the controller asked for a shutdown; 1 the VM could not be built or the VMM failed;
//! 2 usage; 3 the guest kernel panicked; 4 KVM could not run the guest (fatal exit); 5 the
//! guest crashed (a triple fault with no reset requested); 128+N stopped by signal N.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use vmm::config::{FsShareConfig, NetConfig};
use vmm::{ConsoleOutput, ExitReason, VmConfig, Vmm, VsockConfig};
use vmm_launcher::VmmExit;

use crate::args::{Args, Spec};

pub const EXIT_USAGE: u8 = VmmExit::Usage.code();

const SPEC: Spec = Spec {
    valued: &[
        "--kernel",
        "--initrd",
        "--cpus",
        "--mem",
        "--cmdline",
        "--console",
        "--vsock-uds",
        "--vsock-cid",
        "--net",
        "--fs",
        "--control",
    ],
    flags: &["--no-rng", "--no-balloon"],
};

/// A restore takes the same device options as the boot whose snapshot it restores (the
/// devices must be the snapshot's; their host sides are the restored VM's own), but no
/// kernel and no vsock CID (the guest's CID is in the snapshot).
const RESTORE_SPEC: Spec = Spec {
    valued: &[
        "--state",
        "--memory",
        "--cpus",
        "--mem",
        "--console",
        "--vsock-uds",
        "--net",
        "--fs",
        "--control",
    ],
    flags: &["--no-rng", "--no-balloon"],
};

/// Default guest CID (the first one that is not reserved).
pub const DEFAULT_CID: u64 = 3;

/// The devices the options ask for: the vsock (its CID from `--vsock-cid` where the spec
/// has it), virtio-rng unless `--no-rng`, virtio-balloon unless `--no-balloon`, the net
/// device, the shares.
struct Devices {
    vsock: Option<VsockConfig>,
    rng: bool,
    balloon: bool,
    net: Option<NetConfig>,
    shares: Vec<FsShareConfig>,
}

/// The value of `--net`: `mac=MAC[,tap-fd=N]`, the MAC a unicast one; the descriptor
/// (if any) taken over from the parent.
fn net(spec: &str) -> Result<NetConfig, String> {
    let mut mac = None;
    let mut tap_fd = None;
    for word in spec.split(',') {
        match word.split_once('=') {
            Some(("mac", value)) if mac.is_none() => {
                let parsed = vmm_launcher::parse_mac(value).map_err(|e| format!("--net: {e}"))?;
                vmm_launcher::check_unicast(&parsed).map_err(|e| format!("--net: {e}"))?;
                mac = Some(parsed);
            }
            Some(("tap-fd", value)) if tap_fd.is_none() => {
                let fd: std::os::fd::RawFd = value
                    .parse()
                    .map_err(|_| format!("--net: tap-fd={value} is not a descriptor number"))?;
                tap_fd = Some(fd);
            }
            _ => {
                return Err(format!(
                    "--net {spec:?}: expected mac=MAC[,tap-fd=N], each once"
                ))
            }
        }
    }
    let mac = mac.ok_or_else(|| format!("--net {spec:?}: mac=MAC is required"))?;
    let tap = tap_fd.map(inherited_fd).transpose()?;
    Ok(NetConfig { mac, tap })
}

/// Takes ownership of descriptor `fd`, inherited from the parent, after checking it is
/// open; marks it close-on-exec so that nothing the VMM starts inherits it in turn.
fn inherited_fd(fd: std::os::fd::RawFd) -> Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::FromRawFd;
    if fd <= 2 {
        return Err(format!(
            "--net: tap-fd={fd} is one of the standard streams, not a tap"
        ));
    }
    // SAFETY: F_GETFD reads a descriptor's flags; it has no memory effects and fails with
    // EBADF when the number is not an open descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(format!(
            "--net: tap-fd={fd} is not an open descriptor (was it inherited, its close-on-exec flag cleared?)"
        ));
    }
    // SAFETY: as above; setting FD_CLOEXEC changes only what a later exec inherits.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: the descriptor is open (checked above) and nothing in this process owns it:
    // the options are parsed before the process opens any file of its own (the logger
    // opens none), so every descriptor above 2 open now was inherited, and `--net` is
    // parsed once and takes one tap-fd.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn devices(args: &Args) -> Result<Devices, String> {
    let vsock = match args.value("--vsock-uds") {
        Some(path) => Some(VsockConfig {
            guest_cid: args.number("--vsock-cid", DEFAULT_CID)?,
            uds_path: PathBuf::from(path),
        }),
        None => None,
    };
    let mut shares: Vec<FsShareConfig> = Vec::new();
    for spec in args.values("--fs") {
        let share: FsShareConfig = spec.parse().map_err(|e| format!("--fs {e}"))?;
        if shares.iter().any(|s| s.tag == share.tag) {
            return Err(format!("--fs: the tag {:?} is used twice", share.tag));
        }
        shares.push(share);
    }
    if args.values("--net").len() > 1 {
        return Err("--net: one network card at most".to_string());
    }
    Ok(Devices {
        vsock,
        rng: !args.flag("--no-rng"),
        balloon: !args.flag("--no-balloon"),
        net: args.value("--net").map(net).transpose()?,
        shares,
    })
}

fn console(args: &Args) -> ConsoleOutput {
    match args.value("--console") {
        None | Some("-") => ConsoleOutput::Stdout,
        Some(path) => ConsoleOutput::File(PathBuf::from(path)),
    }
}

fn config(args: &Args) -> Result<VmConfig, String> {
    let kernel = args
        .value("--kernel")
        .map(PathBuf::from)
        .ok_or("--kernel is required")?;
    let devices = devices(args)?;
    Ok(VmConfig {
        vcpus: args.number("--cpus", 1)?,
        mem_mib: args.number("--mem", 128)?,
        kernel,
        initrd: args.value("--initrd").map(PathBuf::from),
        extra_cmdline: args.value("--cmdline").unwrap_or("").to_string(),
        console: console(args),
        vsock: devices.vsock,
        rng: devices.rng,
        balloon: devices.balloon,
        net: devices.net,
        shares: devices.shares,
    })
}

fn restore_config(args: &Args) -> Result<VmConfig, String> {
    let devices = devices(args)?;
    Ok(VmConfig {
        vcpus: args.number("--cpus", 1)?,
        mem_mib: args.number("--mem", 128)?,
        // Nothing is loaded: the snapshot's memory holds the guest.
        kernel: PathBuf::new(),
        initrd: None,
        extra_cmdline: String::new(),
        console: console(args),
        vsock: devices.vsock,
        rng: devices.rng,
        balloon: devices.balloon,
        net: devices.net,
        shares: devices.shares,
    })
}

/// The FUSE server holds one `O_PATH` descriptor for every inode the guest has looked up
/// and not yet forgotten, and a guest's kernel forgets only under memory pressure: a
/// container that walks its image (thousands of files) needs far more descriptors than the
/// usual soft limit of 1024. Raise the limit as far as this process may (the hard limit too
/// where it holds CAP_SYS_RESOURCE), up to 1M as virtiofsd does.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let wanted: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
        .min(1 << 20);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= wanted {
        return;
    }
    let raised = setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted.max(hard))
        .map(|()| wanted)
        .or_else(|_| setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map(|()| hard));
    match raised {
        Ok(limit) if limit < 65536 => log::warn!(
            "berth-vmm: open file limit {limit}: a guest walking a large share may see EMFILE"
        ),
        Ok(limit) => log::info!("berth-vmm: open file limit raised to {limit} for virtio-fs"),
        Err(e) => log::warn!("berth-vmm: cannot raise the open file limit ({soft}): {e}"),
    }
}

/// Where the console went, for messages that point at it.
fn console_place(args: &Args) -> String {
    match args.value("--console") {
        None | Some("-") => "the console output above".to_string(),
        Some(path) => format!("the console log {path}"),
    }
}

pub fn main(argv: &[String]) -> ExitCode {
    let args = match Args::parse(argv, &SPEC) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("berth-vmm boot: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth-vmm boot: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if !config.shares.is_empty() {
        raise_fd_limit();
    }
    let vsock_path = config.vsock.as_ref().map(|v| v.uds_path.clone());
    let outcome = Vmm::new(config).and_then(|vmm| run_controlled(vmm, &args));
    if let Some(path) = vsock_path {
        // The vsock device removes its socket when dropped; make sure of it on every path.
        let _ = std::fs::remove_file(path);
    }
    finish(outcome, &args)
}

/// `berth-vmm restore`: a VM built from a snapshot, with its own host side of every device.
pub fn restore_main(argv: &[String]) -> ExitCode {
    let args = match Args::parse(argv, &RESTORE_SPEC) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("berth-vmm restore: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let paths = (args.value("--state"), args.value("--memory"));
    let (Some(state), Some(memory)) = paths else {
        eprintln!("berth-vmm restore: --state and --memory are required");
        return ExitCode::from(EXIT_USAGE);
    };
    let config = match restore_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth-vmm restore: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if !config.shares.is_empty() {
        raise_fd_limit();
    }
    let vsock_path = config.vsock.as_ref().map(|v| v.uds_path.clone());
    let outcome = Vmm::restore(config, Path::new(state), Path::new(memory))
        .and_then(|vmm| run_controlled(vmm, &args));
    if let Some(path) = vsock_path {
        let _ = std::fs::remove_file(path);
    }
    finish(outcome, &args)
}

/// Runs `vmm`, serving its control socket when `--control` names one.
fn run_controlled(vmm: Vmm, args: &Args) -> Result<ExitReason, vmm::VmmError> {
    let socket = args.value("--control").map(PathBuf::from);
    if let Some(path) = &socket {
        let _ = std::fs::remove_file(path);
        // Whoever can connect controls the VM (and where its snapshots are written): the
        // socket is created for this user alone. Only this thread runs yet, so the umask
        // change cannot race another file's creation.
        // SAFETY: umask(2) has no memory effects; the old mask is restored right after.
        let old_mask = unsafe { libc::umask(0o077) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old_mask) };
        let listener = bound.map_err(|source| vmm::VmmError::Os {
            what: "the control socket",
            source,
        })?;
        let handle = vmm.handle();
        let exit = vmm.exit_signal();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve_control(listener, handle, exit))
            .map_err(|source| vmm::VmmError::Os {
                what: "the control thread",
                source,
            })?;
    }
    let outcome = vmm.run();
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
    outcome
}

/// Answers control requests, one connection at a time, until the process ends. Whatever a
/// client sends gets a reply; nothing it sends reaches the VM but a well-formed request.
fn serve_control(
    listener: UnixListener,
    handle: vmm::VmHandle,
    exit: std::sync::Arc<vmm::exit::ExitSignal>,
) {
    use vmm_launcher::control::{decode_request, encode_reply, read_line, Reply, Request};
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let reply = match read_line(&mut conn) {
            Ok(None) => continue,
            Err(e) => Reply::error(format!("cannot read the request: {e}")),
            Ok(Some(line)) => match decode_request(&line) {
                Err(e) => Reply::error(e),
                Ok(Request::Pause) => handle
                    .pause()
                    .map_or_else(|e| Reply::error(e.to_string()), |()| Reply::ok()),
                Ok(Request::Resume) => {
                    handle.resume();
                    Reply::ok()
                }
                Ok(Request::Metrics) => match serde_json::to_value(handle.metrics()) {
                    Ok(m) => Reply {
                        metrics: Some(m),
                        ..Reply::ok()
                    },
                    Err(e) => Reply::error(format!("cannot encode the metrics: {e}")),
                },
                Ok(Request::Snapshot { state, memory }) => handle
                    .snapshot(&state, &memory)
                    .map_or_else(|e| Reply::error(e.to_string()), |()| Reply::ok()),
                Ok(Request::Shutdown) => {
                    // The reply goes out before the exit is raised: once raised, the
                    // process may end before this thread writes another byte.
                    let _ = conn.write_all(encode_reply(&Reply::ok()).as_bytes());
                    drop(conn);
                    exit.raise(ExitReason::Stopped);
                    continue;
                }
            },
        };
        let _ = conn.write_all(encode_reply(&reply).as_bytes());
    }
}

fn finish(outcome: Result<ExitReason, vmm::VmmError>, args: &Args) -> ExitCode {
    let reason = match outcome {
        Ok(reason) => reason,
        Err(e) => {
            eprintln!("berth-vmm: {e}");
            return ExitCode::from(VmmExit::VmmError.code());
        }
    };
    ExitCode::from(report(&reason, args).code())
}

fn report(reason: &ExitReason, args: &Args) -> VmmExit {
    match reason {
        ExitReason::GuestShutdown { .. } | ExitReason::Stopped => VmmExit::GuestShutdown,
        ExitReason::GuestPanic => {
            eprintln!(
                "berth-vmm: the guest kernel panicked; see {}",
                console_place(args)
            );
            VmmExit::GuestPanic
        }
        ExitReason::GuestCrash { .. } => {
            eprintln!("berth-vmm: {reason}; see {}", console_place(args));
            VmmExit::GuestCrash
        }
        ExitReason::InternalError { .. }
        | ExitReason::FailEntry { .. }
        | ExitReason::VcpuFault { .. } => {
            eprintln!("berth-vmm: {reason}");
            if vmm::hostcheck::KvmKind::detect() == vmm::hostcheck::KvmKind::Pvm {
                eprintln!("berth-vmm: {}", vmm::hostcheck::PVM_ADVICE);
            }
            eprintln!(
                "berth-vmm: the guest's console is in {}",
                console_place(args)
            );
            VmmExit::KvmFatal
        }
        ExitReason::HostSignal(sig) => VmmExit::Signal(*sig),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_options_parse_and_bad_ones_are_refused_clearly() {
        let c = net("mac=02:42:ac:11:00:02").unwrap();
        assert_eq!(c.mac, [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        assert!(c.tap.is_none());
        // An open descriptor is taken over (and made close-on-exec).
        let fd = std::os::fd::IntoRawFd::into_raw_fd(std::fs::File::open("/dev/null").unwrap());
        let c = net(&format!("mac=02:00:00:00:00:01,tap-fd={fd}")).unwrap();
        assert_eq!(
            c.tap.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
            Some(fd)
        );
        for (spec, says) in [
            ("", "expected mac=MAC"),
            ("tap-fd=5", "mac=MAC is required"),
            ("mac=02:42:ac:11:00", "is not a MAC address"),
            ("mac=01:00:5e:00:00:01", "multicast"),
            ("mac=00:00:00:00:00:00", "null address"),
            ("mac=02:00:00:00:00:01,mac=02:00:00:00:00:02", "each once"),
            ("mac=02:00:00:00:00:01,fd=3", "expected"),
            ("mac=02:00:00:00:00:01,tap-fd=x", "not a descriptor number"),
            ("mac=02:00:00:00:00:01,tap-fd=1", "standard streams"),
            (
                "mac=02:00:00:00:00:01,tap-fd=987654",
                "not an open descriptor",
            ),
        ] {
            let err = net(spec).map(drop).unwrap_err();
            assert!(err.contains(says), "{spec}: {err}");
        }
    }
}
