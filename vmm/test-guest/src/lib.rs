//! Minimal PVH test guests for the VMM, assembled at build time from `asm/guest.S`.
//!
//! They exercise the VMM's real boot path (ELF + PVH note, 32-bit entry, serial, i8042) with
//! a guest small enough to run on any KVM, kvm_pvm included, so VMM tests and the VMM
//! benchmark run directly on the host. They are not Linux and say nothing about devices.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes one line to COM1, then resets through the i8042: a clean, immediate VMM exit.
pub const HELLO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hello.elf"));
/// Writes one line to COM1, then halts forever with interrupts off.
pub const IDLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/idle.elf"));
/// Writes a Linux-style "Kernel panic" line, then resets.
pub const PANIC: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/panic.elf"));
/// Writes to COM1 without end.
pub const FLOOD: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flood.elf"));
/// Writes one line, then triple-faults without asking for a reset: a guest crash.
pub const TRIPLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/triple.elf"));
/// Counts forever, a line per count in hex: the state a snapshot must carry across.
pub const COUNT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/count.elf"));

/// The counts a [`COUNT`] guest wrote to its console, in order.
pub fn counts(console: &str) -> Vec<u32> {
    console
        .lines()
        .filter_map(|l| u32::from_str_radix(l.trim(), 16).ok())
        .collect()
}

/// Waits up to 30 s until the [`COUNT`] guest's console log `log` holds `n` counts, and
/// returns them; panics naming `what` otherwise (for tests).
pub fn wait_for_counts(log: &Path, n: usize, what: &str) -> Vec<u32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let c = counts(&text);
        if c.len() >= n {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {} counts after 30 s: {text:?}",
            c.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The line HELLO and IDLE print.
pub const GREETING: &str = "berth-test-guest: hello from the guest";

/// Writes `image` to `dir/name` and returns the path, for tools that take a kernel path.
pub fn write_to(dir: &Path, name: &str, image: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path)?;
    file.write_all(image)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_are_elf64_with_a_pvh_note() {
        for image in [HELLO, IDLE, PANIC, FLOOD, TRIPLE] {
            assert_eq!(&image[..4], b"\x7fELF");
            assert_eq!(image[4], 2, "ELFCLASS64");
            // The note's name and type travel together: "Xen\0" preceded by type 18.
            let needle = [18u8, 0, 0, 0, b'X', b'e', b'n', 0];
            assert!(image.windows(needle.len()).any(|w| w == needle));
        }
    }
}
