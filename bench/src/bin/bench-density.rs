//! `bench-density`: how many idle containers a host holds, through the Docker CLI on berthd.
//!
//! Idle containers (`docker run -d busybox sleep 1000000`, berth's default size: 1 vCPU, 256
//! MiB, cloned from a template) are started one after another up to each count of
//! `--counts` (cumulative: 10, then 40 more to 50, ...). At each count: every VMM's private
//! memory (smaps_rollup: the VMM's own pages and the guest pages it wrote; the template's
//! pages that no clone wrote stay shared through the page cache and are not counted), its
//! total and per container, the latency of each `docker run -d` of the batch, and the count
//! a 24 GiB host would hold at that per-container cost. `--csv FILE` writes one line per
//! count for plotting (`bench/plot-density`).

use std::io::Write;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use berth_bench::{private_kib, Series};
use berth_tests::{busybox_image, Berthd};

const USAGE: &str = "usage: bench-density [--counts 10,50,100] [--csv FILE]";
/// The host the arithmetic is for: 24 GiB, as this workplace's machines.
const HOST_GIB: f64 = 24.0;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let counts: Vec<usize> = value("--counts")
        .map_or("10,50,100", String::as_str)
        .split(',')
        .map(|c| c.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .context(USAGE)?;
    ensure!(
        !counts.is_empty() && counts.windows(2).all(|w| w[0] < w[1]) && counts[0] > 0,
        "--counts: increasing positive numbers\n{USAGE}"
    );
    let mut csv = match value("--csv") {
        Some(path) => {
            let mut f =
                std::fs::File::create(path).with_context(|| format!("cannot create {path}"))?;
            writeln!(f, "containers,total_private_mib,private_mib_per_container,start_ms_min,start_ms_median,start_ms_max")?;
            Some(f)
        }
        None => None,
    };

    let d = Berthd::start();
    let busybox = busybox_image("archive");
    d.docker_ok(&["load", "-i", busybox.to_str().context("a UTF-8 path")?]);
    // The template is built by the first start; it is not what is measured.
    d.docker_ok(&["run", "--rm", "busybox", "true"]);

    println!(
        "bench-density: idle containers (docker run -d busybox sleep 1000000; 1 vCPU, 256 MiB, cloned) on berthd"
    );
    println!(
        "  containers | private memory: total, per container | docker run -d of the batch (min / median / max) | fits a {HOST_GIB} GiB host"
    );
    let mut started: Vec<String> = Vec::new();
    let outcome = (|| -> Result<()> {
        for &count in &counts {
            let mut latency = Series::default();
            while started.len() < count {
                let name = format!("idle-{}", started.len());
                let t = Instant::now();
                let out = d.docker(&["run", "-d", "--name", &name, "busybox", "sleep", "1000000"]);
                ensure!(out.status.success(), "{name}: {out:?}");
                latency.push(t.elapsed().as_secs_f64() * 1e3);
                started.push(name);
            }
            // Let the guests settle into their sleep.
            std::thread::sleep(std::time::Duration::from_secs(2));
            let mut total_kib = 0u64;
            for name in &started {
                let pid: u32 = d
                    .docker_ok(&["inspect", "-f", "{{.State.Pid}}", name])
                    .trim()
                    .parse()
                    .with_context(|| format!("{name}: no VMM pid"))?;
                total_kib += private_kib(pid).with_context(|| format!("{name}: smaps_rollup"))?;
            }
            let total_mib = total_kib as f64 / 1024.0;
            let per = total_mib / count as f64;
            let fits = (HOST_GIB * 1024.0 / per).floor();
            println!(
                "  {count:>10} | {total_mib:>9.1} MiB, {per:>6.2} MiB | {} | {fits:.0}",
                latency.summary("ms")
            );
            if let Some(f) = csv.as_mut() {
                writeln!(
                    f,
                    "{count},{total_mib:.2},{per:.3},{:.1},{:.1},{:.1}",
                    latency.min(),
                    latency.median(),
                    latency.max()
                )?;
            }
        }
        Ok(())
    })();
    for batch in started.chunks(10) {
        let mut rm = vec!["rm", "-f"];
        rm.extend(batch.iter().map(String::as_str));
        let _ = d.docker(&rm);
    }
    outcome?;
    println!(
        "  (fits: {HOST_GIB} GiB divided by the private memory per container; the template's shared pages, berthd and the host's own use come on top, once)"
    );
    Ok(())
}
