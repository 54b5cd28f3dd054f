//! A process's stdio: what its fds 0-2 are, and the threads that move bytes between them and
//! the host's stream connections.
//!
//! Output pumps end at EOF, or, once the process has exited (its exit latch is set), after
//! reading whatever is already buffered: a background child that inherited the pipe may
//! keep it open forever, and the exit must still be reported. Output with no connection, or
//! whose connection the host closed, is read and discarded so the process never blocks on it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use agent_protocol::ProcessSpec;
use nix::poll::PollFlags;

use crate::sys::{self, Latch};
use crate::transport::Conn;

const BUF_LEN: usize = 32 * 1024;
/// After exit, stop draining after this much even if a background writer keeps it coming.
const MAX_DRAIN_AFTER_EXIT: usize = 4 * 1024 * 1024;

/// The stream connections attached to a process before it starts.
#[derive(Debug, Default)]
pub struct Attached {
    pub stdin: Option<Conn>,
    pub stdout: Option<Conn>,
    pub stderr: Option<Conn>,
}

/// The fds a process gets, and the agent's ends of them.
#[derive(Debug)]
pub struct Plan {
    /// The child's 0, 1, 2 (for a tty, all the pty slave). Dropped after fork.
    pub child: [Arc<OwnedFd>; 3],
    /// Where the agent writes the process's input (pipe or pty master), if stdin is attached.
    pub stdin: Option<OwnedFd>,
    /// Output sources: (fd to read, whether it feeds stdout (true) or stderr).
    pub outputs: Vec<(OwnedFd, bool)>,
    /// The pty master, kept for resizing.
    pub pty_master: Option<OwnedFd>,
}

impl Plan {
    /// Builds the fds for `spec` given which streams are attached. Unattached input is
    /// /dev/null; unattached output is /dev/null, except with a tty, whose master must be
    /// read regardless or the process would block.
    /// A tty comes from `devpts` when given (a container's own instance).
    pub fn new(
        spec: &ProcessSpec,
        attached: &Attached,
        devpts: Option<BorrowedFd<'_>>,
    ) -> io::Result<Plan> {
        if spec.tty {
            let size = spec
                .tty_size
                .unwrap_or(agent_protocol::TtySize { rows: 24, cols: 80 });
            let (master, slave) = sys::open_pty(devpts, size.rows, size.cols)?;
            let slave = Arc::new(slave);
            let stdin = if attached.stdin.is_some() {
                Some(master.try_clone()?)
            } else {
                None
            };
            return Ok(Plan {
                child: [slave.clone(), slave.clone(), slave],
                stdin,
                outputs: vec![(master.try_clone()?, true)],
                pty_master: Some(master),
            });
        }
        let (child_in, stdin) = if attached.stdin.is_some() {
            let (r, w) = sys::pipe()?;
            (r, Some(w))
        } else {
            (sys::dev_null(false)?, None)
        };
        let mut outputs = Vec::new();
        let mut output = |is_attached: bool, is_stdout: bool| -> io::Result<OwnedFd> {
            if is_attached {
                let (r, w) = sys::pipe()?;
                outputs.push((r, is_stdout));
                Ok(w)
            } else {
                sys::dev_null(true)
            }
        };
        let child_out = output(attached.stdout.is_some(), true)?;
        let child_err = output(attached.stderr.is_some(), false)?;
        Ok(Plan {
            child: [Arc::new(child_in), Arc::new(child_out), Arc::new(child_err)],
            stdin,
            outputs,
            pty_master: None,
        })
    }

    pub fn child_fds(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.child[0].as_fd(),
            self.child[1].as_fd(),
            self.child[2].as_fd(),
        ]
    }
}

/// Sends `data` to the connection; on failure (the host went away) drops it so the rest is
/// discarded.
fn forward(sink: &mut Option<Conn>, data: &[u8]) {
    if let Some(conn) = sink {
        if let Err(e) = sys::write_all(conn.as_fd(), data) {
            log::debug!("output connection closed by the host ({e}); discarding the rest");
            *sink = None;
        }
    }
}

/// Copies `src` to `sink` until EOF, or until `exited` is set and the buffered rest is read.
/// Closes `sink` when done.
pub fn pump_output(src: OwnedFd, mut sink: Option<Conn>, exited: &Latch) {
    let mut buf = vec![0u8; BUF_LEN];
    loop {
        let (readable, exit) = match sys::poll_two(src.as_fd(), PollFlags::POLLIN, Some(exited), -1)
        {
            Ok(r) => r,
            Err(e) => {
                log::warn!("poll on process output failed: {e}");
                break;
            }
        };
        if exit {
            drain(&src, &mut sink, &mut buf);
            break;
        }
        if readable {
            match sys::read(src.as_fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) => forward(&mut sink, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // EIO: a pty whose slave side is closed everywhere.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                Err(e) => {
                    log::warn!("reading process output failed: {e}");
                    break;
                }
            }
        }
    }
    // Dropping `sink` closes the stream connection: end of output for the host.
}

/// Reads what is already in `src` without waiting for more.
fn drain(src: &OwnedFd, sink: &mut Option<Conn>, buf: &mut [u8]) {
    if let Err(e) = sys::set_nonblocking(src.as_fd(), true) {
        log::warn!("cannot make process output non-blocking: {e}");
        return;
    }
    let mut total = 0;
    while total < MAX_DRAIN_AFTER_EXIT {
        match sys::read(src.as_fd(), buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                forward(sink, &buf[..n]);
            }
            Err(_) => break,
        }
    }
}

