//! `bench-image`: `docker push` and `docker pull` of a multi-layer image against one local
//! registry (Debian's `docker-registry` on 127.0.0.1), berth beside Debian's dockerd, in one
//! run on one host.
//!
//! The image is made here: busybox and three layers of the host's own shared libraries
//! (about `--mib` MiB in all, as compressible as real images' binaries are). Each run, each
//! engine pushes it to a repository of its own that the registry has never seen (every
//! blob goes up), then removes it and pulls back the image dockerd pushed (gzip layers, the
//! shape registries serve), so both pull the same bytes. The figures are wall times of the
//! Docker CLI's command and the image's uncompressed size over them (MB/s, 10^6 bytes), so
//! the engines' different layer encodings (berth pushes uncompressed tars, dockerd gzip)
//! count in the time they take, not in the numerator.
//!
//! Runs are interleaved, `--runs` each (min / median / max). No VM is started: this runs on
//! any host with the test packages (`make test-deps`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_bench::{args_or_help, docker, option, sh, Scratch, Series};
use berth_tests::{busybox_image, daemon_base_dir, dockerd_available, Berthd, Daemon, Dockerd};
use berth_tests::{run, Registry};
use sha2::{Digest, Sha256};

const USAGE: &str = "usage: bench-image [--runs N] [--mib N]";

fn main() -> Result<()> {
    let Some(args) = args_or_help(USAGE) else {
        return Ok(());
    };
    let runs: usize = option(&args, "--runs", 5, USAGE)?;
    let mib: u64 = option(&args, "--mib", 100, USAGE)?;
    ensure!(runs > 0 && mib > 0, "--runs and --mib must be at least 1");
    if let Err(why) = dockerd_available() {
        anyhow::bail!("the anchor cannot run: {why}");
    }
    let scratch = Scratch::new(Some(&daemon_base_dir()), "image")?;
    let (archive, bytes) = image_archive(&scratch.0, mib << 20)?;
    let berth = Berthd::start();
    let anchor = Dockerd::start();
    let engines: [(&str, &Daemon); 2] = [("berth", &berth), ("dockerd", &anchor)];
    println!(
        "bench-image: push and pull of a 4-layer image ({:.1} MB uncompressed) against Debian's \
         docker-registry on 127.0.0.1 (a fresh one each run), berth vs Debian's dockerd, same \
         host, interleaved, {runs} runs",
        bytes as f64 / 1e6
    );
    // [push, pull][engine]: MB/s.
    let mut series = vec![vec![Series::default(); 2]; 2];
    // What each engine's push stored in the registry (the same every run).
    let mut sent = [0u64; 2];
    for i in 0..runs {
        // A registry of its own: dockerd would otherwise mount blobs it pushed before.
        let dir = scratch.0.join(format!("registry-{i}"));
        let registry = Registry::start(&dir, None);
        let addr = &registry.addr;
        let mut pulled_from = String::new();
        for (name, d) in engines {
            let target = format!("{addr}/bench/{name}:1");
            docker(d, &["load", "-i", path(&archive)?], 600)
                .with_context(|| format!("{name}: load"))?;
            docker(d, &["tag", "bench/image:1", &target], 120)?;
            let before = tree_size(&dir);
            let took =
                docker(d, &["push", &target], 1800).with_context(|| format!("{name}: push"))?;
            record(&mut series[0], name, bytes, took, i, "push");
            sent[usize::from(name != "berth")] = tree_size(&dir) - before;
            docker(d, &["rmi", &target, "bench/image:1"], 120)?;
            if name == "dockerd" {
                pulled_from = target;
            }
        }
        // Both pull what dockerd pushed, into a store without any of its layers.
        for (name, d) in engines {
            let took = docker(d, &["pull", &pulled_from], 1800)
                .with_context(|| format!("{name}: pull"))?;
            record(&mut series[1], name, bytes, took, i, "pull");
            docker(d, &["rmi", &pulled_from], 120)?;
        }
        drop(registry);
        let _ = std::fs::remove_dir_all(&dir);
    }
    for (k, what) in ["docker push", "docker pull"].iter().enumerate() {
        println!("\n{what} (uncompressed MB over the CLI's wall time; min / median / max):");
        for (e, (name, _)) in engines.iter().enumerate() {
            println!("  {name:8} {}", series[k][e].summary("MB/s"));
        }
        println!(
            "  berth / dockerd, medians: {:.3}x",
            series[k][0].median() / series[k][1].median()
        );
    }
    println!(
        "\nbytes a push stored in the registry: berth {:.1} MB (uncompressed layers), dockerd \
         {:.1} MB (gzip)",
        sent[0] as f64 / 1e6,
        sent[1] as f64 / 1e6
    );
    Ok(())
}

/// One measurement: MB/s into `series` (berth first), and the time as it comes.
fn record(series: &mut [Series], name: &str, bytes: u64, took: Duration, run: usize, what: &str) {
    let e = usize::from(name != "berth");
    series[e].push(bytes as f64 / 1e6 / took.as_secs_f64());
    eprintln!(
        "bench-image: run {} {name} {what} {:.2} s",
        run + 1,
        took.as_secs_f64()
    );
}

/// Bytes in the regular files under `dir`.
fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("a non-UTF-8 path")
}

/// A docker-save archive of `bench/image:1`: busybox, then three layers of the host's shared
/// libraries, about `want` bytes in all. Returns it and the sum of its layer tars' sizes.
fn image_archive(scratch: &Path, want: u64) -> Result<(PathBuf, u64)> {
    let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir("/usr/lib/x86_64-linux-gnu")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let m = std::fs::symlink_metadata(e.path()).ok()?;
            // Small files, as images hold: the image's size stays near what was asked.
            (m.is_file() && m.len() > 0 && m.len() <= 4 << 20).then(|| (e.path(), m.len()))
        })
        .collect();
    files.sort();
    let dir = scratch.join("archive");
    let mut layers = vec![std::fs::read(busybox_image("rootfs"))?];
    let per_layer = want / 3;
    let mut next = files.into_iter();
    for n in 0..3 {
        let root = scratch.join(format!("layer-{n}"));
        let data = root.join(format!("opt/bench/part-{n}"));
        std::fs::create_dir_all(&data)?;
        let mut size = 0;
        for (file, len) in next.by_ref() {
            std::fs::copy(&file, data.join(file.file_name().context("a file name")?))?;
            size += len;
            if size >= per_layer {
                break;
            }
        }
        ensure!(size > 0, "the host has too few libraries for --mib");
        let tar = scratch.join(format!("layer-{n}.tar"));
        sh(Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("--numeric-owner")
            .arg("-C")
            .arg(&root)
            .arg("."))?;
        layers.push(std::fs::read(&tar)?);
    }
    std::fs::create_dir_all(&dir)?;
    let mut names = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let name = format!("{i}/layer.tar");
        std::fs::create_dir_all(dir.join(i.to_string()))?;
        std::fs::write(dir.join(&name), layer)?;
        diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(layer))));
        names.push(name);
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!([
        {"Config": "config.json", "RepoTags": ["bench/image:1"], "Layers": names}
    ]);
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    let archive = scratch.join("image.tar");
    let out = run(
        {
            let mut c = Command::new("tar");
            c.arg("-cf").arg(&archive).arg("-C").arg(&dir).arg(".");
            c
        },
        b"",
        Duration::from_secs(600),
    );
    ensure!(out.status.success(), "tar: {}", out.stderr);
    let bytes = layers.iter().map(|l| l.len() as u64).sum();
    Ok((archive, bytes))
}
