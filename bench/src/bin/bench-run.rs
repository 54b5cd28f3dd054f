//! `bench-run`: `docker run` on berth beside Docker + runc, through the Docker CLI, in one run
//! on one host.
//!
//! Three daemons on private sockets and data roots: berthd as it runs by default (each
//! container a microVM cloned from a template, its root a virtio-fs share of an overlayfs),
//! berthd with `--start cold` (each microVM booted), and Debian's dockerd with runc (the
//! anchor). Interleaved, so drift on a noisy host hits all alike:
//!
//! 1. `docker run --rm --network none busybox true`, wall time of the CLI, `--runs` times
//!    each;
//! 2. a container that untars a ~50 MB archive from its image into its writable layer
//!    (`--untar-runs` times, berth's default and runc): the time inside the container (its
//!    `/proc/uptime`, 10 ms resolution) and the CLI's wall time.
//!
//! Needs a KVM that runs Linux guests: `make bench-run` runs it inside the emulated
//! virtualization host where this host has none (absolute figures there are about 40x those
//! on hardware: compare the columns of one run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use berth_bench::{args_or_help, docker, option, pack_rootfs, sh, Scratch, Series};
use berth_tests::{
    busybox_image, daemon_base_dir, dockerd_available, run, Berthd, Daemon, Dockerd,
};

const USAGE: &str = "usage: bench-run [--runs N] [--untar-runs N] [--payload DIR]";

const UNTAR: &str = "read a _ < /proc/uptime; mkdir /x && tar -xf /payload.tar -C /x && sync; \
                     read b _ < /proc/uptime; echo \"elapsed $a $b\"";

fn main() -> Result<()> {
    let Some(args) = args_or_help(USAGE) else {
        return Ok(());
    };
    let runs: usize = option(&args, "--runs", 20, USAGE)?;
    let untar_runs: usize = option(&args, "--untar-runs", 5, USAGE)?;
    let payload_dir: PathBuf = option(&args, "--payload", "/usr/lib/python3.11".into(), USAGE)?;
    ensure!(runs > 0, "--runs must be at least 1");
    if let Err(why) = dockerd_available() {
        bail!("the anchor cannot run: {why}");
    }

    let scratch = Scratch::new(Some(&daemon_base_dir()), "run")?;
    let untar_image = untar_image_tarball(&scratch.0, &payload_dir)?;
    let payload_mb = std::fs::metadata(scratch.0.join("root/payload.tar"))?.len() as f64 / 1e6;

    let berth = Berthd::start();
    let cold = Berthd::start_with(&["--start", "cold"]);
    let anchor = Dockerd::start();
    let daemons: [(&str, &Daemon); 3] = [
        ("berth clone", &*berth),
        ("berth cold ", &*cold),
        ("runc       ", &*anchor),
    ];
    let busybox = busybox_image("archive");
    for (name, d) in daemons {
        docker(d, &["load", "-i", path(&busybox)?], 300)
            .with_context(|| format!("{name}: load"))?;
        docker(
            d,
            &[
                "import",
                "--change",
                "CMD [\"sh\"]",
                path(&untar_image)?,
                "bench-untar",
            ],
            600,
        )
        .with_context(|| format!("{name}: import"))?;
        // Warm-up: first-run costs (page cache, lazy setup, berth's template) are not what
        // is measured.
        docker(d, &["run", "--rm", "busybox", "true"], 300)
            .with_context(|| format!("{name}: warm-up"))?;
    }

    println!(
        "bench-run: docker run through the Docker CLI, berth (a microVM per container, cloned \
         from a template, and booted cold) vs Docker + runc, same host, interleaved"
    );
    let mut start = vec![Series::default(); daemons.len()];
    for _ in 0..runs {
        for (i, (name, d)) in daemons.iter().enumerate() {
            let out = docker(
                d,
                &["run", "--rm", "--network", "none", "busybox", "true"],
                300,
            )
            .with_context(|| format!("{name}: docker run --rm busybox true"))?;
            start[i].push(out.as_secs_f64() * 1e3);
        }
    }
    println!(
        "\n`docker run --rm --network none busybox true` (wall time of the CLI; min / median / max):"
    );
    report(&daemons, &start, "ms");

    if untar_runs > 0 {
        let measured = [daemons[0], daemons[2]];
        let mut inside = vec![Series::default(); measured.len()];
        let mut total = vec![Series::default(); measured.len()];
        for _ in 0..untar_runs {
            for (i, (name, d)) in measured.iter().enumerate() {
                let cmd = d.docker_command(&["run", "--rm", "bench-untar", "sh", "-c", UNTAR]);
                let out = run(cmd, b"", Duration::from_secs(1800));
                ensure!(out.status.success(), "{name}: untar failed: {out:?}");
                let secs = parse_elapsed(&out.stdout)
                    .with_context(|| format!("{name}: no timing in {:?}", out.stdout))?;
                inside[i].push(secs);
                total[i].push(out.elapsed.as_secs_f64());
            }
        }
        let files = count_files(&payload_dir);
        println!(
            "\nuntar {payload_mb:.1} MB ({files} files, {}) from the image into the writable \
             layer, then sync:",
            payload_dir.display()
        );
        println!("  inside the container:");
        report(&measured, &inside, "s");
        println!("  whole docker run:");
        report(&measured, &total, "s");
    }
    Ok(())
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("a non-UTF-8 path")
}

/// Each daemon's figures, then each one's ratio to the last (the anchor).
fn report(daemons: &[(&str, &Daemon)], s: &[Series], unit: &str) {
    for ((name, _), series) in daemons.iter().zip(s) {
        println!("  {name} {}", series.summary(unit));
    }
    let (anchor, rest) = s.split_last().expect("an anchor");
    for ((name, _), series) in daemons.iter().zip(rest) {
        println!(
            "  {} / {}, medians: {:.2}x",
            name.trim(),
            daemons[daemons.len() - 1].0.trim(),
            series.median() / anchor.median()
        );
    }
}

fn parse_elapsed(stdout: &str) -> Option<f64> {
    let line = stdout.lines().find(|l| l.starts_with("elapsed "))?;
    let mut it = line.split_whitespace().skip(1);
    let a: f64 = it.next()?.parse().ok()?;
    let b: f64 = it.next()?.parse().ok()?;
    Some(b - a)
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => 1 + count_files(&e.path()),
            _ => 1,
        })
        .sum()
}

/// A root filesystem tarball for `docker import`: busybox and `/payload.tar`, the tar of
/// `payload_dir`.
fn untar_image_tarball(scratch: &Path, payload_dir: &Path) -> Result<PathBuf> {
    ensure!(
        payload_dir.is_dir(),
        "{} is not a directory (--payload)",
        payload_dir.display()
    );
    let root = scratch.join("root");
    std::fs::create_dir_all(&root)?;
    let rootfs = busybox_image("rootfs");
    sh(Command::new("tar")
        .arg("-xf")
        .arg(&rootfs)
        .arg("-C")
        .arg(&root))?;
    sh(Command::new("tar")
        .arg("-cf")
        .arg(root.join("payload.tar"))
        .arg("-C")
        .arg(payload_dir.parent().unwrap_or(Path::new("/")))
        .arg(
            payload_dir
                .file_name()
                .context("--payload names no directory")?,
        ))?;
    let image = scratch.join("untar-image.tar");
    pack_rootfs(&root, &image)?;
    Ok(image)
}
