//! Real Linux microVMs: berth's kernel, VMM and agent running commands through
//! `berth-vmm run`. They need a KVM that runs Linux guests: on hosts without one, `make
//! test` runs this binary inside the emulated virtualization host (tests/vmhost/run).

use std::process::Command;
use std::time::Duration;

use berth_tests::*;

const TIMEOUT: Duration = Duration::from_secs(300);

fn ready() -> bool {
    require(linux_guests_supported(), "a KVM that runs Linux guests")
        && require(guest_artifacts(), "the guest kernel and initramfs")
}

/// `berth-vmm run` with its temporary files in `tmp`.
fn run_cmd(tmp: &Scratch, opts: &[&str], command: &[&str]) -> Command {
    let mut cmd = Command::new(bin("berth-vmm"));
    cmd.arg("run")
        .args(["--boot-retries", &boot_retries().to_string()])
        .args(opts)
        .arg("--")
        .args(command)
        .env("TMPDIR", &tmp.0);
    cmd
}

fn vm(opts: &[&str], command: &[&str], input: &[u8]) -> Finished {
    let tmp = Scratch::new("microvm");
    let out = run(run_cmd(&tmp, opts, command), input, TIMEOUT);
    note_run_retries(&out.stderr);
    if !out.stderr.is_empty() {
        // A failed run keeps its directory: say why before the leftovers check does.
        eprintln!("berth-vmm run's stderr: {}", out.stderr);
    }
    assert_no_leftovers(&tmp);
    out
}

/// Nothing of a run outlives it: no process mentions its directory, no file is left.
fn assert_no_leftovers(tmp: &Scratch) {
    let needle = tmp.0.display().to_string();
    let mut left = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            left.push(entry.file_name());
        }
    }
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let files: Vec<_> = std::fs::read_dir(&tmp.0)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(files.is_empty(), "files left behind: {files:?}");
}

#[test]
fn echo_reaches_stdout() {
    if !ready() {
        return;
    }
    let out = vm(&[], &["echo", "hello", "from", "a", "microVM"], b"");
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "hello from a microVM\n");
}

#[test]
fn exit_codes_pass_through() {
    if !ready() {
        return;
    }
    for (script, code) in [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 137)] {
        let out = vm(&[], &["sh", "-c", script], b"");
        assert_eq!(out.code(), code, "{script}: {out:?}");
    }
}

#[test]
fn stdout_and_stderr_stay_apart() {
    if !ready() {
        return;
    }
    let out = vm(
        &[],
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; echo out2; echo err2 >&2",
        ],
        b"",
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "out\nout2\n");
    assert_eq!(out.stderr, "err\nerr2\n");
}

#[test]
fn stdin_is_piped_through_and_its_end_is_seen() {
    if !ready() {
        return;
    }
    let out = vm(&[], &["cat"], b"piped into the guest\n");
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "piped into the guest\n");
    // Megabytes each way: credit-based flow control across the vsock device.
    let input: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = vm(
        &[],
        &["sh", "-c", "wc -c; head -c 2500000 /dev/zero | tr '\\0' x"],
        &input,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("3000000\n"),
        "{:?}",
        &out.stdout[..20.min(out.stdout.len())]
    );
    assert_eq!(out.stdout.len(), "3000000\n".len() + 2_500_000);
}

#[test]
fn nproc_and_meminfo_show_the_vm_size() {
    if !ready() {
        return;
    }
    let out = vm(
        &["--cpus", "2", "--mem", "256"],
        &["sh", "-c", "nproc; grep MemTotal /proc/meminfo"],
        b"",
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("2"));
    let kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal: {out:?}"));
    // The kernel keeps some for itself; the rest of the 256 MiB is the guest's.
    assert!(
        (200 * 1024..=256 * 1024).contains(&kib),
        "MemTotal {kib} kB"
    );
}

#[test]
fn a_tty_is_a_tty() {
    if !ready() {
        return;
    }
    let script = "if test -t 0 && test -t 1; then echo tty; else echo notty; fi";
    let out = vm(&["-t"], &["sh", "-c", script], b"");
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout.trim_end(), "tty");
    let out = vm(&[], &["sh", "-c", script], b"");
    assert_eq!(out.stdout, "notty\n");
}

