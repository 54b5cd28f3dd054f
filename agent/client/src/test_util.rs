//! Test doubles: a fake VMM speaking the host side of hybrid vsock.

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

/// A fresh, empty directory for one test, removed when dropped.
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty directory for one test.
pub fn temp_dir(name: &str) -> TempDir {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "berth-client-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// Listens on a VM socket path and hands each connection's stream, after reading its
/// `CONNECT <port>\n` line, to a handler.
pub struct FakeVmm(JoinHandle<()>);

impl FakeVmm {
    /// Serves one connection.
    pub fn start<F>(uds: &Path, handler: F) -> FakeVmm
    where
        F: FnOnce(UnixStream, u32) + Send + 'static,
    {
        let mut handler = Some(handler);
        Self::start_n(uds, 1, move |s, p| {
            if let Some(h) = handler.take() {
                h(s, p)
            }
        })
    }

    /// Serves `n` connections, one after another, calling `handler(stream, port)`.
    pub fn start_n<F>(uds: &Path, n: usize, mut handler: F) -> FakeVmm
    where
        F: FnMut(UnixStream, u32) + Send + 'static,
    {
        let listener = UnixListener::bind(uds).unwrap();
        FakeVmm(std::thread::spawn(move || {
            for _ in 0..n {
                let (mut s, _) = listener.accept().unwrap();
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                let line = String::from_utf8(line).unwrap();
                let port = line
                    .strip_prefix("CONNECT ")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("bad CONNECT line {line:?}"));
                handler(s, port);
            }
        }))
    }

    pub fn join(self) {
        self.0.join().unwrap();
    }
}
