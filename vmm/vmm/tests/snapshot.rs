//! Snapshot and restore on this host's KVM with berth's counting PVH test guest (kvm_pvm
//! runs it): the guest counts, is paused (every vCPU parked and acknowledged), snapshotted
//! (state file and memory file), stopped; a new VM built from the snapshot goes on counting
//! from where the first stopped, never from 1, with its memory mapped privately from the
//! file (the file does not change).

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm::{ConsoleOutput, ExitReason, VmConfig, Vmm};

fn kvm() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm: {e}"))
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(kernel: &Path, console: &Path, vcpus: u8) -> VmConfig {
    VmConfig {
        vcpus,
        mem_mib: 16,
        kernel: kernel.to_path_buf(),
        initrd: None,
        extra_cmdline: String::new(),
        console: ConsoleOutput::File(console.to_path_buf()),
        vsock: None,
        rng: false,
        balloon: false,
        net: None,
        shares: Vec::new(),
    }
}

/// The counts the counting guest wrote to `console`, in order.
fn counts(console: &Path) -> Vec<u32> {
    test_guest::counts(&std::fs::read_to_string(console).unwrap_or_default())
}

/// Runs `vmm` on its own thread; returns its handle and the thread.
fn start(
    vmm: Vmm,
) -> (
    vmm::VmHandle,
    std::sync::Arc<vmm::exit::ExitSignal>,
    std::thread::JoinHandle<Result<ExitReason, vmm::VmmError>>,
) {
    let handle = vmm.handle();
    let exit = vmm.exit_signal();
    (handle, exit, std::thread::spawn(move || vmm.run()))
}

#[test]
fn a_restored_vm_goes_on_counting_where_it_was_paused() {
    if !test_gate::require(kvm(), "snapshot and restore on KVM") {
        return;
    }
    // With two vCPUs, the second waits for a start-up IPI it never gets: both park, both
    // are saved and restored.
    for vcpus in [1, 2] {
        snapshot_and_restore(vcpus);
    }
}

fn snapshot_and_restore(vcpus: u8) {
    let config = |kernel: &Path, console: &Path| config(kernel, console, vcpus);
    let dir =
        Dir(std::env::temp_dir().join(format!("berth-snapshot-{}-{vcpus}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let kernel = test_guest::write_to(&dir.0, "count.elf", test_guest::COUNT).unwrap();
    let (first_console, second_console) = (dir.0.join("first.log"), dir.0.join("second.log"));
    let (state, memory) = (dir.0.join("vm.state"), dir.0.join("vm.mem"));

    let (handle, exit, thread) = start(Vmm::new(config(&kernel, &first_console)).unwrap());
    test_guest::wait_for_counts(&first_console, 5, "the first VM");
    // Paused: nothing more is written.
    handle.pause().unwrap();
    let paused = counts(&first_console);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        counts(&first_console),
        paused,
        "a paused VM went on counting"
    );
    handle.resume();
    test_guest::wait_for_counts(
        &first_console,
        paused.len() + 3,
        "the first VM after resume",
    );
    handle.snapshot(&state, &memory).unwrap();
    let at_snapshot = *counts(&first_console).last().unwrap();
    exit.raise(ExitReason::HostSignal(15));
    thread.join().unwrap().unwrap();
    let memory_before = std::fs::read(&memory).unwrap();

    let (_handle, exit, thread) =
        start(Vmm::restore(config(&kernel, &second_console), &state, &memory).unwrap());
    let restored = test_guest::wait_for_counts(&second_console, 5, "the restored VM");
    exit.raise(ExitReason::HostSignal(15));
    thread.join().unwrap().unwrap();
    // The banner is not written again: the guest did not boot, it went on.
    let text = std::fs::read_to_string(&second_console).unwrap();
    assert!(
        !text.contains("hello from the guest"),
        "the restored VM booted again: {text}"
    );
    assert_eq!(
        restored[0],
        at_snapshot + 1,
        "the restored VM's first count follows the last before the snapshot"
    );
    assert!(
        restored.windows(2).all(|w| w[1] == w[0] + 1),
        "{restored:?}"
    );
    assert_eq!(
        std::fs::read(&memory).unwrap(),
        memory_before,
        "the restored VM wrote to the memory file (it must map it privately)"
    );

    // Damaged or mismatched snapshots are refused by name.
    let err = |r: Result<Vmm, vmm::VmmError>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let mut bad = config(&kernel, &second_console);
    bad.mem_mib = 32;
    assert!(err(Vmm::restore(bad, &state, &memory)).contains("16 MiB"));
    let truncated = dir.0.join("truncated.state");
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert!(err(Vmm::restore(
        config(&kernel, &second_console),
        &truncated,
        &memory
    ))
    .contains("truncated"));
    let short = dir.0.join("short.mem");
    std::fs::write(&short, &memory_before[..4096]).unwrap();
    assert!(err(Vmm::restore(
        config(&kernel, &second_console),
        &state,
        &short
    ))
    .contains("has 4096 bytes"));
}