#[test]
fn zombies_left_by_the_workload_are_reaped() {
    if !ready() {
        return;
    }
    // The inner shell exits at once, orphaning its background child to PID 1 (the agent),
    // which must reap it when it exits.
    let script = "sh -c 'sleep 0.2 & exit 0'; sleep 2; \
                  grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l";
    let out = vm(&[], &["sh", "-c", script], b"");
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "0", "zombies remain: {out:?}");
}

#[test]
fn missing_and_unexecutable_commands_get_docker_codes() {
    if !ready() {
        return;
    }
    let out = vm(&[], &["/no/such/program"], b"");
    assert_eq!(out.code(), 127, "{out:?}");
    assert!(out.stderr.contains("not found"), "{out:?}");
    let out = vm(&[], &["/dev/null"], b"");
    assert_eq!(out.code(), 126, "{out:?}");
}

#[test]
fn a_guest_kernel_panic_fails_and_points_at_the_console_log() {
    if !ready() {
        return;
    }
    let tmp = Scratch::new("panic");
    // An initramfs with no init: the kernel panics ("No working init found").
    let empty = tmp.path("empty.cpio");
    std::fs::write(&empty, b"").unwrap();
    let runs = Scratch::new("panicrun");
    let mut cmd = run_cmd(&runs, &["--initrd", empty.to_str().unwrap()], &["true"]);
    cmd.env("TMPDIR", &runs.0);
    let out = run(cmd, b"", TIMEOUT);
    assert_ne!(out.code(), 0, "{out:?}");
    assert!(out.stderr.contains("panicked"), "{out:?}");
    let log = out
        .stderr
        .lines()
        .find_map(|l| l.split("console log is ").nth(1))
        .unwrap_or_else(|| panic!("no console log named: {out:?}"));
    let text = std::fs::read_to_string(log.trim()).unwrap();
    assert!(text.contains("Kernel panic"), "console log: {text}");
}

#[test]
fn a_missing_or_corrupt_kernel_is_a_clear_error() {
    if !ready() {
        return;
    }
    let tmp = Scratch::new("badkernel");
    let out = run(
        run_cmd(&tmp, &["--kernel", "/no/such/vmlinux"], &["true"]),
        b"",
        TIMEOUT,
    );
    assert_eq!(out.code(), 125, "{out:?}");
    assert!(out.stderr.contains("does not exist"), "{out:?}");
    let corrupt = tmp.path("vmlinux");
    std::fs::write(&corrupt, vec![0x7fu8; 100_000]).unwrap();
    let out = run(
        run_cmd(&tmp, &["--kernel", corrupt.to_str().unwrap()], &["true"]),
        b"",
        TIMEOUT,
    );
    assert_eq!(out.code(), 125, "{out:?}");
    assert!(out.stderr.contains("not a bootable ELF kernel"), "{out:?}");
    assert!(out.elapsed < Duration::from_secs(60), "{out:?}");
}

/// A triple fault that no reset request came before is a crash, never a clean shutdown
/// (berth's tiny test guest; it needs hardware-style KVM: kvm_pvm cannot run its `lidt`).
#[test]
fn a_triple_fault_is_a_guest_crash() {
    if !ready() {
        return;
    }
    let s = Scratch::new("triple");
    let kernel = test_guest::write_to(&s.0, "triple.elf", test_guest::TRIPLE).unwrap();
    let log = s.path("console.log");
    let mut cmd = Command::new(bin("berth-vmm"));
    cmd.args(["boot", "--mem", "16", "--kernel"])
        .arg(&kernel)
        .arg("--console")
        .arg(&log);
    let out = run(cmd, b"", Duration::from_secs(60));
    assert_eq!(out.code(), 5, "{out:?}");
    assert!(
        out.stderr.contains("guest crashed: triple fault on vCPU 0"),
        "{out:?}"
    );
    assert!(out.stderr.contains(&log.display().to_string()), "{out:?}");
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(console.contains(test_guest::GREETING), "{console:?}");
}

