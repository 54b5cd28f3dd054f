//! The 8250 UART at COM1, carrying the guest kernel's console.
//!
//! Output goes to a per-VM console log (or the VMM's stdout), line-buffered, through a byte
//! rate limit so a guest that writes without end cannot fill the host's disk. The sink also
//! watches for the kernel's panic line: a guest reset that follows a panic is reported as a
//! panic, not a clean shutdown.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;

use super::EventFdTrigger;
use crate::bus::BusDevice;

/// COM1's base port.
pub const COM1_BASE: u64 = 0x3f8;
/// Eight registers.
pub const COM1_LEN: u64 = 8;
/// COM1's ISA IRQ.
pub const COM1_IRQ: u32 = 4;

/// What the kernel prints when it panics.
const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
/// Longest line kept for panic detection; longer lines are still logged.
const MAX_LINE: usize = 512;

/// Byte budget of the console: a burst big enough for a verbose boot, then a steady rate.
#[derive(Clone, Copy, Debug)]
pub struct ConsoleLimit {
    /// Bytes that may be written at once.
    pub burst: u64,
    /// Bytes per second after the burst.
    pub per_second: u64,
}

impl Default for ConsoleLimit {
    fn default() -> Self {
        ConsoleLimit {
            burst: 2 << 20,
            per_second: 256 << 10,
        }
    }
}

/// Where the console goes, with the rate limit and panic watch in front of it.
pub struct ConsoleSink {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    pending: Vec<u8>,
    limit: ConsoleLimit,
    tokens: f64,
    last_refill: Option<Instant>,
    dropped: u64,
    panicked: Arc<AtomicBool>,
    first_output: Option<Arc<AtomicBool>>,
}

impl ConsoleSink {
    /// A sink writing to `out`.
    pub fn new(out: Box<dyn Write + Send>, limit: ConsoleLimit) -> Self {
        ConsoleSink {
            out,
            line: Vec::with_capacity(128),
            pending: Vec::with_capacity(256),
            limit,
            tokens: limit.burst as f64,
            last_refill: None,
            dropped: 0,
            panicked: Arc::new(AtomicBool::new(false)),
            first_output: None,
        }
    }

    /// Set once a line containing the kernel's panic marker has been seen.
    pub fn panic_flag(&self) -> Arc<AtomicBool> {
        self.panicked.clone()
    }

    fn refill(&mut self) {
        let now = Instant::now();
        if let Some(last) = self.last_refill {
            let gained =
                now.saturating_duration_since(last).as_secs_f64() * self.limit.per_second as f64;
            self.tokens = (self.tokens + gained).min(self.limit.burst as f64);
        }
        self.last_refill = Some(now);
    }

    fn watch(&mut self, byte: u8) {
        if byte == b'\n' {
            if self
                .line
                .windows(PANIC_MARKER.len())
                .any(|w| w == PANIC_MARKER)
            {
                self.panicked.store(true, Ordering::SeqCst);
            }
            self.line.clear();
        } else if self.line.len() < MAX_LINE {
            self.line.push(byte);
        }
    }

    fn emit_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.refill();
        let len = self.pending.len() as f64;
        if self.tokens >= len {
            self.tokens -= len;
            if self.dropped > 0 {
                writeln!(
                    self.out,
                    "[berth-vmm: {} console bytes dropped by the rate limit]",
                    self.dropped
                )?;
                self.dropped = 0;
            }
            self.out.write_all(&self.pending)?;
            self.out.flush()?;
            if let Some(flag) = &self.first_output {
                flag.store(true, Ordering::Relaxed);
            }
        } else {
            self.dropped += self.pending.len() as u64;
        }
        self.pending.clear();
        Ok(())
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &byte in buf {
            self.watch(byte);
            self.pending.push(byte);
            if byte == b'\n' || self.pending.len() >= 4096 {
                self.emit_pending()?;
            }
        }
        Ok(buf.len())
    }

    /// vm-superio flushes after every byte; honouring that would cost a syscall per byte,
    /// so output is written per line (or 4 KiB), and at exit through [`ConsoleSink::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ConsoleSink {
    /// Writes out a partial last line.
    pub fn finish(&mut self) -> io::Result<()> {
        self.emit_pending()
    }
}

