//! What `attach` and `exec start` share once the client's connection is taken over for a
//! raw stream (dockerd's hijack): a permit from the attached-stream cap, the socket behind
//! the upgrade, the 101 answer, the hang-up check and the input pump's detach scan.

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::http::{empty, ApiError, ApiResult};
use crate::router::State;

/// A hijacked stream holds its socket outside the connection table: it takes a permit of
/// its own first, or the client hears why not.
pub fn stream_permit(state: &Arc<State>) -> Result<OwnedSemaphorePermit, ApiError> {
    state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "berthd already serves its limit of attached streams ({}); try again when one ends",
                state.stream_cap
            ),
        )
    })
}

/// The client's socket once the upgrade is done, with what it sent after its request
/// (input that comes first); `None`, logged, when the upgrade failed.
pub async fn upgraded_socket(
    on_upgrade: hyper::upgrade::OnUpgrade,
    what: &str,
) -> Option<(UnixStream, Bytes)> {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            log::debug!("{what} upgrade failed: {e}");
            return None;
        }
    };
    // The socket itself, to see a client hang up (the Docker CLI shuts its sending side at
    // once when it has no input, so end of input says nothing).
    match upgraded.downcast::<TokioIo<UnixStream>>() {
        Ok(parts) => Some((parts.io.into_inner(), parts.read_buf)),
        Err(_) => {
            log::error!("{what}: the upgraded connection is not a Unix stream");
            None
        }
    }
}

/// dockerd's answer to a hijacking request: 101, the stream's content type, upgraded to a
/// raw stream.
pub fn switching_protocols(content_type: &'static str) -> ApiResult {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("tcp"));
    Ok(resp)
}

/// How often a stream with nothing to send checks that its client is still there.
const HANG_UP_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Returns once the peer of socket `fd` has closed it entirely (POLLHUP: both directions shut,
/// where a client that only ended its input gives POLLRDHUP alone).
pub async fn hung_up(fd: std::os::fd::RawFd) {
    loop {
        tokio::time::sleep(HANG_UP_CHECK).await;
        let mut p = libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        };
        // SAFETY: poll(2) with a zero timeout on one pollfd that outlives the call; `fd` is
        // the caller's open socket (it holds the stream's write half throughout).
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return;
        }
    }
}

/// Aborts a task when dropped.
pub struct AbortOnDrop(pub Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Puts in `passed` what of a client's `input` goes on to the process: all of it, or, on a
/// terminal (`scanner`), what the detach keys leave. `true` once the keys were typed.
pub fn scan_input(
    scanner: Option<&mut berthd::detach::Scanner>,
    input: &[u8],
    passed: &mut Vec<u8>,
) -> bool {
    passed.clear();
    match scanner {
        Some(s) => s.feed(input, passed),
        None => {
            passed.extend_from_slice(input);
            false
        }
    }
}