/// A guest that resets itself while the command runs is a failure named as such, with the
/// console kept, never a clean end (its VMM exits 0: the guest's reset looks orderly).
#[test]
fn a_reset_nobody_asked_for_is_a_failure() {
    if !ready() {
        return;
    }
    let tmp = Scratch::new("reset");
    let out = run(
        run_cmd(&tmp, &[], &["sh", "-c", "reboot -f; sleep 100"]),
        b"",
        TIMEOUT,
    );
    assert_eq!(out.code(), 125, "{out:?}");
    assert!(
        out.stderr
            .contains("the guest reset itself while the command ran (nobody asked it to)"),
        "{out:?}"
    );
    assert!(out.stderr.contains("the guest console log is"), "{out:?}");
}

/// A guest that stops answering (here: its whole VMM frozen with SIGSTOP) is found by
/// `berth-vmm run`'s watchdog, killed and reported as such, with its devices' state.
#[test]
fn a_guest_that_stops_answering_is_named() {
    if !ready() {
        return;
    }
    let tmp = Scratch::new("frozen");
    let mut cmd = run_cmd(
        &tmp,
        &["--watchdog", "10"],
        &["sh", "-c", "echo started; sleep 600"],
    );
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"started\n");
    // The VMM is `berth-vmm boot` with this run's directory (under TMPDIR) in its arguments.
    let needle = tmp.0.display().to_string();
    let vmm = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains(&needle) && cmdline.contains("\0boot\0")
        })
        .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .expect("the VMM process");
    // SAFETY: kill(2) on a pid just read from /proc; SIGSTOP only stops it.
    unsafe { libc::kill(vmm, libc::SIGSTOP) };
    let status = wait_timeout(&mut child, Duration::from_secs(120)).expect("the watchdog ends it");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("the guest stopped answering: its agent did not answer for 10 s"),
        "{stderr}"
    );
    assert!(stderr.contains("the guest console log is"), "{stderr}");
}

/// A template is built once (a boot until the agent is up, then a snapshot); each run
/// after is a clone restored from it in a fresh VMM, with its own share behind the same
/// virtio-fs device, its own vsock socket, and the agent of the template answering.
#[test]
fn clones_of_a_template_each_serve_their_own_share() {
    if !ready() {
        return;
    }
    let s = Scratch::new("template");
    let template = s.path("template");
    let template_arg = template.to_str().unwrap().to_string();
    let mut dirs = vec![];
    for i in 0..3 {
        let dir = s.path(&format!("share-{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("id"), format!("clone {i}\n")).unwrap();
        dirs.push(dir);
    }
    let script = "mount -t virtiofs data /mnt && cat /mnt/id && echo from-the-guest > /mnt/back \
                  && umount /mnt && cat /proc/uptime && date +%s \
                  && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' && echo \
                  && cat /proc/sys/kernel/random/uuid";
    let mut uptimes = vec![];
    let mut random = vec![];
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    for (i, dir) in dirs.iter().enumerate() {
        if i == 1 {
            // The template's clock stopped when it was snapshotted: a clone that kept it
            // would be this far behind.
            std::thread::sleep(Duration::from_secs(3));
        }
        let share = format!("data={}", dir.display());
        let before = unix_now();
        let out = vm(
            &["--template", &template_arg, "--fs", &share],
            &["sh", "-c", script],
            b"",
        );
        let after = unix_now();
        assert_eq!(out.code(), 0, "clone {i}: {out:?}");
        let mut lines = out.stdout.lines();
        assert_eq!(lines.next(), Some(format!("clone {i}").as_str()), "{out:?}");
        uptimes.push(lines.next().unwrap_or_default().to_string());
        let date: u64 = lines.next().and_then(|d| d.parse().ok()).unwrap_or(0);
        assert!(
            before.saturating_sub(1) <= date && date <= after + 1,
            "clone {i}: the guest's clock says {date}, the host's went from {before} to {after}"
        );
        let urandom = lines.next().unwrap_or_default().to_string();
        let uuid = lines.next().unwrap_or_default().to_string();
        assert_eq!((urandom.len(), uuid.len()), (32, 36), "{out:?}");
        random.push(urandom);
        random.push(uuid);
        assert_eq!(
            std::fs::read_to_string(dir.join("back")).unwrap(),
            "from-the-guest\n"
        );
        if i == 0 {
            // Built by the first run, and kept.
            assert!(template.join("vm.state").is_file());
            assert!(template.join("vm.mem").is_file());
        }
    }
    // No two clones of the template share random numbers.
    let mut distinct = random.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), random.len(), "{random:?}");
    // Every clone's guest started from the template's moment: the same kernel, booted once.
    let booted_for = |u: &str| -> f64 {
        u.split(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(uptimes.iter().all(|u| booted_for(u) > 0.0), "{uptimes:?}");
    // A template of another device layout is refused by name, not booted around.
    let tmp = Scratch::new("refused");
    let out = run(
        run_cmd(&tmp, &["--template", &template_arg], &["true"]),
        b"",
        TIMEOUT,
    );
    assert_eq!(out.code(), 125, "{out:?}");
    assert!(
        out.stderr.contains("which this VM is not given"),
        "{}",
        out.stderr
    );
}

/// The anonymous memory of a process in MiB (its own pages, and the guest pages a VMM
/// wrote: a clone's copies of its template's pages count too).
fn anonymous_mib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// The VMM process of a `berth-vmm run` whose temporary files are in `tmp` (its arguments
/// name them; the run process's do not).
fn vmm_of(tmp: &Scratch) -> Option<u32> {
    let needle = tmp.0.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.contains(&needle) && cmdline.contains("berth-vmm")).then_some(pid)
    })
}