/// Writes all of `data` to a non-blocking `dst`, waiting for room; gives up if `exited` is
/// set while waiting or `dst` fails (the reader is gone).
fn write_input(dst: BorrowedFd<'_>, mut data: &[u8], exited: &Latch) -> io::Result<()> {
    while !data.is_empty() {
        match sys::write(dst, data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let (_, exit) = sys::poll_two(dst, PollFlags::POLLOUT, Some(exited), -1)?;
                if exit {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "process exited"));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How end-of-input reaches the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Close the pipe.
    Pipe,
    /// Type the terminal's EOF character (the pty stays open: it is also the output).
    Tty,
}

/// Copies the host's stdin connection into `dst` until the host closes it, then ends the
/// input. Stops early when the process exits.
pub fn pump_input(mut conn: Conn, dst: OwnedFd, kind: InputKind, exited: &Latch) {
    if let Err(e) = sys::set_nonblocking(dst.as_fd(), true) {
        log::warn!("cannot make process input non-blocking: {e}");
        return;
    }
    let mut buf = vec![0u8; BUF_LEN];
    // Whether the terminal's current line is empty, for the EOF character (below).
    let mut at_line_start = true;
    loop {
        let (readable, exit) =
            match sys::poll_two(conn.as_fd(), PollFlags::POLLIN, Some(exited), -1) {
                Ok(r) => r,
                Err(e) => {
                    log::warn!("poll on stdin connection failed: {e}");
                    return;
                }
            };
        if exit {
            return;
        }
        if !readable {
            continue;
        }
        let n = match std::io::Read::read(&mut conn, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Err(e) = write_input(dst.as_fd(), &buf[..n], exited) {
            log::debug!("process input closed ({e})");
            return;
        }
        at_line_start = buf[n - 1] == b'\n';
    }
    if kind == InputKind::Tty {
        // In canonical mode the EOF character ends a read: on an empty line the reader sees
        // end-of-file; after a partial line it only hands the line over, so a second one
        // is needed.
        match sys::terminal_eof(dst.as_fd()) {
            Ok((veof, true)) => {
                let eof = [veof, veof];
                let n = if at_line_start { 1 } else { 2 };
                if let Err(e) = write_input(dst.as_fd(), &eof[..n], exited) {
                    log::debug!("cannot send EOF to the terminal: {e}");
                }
            }
            Ok((_, false)) => log::debug!("terminal not in canonical mode; no EOF sent"),
            Err(e) => log::debug!("cannot read terminal settings: {e}"),
        }
    }
    // Dropping `dst` closes the pipe (end of input) or our duplicate of the pty master.
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn conn_pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Conn::from_fd(OwnedFd::from(a)), b)
    }

    #[test]
    fn output_pump_copies_until_eof_and_closes() {
        let (r, w) = sys::pipe().unwrap();
        let (conn, mut host) = conn_pair();
        let latch = Latch::new().unwrap();
        let t = std::thread::spawn(move || pump_output(r, Some(conn), &latch));
        sys::write_all(w.as_fd(), b"hello ").unwrap();
        sys::write_all(w.as_fd(), b"world").unwrap();
        drop(w);
        let mut got = String::new();
        host.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello world");
        t.join().unwrap();
    }

    #[test]
    fn output_pump_stops_after_exit_even_if_a_writer_remains() {
        let (r, w) = sys::pipe().unwrap();
        let (conn, mut host) = conn_pair();
        let latch = Arc::new(Latch::new().unwrap());
        let l2 = latch.clone();
        sys::write_all(w.as_fd(), b"buffered").unwrap();
        let t = std::thread::spawn(move || pump_output(r, Some(conn), &l2));
        latch.set();
        let mut got = String::new();
        host.read_to_string(&mut got).unwrap();
        assert_eq!(got, "buffered");
        t.join().unwrap();
        // The write end is still open: the pump did not wait for it.
        drop(w);
    }

    #[test]
    fn output_pump_discards_when_host_goes_away() {
        let (r, w) = sys::pipe().unwrap();
        let (conn, host) = conn_pair();
        drop(host);
        let latch = Latch::new().unwrap();
        let t = std::thread::spawn(move || pump_output(r, Some(conn), &latch));
        // More than a pipe's capacity: would block forever if nobody read.
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..8 {
            sys::write_all(w.as_fd(), &chunk).unwrap();
        }
        drop(w);
        t.join().unwrap();
    }

    #[test]
    fn input_pump_closes_pipe_at_host_eof() {
        let (r, w) = sys::pipe().unwrap();
        let (conn, mut host) = conn_pair();
        let latch = Latch::new().unwrap();
        let t = std::thread::spawn(move || pump_input(conn, w, InputKind::Pipe, &latch));
        host.write_all(b"abc").unwrap();
        drop(host);
        let mut got = Vec::new();
        std::fs::File::from(r).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abc");
        t.join().unwrap();
    }

    #[test]
    fn input_pump_stops_when_process_exits() {
        let (_r, w) = sys::pipe().unwrap();
        let (conn, _host) = conn_pair();
        let latch = Arc::new(Latch::new().unwrap());
        let l2 = latch.clone();
        let t = std::thread::spawn(move || pump_input(conn, w, InputKind::Pipe, &l2));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!latch.is_set());
        latch.set();
        assert!(latch.is_set());
        t.join().unwrap();
    }
}
