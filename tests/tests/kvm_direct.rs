//! The VMM on this host's own KVM, with berth's test guests (which even kvm_pvm runs):
//! boot, console, i8042 exit, vCPU creation, signals, and bad input.

use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::*;

fn vmm() -> Command {
    Command::new(bin("berth-vmm"))
}

fn guest(scratch: &Scratch, name: &str, image: &[u8]) -> std::path::PathBuf {
    test_guest::write_to(&scratch.0, name, image).expect("can write a test guest")
}

#[test]
fn boots_to_the_serial_line_and_exits_through_the_i8042() {
    if !require(kvm_available(), "/dev/kvm") {
        return;
    }
    let s = Scratch::new("hello");
    let kernel = guest(&s, "hello.elf", test_guest::HELLO);
    let mut cmd = vmm();
    cmd.args(["boot", "--mem", "16", "--kernel"]).arg(&kernel);
    let out = run(cmd, b"", Duration::from_secs(20));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains(test_guest::GREETING), "{out:?}");
    assert!(out.elapsed < Duration::from_secs(10));
}

#[test]
fn console_goes_to_the_log_file() {
    if !require(kvm_available(), "/dev/kvm") {
        return;
    }
    let s = Scratch::new("consolelog");
    let kernel = guest(&s, "hello.elf", test_guest::HELLO);
    let log = s.path("console.log");
    let mut cmd = vmm();
    cmd.args(["boot", "--mem", "16", "--kernel"])
        .arg(&kernel)
        .arg("--console")
        .arg(&log);
    let out = run(cmd, b"", Duration::from_secs(20));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(!out.stdout.contains(test_guest::GREETING));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(test_guest::GREETING), "log: {text:?}");
}

#[test]
fn creates_every_vcpu_and_stops_cleanly_on_sigterm() {
    if !require(kvm_available(), "/dev/kvm") {
        return;
    }
    let s = Scratch::new("idle");
    let kernel = guest(&s, "idle.elf", test_guest::IDLE);
    let uds = s.path("vsock.sock");
    let mut child = vmm()
        .args(["boot", "--mem", "16", "--cpus", "2", "--kernel"])
        .arg(&kernel)
        .arg("--vsock-uds")
        .arg(&uds)
        .arg("--console")
        .arg(s.path("console.log"))
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut names = vec![];
    while Instant::now() < deadline {
        names = thread_names(child.id());
        if names.iter().any(|n| n == "vcpu1") && uds.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(names.iter().any(|n| n == "vcpu0"), "threads: {names:?}");
    assert!(names.iter().any(|n| n == "vcpu1"), "threads: {names:?}");
    assert!(!names.iter().any(|n| n == "vcpu2"), "threads: {names:?}");
    assert!(uds.exists(), "the vsock socket exists while the VM runs");
    // SAFETY: sending SIGTERM to our own child, whose pid we hold.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status =
        wait_timeout(&mut child, Duration::from_secs(10)).expect("the VMM stops on SIGTERM");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(!uds.exists(), "the vsock socket is removed at exit");
}

#[test]
fn a_guest_panic_is_reported_with_the_console_log() {
    if !require(kvm_available(), "/dev/kvm") {
        return;
    }
    let s = Scratch::new("panic");
    let kernel = guest(&s, "panic.elf", test_guest::PANIC);
    let log = s.path("console.log");
    let mut cmd = vmm();
    cmd.args(["boot", "--mem", "16", "--kernel"])
        .arg(&kernel)
        .arg("--console")
        .arg(&log);
    let out = run(cmd, b"", Duration::from_secs(20));
    assert_eq!(out.code(), 3, "{out:?}");
    assert!(out.stderr.contains("panicked"), "{out:?}");
    assert!(out.stderr.contains(&log.display().to_string()), "{out:?}");
}

#[test]
fn bad_kernels_are_clear_errors_not_hangs() {
    if !require(kvm_available(), "/dev/kvm") {
        return;
    }
    let s = Scratch::new("badkernel");
    let garbage = s.path("garbage");
    std::fs::write(&garbage, vec![0x42u8; 4096]).unwrap();
    let truncated = s.path("truncated");
    std::fs::write(&truncated, &test_guest::HELLO[..100]).unwrap();
    let cases: [(&std::path::Path, &str); 4] = [
        (
            std::path::Path::new("/nonexistent/vmlinux"),
            "cannot open the kernel",
        ),
        (&garbage, "is not a bootable ELF kernel"),
        (&truncated, "is not a bootable ELF kernel"),
        // An ELF without a PVH note (the test binary's own loader would never do).
        (std::path::Path::new("/bin/true"), "/bin/true"),
    ];
    for (kernel, expected) in cases {
        let mut cmd = vmm();
        cmd.args(["boot", "--mem", "16", "--kernel"]).arg(kernel);
        let out = run(cmd, b"", Duration::from_secs(20));
        assert_eq!(out.code(), 1, "{kernel:?}: {out:?}");
        assert!(out.stderr.contains(expected), "{kernel:?}: {out:?}");
    }
    let mut cmd = vmm();
    cmd.args([
        "boot",
        "--mem",
        "16",
        "--cpus",
        "0",
        "--kernel",
        "/bin/true",
    ]);
    let out = run(cmd, b"", Duration::from_secs(20));
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("vCPUs"), "{out:?}");
    let mut cmd = vmm();
    cmd.args(["boot", "--frobnicate"]);
    assert_eq!(run(cmd, b"", Duration::from_secs(20)).code(), 2);
}

