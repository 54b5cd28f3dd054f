//! `bench-net`: a published port's throughput on berth beside Docker + runc, in one run on
//! one host.
//!
//! One image for both, made here from this host's own binaries (Debian's redis-server and
//! iperf3 with the libraries they load, and busybox): nothing is fetched. Each daemon runs
//! it published on 127.0.0.1 (`-p 127.0.0.1:PORT:6379`, `-p 127.0.0.1:PORT:5201`), and the
//! host's own clients measure through the published port:
//!
//! 1. `redis-benchmark -q -n N -t get,set` (requests per second, GET and SET);
//! 2. `iperf3 -c 127.0.0.1 -t S` (host to container, Gbit/s).
//!
//! Both engines publish through a userland proxy: berthd's own (its network namespace, a
//! bridge, a tap, virtio-net in the VMM), and dockerd's docker-proxy (a bridge and a veth in
//! the anchor's namespace). The anchor dockerd runs in a network namespace of the
//! benchmark's own (`--iptables=false`), so the host's interfaces are never touched; its
//! clients run in that namespace too, on its loopback.
//!
//! Runs are interleaved, `--runs` each (min / median / max). Needs a KVM that runs Linux
//! guests: `make bench-net` runs it inside the emulated virtualization host where this host
//! has none (absolute figures there are far below hardware's: compare the columns of one
//! run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use berth_bench::{args_or_help, docker, option, pack_rootfs, sh, Scratch, Series};
use berth_tests::{
    busybox_image, daemon_base_dir, dockerd_available, run, Berthd, Daemon, Dockerd,
};

const USAGE: &str = "usage: bench-net [--runs N] [--requests N] [--seconds S]";
const IMAGE: &str = "bench-net";

fn main() -> Result<()> {
    let Some(args) = args_or_help(USAGE) else {
        return Ok(());
    };
    let runs: usize = option(&args, "--runs", 5, USAGE)?;
    let requests: usize = option(&args, "--requests", 100_000, USAGE)?;
    let seconds: u64 = option(&args, "--seconds", 5, USAGE)?;
    ensure!(runs > 0, "--runs must be at least 1");
    if let Err(why) = dockerd_available() {
        bail!("the anchor cannot run: {why}");
    }
    for tool in ["redis-server", "redis-benchmark", "iperf3", "ip"] {
        ensure!(
            which(tool).is_some(),
            "{tool} is missing (tests/deps/ensure bench installs it)"
        );
    }

    let scratch = Scratch::new(Some(&daemon_base_dir()), "net")?;
    let image = image_tarball(&scratch.0)?;
    let berth = Berthd::start();
    let anchor = NetnsDockerd::start()?;
    let engines: [(&str, &Daemon, Option<&str>); 2] = [
        ("berth", &berth, None),
        ("runc ", anchor.daemon(), Some(anchor.netns.as_str())),
    ];
    let mut servers = vec![];
    for (name, d, netns) in engines {
        docker(d, &["import", path(&image)?, IMAGE], 600)
            .with_context(|| format!("{name}: import"))?;
        let redis_port = free_port(netns)?;
        let iperf_port = free_port(netns)?;
        let cname = format!("bench-net-{}", std::process::id());
        docker(
            d,
            &[
                "run",
                "-d",
                "--name",
                &cname,
                "-p",
                &format!("127.0.0.1:{redis_port}:6379"),
                "-p",
                &format!("127.0.0.1:{iperf_port}:5201"),
                IMAGE,
                "sh",
                "-c",
                "iperf3 -s -D; exec redis-server --port 6379 --bind 0.0.0.0 --protected-mode no --save '' --appendonly no",
            ],
            600,
        )
        .with_context(|| format!("{name}: start the servers"))?;
        wait_redis(netns, redis_port).with_context(|| format!("{name}: redis never answered"))?;
        servers.push((redis_port, iperf_port));
    }

    println!(
        "bench-net: through a port published on 127.0.0.1, berth (a microVM per container: \
         berthd's proxy, its namespace's bridge, a tap, virtio-net in the VMM) vs Docker + runc \
         (docker-proxy, a bridge, a veth), same host, interleaved, {runs} runs"
    );
    let mut get = vec![Series::default(); 2];
    let mut set = vec![Series::default(); 2];
    let mut gbits = vec![Series::default(); 2];
    for _ in 0..runs {
        for (i, ((name, _, netns), (redis_port, iperf_port))) in
            engines.iter().zip(&servers).enumerate()
        {
            let out = in_netns(*netns, "redis-benchmark")
                .args(["-h", "127.0.0.1", "-p", &redis_port.to_string()])
                .args(["-q", "-n", &requests.to_string(), "-t", "get,set"])
                .output()
                .with_context(|| format!("{name}: redis-benchmark"))?;
            let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
            get[i].push(rps(&text, "GET").with_context(|| format!("{name}: no GET in {text}"))?);
            set[i].push(rps(&text, "SET").with_context(|| format!("{name}: no SET in {text}"))?);
            let out = in_netns(*netns, "iperf3")
                .args(["-c", "127.0.0.1", "-p", &iperf_port.to_string()])
                .args(["-t", &seconds.to_string(), "-J"])
                .output()
                .with_context(|| format!("{name}: iperf3"))?;
            let json: serde_json::Value =
                serde_json::from_slice(&out.stdout).with_context(|| {
                    format!(
                        "{name}: iperf3 said {}",
                        String::from_utf8_lossy(&out.stdout)
                    )
                })?;
            let bps = json["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .with_context(|| format!("{name}: no throughput in iperf3's report: {json}"))?;
            gbits[i].push(bps / 1e9);
        }
    }
    for (what, series, unit) in [
        ("redis GET", &get, "req/s"),
        ("redis SET", &set, "req/s"),
        ("iperf3 host -> container", &gbits, "Gbit/s"),
    ] {
        println!("\n{what} (min / median / max):");
        for ((name, _, _), s) in engines.iter().zip(series.iter()) {
            println!("  {name} {}", s.summary(unit));
        }
        println!(
            "  berth / runc, medians: {:.2}x",
            series[0].median() / series[1].median()
        );
    }
    for (_, d, _) in engines {
        let _ = run(
            d.docker_command(&["rm", "-f", &format!("bench-net-{}", std::process::id())]),
            b"",
            Duration::from_secs(300),
        );
    }
    Ok(())
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("a non-UTF-8 path")
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

/// `tool`, in `netns` if given.
fn in_netns(netns: Option<&str>, tool: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(tool);
            c
        }
        None => Command::new(tool),
    }
}

