//! `berth-agent`: PID 1 of a berth microVM (see the library crate). The hidden flags
//! `--listen-unix PATH` and `--ready-unix PATH` run the same server on the host over Unix
//! sockets, for tests; `--state-dir DIR` moves the agent's state (default /run/berth);
//! `--cgroup-root DIR` names the cgroup2 tree for containers' cgroups (the VM's
//! `/sys/fs/cgroup` as PID 1; none otherwise, unless given).
//!
//! `no_main`: std's runtime start-up reopens closed fds 0-2 on /dev/null and aborts if it
//! cannot, which as PID 1 of an initramfs without /dev/null would panic the kernel before
//! the agent has mounted /dev. Starting from the C `main` skips that; the agent opens the
//! console itself.
#![no_main]

use std::path::PathBuf;

use berth_agent::transport::ReadyTarget;
use berth_agent::{init, is_pid1, run, Config, ListenOn};

fn usage() -> ! {
    eprintln!(
        "usage: berth-agent [--listen-unix PATH] [--ready-unix PATH] [--state-dir DIR] [--cgroup-root DIR] [--version]"
    );
    std::process::exit(2);
}

fn parse_args(pid1: bool) -> Config {
    let mut config = Config::default();
    if !pid1 {
        // A host's own cgroup tree is not the agent's to carve up.
        config.cgroup_root = None;
    }
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--listen-unix") => match args.next() {
                Some(p) => config.listen = ListenOn::Unix(PathBuf::from(p)),
                None => usage(),
            },
            Some("--ready-unix") => match args.next() {
                Some(p) => config.ready = ReadyTarget::Unix(PathBuf::from(p)),
                None => usage(),
            },
            Some("--state-dir") => match args.next() {
                Some(p) => config.state_dir = PathBuf::from(p),
                None => usage(),
            },
            Some("--cgroup-root") => match args.next() {
                Some(p) => config.cgroup_root = Some(PathBuf::from(p)),
                None => usage(),
            },
            Some("--version") => {
                println!("berth-agent {}", berth_agent::server::AGENT_VERSION);
                std::process::exit(0);
            }
            // The kernel hands init any command-line words it does not understand.
            _ if pid1 => {}
            _ => usage(),
        }
    }
    if matches!(config.listen, ListenOn::Unix(_))
        && matches!(config.ready, ReadyTarget::Vsock { .. })
    {
        config.ready = ReadyTarget::None;
    }
    config
}

#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    let pid1 = is_pid1();
    if pid1 {
        std::panic::set_hook(Box::new(|info| {
            log::error!("panic: {info}");
            eprintln!("berth-agent: panic: {info}");
            init::end_vm();
        }));
    }
    let config = parse_args(pid1);
    match run(config) {
        Ok(never) => match never {},
        Err(e) => {
            let msg = format!("berth-agent: {e}: {}", berth_agent::source_chain(&e));
            eprintln!("{msg}");
            if pid1 {
                init::end_vm();
            }
            1
        }
    }
}
