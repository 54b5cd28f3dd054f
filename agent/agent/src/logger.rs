//! A minimal `log` backend writing one line per record to stderr, which is the VM's console
//! when the agent is PID 1. The level comes from `BERTH_AGENT_LOG` (error, warn, info, debug,
//! trace); the kernel passes unknown `KEY=value` command-line words to init's environment,
//! so `BERTH_AGENT_LOG=debug` on the kernel command line works.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // One write per line so concurrent threads do not interleave within a line.
        let line = format!("berth-agent: {}: {}\n", record.level(), record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

fn level_from_env() -> LevelFilter {
    std::env::var("BERTH_AGENT_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::Info)
}

/// Installs the logger (once; later calls do nothing).
pub fn init() {
    static LOGGER: ConsoleLogger = ConsoleLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level_from_env());
    }
}
