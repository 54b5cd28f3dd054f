//! `bench-fs`: file I/O through a bind mount and through a named volume, berth beside
//! Docker + runc, in one run on one host.
//!
//! One image for both, made here: busybox and `bench-fsops` (ours, with the libraries it
//! loads). Each run starts `docker run --rm -v SRC:/data bench-fs bench-fsops /data MIB
//! FILES` on each engine, SRC a host directory (the same file system for both) or a named
//! volume (in each daemon's data root), and reads what the program measured inside the
//! container: sequential write and read (MB/s) and creates, stats and unlinks per second of
//! empty files. A container's start is not in the figures.
//!
//! What berth's figures pass through: the guest's FUSE client, virtio-fs requests over a
//! virtqueue (a VM exit and an interrupt each), the VMM's server (`ConfinedFs` over
//! fuse-backend-rs's passthrough), then the host's file system; runc's container reaches
//! the host's file system directly. The guest caches attributes and entries for 1 s and
//! file data by close-to-open (no DAX window).
//!
//! Runs are interleaved, `--runs` each (min / median / max). Needs a KVM that runs Linux
//! guests: `make bench-fs` runs it inside the emulated virtualization host where this host
//! has none (absolute figures there are far below hardware's: compare the columns of one
//! run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use berth_bench::{args_or_help, bin_dir, docker, option, pack_rootfs, sh, Scratch, Series};
use berth_tests::{
    busybox_image, daemon_base_dir, dockerd_available, run, Berthd, Daemon, Dockerd,
};

const USAGE: &str = "usage: bench-fs [--runs N] [--mib N] [--files N]";
const IMAGE: &str = "bench-fs";
const VOLUME: &str = "bench-fs-volume";
const METRICS: [(&str, &str, &str); 5] = [
    ("write_mbs", "sequential write", "MB/s"),
    ("read_mbs", "sequential read", "MB/s"),
    ("creates", "file creates", "op/s"),
    ("stats", "file stats", "op/s"),
    ("unlinks", "file unlinks", "op/s"),
];

fn main() -> Result<()> {
    let Some(args) = args_or_help(USAGE) else {
        return Ok(());
    };
    let runs: usize = option(&args, "--runs", 5, USAGE)?;
    let mib: usize = option(&args, "--mib", 64, USAGE)?;
    let files: usize = option(&args, "--files", 2000, USAGE)?;
    ensure!(
        runs > 0 && mib > 0 && files > 0,
        "--runs, --mib and --files must be at least 1"
    );
    if let Err(why) = dockerd_available() {
        bail!("the anchor cannot run: {why}");
    }
    let scratch = Scratch::new(Some(&daemon_base_dir()), "fs")?;
    let image = image_tarball(&scratch.0)?;
    let berth = Berthd::start();
    let anchor = Dockerd::start();
    let engines: [(&str, &Daemon); 2] = [("berth", &berth), ("runc ", &anchor)];
    let mut binds = vec![];
    for (i, (name, d)) in engines.iter().enumerate() {
        docker(d, &["import", path(&image)?, IMAGE], 600)
            .with_context(|| format!("{name}: import"))?;
        docker(d, &["volume", "create", VOLUME], 120)
            .with_context(|| format!("{name}: volume create"))?;
        let bind = scratch.0.join(format!("bind-{i}"));
        std::fs::create_dir_all(&bind)?;
        binds.push(bind);
    }
    println!(
        "bench-fs: {mib} MiB written and read in 1 MiB blocks, {files} empty files created, \
         stated and unlinked, through a bind mount ({}) and a named volume, berth (virtio-fs \
         to the VMM) vs Docker + runc (the host's file system), same host, interleaved, {runs} runs",
        fs_type(&binds[0])
    );
    // [kind][engine][metric]
    let mut series = vec![vec![vec![Series::default(); METRICS.len()]; 2]; 2];
    for run_index in 0..runs {
        for (e, (name, d)) in engines.iter().enumerate() {
            for (k, source) in [path(&binds[e])?, VOLUME].into_iter().enumerate() {
                let out = run(
                    d.docker_command(&[
                        "run",
                        "--rm",
                        "-v",
                        &format!("{source}:/data"),
                        IMAGE,
                        "/bench-fsops",
                        "/data",
                        &mib.to_string(),
                        &files.to_string(),
                    ]),
                    b"",
                    Duration::from_secs(1800),
                );
                ensure!(
                    out.status.success(),
                    "{name}: bench-fsops on {source} failed: {}{}",
                    out.stdout,
                    out.stderr
                );
                let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
                    .with_context(|| format!("{name}: bench-fsops said {:?}", out.stdout))?;
                // Each measurement as it comes: a run in the emulated host takes minutes.
                eprintln!("bench-fs: run {} {name} {source}: {v}", run_index + 1);
                for (m, (key, _, _)) in METRICS.iter().enumerate() {
                    let x = v[key]
                        .as_f64()
                        .with_context(|| format!("{name}: no {key} in {v}"))?;
                    series[k][e][m].push(x);
                }
            }
        }
    }
    for (k, kind) in ["bind mount", "named volume"].iter().enumerate() {
        println!("\nthrough a {kind} (min / median / max):");
        for (m, (_, what, unit)) in METRICS.iter().enumerate() {
            println!("  {what}:");
            for (e, (name, _)) in engines.iter().enumerate() {
                println!("    {name} {}", series[k][e][m].summary(unit));
            }
            println!(
                "    berth / runc, medians: {:.3}x",
                series[k][0][m].median() / series[k][1][m].median()
            );
        }
    }
    for (_, d) in engines {
        let _ = run(
            d.docker_command(&["volume", "rm", "-f", VOLUME]),
            b"",
            Duration::from_secs(120),
        );
    }
    Ok(())
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("a non-UTF-8 path")
}

/// The file system type of `p` (as `stat -f` names it).
fn fs_type(p: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The image: busybox and `bench-fsops` with every library it loads (from `ldd`).
fn image_tarball(scratch: &Path) -> Result<PathBuf> {
    let root = scratch.join("root");
    std::fs::create_dir_all(&root)?;
    sh(Command::new("tar")
        .arg("-xf")
        .arg(busybox_image("rootfs"))
        .arg("-C")
        .arg(&root))?;
    let bin = bin_dir().join("bench-fsops");
    ensure!(bin.exists(), "{} is not built", bin.display());
    let out = Command::new("ldd").arg(&bin).output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(p) = line.split_whitespace().find(|w| w.starts_with('/')) {
            let real = std::fs::canonicalize(p)?;
            let dest = root.join(Path::new(p).strip_prefix("/")?);
            std::fs::create_dir_all(dest.parent().context("a parent")?)?;
            let _ = std::fs::remove_file(&dest);
            std::fs::copy(&real, &dest).with_context(|| format!("copy {}", real.display()))?;
        }
    }
    std::fs::copy(&bin, root.join("bench-fsops"))?;
    let image = scratch.join("bench-fs.tar");
    pack_rootfs(&root, &image)?;
    Ok(image)
}
