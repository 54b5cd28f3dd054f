//! `bench-clone`: how fast berth-vmm restores a snapshot into a fresh process, and how
//! little each clone costs, on this host's KVM (any flavour, kvm_pvm included) with berth's
//! test guests.
//!
//! 1. Restore: a snapshot of a guest that writes to its serial line without pause, restored
//!    in a fresh `berth-vmm restore` process; from the process's start to the first byte
//!    the restored guest writes (`--runs` times). The anchor in the same run is a cold boot
//!    of the same VMM to its guest's first line.
//! 2. Sequential clones per second: `--clones` clones started one after another, each until
//!    its guest runs again (its first byte), all left running; and, apart, restore, first
//!    byte, kill and reap, one after another (`--runs` times).
//! 3. Private memory per clone: `--clones` restored clones of an idle guest's snapshot
//!    running at once; each VMM's private memory (smaps_rollup: its own pages, and the
//!    guest pages it wrote; pages still shared with the memory file through the page cache
//!    are not private).
//!
//! With `FIRECRACKER=/path/to/firecracker`, Firecracker is the anchor measured in the same
//! run, the same way with the same guests: its snapshot taken over its API socket
//! (`PUT /snapshot/create`), each restore a fresh process given `PUT /snapshot/load` with
//! its memory file mapped privately (`File` backend) and `resume_vm`. Without it, figures
//! recorded on this host (v1.16.1, a comparable guest) are printed as the anchor, saying so.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use berth_bench::{bin_dir, ms, private_kib, Scratch, Series, TEST_VM};
use firecracker::Firecracker;
use vmm_launcher::control::{request, Request};

const USAGE: &str = "usage: bench-clone [--runs N] [--clones N]";

