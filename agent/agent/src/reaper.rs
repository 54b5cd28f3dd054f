//! The agent's one signal loop. Every thread blocks every signal (the mask is set before
//! the first thread starts and inherited); this thread alone takes them with `sigwait`.
//! SIGCHLD reaps; SIGTERM/SIGINT end the agent only when it is not PID 1 (tests).

use std::sync::Arc;

use nix::sys::signal::{SigSet, Signal};

use crate::process::ProcessTable;

/// Runs the loop on the calling thread. Never returns.
pub fn run(table: Arc<ProcessTable>, pid1: bool) -> ! {
    let mut set = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        set.add(s);
    }
    // Children that exited before this loop started are reaped on the first pass.
    table.reap();
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => table.reap(),
            Ok(s @ (Signal::SIGTERM | Signal::SIGINT)) => {
                if pid1 {
                    // Any process in the VM may send this: debug only, no console flood.
                    log::debug!("ignoring {s} sent to PID 1; use the Shutdown request");
                } else {
                    log::info!("{s} received; exiting");
                    std::process::exit(0);
                }
            }
            Ok(s) => log::debug!("ignoring {s}"),
            Err(e) => {
                log::error!("sigwait failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
