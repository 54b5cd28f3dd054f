//! Firecracker as bench-clone's anchor, measured in the same run the way berth is: the same
//! test guests, 1 vCPU and 16 MiB, a full snapshot taken over its API socket, each clone a
//! fresh process whose snapshot is loaded over the API (`PUT /snapshot/load`, memory file
//! mapped privately, resumed at once). Firecracker has no way to restore from its command
//! line, so its restore time includes waiting for its API socket and that request: that is
//! how a Firecracker clone starts.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

/// A snapshot's state file and memory file.
pub type Snapshot = (PathBuf, PathBuf);

pub struct Firecracker {
    bin: PathBuf,
    dir: PathBuf,
    next: AtomicUsize,
    /// The flooding guest's snapshot (restore time, clones per second).
    pub busy: Snapshot,
    /// The idle guest's snapshot (private memory per clone).
    pub quiet: Snapshot,
}

impl Firecracker {
    /// Snapshots of `flood` and `idle` under the Firecracker binary `bin`, in `dir`.
    pub fn new(bin: PathBuf, dir: &Path, flood: &Path, idle: &Path) -> Result<Self> {
        let dir = dir.join("firecracker");
        std::fs::create_dir_all(&dir)?;
        let mut fc = Firecracker {
            bin,
            dir,
            next: AtomicUsize::new(0),
            busy: Default::default(),
            quiet: Default::default(),
        };
        fc.busy = fc.snapshot("flood", flood)?;
        fc.quiet = fc.snapshot("idle", idle)?;
        Ok(fc)
    }

    /// A fresh API socket path (Firecracker refuses one that exists).
    fn socket(&self) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("api{n}.sock"))
    }

    fn command(&self, socket: &Path) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--api-sock")
            .arg(socket)
            .args(["--level", "Error"])
            .stdin(Stdio::null());
        cmd
    }

    /// Boots `kernel`, waits for its greeting, pauses it and takes a full snapshot.
    fn snapshot(&self, name: &str, kernel: &Path) -> Result<Snapshot> {
        let socket = self.socket();
        let config = self.dir.join(format!("{name}.json"));
        std::fs::write(&config, berth_bench::firecracker_config(kernel))?;
        let mut cmd = self.command(&socket);
        cmd.arg("--config-file")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let outcome = (|| -> Result<Snapshot> {
            let mut out = child.stdout.take().context("stdout is piped")?;
            let greeting = test_guest::GREETING.as_bytes();
            let deadline = Instant::now() + Duration::from_secs(30);
            let (mut seen, mut buf) = (Vec::new(), [0u8; 4096]);
            while !seen.windows(greeting.len()).any(|w| w == greeting) {
                ensure!(Instant::now() < deadline, "firecracker {name}: no greeting");
                let n = out.read(&mut buf)?;
                ensure!(n > 0, "firecracker {name}: the guest wrote nothing");
                seen.extend_from_slice(&buf[..n]);
            }
            // A guest that floods its serial line must not block on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
            super::wait_for(&socket)?;
            api(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#)?;
            let files = (
                self.dir.join(format!("{name}.state")),
                self.dir.join(format!("{name}.mem")),
            );
            api(
                &socket,
                "PUT",
                "/snapshot/create",
                &format!(
                    r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
                    files.0.display(),
                    files.1.display()
                ),
            )?;
            Ok(files)
        })();
        let _ = child.kill();
        let _ = child.wait();
        outcome
    }

    /// Loads `snapshot` into the process listening on `socket`, and resumes it.
    fn load(&self, socket: &Path, snapshot: &Snapshot) -> Result<()> {
        super::wait_for(socket)?;
        api(
            socket,
            "PUT",
            "/snapshot/load",
            &format!(
                r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": true}}"#,
                snapshot.0.display(),
                snapshot.1.display()
            ),
        )
    }

    /// From the process's start to the restored guest's first byte; then killed.
    pub fn first_output(&self, snapshot: &Snapshot) -> Result<Duration> {
        let socket = self.socket();
        let (elapsed, mut child) =
            super::start_until_output(self.command(&socket), || self.load(&socket, snapshot))?;
        let _ = child.kill();
        child.wait()?;
        Ok(elapsed)
    }

    /// A clone started until its guest runs, then paused (as berth's are in the same
    /// measurement), left running.
    pub fn start_paused(&self, snapshot: &Snapshot) -> Result<Child> {
        let socket = self.socket();
        let (_, mut child) =
            super::start_until_output(self.command(&socket), || self.load(&socket, snapshot))?;
        if let Err(e) = api(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(child)
    }

    /// A clone of an idle guest, loaded and running, its output discarded.
    pub fn start_loaded(&self, snapshot: &Snapshot) -> Result<Child> {
        let socket = self.socket();
        let mut cmd = self.command(&socket);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd.spawn()?;
        if let Err(e) = self.load(&socket, snapshot) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(child)
    }
}

/// One request to Firecracker's API; an answer other than 2xx is an error carrying its body.
/// The API keeps connections open, so the reply is read to its Content-Length.
fn api(socket: &Path, method: &str, path: &str, body: &str) -> Result<()> {
    // The socket's file appears when Firecracker binds it, a moment before it listens.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s = loop {
        match UnixStream::connect(socket) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_micros(200))
            }
            other => {
                break other.with_context(|| format!("cannot connect to {}", socket.display()))?
            }
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let (mut raw, mut buf) = (Vec::new(), [0u8; 4096]);
    let mut read_more = |raw: &mut Vec<u8>| -> Result<()> {
        let n = s.read(&mut buf)?;
        ensure!(n > 0, "firecracker closed the API connection");
        raw.extend_from_slice(&buf[..n]);
        Ok(())
    };
    let (body_at, status, length) = loop {
        read_more(&mut raw)?;
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .context("firecracker's reply has no status line")?;
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, status, length);
        }
        ensure!(raw.len() < 64 << 10, "firecracker's reply head is too long");
    };
    while raw.len() < body_at + length {
        read_more(&mut raw)?;
    }
    ensure!(
        (200..300).contains(&status),
        "firecracker: {method} {path}: {status} {}",
        String::from_utf8_lossy(&raw[body_at..])
    );
    Ok(())
}