/// On a kvm_pvm host the stock guest kernel must end with a message that names the exit and
/// says what to do; on a hardware-virtualised host the same kernel boots (and, with no
/// initramfs, panics for lack of a root filesystem, which must be reported as a panic).
#[test]
fn the_guest_kernel_on_this_hosts_kvm_ends_with_a_clear_verdict() {
    if !require(kvm_available(), "/dev/kvm") || !require(guest_kernel(), "the guest kernel") {
        return;
    }
    let s = Scratch::new("stock");
    let log = s.path("console.log");
    let mut cmd = vmm();
    cmd.args(["boot", "--mem", "256", "--kernel"])
        .arg(guest_dir().join("vmlinux"))
        .arg("--console")
        .arg(&log);
    let out = run(cmd, b"", Duration::from_secs(180));
    if linux_guests_supported().is_ok() {
        assert_eq!(out.code(), 3, "no root filesystem: a panic; {out:?}");
    } else {
        assert_eq!(out.code(), 4, "{out:?}");
        assert!(out.stderr.contains("KVM_EXIT_INTERNAL_ERROR"), "{out:?}");
        assert!(out.stderr.contains("kvm_pvm"), "{out:?}");
        assert!(out.stderr.contains("tests/vmhost/run"), "{out:?}");
    }
}

#[test]
fn check_agrees_with_the_host() {
    let out = run(
        {
            let mut c = vmm();
            c.arg("check");
            c
        },
        b"",
        Duration::from_secs(10),
    );
    // One line whatever the verdict.
    assert_eq!(out.stdout.trim().lines().count(), 1, "one line: {out:?}");
    let module = |name: &str| std::path::Path::new("/sys/module").join(name).exists();
    if module("kvm_pvm") {
        assert_eq!(out.code(), 1, "{out:?}");
        assert!(
            out.stdout.starts_with("no: ") && out.stdout.contains("kvm_pvm"),
            "{out:?}"
        );
    } else if kvm_available().is_err() {
        assert_eq!(out.code(), 1, "{out:?}");
        assert!(out.stdout.starts_with("no: "), "{out:?}");
    } else {
        // Hardware-assisted KVM (the emulated virtualization host's, among others; a
        // module or built in): Linux guests run, and check says so.
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hardware = module("kvm_intel")
            || module("kvm_amd")
            || cpuinfo
                .split_whitespace()
                .any(|flag| flag == "vmx" || flag == "svm");
        assert!(
            hardware,
            "/dev/kvm opens without hardware virtualisation: {out:?}"
        );
        assert_eq!(out.code(), 0, "{out:?}");
        assert!(out.stdout.starts_with("ok: "), "{out:?}");
    }
}

/// The counts the counting guest wrote to `console`, in order.
fn counts(console: &std::path::Path) -> Vec<u32> {
    test_guest::counts(&std::fs::read_to_string(console).unwrap_or_default())
}