/// Firecracker v1.16.1 on this host, recorded (the figures).
const FC_RESTORE_MS: f64 = 14.8;
const FC_CLONES_PER_S: f64 = 78.7;
const FC_PRIVATE_MIB: f64 = 0.42;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = berth_bench::option(&args, "--runs", 30, USAGE)?;
    let clones: usize = berth_bench::option(&args, "--clones", 50, USAGE)?;
    ensure!(runs > 0 && clones > 0, "{USAGE}");
    let scratch = Scratch::new(None, "clone")?;
    let dir = &scratch.0;

    let flood = test_guest::write_to(dir, "flood.elf", test_guest::FLOOD)?;
    let idle = test_guest::write_to(dir, "idle.elf", test_guest::IDLE)?;
    let hello = test_guest::write_to(dir, "hello.elf", test_guest::HELLO)?;
    let busy = snapshot(dir, "flood", &flood)?;
    let quiet = snapshot(dir, "idle", &idle)?;
    let state_mib = std::fs::metadata(&busy.0)?.len() as f64 / (1 << 20) as f64;

    println!("bench-clone: berth-vmm restoring a snapshot in a fresh process, on this host's KVM");
    println!(
        "  (test guests, 1 vCPU, 16 MiB; state file {state_mib:.3} MiB; {runs} runs, interleaved; min / median / max)"
    );
    let fc = match std::env::var_os("FIRECRACKER") {
        Some(path) => Some(Firecracker::new(PathBuf::from(path), dir, &flood, &idle)?),
        None => None,
    };
    let (mut restore, mut cold, mut fc_restore) =
        (Series::default(), Series::default(), Series::default());
    for _ in 0..runs {
        let mut cmd = restore_cmd(&busy);
        cmd.args(["--console", "-"]);
        restore.push(ms(first_output(cmd)?));
        if let Some(fc) = &fc {
            fc_restore.push(ms(fc.first_output(&fc.busy)?));
        }
        let mut cmd = vmm();
        cmd.arg("boot")
            .args(TEST_VM)
            .args(["--console", "-", "--kernel"])
            .arg(&hello);
        cold.push(ms(first_output(cmd)?));
    }
    println!(
        "  restore -> the guest's first byte   {}",
        restore.summary("ms")
    );
    println!(
        "  cold boot -> the guest's first byte {}",
        cold.summary("ms")
    );
    println!(
        "  restore / cold boot, medians: {:.2}x",
        restore.median() / cold.median()
    );
    if fc.is_some() {
        println!(
            "  firecracker restore -> the guest's first byte {}",
            fc_restore.summary("ms")
        );
    }

    // Clones started one after another, each until its guest runs (its first byte), and
    // left running; then the same with each clone killed (and reaped) before the next.
    // Each is paused once its guest has run, so that the flooding guests already started do
    // not take the CPU from the next.
    let started_per_s = sequential(clones, |n| {
        let control = dir.join(format!("s{n}.sock"));
        let mut cmd = restore_cmd(&busy);
        cmd.args(["--console", "-", "--control"]).arg(&control);
        let child = start_until_output(cmd, || Ok(()))?.1;
        request(&control, &Request::Pause, Duration::from_secs(10))
            .with_context(|| format!("clone {n}: pause"))?;
        Ok(child)
    })?;
    let fc_started_per_s = match &fc {
        Some(fc) => Some(sequential(clones, |_| fc.start_paused(&fc.busy))?),
        None => None,
    };
    let started = Instant::now();
    let mut teardown = Series::default();
    for _ in 0..runs {
        let mut cmd = restore_cmd(&busy);
        cmd.args(["--console", "-"]);
        let (_, mut child) = start_until_output(cmd, || Ok(()))?;
        let t = Instant::now();
        let _ = child.kill();
        child.wait()?;
        teardown.push(ms(t.elapsed()));
    }
    let cycles_per_s = runs as f64 / started.elapsed().as_secs_f64();
    println!(
        "  sequential clones, {clones} started one after another, each until its guest runs: {started_per_s:.1} per second"
    );
    println!(
        "  restore, first byte, kill and reap, one after another: {cycles_per_s:.1} per second"
    );
    println!(
        "    of which kill -> reaped (the process's and its VM's teardown) {}",
        teardown.summary("ms")
    );
    if let Some(per_s) = fc_started_per_s {
        println!(
            "  firecracker sequential clones, {clones} started one after another: {per_s:.1} per second"
        );
    }

    let private = private_per_clone(clones, |n| {
        let control = dir.join(format!("c{n}.sock"));
        let mut cmd = restore_cmd(&quiet);
        cmd.args(["--console", "/dev/null", "--control"])
            .arg(&control)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn()?;
        wait_for(&control)?;
        Ok(child)
    })?;
    println!(
        "  private memory per clone, {clones} running at once: {}",
        private.summary("MiB")
    );
    match (&fc, fc_started_per_s) {
        (Some(fc), Some(fc_per_s)) => {
            let fc_private = private_per_clone(clones, |_| fc.start_loaded(&fc.quiet))?;
            println!(
                "  firecracker private memory per clone, {clones} running at once: {}",
                fc_private.summary("MiB")
            );
            println!(
                "  berth / Firecracker, this run (medians): restore {:.2}x, clones per second {:.2}x, private memory {:.2}x",
                restore.median() / fc_restore.median(),
                started_per_s / fc_per_s,
                private.median() / fc_private.median()
            );
        }
        _ => {
            println!("  recorded anchor, Firecracker v1.16.1 on this host (not this run; set FIRECRACKER=path to measure it here):");
            println!(
                "    restore {FC_RESTORE_MS} ms median, {FC_CLONES_PER_S} clones/s, {FC_PRIVATE_MIB} MiB private per clone"
            );
            println!(
                "  berth / recorded Firecracker: restore {:.2}x, clones per second {:.2}x, private memory {:.2}x",
                restore.median() / FC_RESTORE_MS,
                started_per_s / FC_CLONES_PER_S,
                private.median() / FC_PRIVATE_MIB
            );
        }
    }
    Ok(())
}

/// Starts `clones` clones one after another with `start` (each returns once its guest runs)
/// and keeps them running; the clones started per second. All are killed at the end.
fn sequential(clones: usize, mut start: impl FnMut(usize) -> Result<Child>) -> Result<f64> {
    let mut kept: Vec<Child> = Vec::with_capacity(clones);
    let started = Instant::now();
    let outcome = (|| -> Result<()> {
        for n in 0..clones {
            kept.push(start(n)?);
        }
        Ok(())
    })();
    let per_s = kept.len() as f64 / started.elapsed().as_secs_f64();
    for mut child in kept {
        let _ = child.kill();
        let _ = child.wait();
    }
    outcome?;
    Ok(per_s)
}

