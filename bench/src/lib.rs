//! Shared pieces of berth's benchmarks: repeated measurements with min/median/max, process
//! memory from smaps_rollup, and where the built artifacts are.
//!
//! Benchmarks are not tests: they print figures, and the ratio against an anchor measured
//! in the same run on the same host, because these machines are noisy.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The value of option `name` in `args` (`--runs 5`) parsed, `default` when it is absent; a
/// missing or unparsable value is an error naming the option, with `usage`.
pub fn option<T: FromStr>(
    args: &[String],
    name: &str,
    default: T,
    usage: &str,
) -> anyhow::Result<T> {
    let Some(i) = args.iter().position(|a| a == name) else {
        return Ok(default);
    };
    let value = args
        .get(i + 1)
        .ok_or_else(|| anyhow::anyhow!("{name} needs a value\n{usage}"))?;
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("{name} {value:?}: not a valid value\n{usage}"))
}

/// The command line's arguments after the program's name, or `None` when help was asked
/// for (`-h`, `--help`), after `usage` is printed.
pub fn args_or_help(usage: &str) -> Option<Vec<String>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{usage}");
        return None;
    }
    Some(args)
}

/// Runs `docker ARGS` against `d`; its wall time, or the failure with its output.
pub fn docker(d: &berth_tests::Daemon, args: &[&str], timeout_s: u64) -> anyhow::Result<Duration> {
    let out = berth_tests::run(d.docker_command(args), b"", Duration::from_secs(timeout_s));
    anyhow::ensure!(
        out.status.success(),
        "docker {args:?} failed: {}{}",
        out.stdout,
        out.stderr
    );
    Ok(out.elapsed)
}

/// Runs `cmd`; its failure, with the command, as an error.
pub fn sh(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let status = cmd.status().map_err(|e| anyhow::anyhow!("{cmd:?}: {e}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

/// `root`'s tree as a tarball at `out`, for `docker import` (numeric owners, as in the tree).
pub fn pack_rootfs(root: &Path, out: &Path) -> anyhow::Result<()> {
    sh(std::process::Command::new("tar")
        .arg("-cf")
        .arg(out)
        .arg("--numeric-owner")
        .arg("-C")
        .arg(root)
        .arg("."))
}

/// A directory removed, with everything in it, when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory `berth-bench-NAME-PID` under the temp dir, or under `base`.
    pub fn new(base: Option<&Path>, name: &str) -> std::io::Result<Scratch> {
        let base = base.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let dir = base.join(format!("berth-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A series of measurements.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub values: Vec<f64>,
}

impl Series {
    /// Adds one measurement.
    pub fn push(&mut self, v: f64) {
        self.values.push(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    /// Smallest value.
    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    /// Largest value.
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// The median.
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// "min / median / max unit (n=N)".
    pub fn summary(&self, unit: &str) -> String {
        format!(
            "{:>9.2} / {:>9.2} / {:>9.2} {unit} (n={})",
            self.min(),
            self.median(),
            self.max(),
            self.values.len()
        )
    }
}

/// The VM the VMM benchmarks run berth's test guests in, as `berth-vmm boot|restore`
/// options: 1 vCPU, 16 MiB and no virtio device, as the Firecracker anchor's.
pub const TEST_VM: [&str; 4] = ["--mem", "16", "--no-rng", "--no-balloon"];

/// Firecracker's configuration file for the same VM booting `kernel`.
pub fn firecracker_config(kernel: &Path) -> String {
    format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": ""}},
           "machine-config": {{"vcpu_count": 1, "mem_size_mib": 16}}, "drives": []}}"#,
        kernel.display()
    )
}

/// Milliseconds in a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Private (unshared) memory of a process in KiB, from /proc/PID/smaps_rollup.
pub fn private_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(field("Private_Clean:")? + field("Private_Dirty:")?)
}

/// The directory of the benchmark binary, which is the directory of every workspace binary.
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

/// target/guest, beside target/release.
pub fn guest_dir() -> PathBuf {
    bin_dir()
        .parent()
        .map(|p| p.join("guest"))
        .unwrap_or_else(|| PathBuf::from("target/guest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        let s = Series {
            values: vec![3.0, 1.0, 2.0, 10.0],
        };
        assert_eq!(s.min(), 1.0);
        assert_eq!(s.max(), 10.0);
        assert_eq!(s.median(), 2.5);
        assert!(private_kib(std::process::id()).is_some());
    }
}
