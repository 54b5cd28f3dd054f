//! `berth-vmm boot`: the VMM proper.
//!
//! `--fs TAG=DIR[:ro][,nosuid]` (repeatable) adds a virtio-fs device sharing DIR under TAG;
//! `ro` refuses every change, `nosuid` keeps the guest from creating set-id files.
//!
//! Exit codes (`vmm_launcher::VmmExit`, which supervisors read them back with): 0 the guest
//! reset or powered itself off in order; 1 the VM could not be built or the VMM failed;
//! 2 usage; 3 the guest kernel panicked; 4 KVM could not run the guest (fatal exit); 5 the
//! guest crashed (a triple fault with no reset requested); 128+N stopped by signal N.

use std::path::PathBuf;
use std::process::ExitCode;

use vmm::config::FsShareConfig;
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
        "--fs",
    ],
    flags: &["--no-rng"],
};

/// Default guest CID (the first one that is not reserved).
pub const DEFAULT_CID: u64 = 3;

fn config(args: &Args) -> Result<VmConfig, String> {
    let kernel = args
        .value("--kernel")
        .map(PathBuf::from)
        .ok_or("--kernel is required")?;
    let console = match args.value("--console") {
        None | Some("-") => ConsoleOutput::Stdout,
        Some(path) => ConsoleOutput::File(PathBuf::from(path)),
    };
    let vsock = args.value("--vsock-uds").map(|path| VsockConfig {
        guest_cid: 0,
        uds_path: PathBuf::from(path),
    });
    let vsock = match vsock {
        Some(mut v) => {
            v.guest_cid = args.number("--vsock-cid", DEFAULT_CID)?;
            Some(v)
        }
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
    Ok(VmConfig {
        vcpus: args.number("--cpus", 1)?,
        mem_mib: args.number("--mem", 128)?,
        kernel,
        initrd: args.value("--initrd").map(PathBuf::from),
        extra_cmdline: args.value("--cmdline").unwrap_or("").to_string(),
        console,
        vsock,
        rng: !args.flag("--no-rng"),
        shares,
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
    let outcome = Vmm::new(config).and_then(Vmm::run);
    if let Some(path) = vsock_path {
        // The vsock device removes its socket when dropped; make sure of it on every path.
        let _ = std::fs::remove_file(path);
    }
    let reason = match outcome {
        Ok(reason) => reason,
        Err(e) => {
            eprintln!("berth-vmm: {e}");
            return ExitCode::from(VmmExit::VmmError.code());
        }
    };
    ExitCode::from(report(&reason, &args).code())
}

fn report(reason: &ExitReason, args: &Args) -> VmmExit {
    match reason {
        ExitReason::GuestShutdown { .. } => VmmExit::GuestShutdown,
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
