//! A minimal stderr logger: `BERTH_VMM_LOG=error|warn|info|debug|trace` (default warn).

use std::io::Write;

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let since_start = START.get_or_init(std::time::Instant::now).elapsed();
            let _ = writeln!(
                std::io::stderr().lock(),
                "berth-vmm[{}] {:>9.3} {}: {}",
                std::process::id(),
                since_start.as_secs_f64(),
                record.level(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;
static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Installs the logger with the level from `BERTH_VMM_LOG`.
pub fn init() {
    START.get_or_init(std::time::Instant::now);
    let level = std::env::var("BERTH_VMM_LOG")
        .ok()
        .and_then(|v| v.parse::<log::LevelFilter>().ok())
        .unwrap_or(log::LevelFilter::Warn);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