/// The serial device's guest-visible state, for snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialDeviceState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialDeviceState {
    fn from(s: SerialState) -> Self {
        SerialDeviceState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialDeviceState> for SerialState {
    fn from(s: &SerialDeviceState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// Why a serial device cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("the serial state's receive buffer holds {0} bytes, more than its FIFO holds")]
    FullFifo(usize),
}

/// COM1 on the port I/O bus.
pub struct SerialDevice {
    inner: Serial<EventFdTrigger, NoEvents, ConsoleSink>,
}

impl SerialDevice {
    /// A UART whose interrupt is `irq` and whose output goes to `sink`.
    pub fn new(irq: EventFdTrigger, sink: ConsoleSink) -> Self {
        SerialDevice {
            inner: Serial::new(irq, sink),
        }
    }

    /// Writes out a partial last line (at VMM exit).
    pub fn flush(&mut self) {
        if let Err(e) = self.inner.writer_mut().finish() {
            log::warn!("serial: cannot flush the console: {e}");
        }
    }

    /// Lets `flag` be set when the console first writes something out.
    pub fn set_first_output_flag(&mut self, flag: Arc<AtomicBool>) {
        self.inner.writer_mut().first_output = Some(flag);
    }
}

impl snapshot::Persist for SerialDevice {
    type State = SerialDeviceState;
    /// The restored VM's interrupt line and console.
    type Resources = (EventFdTrigger, ConsoleSink);
    type Error = SerialError;

    fn save(&self) -> SerialDeviceState {
        self.inner.state().into()
    }

    fn restore(
        (irq, sink): (EventFdTrigger, ConsoleSink),
        state: &SerialDeviceState,
    ) -> Result<Self, SerialError> {
        let inner = Serial::from_state(&state.into(), irq, NoEvents, sink)
            .map_err(|_| SerialError::FullFifo(state.in_buffer.len()))?;
        Ok(SerialDevice { inner })
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.inner.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.inner.write(offset, value) {
                crate::warn_limited!("serial: write to register {offset} failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn device(limit: ConsoleLimit) -> (SerialDevice, Shared, Arc<AtomicBool>) {
        let out = Shared::default();
        let sink = ConsoleSink::new(Box::new(out.clone()), limit);
        let panicked = sink.panic_flag();
        let irq = EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        (SerialDevice::new(irq, sink), out, panicked)
    }

    fn type_text(dev: &mut SerialDevice, text: &[u8]) {
        for &b in text {
            dev.write(0, &[b]);
        }
    }

    #[test]
    fn state_survives_save_restore_save() {
        use snapshot::Persist;
        let (mut dev, _, _) = device(ConsoleLimit::default());
        // The guest's driver set things up: line control, divisor, scratch, interrupts.
        dev.write(3, &[0x80]); // DLAB on
        dev.write(0, &[0x0c]);
        dev.write(1, &[0x00]);
        dev.write(3, &[0x03]); // 8n1, DLAB off
        dev.write(1, &[0x01]); // receive interrupts
        dev.write(7, &[0x5a]);
        let saved = dev.save();
        assert_eq!(saved.scratch, 0x5a);
        assert_eq!(saved.baud_divisor_low, 0x0c);
        let out = Shared::default();
        let sink = ConsoleSink::new(Box::new(out.clone()), ConsoleLimit::default());
        let irq = EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut restored = SerialDevice::restore((irq, sink), &saved).unwrap();
        assert_eq!(restored.save(), saved);
        let mut scratch = [0u8];
        restored.read(7, &mut scratch);
        assert_eq!(scratch[0], 0x5a);
        // The restored device writes to the restored VM's console.
        type_text(&mut restored, b"after\n");
        assert_eq!(&out.0.lock().unwrap()[..], b"after\n");
        let too_full = SerialDeviceState {
            in_buffer: vec![0; 65],
            ..saved
        };
        let irq = EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let sink = ConsoleSink::new(Box::new(io::sink()), ConsoleLimit::default());
        assert!(SerialDevice::restore((irq, sink), &too_full).is_err());
    }

    #[test]
    fn lines_reach_the_sink_and_panics_are_noticed() {
        let (mut dev, out, panicked) = device(ConsoleLimit::default());
        type_text(&mut dev, b"hello\npartial");
        assert_eq!(&out.0.lock().unwrap()[..], b"hello\n");
        assert!(!panicked.load(Ordering::SeqCst));
        dev.flush();
        assert_eq!(&out.0.lock().unwrap()[..], b"hello\npartial");
        type_text(&mut dev, b"\n[ 1.0] Kernel panic - not syncing: VFS\n");
        assert!(panicked.load(Ordering::SeqCst));
    }

    #[test]
    fn a_flood_is_cut_to_the_budget() {
        let (mut dev, out, _) = device(ConsoleLimit {
            burst: 1000,
            per_second: 1,
        });
        for _ in 0..1000 {
            type_text(&mut dev, b"0123456789012345678\n");
        }
        let written = out.0.lock().unwrap().len();
        assert!(
            written <= 1000,
            "wrote {written} bytes past a 1000-byte budget"
        );
        assert!(written >= 900);
    }
}
