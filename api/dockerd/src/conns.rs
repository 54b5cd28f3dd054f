//! Connections: how many berthd serves at once, and which give way when it is full.
//!
//! Every connection holds a descriptor, and a daemon out of descriptors answers nobody. So
//! berthd serves at most a cap of connections (half its descriptor limit), hyper closes a
//! connection that takes more than [`HEADER_TIMEOUT`] to send a request's headers or sits
//! that long idle between requests, and when berthd is full it closes its oldest connection
//! that has no request in flight to make room: idle clients cannot keep others out. A
//! connection busy with a request is never closed for room; a new client then waits in the
//! listen backlog until one ends. Accept errors (out of descriptors, most of all) back off
//! instead of spinning and are logged at most once a second.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::http::Body;

/// How long a client may take to send a request's headers, and stay idle between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Back-off after an accept error: the error (no descriptors) lasts until something closes.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The connection cap for a descriptor limit of `nofile`: half of it, the rest for the
/// engine's files, VMM pipes and sockets.
pub fn cap_for(nofile: u64) -> usize {
    usize::try_from(nofile / 2)
        .unwrap_or(usize::MAX)
        .clamp(16, 16 << 10)
}

/// The cap on upgraded streams (attach) for a descriptor limit of `nofile`: a quarter of it.
/// An upgraded connection leaves the connection table (hyper hands its socket to the stream),
/// so without a cap of their own, clients could hold streams until berthd ran out of
/// descriptors.
pub fn stream_cap_for(nofile: u64) -> usize {
    usize::try_from(nofile / 4)
        .unwrap_or(usize::MAX)
        .clamp(8, 8 << 10)
}

/// Raises the soft descriptor limit to the hard one (as dockerd's service does) and returns
/// the limit in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one initialised rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

/// The connections being served.
pub struct Table {
    permits: Arc<Semaphore>,
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next: AtomicU64,
}

/// One connection, as the table sees it.
#[derive(Default)]
pub struct Conn {
    /// Requests in flight (from their headers until their response body is done).
    busy: AtomicUsize,
    /// Asked to close for room, and not yet gone.
    closing: AtomicBool,
    close: Notify,
}

/// A connection's place in the table; dropping it frees the place.
pub struct Slot {
    table: Arc<Table>,
    id: u64,
    pub conn: Arc<Conn>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.table.conns).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Table {
    /// A table for at most `cap` connections.
    pub fn new(cap: usize) -> Arc<Table> {
        Arc::new(Table {
            permits: Arc::new(Semaphore::new(cap)),
            conns: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
        })
    }

    /// Waits for room for one more connection: a free place, or one made by closing the
    /// oldest idle connection.
    pub async fn slot(self: &Arc<Self>) -> Slot {
        loop {
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                return self.register(permit);
            }
            self.shed_one();
            // The closed connection frees its place in a moment; a request that ends frees
            // one too. Look again now and then: a connection busy a moment ago may be idle.
            if let Ok(Ok(permit)) = tokio::time::timeout(
                Duration::from_millis(200),
                self.permits.clone().acquire_owned(),
            )
            .await
            {
                return self.register(permit);
            }
        }
    }

    fn register(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::default());
        lock(&self.conns).insert(id, conn.clone());
        Slot {
            table: self.clone(),
            id,
            conn,
            _permit: permit,
        }
    }

    /// Asks the oldest connection with no request in flight to close. Returns whether one
    /// was asked.
    fn shed_one(&self) -> bool {
        let conns = lock(&self.conns);
        for conn in conns.values() {
            if conn.busy.load(Ordering::SeqCst) == 0 && !conn.closing.swap(true, Ordering::SeqCst) {
                conn.close.notify_one();
                return true;
            }
        }
        false
    }

    /// Connections being served.
    pub fn len(&self) -> usize {
        lock(&self.conns).len()
    }
}

impl Conn {
    /// Marks a request in flight until the guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Resolves when the table asks this connection to close for room and it has no request
    /// in flight (one that started meanwhile keeps it open).
    pub async fn asked_to_close(&self) {
        loop {
            self.close.notified().await;
            if self.busy.load(Ordering::SeqCst) == 0 {
                return;
            }
            self.closing.store(false, Ordering::SeqCst);
        }
    }
}

/// A request in flight.
pub struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until it is done.
pub fn guarded(inner: Body, busy: Busy) -> Body {
    http_body_util::BodyExt::boxed(Guarded { inner, _busy: busy })
}

struct Guarded {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A warning logged at most once per second, with the count of those it held back.
pub struct Limited {
    last: Option<Instant>,
    held: u64,
}

impl Limited {
    pub const fn new() -> Self {
        Limited {
            last: None,
            held: 0,
        }
    }

    pub fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Duration::from_secs(1))
        {
            self.held += 1;
            return;
        }
        if self.held > 0 {
            log::warn!("{msg} ({} more like it in the last second)", self.held);
        } else {
            log::warn!("{msg}");
        }
        self.last = Some(now);
        self.held = 0;
    }
}

/// What to do after an accept error: wait before the next accept.
pub fn accept_backoff(e: &std::io::Error) -> Duration {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => ACCEPT_BACKOFF,
        // A connection that went away before it was accepted: nothing to wait for.
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO) => Duration::ZERO,
        _ => ACCEPT_BACKOFF,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_follow_the_descriptor_limit() {
        assert_eq!(cap_for(1024), 512);
        assert_eq!(cap_for(20), 16);
        assert_eq!(cap_for(1 << 20), 16 << 10);
    }

    #[tokio::test]
    async fn a_full_table_closes_its_oldest_idle_connection_never_a_busy_one() {
        let table = Table::new(2);
        let a = table.slot().await;
        let b = table.slot().await;
        let _req = a.conn.busy();
        // Full: the new connection's place comes from b (idle), not a (busy).
        let b_conn = b.conn.clone();
        let waiter = tokio::spawn({
            let table = table.clone();
            async move { table.slot().await }
        });
        tokio::time::timeout(Duration::from_secs(5), b_conn.asked_to_close())
            .await
            .expect("the idle connection is asked to close");
        drop(b);
        let c = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the new connection gets b's place")
            .unwrap();
        assert_eq!(table.len(), 2);
        // Both busy: a newcomer waits.
        let _req_c = c.conn.busy();
        let t2 = table.clone();
        let blocked = tokio::time::timeout(Duration::from_millis(500), t2.slot()).await;
        assert!(blocked.is_err(), "no busy connection is closed for room");
        drop(_req);
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), table.slot())
            .await
            .expect("a place freed by a finished connection is taken");
    }
}
