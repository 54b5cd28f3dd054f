//! Shared by the integration tests.

use std::path::PathBuf;

/// The agent binary under test: `BERTH_AGENT_BIN` if set (e.g. the static release build),
/// else this package's own build.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("BERTH_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berth-agent")))
}
