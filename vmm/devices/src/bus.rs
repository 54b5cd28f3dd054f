//! Address-range dispatch for port I/O and MMIO exits.
//!
//! A vCPU thread that takes an I/O or MMIO exit looks the address up here and calls the
//! device under its lock. Devices are shared with the event loop thread, which processes
//! their queues and backends, hence `Arc<Mutex<_>>`.

use std::sync::{Arc, Mutex};

/// A device reachable through guest port I/O or MMIO.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from the start of the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A new range overlaps an existing one.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    /// A range of length zero or one that wraps the address space.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Clone, Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.entries.iter().map(|e| (e.base, e.len)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Bus::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(at, Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Entry, u64)> {
        let idx = self.entries.partition_point(|e| e.base <= addr);
        let entry = self.entries.get(idx.checked_sub(1)?)?;
        let offset = addr - entry.base;
        (offset < entry.len).then_some((entry, offset))
    }

    /// Dispatches a read; returns false when no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((entry, offset)) = self.find(addr) else {
            return false;
        };
        lock(&entry.device).read(offset, data);
        true
    }

    /// Dispatches a write; returns false when no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((entry, offset)) = self.find(addr) else {
            return false;
        };
        lock(&entry.device).write(offset, data);
        true
    }
}

/// Locks a device even if a previous holder panicked: device state stays usable and a
/// panic has already been reported by then.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder {
        last_write: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlap() {
        let dev = Arc::new(Mutex::new(Recorder { last_write: vec![] }));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x3fc, 8),
            Err(BusError::Overlap {
                base: 0x3fc,
                len: 8
            })
        );
        assert_eq!(
            bus.insert(dev.clone(), u64::MAX, 2),
            Err(BusError::InvalidRange {
                base: u64::MAX,
                len: 2
            })
        );
        bus.insert(dev.clone(), 0x60, 5).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 2);
        assert!(bus.write(0x64, &[0xfe]));
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
        assert_eq!(dev.lock().unwrap().last_write, vec![(4, vec![0xfe])]);
    }
}