/// A free port of 127.0.0.1 (in `netns` if given).
fn free_port(netns: Option<&str>) -> Result<u16> {
    let out = in_netns(netns, "python3")
        .args([
            "-c",
            "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])",
        ])
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("no free port")
}

fn wait_redis(netns: Option<&str>, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = in_netns(netns, "redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "ping"])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).contains("PONG") {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "no PONG within 300 s");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `GET: 12345.67 requests per second` → 12345.67.
fn rps(text: &str, what: &str) -> Option<f64> {
    let line = text.lines().rfind(|l| l.starts_with(&format!("{what}:")))?;
    line.split_whitespace().find_map(|w| w.parse::<f64>().ok())
}

/// The image: busybox, redis-server and iperf3 with every library they load (from `ldd`).
fn image_tarball(scratch: &Path) -> Result<PathBuf> {
    let root = scratch.join("root");
    std::fs::create_dir_all(&root)?;
    sh(Command::new("tar")
        .arg("-xf")
        .arg(busybox_image("rootfs"))
        .arg("-C")
        .arg(&root))?;
    let mut files: Vec<PathBuf> = vec![];
    for tool in ["redis-server", "iperf3"] {
        let bin = which(tool).with_context(|| format!("{tool} is missing"))?;
        let out = Command::new("ldd").arg(&bin).output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(p) = line.split_whitespace().find(|w| w.starts_with('/')) {
                files.push(PathBuf::from(p));
            }
        }
        files.push(bin);
    }
    for f in files {
        let real = std::fs::canonicalize(&f)?;
        let dest = root.join(f.strip_prefix("/")?);
        std::fs::create_dir_all(dest.parent().context("a parent")?)?;
        let _ = std::fs::remove_file(&dest);
        std::fs::copy(&real, &dest).with_context(|| format!("copy {}", real.display()))?;
    }
    let image = scratch.join("bench-net.tar");
    pack_rootfs(&root, &image)?;
    Ok(image)
}

/// Debian's dockerd with its default bridge and docker-proxy, in a network namespace of the
/// benchmark's own (removed with it).
struct NetnsDockerd {
    netns: String,
    daemon: Option<Dockerd>,
}

impl NetnsDockerd {
    fn start() -> Result<NetnsDockerd> {
        let netns = format!("berth-bench-{}", std::process::id());
        sh(Command::new("ip").args(["netns", "add", &netns]))?;
        let mut ns = NetnsDockerd {
            netns,
            daemon: None,
        };
        sh(Command::new("ip").args(["netns", "exec", &ns.netns, "ip", "link", "set", "lo", "up"]))?;
        ns.daemon = Some(Dockerd::start_in_netns(&ns.netns));
        Ok(ns)
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("started")
    }
}

impl Drop for NetnsDockerd {
    fn drop(&mut self) {
        drop(self.daemon.take());
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}
