//! `bench-build`: `docker build` of a five-step Dockerfile (COPY, RUN, ENV, RUN, CMD on
//! busybox), cold (`--no-cache`) and fully cached, berth beside Debian's dockerd, both with
//! the classic builder, in one run on one host.
//!
//! berth runs each RUN step in a microVM (a clone of its VM template); dockerd runs it in
//! a runc container. The figures are the Docker CLI's wall time for the whole build.
//!
//! Runs are interleaved, `--runs` each (min / median / max). Needs a KVM that runs Linux
//! guests: `make bench-image` runs it inside the emulated virtualization host where this
//! host has none (absolute figures there are far below hardware's: compare the columns of
//! one run).

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use berth_bench::{args_or_help, docker, option, Scratch, Series};
use berth_tests::{busybox_image, daemon_base_dir, dockerd_available, Berthd, Daemon, Dockerd};

const USAGE: &str = "usage: bench-build [--runs N]";

const DOCKERFILE: &str = "FROM busybox
COPY payload /payload
RUN for i in $(seq 1 200); do echo $i > /tmp/f$i; done
ENV STAGE=done
RUN cat /payload/* | wc -c > /size
CMD [\"cat\", \"/size\"]
";

fn main() -> Result<()> {
    let Some(args) = args_or_help(USAGE) else {
        return Ok(());
    };
    let runs: usize = option(&args, "--runs", 5, USAGE)?;
    ensure!(runs > 0, "--runs must be at least 1");
    if let Err(why) = dockerd_available() {
        bail!("the anchor cannot run: {why}");
    }
    let scratch = Scratch::new(Some(&daemon_base_dir()), "build")?;
    let ctx = scratch.0.join("context");
    make_context(&ctx)?;
    let ctx_s = ctx.to_str().context("a non-UTF-8 path")?;
    let archive = busybox_image("archive");
    let berth = Berthd::start();
    let anchor = Dockerd::start();
    let engines: [(&str, &Daemon); 2] = [("berth", &berth), ("dockerd", &anchor)];
    for (name, d) in engines {
        docker(
            d,
            &["load", "-i", archive.to_str().context("a non-UTF-8 path")?],
            600,
        )
        .with_context(|| format!("{name}: load"))?;
        // The first build of each engine is not measured: berth builds its VM template
        // on its first container, dockerd warms its caches.
        docker(
            d,
            &["build", "-q", "--no-cache", "-t", "bench/build", ctx_s],
            1800,
        )
        .with_context(|| format!("{name}: the warm-up build"))?;
    }
    println!(
        "bench-build: docker build of a 5-step Dockerfile (COPY, RUN, ENV, RUN, CMD) on busybox, \
         classic builder, berth (RUN in microVMs) vs Debian's dockerd (RUN in runc), same host, \
         interleaved, {runs} runs"
    );
    // [cold, cached][engine]: seconds.
    let mut series = vec![vec![Series::default(); 2]; 2];
    for i in 0..runs {
        for (e, (name, d)) in engines.iter().enumerate() {
            let cold = docker(
                d,
                &["build", "-q", "--no-cache", "-t", "bench/build", ctx_s],
                1800,
            )
            .with_context(|| format!("{name}: cold build"))?;
            let cached = docker(d, &["build", "-q", "-t", "bench/build", ctx_s], 1800)
                .with_context(|| format!("{name}: cached build"))?;
            series[0][e].push(cold.as_secs_f64());
            series[1][e].push(cached.as_secs_f64());
            eprintln!(
                "bench-build: run {} {name}: cold {:.2} s, cached {:.2} s",
                i + 1,
                cold.as_secs_f64(),
                cached.as_secs_f64()
            );
        }
        // The cold builds' images pile up as cache: drop them between runs.
        for (_, d) in engines {
            let _ = docker(d, &["image", "prune", "-a", "-f"], 600);
            let _ = docker(
                d,
                &["load", "-i", archive.to_str().context("a non-UTF-8 path")?],
                600,
            );
        }
    }
    for (k, what) in ["cold (--no-cache)", "fully cached"].iter().enumerate() {
        println!("\ndocker build, {what} (seconds; min / median / max):");
        for (e, (name, _)) in engines.iter().enumerate() {
            println!("  {name:8} {}", series[k][e].summary("s"));
        }
        println!(
            "  berth / dockerd, medians: {:.3}x",
            series[k][0].median() / series[k][1].median()
        );
    }
    Ok(())
}

/// The build context: the Dockerfile and a payload of 16 files of 64 KiB.
fn make_context(dir: &Path) -> Result<()> {
    let payload = dir.join("payload");
    std::fs::create_dir_all(&payload)?;
    for i in 0..16u8 {
        let bytes: Vec<u8> = (0..65536u32)
            .map(|j| (j.wrapping_mul(31) as u8) ^ i)
            .collect();
        std::fs::write(payload.join(format!("part-{i}")), bytes)?;
    }
    std::fs::write(dir.join("Dockerfile"), DOCKERFILE)?;
    Ok(())
}