fn wait_socket(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "no control socket {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_snapshot_restored_in_a_fresh_process_goes_on_counting() {
    use vmm_launcher::control::{request, Request};
    if !require(kvm_available(), "/dev/kvm") {
        return;
    }
    let s = Scratch::new("snapshot");
    let kernel = guest(&s, "count.elf", test_guest::COUNT);
    let (first_log, second_log) = (s.path("first.log"), s.path("second.log"));
    let (state, memory) = (s.path("vm.state"), s.path("vm.mem"));
    let control = s.path("control.sock");
    let ctl = |r: Request| request(&control, &r, Duration::from_secs(10));

    let mut first = vmm()
        .args([
            "boot",
            "--mem",
            "16",
            "--no-rng",
            "--no-balloon",
            "--kernel",
        ])
        .arg(&kernel)
        .arg("--console")
        .arg(&first_log)
        .arg("--control")
        .arg(&control)
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    wait_socket(&control);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&control).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the control socket is for its owner alone: {mode:o}"
        );
    }
    test_guest::wait_for_counts(&first_log, 5, "the booted VM");
    ctl(Request::Pause).unwrap();
    let paused = counts(&first_log);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counts(&first_log), paused, "a paused VM went on counting");
    ctl(Request::Resume).unwrap();
    test_guest::wait_for_counts(&first_log, paused.len() + 3, "the resumed VM");
    // Metrics: the counting guest writes its lines to the serial port, an exit each byte.
    let metrics = vmm_launcher::control::metrics(&control, Duration::from_secs(10)).unwrap();
    let io = metrics["vcpus"][0]["io_exits"].as_u64().unwrap_or(0);
    assert!(io >= 8 * paused.len() as u64, "{metrics}");
    assert_eq!(metrics["virtio"], serde_json::json!([]), "{metrics}");
    ctl(Request::Snapshot {
        state: state.clone(),
        memory: memory.clone(),
    })
    .unwrap();
    let last = *counts(&first_log).last().unwrap();
    // Hostile or confused clients get an error reply; the VMM carries on.
    {
        use std::io::{Read, Write};
        let mut c = std::os::unix::net::UnixStream::connect(&control).unwrap();
        c.write_all(b"{\"version\":7,\"request\":\"pause\"}\n")
            .unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert!(reply.contains("version 7 is not spoken here"), "{reply}");
    }
    ctl(Request::Shutdown).unwrap();
    let status = wait_timeout(&mut first, Duration::from_secs(10)).expect("the VMM stopped");
    assert_eq!(
        status.code(),
        Some(0),
        "a requested shutdown is an orderly exit"
    );
    assert!(!control.exists(), "the control socket is removed at exit");

    let mut second = vmm()
        .args([
            "restore",
            "--mem",
            "16",
            "--no-rng",
            "--no-balloon",
            "--state",
        ])
        .arg(&state)
        .arg("--memory")
        .arg(&memory)
        .arg("--console")
        .arg(&second_log)
        .arg("--control")
        .arg(&control)
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    wait_socket(&control);
    let restored = test_guest::wait_for_counts(&second_log, 5, "the restored VM");
    ctl(Request::Shutdown).unwrap();
    let status = wait_timeout(&mut second, Duration::from_secs(10)).expect("the VMM stopped");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        restored[0],
        last + 1,
        "the restored VM goes on from {last}: {restored:?}"
    );
    assert!(!std::fs::read_to_string(&second_log)
        .unwrap()
        .contains(test_guest::GREETING));
    // A VM with virtio devices (virtio-rng, virtio-balloon and a virtio-net card without a
    // tap, as a template's, which the test guest leaves alone) is snapshotted with its
    // layout; a restore must give it the same devices: one without one of them, or with one
    // more, is refused by name.
    let mut third = vmm()
        .args([
            "boot",
            "--mem",
            "16",
            "--net",
            "mac=02:00:00:00:00:01",
            "--kernel",
        ])
        .arg(&kernel)
        .arg("--console")
        .arg(s.path("third.log"))
        .arg("--control")
        .arg(&control)
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    wait_socket(&control);
    test_guest::wait_for_counts(&s.path("third.log"), 2, "the VM with virtio-rng");
    let metrics = vmm_launcher::control::metrics(&control, Duration::from_secs(10)).unwrap();
    assert_eq!(
        metrics["virtio"][0]["device"],
        serde_json::json!({"kind": {"type": "rng"}, "mmio_base": 0xd000_0000u64, "irq": 5}),
        "{metrics}"
    );
    assert_eq!(
        metrics["virtio"][1]["device"],
        serde_json::json!({"kind": {"type": "balloon"}, "mmio_base": 0xd000_1000u64, "irq": 6}),
        "{metrics}"
    );
    assert_eq!(
        metrics["virtio"][1]["counters"]["reported_bytes"], 0,
        "{metrics}"
    );
    // The net device after the balloon: the devices before it kept their places.
    assert_eq!(
        metrics["virtio"][2]["device"],
        serde_json::json!({"kind": {"type": "net"}, "mmio_base": 0xd000_2000u64, "irq": 7}),
        "{metrics}"
    );
    assert_eq!(
        metrics["virtio"][2]["counters"]["tx_spoofed"], 0,
        "{metrics}"
    );
    let (rng_state, rng_memory) = (s.path("rng.state"), s.path("rng.mem"));
    ctl(Request::Snapshot {
        state: rng_state.clone(),
        memory: rng_memory.clone(),
    })
    .unwrap();
    ctl(Request::Shutdown).unwrap();
    assert_eq!(
        wait_timeout(&mut third, Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
    let restore = |extra: &[&str]| {
        let mut cmd = vmm();
        cmd.args(["restore", "--mem", "16", "--state"])
            .arg(&rng_state)
            .arg("--memory")
            .arg(&rng_memory)
            .args(extra);
        run(cmd, b"", Duration::from_secs(20))
    };
    // The clone's card has its own MAC.
    let clone_net = ["--net", "mac=02:00:00:00:00:02"];
    let out = restore(&[]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "the snapshot has virtio-net at 0xd0002000 on IRQ 7, which this VM is not given"
        ),
        "{}",
        out.stderr
    );
    let out = restore(&["--no-rng"]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "the snapshot has virtio-rng at 0xd0000000 on IRQ 5, which this VM is not given"
        ),
        "{}",
        out.stderr
    );
    let out = restore(&["--no-balloon"]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "the snapshot has virtio-balloon at 0xd0001000 on IRQ 6, which this VM is not given"
        ),
        "{}",
        out.stderr
    );
    let uds = s.path("v.sock");
    let out = restore(&[&clone_net[..], &["--vsock-uds", uds.to_str().unwrap()]].concat());
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr
            .contains("this VM is given virtio-vsock, which the snapshot does not have"),
        "{}",
        out.stderr
    );
    let fourth_log = s.path("fourth.log");
    let mut fourth = vmm()
        .args(["restore", "--mem", "16", "--state"])
        .arg(&rng_state)
        .arg("--memory")
        .arg(&rng_memory)
        .args(clone_net)
        .arg("--console")
        .arg(&fourth_log)
        .arg("--control")
        .arg(&control)
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    wait_socket(&control);
    test_guest::wait_for_counts(&fourth_log, 3, "the restored VM with virtio-rng");
    ctl(Request::Shutdown).unwrap();
    assert_eq!(
        wait_timeout(&mut fourth, Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
    // A damaged state file: a clear error, exit 1.
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &bytes[..bytes.len() - 3]).unwrap();
    let mut cmd = vmm();
    cmd.args(["restore", "--mem", "16", "--state"])
        .arg(&state)
        .arg("--memory")
        .arg(&memory);
    let out = run(cmd, b"", Duration::from_secs(20));
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("truncated"), "{}", out.stderr);
}

