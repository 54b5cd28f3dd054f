//! `bench-exec`: `docker exec` and `docker stats` on berth beside Docker + runc, through the
//! Docker CLI, in one run on one host.
//!
//! Two daemons on private sockets and data roots: berthd as it runs by default (each
//! container a microVM cloned from a template; an exec is a process the guest's agent starts
//! on a request over vsock) and Debian's dockerd with runc (the anchor: containerd's shim
//! and `runc exec`). Each runs one long-lived busybox container (`sleep`), and the CLI's wall
//! time is measured for:
//!
//! 1. `docker exec C true`, `--runs` times each;
//! 2. `docker stats --no-stream C`, `--stats-runs` times each (both daemons take two samples
//!    a second apart before they answer: that second is in both figures).
//!
//! Each after `--warmups` runs that are not measured. Runs alternate between the daemons,
//! and which of the two goes first alternates from one round to the next, so drift on a
//! noisy host hits both alike. The goal for exec (berth's median at most 1.5x runc's) is
//! printed with whether it was met; missing it does not fail the benchmark.
//!
//! Needs a KVM that runs Linux guests: `make bench-exec` runs it inside the emulated
//! virtualization host where this host has none (absolute figures there are about 40x those
//! on hardware: compare the columns of one run).

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use berth_bench::{args_or_help, docker, option, Series};
use berth_tests::{busybox_image, dockerd_available, run, Berthd, Daemon, Dockerd};

const USAGE: &str = "usage: bench-exec [--runs N] [--stats-runs N] [--warmups N]";

/// The exec goal: berth's median at most this many times runc's.
const EXEC_GOAL: f64 = 1.5;

fn main() -> Result<()> {
    let Some(args) = args_or_help(USAGE) else {
        return Ok(());
    };
    let runs: usize = option(&args, "--runs", 20, USAGE)?;
    let stats_runs: usize = option(&args, "--stats-runs", runs, USAGE)?;
    let warmups: usize = option(&args, "--warmups", 2, USAGE)?;
    ensure!(runs > 0, "--runs must be at least 1");
    if let Err(why) = dockerd_available() {
        bail!("the anchor cannot run: {why}");
    }

    let berth = Berthd::start();
    let anchor = Dockerd::start();
    let daemons: [(&str, &Daemon); 2] = [("berth", &berth), ("runc ", &anchor)];
    let cname = format!("bench-exec-{}", std::process::id());
    let busybox = busybox_image("archive");
    for (name, d) in daemons {
        let archive = busybox.to_str().context("a non-UTF-8 path")?;
        docker(d, &["load", "-i", archive], 300).with_context(|| format!("{name}: load"))?;
        docker(
            d,
            &[
                "run",
                "-d",
                "--name",
                &cname,
                "--network",
                "none",
                "busybox",
                "sleep",
                "100000",
            ],
            600,
        )
        .with_context(|| format!("{name}: docker run -d busybox sleep"))?;
    }

    println!(
        "bench-exec: docker exec and docker stats through the Docker CLI, berth (a microVM \
         per container, cloned from a template; exec through the guest's agent) vs Docker + \
         runc, same host, one running busybox container each, {warmups} warm-up runs each, \
         then alternating"
    );

    let exec = measure(&daemons, warmups, runs, &["exec", &cname, "true"], |_| {
        Ok(())
    })?;
    println!("\n`docker exec C true` (wall time of the CLI; min / median / max):");
    let ratio = report(&daemons, &exec, "ms");
    println!(
        "  goal: berth <= {EXEC_GOAL:.1}x runc (medians): {}",
        if ratio <= EXEC_GOAL { "met" } else { "not met" }
    );

    if stats_runs > 0 {
        let stats = measure(
            &daemons,
            warmups,
            stats_runs,
            &["stats", "--no-stream", &cname],
            |out| {
                ensure!(
                    out.lines().count() == 2 && out.contains(&cname),
                    "not one row for {cname}: {out}"
                );
                Ok(())
            },
        )?;
        println!("\n`docker stats --no-stream C` (wall time of the CLI; min / median / max):");
        report(&daemons, &stats, "ms");
    }

    for (name, d) in daemons {
        docker(d, &["rm", "-f", &cname], 300).with_context(|| format!("{name}: rm -f"))?;
    }
    Ok(())
}

/// `docker ARGS` on each daemon, `warmups` times unmeasured, then `runs` times measured:
/// the daemons alternate, and the one that goes first alternates from round to round.
/// `check` judges each run's stdout.
fn measure(
    daemons: &[(&str, &Daemon)],
    warmups: usize,
    runs: usize,
    args: &[&str],
    check: impl Fn(&str) -> Result<()>,
) -> Result<Vec<Series>> {
    let mut series = vec![Series::default(); daemons.len()];
    for round in 0..warmups + runs {
        for k in 0..daemons.len() {
            let i = (k + round) % daemons.len();
            let (name, d) = daemons[i];
            let out = run(d.docker_command(args), b"", Duration::from_secs(300));
            ensure!(
                out.status.success(),
                "{}: docker {args:?} failed: {}{}",
                name.trim(),
                out.stdout,
                out.stderr
            );
            check(&out.stdout).with_context(|| format!("{}: docker {args:?}", name.trim()))?;
            if round >= warmups {
                series[i].push(out.elapsed.as_secs_f64() * 1e3);
            }
        }
    }
    Ok(series)
}

/// Each daemon's figures, then berth's ratio to runc (medians), which it returns.
fn report(daemons: &[(&str, &Daemon)], s: &[Series], unit: &str) -> f64 {
    for ((name, _), series) in daemons.iter().zip(s) {
        println!("  {name} {}", series.summary(unit));
    }
    let ratio = s[0].median() / s[1].median();
    println!("  berth / runc, medians: {ratio:.2}x");
    ratio
}