/// Memory the guest frees goes back to the host (virtio-balloon's free page reporting):
/// a guest fills 128 MiB of its memory, then frees it, and its VMM's memory falls by about
/// as much, cold booted and cloned from a template (whose memory is a private mapping of
/// the template's file).
#[test]
fn memory_the_guest_frees_goes_back_to_the_host() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    if !ready() {
        return;
    }
    let s = Scratch::new("balloon");
    let template = s.path("template");
    let script = "dd if=/dev/zero of=/fill bs=1M count=128 2>/dev/null && echo filled \
                  && read a && rm /fill && echo freed && read b && echo done";
    for (name, opts) in [
        ("cold boot", vec![]),
        ("clone", vec!["--template", template.to_str().unwrap()]),
    ] {
        let tmp = Scratch::new("balloon-run");
        let mut opts = opts.clone();
        opts.extend(["--mem", "384"]);
        let mut child = run_cmd(&tmp, &opts, &["sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut expect = |what: &str| {
            let line = lines.next().and_then(Result::ok);
            assert_eq!(line.as_deref(), Some(what), "{name}");
        };
        expect("filled");
        let vmm = vmm_of(&tmp).unwrap_or_else(|| panic!("{name}: no VMM process found"));
        let filled = anonymous_mib(vmm).unwrap();
        assert!(
            filled >= 128,
            "{name}: the VMM holds {filled} MiB once filled"
        );
        stdin.write_all(b"\n").unwrap();
        expect("freed");
        // Linux reports free blocks 2 s after they are freed, a batch at a time.
        let started = std::time::Instant::now();
        let mut now = filled;
        while started.elapsed() < Duration::from_secs(60) {
            now = anonymous_mib(vmm).unwrap();
            if now + 96 <= filled {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(
            now + 96 <= filled,
            "{name}: the VMM held {filled} MiB filled and {now} MiB {:?} after the guest freed 128 MiB",
            started.elapsed()
        );
        eprintln!(
            "{name}: {filled} MiB filled, {now} MiB {:?} after the guest freed 128 MiB",
            started.elapsed()
        );
        stdin.write_all(b"\n").unwrap();
        expect("done");
        drop(stdin);
        let status = wait_timeout(&mut child, TIMEOUT).expect("berth-vmm run ended");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        note_run_retries(&stderr);
        assert_eq!(status.code(), Some(0), "{name}: {stderr}");
        assert_no_leftovers(&tmp);
    }
}
