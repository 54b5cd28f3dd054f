//! `bench-boot`: how fast berth-vmm boots, and how little it costs.
//!
//! `bench-boot direct` (on this host's own KVM, any flavour): berth-vmm with berth's test
//! guest, from process start to the guest's first serial line and to the process's exit,
//! and the private memory of a running VMM (smaps_rollup). The anchor is Firecracker on the
//! same guest, measured in the same run when `FIRECRACKER=/path/to/firecracker` is set.
//!
//! `bench-boot emulated` (where `berth-vmm check` passes, e.g. inside tests/vmhost/run):
//! berth-vmm booting berth's kernel and initramfs to "agent ready" and to the exit of `true`
//! run through the agent, beside QEMU's `-M microvm` booting the same kernel and initramfs
//! (vhost-vsock, the same agent) in the same run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_bench::{bin_dir, firecracker_config, ms, private_kib, Scratch, Series, TEST_VM};

mod emulated;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<usize>())
        .transpose()
        .context("--runs takes a number")?
        .unwrap_or(30);
    match args.first().map(String::as_str) {
        Some("direct") => direct(runs),
        Some("emulated") => emulated::run(runs),
        _ => bail!("usage: bench-boot direct|emulated [--runs N]"),
    }
}

fn scratch(name: &str) -> Result<Scratch> {
    Ok(Scratch::new(None, name)?)
}

/// Starts `cmd`, returns (time to the first stdout line, time to exit).
fn first_line_and_exit(mut cmd: Command, expect: &str) -> Result<(Duration, Duration)> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = child.stdout.take().context("stdout is piped")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let mut first = None;
    while reader.read_line(&mut line)? > 0 {
        if line.contains(expect) {
            first = Some(start.elapsed());
            break;
        }
        line.clear();
    }
    let first = first.with_context(|| format!("{cmd:?} never printed {expect:?}"))?;
    // Drain the rest so the child never blocks on a full pipe.
    std::io::copy(&mut reader, &mut std::io::sink())?;
    let status = child.wait()?;
    let exit = start.elapsed();
    if !status.success() {
        bail!("{cmd:?} exited with {status}");
    }
    Ok((first, exit))
}

/// Private memory of a VMM running the idle guest, once it has printed its line.
fn idle_private_kib(mut cmd: Command, expect: &str) -> Result<u64> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = child.stdout.take().context("stdout is piped")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("{cmd:?} ended before printing {expect:?}");
        }
        if line.contains(expect) {
            break;
        }
    }
    // Let the VMM settle (threads started, first exits served).
    std::thread::sleep(Duration::from_millis(200));
    let kib = private_kib(child.id()).context("cannot read smaps_rollup")?;
    let _ = child.kill();
    let _ = child.wait();
    Ok(kib)
}

fn berth_cmd(kernel: &Path) -> Command {
    let mut cmd = Command::new(bin_dir().join("berth-vmm"));
    cmd.arg("boot").args(TEST_VM).arg("--kernel").arg(kernel);
    cmd
}

fn firecracker_cmd(fc: &Path, dir: &Path, kernel: &Path, n: usize) -> Result<Command> {
    let config = dir.join(format!("fc-{n}.json"));
    std::fs::write(&config, firecracker_config(kernel))?;
    let mut cmd = Command::new(fc);
    cmd.arg("--no-api")
        .arg("--config-file")
        .arg(&config)
        .arg("--level")
        .arg("Error");
    Ok(cmd)
}

fn direct(runs: usize) -> Result<()> {
    let dir = scratch("direct")?;
    let hello = test_guest::write_to(&dir.0, "hello.elf", test_guest::HELLO)?;
    let idle = test_guest::write_to(&dir.0, "idle.elf", test_guest::IDLE)?;
    let greeting = test_guest::GREETING;
    let firecracker = std::env::var_os("FIRECRACKER").map(PathBuf::from);

    println!("bench-boot direct: berth-vmm on this host's KVM with berth's test guest");
    println!(
        "  ({} runs each, interleaved; figures are min / median / max)",
        runs
    );
    let (mut b_first, mut b_exit, mut b_mem) =
        (Series::default(), Series::default(), Series::default());
    let (mut f_first, mut f_exit, mut f_mem) =
        (Series::default(), Series::default(), Series::default());
    for n in 0..runs {
        let (first, exit) = first_line_and_exit(berth_cmd(&hello), greeting)?;
        b_first.push(ms(first));
        b_exit.push(ms(exit));
        b_mem.push(idle_private_kib(berth_cmd(&idle), greeting)? as f64 / 1024.0);
        if let Some(fc) = &firecracker {
            let (first, exit) =
                first_line_and_exit(firecracker_cmd(fc, &dir.0, &hello, n)?, greeting)?;
            f_first.push(ms(first));
            f_exit.push(ms(exit));
            f_mem.push(
                idle_private_kib(firecracker_cmd(fc, &dir.0, &idle, n)?, greeting)? as f64 / 1024.0,
            );
        }
    }
    println!(
        "  berth-vmm  start -> first serial line {}",
        b_first.summary("ms")
    );
    println!(
        "  berth-vmm  start -> process exit      {}",
        b_exit.summary("ms")
    );
    println!(
        "  berth-vmm  private memory, idle guest {}",
        b_mem.summary("MiB")
    );
    if firecracker.is_some() {
        println!(
            "  firecracker start -> first serial line {}",
            f_first.summary("ms")
        );
        println!(
            "  firecracker start -> process exit      {}",
            f_exit.summary("ms")
        );
        println!(
            "  firecracker private memory, idle guest {}",
            f_mem.summary("MiB")
        );
        println!(
            "  ratio berth/firecracker (medians): first line {:.2}x, exit {:.2}x, memory {:.2}x",
            b_first.median() / f_first.median(),
            b_exit.median() / f_exit.median(),
            b_mem.median() / f_mem.median()
        );
    } else {
        // The anchor, measured on this host for Firecracker v1.16 with a comparable
        // 100-byte PVH guest: 9.5 ms median to the first serial line, 2.4 MiB private.
        println!("  anchor (recorded, not this run; set FIRECRACKER=path to measure it here):");
        println!("    firecracker first serial line 9.50 ms median, private memory 2.40 MiB");
        println!(
            "  ratio berth/recorded anchor (medians): first line {:.2}x, memory {:.2}x",
            b_first.median() / 9.5,
            b_mem.median() / 2.4
        );
    }
    Ok(())
}