#[test]
fn bad_net_options_are_clear_errors_at_start() {
    if !require(kvm_available(), "/dev/kvm") {
        return;
    }
    let s = Scratch::new("badnet");
    let kernel = guest(&s, "hello.elf", test_guest::HELLO);
    let boot = |net: &str, inherit: Option<&std::fs::File>| {
        let mut cmd = vmm();
        cmd.args(["boot", "--mem", "16", "--net", net, "--kernel"])
            .arg(&kernel);
        if let Some(file) = inherit {
            vmm_launcher::inherit_fd(&mut cmd, std::os::fd::AsRawFd::as_raw_fd(file));
        }
        run(cmd, b"", Duration::from_secs(20))
    };
    for (net, says) in [
        ("mac=02:00:00:00:01", "is not a MAC address"),
        ("mac=01:00:5e:00:00:01", "multicast"),
        ("tap-fd=3", "mac=MAC is required"),
        (
            "mac=02:00:00:00:00:01,tap-fd=987654",
            "tap-fd=987654 is not an open descriptor",
        ),
    ] {
        let out = boot(net, None);
        assert_eq!(out.code(), 2, "{net}: {out:?}");
        assert!(out.stderr.contains(says), "{net}: {}", out.stderr);
    }
    // An inherited descriptor that is no tap: the VM is not built, and the error says why.
    let not_a_tap = std::fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&not_a_tap);
    let out = boot(
        &format!("mac=02:00:00:00:00:01,tap-fd={fd}"),
        Some(&not_a_tap),
    );
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("descriptor {fd} is not a tap device")),
        "{}",
        out.stderr
    );
    // A card without a tap boots (a template's).
    let out = boot("mac=02:00:00:00:00:01", None);
    assert_eq!(out.code(), 0, "{out:?}");
}