/// Starts `clones` idle clones with `start`, all running at once, and reads each one's
/// private memory once they have settled. All are killed at the end.
fn private_per_clone(
    clones: usize,
    mut start: impl FnMut(usize) -> Result<Child>,
) -> Result<Series> {
    let mut running: Vec<Child> = Vec::with_capacity(clones);
    let mut private = Series::default();
    let outcome = (|| -> Result<()> {
        for n in 0..clones {
            running.push(start(n)?);
        }
        // Let every VMM settle (threads started, the guest back in its halt).
        std::thread::sleep(Duration::from_millis(300));
        for child in &running {
            private.push(private_kib(child.id()).context("smaps_rollup")? as f64 / 1024.0);
        }
        Ok(())
    })();
    for mut child in running {
        let _ = child.kill();
        let _ = child.wait();
    }
    outcome?;
    Ok(private)
}

mod firecracker;

fn vmm() -> Command {
    Command::new(bin_dir().join("berth-vmm"))
}

/// Boots `kernel`, waits for its first line, snapshots it and stops it; (state, memory).
fn snapshot(dir: &Path, name: &str, kernel: &Path) -> Result<(PathBuf, PathBuf)> {
    let control = dir.join(format!("{name}.sock"));
    let console = dir.join(format!("{name}.log"));
    let mut child = vmm()
        .arg("boot")
        .args(TEST_VM)
        .arg("--kernel")
        .arg(kernel)
        .arg("--console")
        .arg(&console)
        .arg("--control")
        .arg(&control)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?;
    wait_for(&control)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains(test_guest::GREETING)
    {
        ensure!(Instant::now() < deadline, "{name}: the guest wrote nothing");
        std::thread::sleep(Duration::from_millis(5));
    }
    let files = (
        dir.join(format!("{name}.state")),
        dir.join(format!("{name}.mem")),
    );
    let ask = |r: Request| request(&control, &r, Duration::from_secs(30));
    ask(Request::Snapshot {
        state: files.0.clone(),
        memory: files.1.clone(),
    })
    .with_context(|| format!("{name}: snapshot"))?;
    ask(Request::Shutdown)?;
    let status = child.wait()?;
    ensure!(status.success(), "{name}: the VMM ended with {status}");
    Ok(files)
}

fn restore_cmd(snapshot: &(PathBuf, PathBuf)) -> Command {
    let mut cmd = vmm();
    cmd.arg("restore")
        .args(TEST_VM)
        .arg("--state")
        .arg(&snapshot.0)
        .arg("--memory")
        .arg(&snapshot.1)
        .stdin(Stdio::null());
    cmd
}

/// Starts `cmd`, runs `then` (a restore that needs a request after the process starts), and
/// returns, with the running child, the time from the start to its first byte on stdout
/// (the child's stdout stays open: a guest that goes on writing blocks, idle, once the pipe
/// is full).
fn start_until_output(
    mut cmd: Command,
    then: impl FnOnce() -> Result<()>,
) -> Result<(Duration, Child)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if let Err(e) = then() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let mut byte = [0u8; 1];
    let got = child
        .stdout
        .as_mut()
        .context("stdout is piped")?
        .read(&mut byte);
    let elapsed = start.elapsed();
    match got {
        Ok(1) => Ok((elapsed, child)),
        _ => {
            let _ = child.kill();
            let status = child.wait()?;
            bail!("{cmd:?} wrote nothing ({status})")
        }
    }
}

/// Starts `cmd`, returns the time to its first byte on stdout, then kills and reaps it.
fn first_output(cmd: Command) -> Result<Duration> {
    let (elapsed, mut child) = start_until_output(cmd, || Ok(()))?;
    let _ = child.kill();
    child.wait()?;
    Ok(elapsed)
}

pub(crate) fn wait_for(path: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        ensure!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}
