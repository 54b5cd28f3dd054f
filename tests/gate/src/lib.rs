//! The one gate for tests that need a capability a host may lack (root, /dev/kvm, user
//! extended attributes, a tool): under CI a missing capability is a failure that names it;
//! elsewhere the test skips and says why. Every test in the workspace that can skip goes
//! through [`require`], so CI and a developer's machine agree on what ran.
//!
//! CI is `CI` set to anything but empty, `0` or `false` (GitHub and GitLab set `true`,
//! other systems `1`); berth's own `.ci/run` sets `true`.

/// Whether this run is CI, where nothing may be skipped.
pub fn under_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"),
        Err(_) => false,
    }
}

/// Reports a missing capability: a panic naming it under CI, a printed skip elsewhere.
/// Returns whether the test may go on: `if !require(root(), "mounting overlayfs") { return; }`.
#[track_caller]
pub fn require(available: Result<(), String>, what: &str) -> bool {
    match available {
        Ok(()) => true,
        Err(reason) if under_ci() => panic!("{what} is required under CI: {reason}"),
        Err(reason) => {
            eprintln!("SKIPPED: {what}: {reason}");
            false
        }
    }
}

/// This process runs as root.
pub fn root() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err("needs root".to_string())
    }
}

/// `path` exists.
pub fn exists(path: impl AsRef<std::path::Path>, hint: &str) -> Result<(), String> {
    let path = path.as_ref();
    if path.exists() {
        Ok(())
    } else {
        Err(format!("{} is missing ({hint})", path.display()))
    }
}

/// Both capabilities (the first missing one is reported).
pub fn and(a: Result<(), String>, b: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    a.and_then(|()| b())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_values() {
        // One test only touches CI: tests of this crate run in parallel.
        let saved = std::env::var("CI").ok();
        for (v, ci) in [
            ("true", true),
            ("1", true),
            ("yes", true),
            ("false", false),
            ("0", false),
            ("", false),
        ] {
            std::env::set_var("CI", v);
            assert_eq!(under_ci(), ci, "CI={v:?}");
        }
        std::env::remove_var("CI");
        assert!(!under_ci());
        assert!(!require(Err("nope".into()), "a thing"));
        assert!(require(Ok(()), "a thing"));
        if let Some(v) = saved {
            std::env::set_var("CI", v);
        }
    }
}
