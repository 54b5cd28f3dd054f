//! `berth-vmm`: one process per microVM.
//!
//! - `berth-vmm check`: can this host's KVM run a Linux guest? (exit 0, or 1 with the reason)
//! - `berth-vmm boot ...`: the VMM itself: boots a kernel with the given devices and runs
//!   until the guest shuts down. Its network card (`--net mac=MAC[,tap-fd=N]`) works on a
//!   tap descriptor it inherits; it never opens one.
//! - `berth-vmm restore --state S --memory M ...`: the VMM, built from a snapshot (taken over
//!   `--control`), going on where the snapshotted VM paused.
//! - `berth-vmm run ... -- CMD ARGS...`: boots a VM in a child `berth-vmm boot` process and
//!   runs CMD in it through the guest agent, with stdio streamed and the exit code returned.
//!
//! This binary owns host policy (paths, defaults, exit codes, signals); the VM itself is the
//! `vmm` library.

mod args;
mod boot;
mod logger;
mod run;

use std::process::ExitCode;

const USAGE: &str = "usage:
  berth-vmm check
  berth-vmm boot --kernel PATH [--initrd PATH] [--cpus N] [--mem MIB] [--cmdline ARGS]
                 [--console PATH|-] [--vsock-uds PATH] [--vsock-cid CID] [--no-rng] [--no-balloon]
                 [--net mac=MAC[,tap-fd=N]] [--fs TAG=DIR[:ro][,nosuid]]... [--control PATH]
  berth-vmm restore --state PATH --memory PATH [--cpus N] [--mem MIB] [--console PATH|-]
                 [--vsock-uds PATH] [--no-rng] [--no-balloon] [--net mac=MAC[,tap-fd=N]]
                 [--fs TAG=DIR[:ro][,nosuid]]... [--control PATH]
  berth-vmm run [--cpus N] [--mem MIB] [--kernel PATH] [--initrd PATH] [-t|--tty]
                [--env K=V]... [--workdir DIR] [--user UID[:GID]] [--console PATH]
                [--boot-timeout SECS] [--boot-retries N] [--watchdog SECS]
                [--fs TAG=DIR[:ro][,nosuid]]... [--template DIR] -- CMD [ARGS...]";

fn main() -> ExitCode {
    logger::init();
    let mut argv = std::env::args().skip(1);
    let Some(command) = argv.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest: Vec<String> = argv.collect();
    match command.as_str() {
        "check" => match vmm::hostcheck::check() {
            Ok(what) => {
                println!("ok: {what}");
                ExitCode::SUCCESS
            }
            Err(reason) => {
                println!("no: {reason}");
                ExitCode::from(1)
            }
        },
        "boot" => boot::main(&rest),
        "restore" => boot::restore_main(&rest),
        "run" => run::main(&rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("berth-vmm: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
